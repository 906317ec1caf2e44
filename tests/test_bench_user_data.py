"""The runner on users' own data: label names from the data, in-code datasets, label maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from nlpcal import load_calibrated
from nlpcal.bench import Recipe, run_bench, shift_metrics
from tests.test_bench import save_tiny_classifier

EMOTIONS = ["anger", "fear", "joy", "love", "sadness"]
WORDS = {
    "anger": "furious",
    "fear": "scared",
    "joy": "happy",
    "love": "adore",
    "sadness": "gloomy",
}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A tiny BERT encoder without a classification head, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    folder = save_tiny_classifier(tmp_path_factory.mktemp("encoder"))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    model.bert.save_pretrained(folder)  # the head is created per recipe, with its label count
    return folder


def emotion_rows(n: int, seed: int, classes=EMOTIONS) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    labels = [classes[i] for i in rng.integers(0, len(classes), n)]
    texts = [f"i feel {WORDS[label]} today {rng.integers(100)}" for label in labels]
    return {"utterance": texts, "emotion": labels}


def write_csv(path: Path, rows: dict[str, list]) -> str:
    lines = ["utterance,emotion"] + [f"{t},{y}" for t, y in zip(*rows.values(), strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def user_recipe(model: Path, train, calibration, test, shifted=()) -> dict:
    columns = {"text_column": "utterance", "label_column": "emotion"}
    return {
        "name": "emotion",
        "model": str(model),
        "max_length": 16,
        "data": {
            "train": {"source": train, **columns},
            "calibration": {"source": calibration, **columns},
            "test": {"name": "test", "source": test, **columns},
            "shifted": list(shifted),
        },
        "training": {
            "num_train_epochs": 10,
            "per_device_train_batch_size": 16,
            "learning_rate": "1e-2",
            "use_cpu": True,
            "disable_tqdm": True,
        },
        "methods": [{"name": "ce", "calibration_loss": "cross_entropy"}],
        "seeds": [0],
        "save_model": True,
    }


def test_a_local_five_class_file_with_string_labels_trains_evaluates_and_reports(
    encoder_dir, tmp_path
):
    train = write_csv(tmp_path / "train.csv", emotion_rows(120, 0))
    dev = write_csv(tmp_path / "dev.csv", emotion_rows(60, 1))
    # The test file lacks a class and lists the others in another order of appearance.
    test = write_csv(tmp_path / "test.csv", emotion_rows(50, 2, ["sadness", "joy", "anger"]))
    results = run_bench(
        Recipe.from_dict(user_recipe(encoder_dir, train, dev, test)), tmp_path / "run"
    )
    model = load_calibrated(tmp_path / "run" / "cells" / "ce" / "seed_0" / "model")
    assert [model.model.config.id2label[i] for i in range(5)] == EMOTIONS
    saved = np.load(tmp_path / "run" / "cells" / "ce" / "seed_0" / "predictions.npz")
    names = np.array(EMOTIONS)[saved["labels/test"]]
    expected = np.array(emotion_rows(50, 2, ["sadness", "joy", "anger"])["emotion"])
    assert (names == expected).all()  # the test labels line up with the training label set
    row = next(r for r in results["rows"] if (r["set"], r["variant"]) == ("test", "temperature"))
    assert row["values"]["accuracy"]["mean"] > 0.5  # the marker words are learnable
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert (
        "labels: those of the training data" in markdown
        and "## test (in-domain, n = 50)" in markdown
    )


def test_a_datasets_dataset_in_code_runs_like_a_file(encoder_dir, tmp_path):
    files = [emotion_rows(120, 0), emotion_rows(60, 1), emotion_rows(50, 2)]
    paths = [write_csv(tmp_path / f"{i}.csv", rows) for i, rows in enumerate(files)]
    from_files = run_bench(Recipe.from_dict(user_recipe(encoder_dir, *paths)), tmp_path / "a")
    datasets = [Dataset.from_dict(rows) for rows in files]
    in_code = run_bench(Recipe.from_dict(user_recipe(encoder_dir, *datasets)), tmp_path / "b")
    assert in_code["cells"][0]["metrics"] == from_files["cells"][0]["metrics"]
    assert in_code["recipe"]["data"]["train"]["source"].startswith("<datasets.Dataset ")


def test_a_label_mapped_set_is_scored_in_its_own_label_space(encoder_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", emotion_rows(120, 0))
    dev = write_csv(tmp_path / "dev.csv", emotion_rows(60, 1))
    rows = emotion_rows(40, 3)
    coarse = {
        "utterance": rows["utterance"],
        "emotion": ["positive" if y in ("joy", "love") else "negative" for y in rows["emotion"]],
    }
    valence = write_csv(tmp_path / "valence.csv", coarse)
    merge = {"anger": "negative", "fear": "negative", "sadness": "negative"}
    merge |= {"joy": "positive", "love": "positive"}
    shifted = [
        {
            "name": "valence",
            "source": valence,
            "text_column": "utterance",
            "label_column": "emotion",
            "label_map": merge,
        }
    ]
    recipe = user_recipe(encoder_dir, train, dev, train, shifted)
    results = run_bench(Recipe.from_dict(recipe), tmp_path / "run")
    cell = tmp_path / "run" / "cells" / "ce" / "seed_0"
    saved = np.load(cell / "predictions.npz")
    # The model's five probabilities, merged by hand into the set's two (negative, positive).
    model = load_calibrated(cell / "model")
    model.calibrator = None
    texts = coarse["utterance"]
    batch = model.tokenizer(
        texts, padding=True, truncation=True, max_length=16, return_tensors="pt"
    )
    probs = model(**batch).softmax(-1)
    negative = probs[:, [0, 1, 4]].sum(1)
    merged = torch.stack([negative, probs[:, 2] + probs[:, 3]], dim=1).numpy()
    np.testing.assert_allclose(saved["probs/valence/none"], merged, atol=1e-5)
    labels = np.array([0 if y == "negative" else 1 for y in coarse["emotion"]])
    np.testing.assert_array_equal(saved["labels/valence"], labels)
    hand = shift_metrics(merged, labels)
    values = json.loads((cell / "result.json").read_text())["metrics"]["valence"]["none"]
    assert {k: values[k] for k in hand} == pytest.approx(hand, abs=1e-5)
    assert "negative ← anger + fear + sadness" in results["label_maps"]["valence"]
    assert "negative ← anger + fear + sadness" in (tmp_path / "run" / "results.md").read_text()
