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


def test_a_saved_image_model_is_taken_as_it_is(tmp_path) -> None:
    """train: false on the folder of a trained cell: the same model (same uncalibrated
    predictions), its saved temperature scored as it is and refitted to the same value."""
    import numpy as np

    trained = tmp_path / "trained"
    run_bench(Recipe.from_dict(image_recipe(save_model=True)), trained)
    cell = trained / "cells" / "cross_entropy" / "seed_0"
    taken = {
        "name": "taken",
        "calibration_loss": "cross_entropy",
        "posthoc": ["temperature"],
        "train": False,
        "saved_posthoc": ["temperature"],
    }
    again = tmp_path / "again"
    run_bench(Recipe.from_dict(image_recipe(model=str(cell / "model"), methods=[taken])), again)
    before = np.load(cell / "predictions.npz")
    after = np.load(again / "cells" / "taken" / "seed_0" / "predictions.npz")
    for name in ("mnist", "noise_5", "rotation_3"):
        np.testing.assert_allclose(
            after[f"probs/{name}/none"], before[f"probs/{name}/none"], atol=1e-5
        )
        np.testing.assert_allclose(
            after[f"probs/{name}/saved_temperature"], before[f"probs/{name}/temperature"], atol=1e-5
        )
        np.testing.assert_allclose(
            after[f"probs/{name}/temperature"], before[f"probs/{name}/temperature"], atol=1e-4
        )


def test_an_image_model_saved_without_nlpcal_files_loads(tmp_path) -> None:
    import torch

    from nlpcal.adapters.timm import TimmForImageClassification, create_timm_classifier
    from nlpcal.bench.run import _load_classifier

    torch.manual_seed(0)
    model = create_timm_classifier("test_resnet", list("abc"), num_channels=1, image_size=(28, 28))
    model.save_pretrained(tmp_path)
    loaded = _load_classifier(str(tmp_path))
    assert isinstance(loaded, TimmForImageClassification)
    pixels = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(pixel_values=pixels).logits
        torch.testing.assert_close(loaded.eval()(pixel_values=pixels).logits, expected)
    assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_an_untrained_timm_name_must_train(tmp_path) -> None:
    method = {"name": "taken", "calibration_loss": "cross_entropy", "train": False}
    with pytest.raises(ValueError, match=r"built from timm untrained: its methods must train"):
        run_bench(Recipe.from_dict(image_recipe(methods=[method])), tmp_path)
