"""An image recipe through the one runner: a tiny timm model on the bundled MNIST sample."""

from __future__ import annotations

import pytest

from nlpcal.bench import Recipe, run_bench

pytest.importorskip("timm")


def image_recipe(**changes) -> dict:
    recipe = {
        "name": "tiny_images",
        "model": "timm:test_resnet",
        "data": {
            "train": "image:mnist/sample",
            "calibration": {"holdout": 150},
            "test": {"name": "mnist", "source": "image:mnist/sample"},
            "shifted": [
                {
                    "name": "noise_5",
                    "source": "image:mnist/sample",
                    "corrupt": {"corruption": "gaussian_noise", "severity": 5},
                },
                {
                    "name": "rotation_3",
                    "source": "image:mnist/sample",
                    "corrupt": {"corruption": "rotation", "severity": 3},
                },
            ],
        },
        "slicing": {"max_train_samples": 300, "max_eval_samples": 100, "seed": 0},
        "training": {
            "num_train_epochs": 1,
            "per_device_train_batch_size": 32,
            "learning_rate": 2e-3,
            "use_cpu": True,
            "report_to": "none",
        },
        "methods": [
            {
                "name": "cross_entropy",
                "calibration_loss": "cross_entropy",
                "posthoc": ["temperature"],
            }
        ],
        "seeds": [0],
        **changes,
    }
    return recipe


def test_an_image_recipe_runs_end_to_end(tmp_path) -> None:
    results = run_bench(Recipe.from_dict(image_recipe()), tmp_path)
    cell = results["cells"][0] if isinstance(results.get("cells"), list) else None
    text = (tmp_path / "results.md").read_text()
    assert "noise_5" in text and "rotation_3" in text
    assert (tmp_path / "cells" / "cross_entropy" / "seed_0" / "result.json").is_file()
    assert cell is None or cell["method"] == "cross_entropy"


def test_image_recipe_errors_are_named() -> None:
    bad = image_recipe()
    bad["data"]["shifted"][0]["corrupt"]["corruption"] = "fog"
    with pytest.raises(
        ValueError,
        match=r"unknown corrupt\.corruption 'fog'; available for texts: .*for images: brightness",
    ):
        Recipe.from_dict(bad)


def test_augmix_augments_exactly_the_training_batches(tmp_path, monkeypatch) -> None:
    """A method with augmix trains on augmented batches (one AugMix call per batch, seeded by
    the cell); calibration and evaluation read the clean images."""
    from nlpcal.data.augmix import AugMix

    calls: list[tuple[int, int]] = []
    original = AugMix.__call__

    def counted(self, pixels):
        calls.append((self.seed, len(pixels)))
        return original(self, pixels)

    monkeypatch.setattr(AugMix, "__call__", counted)
    method = {
        "name": "augmix",
        "calibration_loss": "cross_entropy",
        "posthoc": ["temperature"],
        "augmix": {"severity": 2},
    }
    recipe = Recipe.from_dict(image_recipe(methods=[method], seeds=[1]))
    run_bench(recipe, tmp_path)
    assert [n for _, n in calls] == [32] * 9 + [12]  # 300 training rows in batches of 32
    assert {seed for seed, _ in calls} == {1}
    stored = Recipe.from_dict(recipe.to_dict())
    assert stored.methods[0].augmix == {"severity": 2}


def test_augmix_errors_are_named() -> None:
    method = {"name": "augmix", "calibration_loss": "cross_entropy", "augmix": {"width": 0}}
    with pytest.raises(ValueError, match=r"method 'augmix': bad augmix arguments: AugMix width"):
        Recipe.from_dict(image_recipe(methods=[method]))
    method["augmix"] = {"chains": 3}
    with pytest.raises(ValueError, match=r"bad augmix arguments: .*unexpected keyword.*'chains'"):
        Recipe.from_dict(image_recipe(methods=[method]))
    method["augmix"] = {}
    with pytest.raises(ValueError, match=r"set augmix, which augments images; sentence-"):
        Recipe.from_dict(image_recipe(methods=[method], model="sentence-transformers/x"))
    with pytest.raises(ValueError, match=r"augmix augments the training images; it needs train"):
        Recipe.from_dict(image_recipe(methods=[{**method, "train": False}]))
