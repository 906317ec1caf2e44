"""The Trainer ``compute_metrics`` factory and the offline ``evaluate`` module."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from nlpcal.functional.metrics import calibration_metrics, classwise_calibration_error
from nlpcal.functional.selective import aurc
from nlpcal.metrics.compute_metrics import make_compute_metrics
from nlpcal.metrics.hf_evaluate import evaluate_module_path
from tests.conftest import tiny_batch, tiny_model

KEYS = {"accuracy", "ece", "mce", "rmsce", "brier", "nll", "classwise_ece", "aurc"}


def random_logits(n: int = 64, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, k, generator=g), torch.randint(0, k, (n,), generator=g)


def expected_metrics(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> dict[str, float]:
    probs = torch.softmax(logits.float(), dim=1)
    expected = calibration_metrics(probs, labels, n_bins=n_bins)
    expected["classwise_ece"] = classwise_calibration_error(probs, labels, n_bins=n_bins)
    confidence, prediction = probs.max(dim=1)
    expected["aurc"] = aurc(confidence, prediction == labels)
    return {key: float(value) for key, value in expected.items()}


def test_values_equal_the_functional_metrics():
    logits, labels = random_logits()
    result = make_compute_metrics(n_bins=10)(EvalPrediction(logits.numpy(), labels.numpy()))
    assert set(result) == KEYS
    assert all(type(value) is float for value in result.values())
    assert result == pytest.approx(expected_metrics(logits, labels, n_bins=10), abs=1e-7)
    assert result["ece"] != pytest.approx(expected_metrics(logits, labels, n_bins=15)["ece"])


def test_tuple_predictions_use_the_first_element():
    logits, labels = random_logits(seed=1)
    hidden = np.zeros((64, 5, 2), dtype=np.float32)
    result = make_compute_metrics()(EvalPrediction((logits.numpy(), hidden), labels.numpy()))
    assert result == pytest.approx(expected_metrics(logits, labels), abs=1e-7)


def test_plain_tuple_and_half_precision_logits():
    logits, labels = random_logits(seed=2)
    half = logits.half().numpy()
    result = make_compute_metrics()((half, labels.numpy()))
    assert result == pytest.approx(expected_metrics(torch.from_numpy(half), labels), abs=1e-7)


def test_prefixed_names():
    logits, labels = random_logits()
    result = make_compute_metrics(prefix_free=False)(EvalPrediction(logits.numpy(), labels.numpy()))
    assert set(result) == {"calibration_" + key for key in KEYS}


@pytest.mark.parametrize(
    ("predictions", "labels", "match"),
    [
        (np.zeros((4, 3), dtype=np.float32), np.array([0, 1, 2, 3]), "label_ids must lie"),
        (np.full((2, 3), np.nan, dtype=np.float32), np.array([0, 1]), "predictions contains"),
        (np.zeros((2, 3), dtype=np.float32), None, "no labels"),
    ],
)
def test_bad_predictions_raise(predictions, labels, match):
    with pytest.raises(ValueError, match=match):
        make_compute_metrics()(EvalPrediction(predictions, labels))


def test_trainer_reports_the_metrics(tmp_path):
    from transformers import Trainer, TrainingArguments

    batch = tiny_batch(batch_size=12, seq_len=10)
    rows = [{key: value[i] for key, value in batch.items()} for i in range(12)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=5, report_to=[], use_cpu=True
    )
    trainer = Trainer(
        model=tiny_model("bert"),
        args=args,
        eval_dataset=rows,
        compute_metrics=make_compute_metrics(),
    )
    metrics = trainer.evaluate()
    assert {"eval_" + key for key in KEYS} <= set(metrics)
    model = tiny_model("bert")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = expected_metrics(logits, batch["labels"])
    for key in KEYS:
        assert metrics["eval_" + key] == pytest.approx(expected[key], abs=1e-5)


# ----------------------------------------------------------------------------- evaluate module
@pytest.mark.parametrize("script", [False, True])
def test_evaluate_module_loads_offline_and_matches(script, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = evaluate_module_path(script=script)
    assert Path(path).exists()
    metric = evaluate.load(path)
    logits, labels = random_logits(n=40, k=4, seed=3)
    probs = torch.softmax(logits, dim=1)
    result = metric.compute(predictions=probs.tolist(), references=labels.tolist(), n_bins=10)
    expected = calibration_metrics(probs, labels, n_bins=10)
    expected["classwise_ece"] = classwise_calibration_error(probs, labels, n_bins=10)
    assert result == pytest.approx({k: float(v) for k, v in expected.items()}, abs=1e-7)


def test_evaluate_module_accumulates_batches():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(evaluate_module_path())
    logits, labels = random_logits(n=30, k=3, seed=4)
    probs = torch.softmax(logits, dim=1)
    for start in range(0, 30, 7):
        metric.add_batch(
            predictions=probs[start : start + 7].tolist(),
            references=labels[start : start + 7].tolist(),
        )
    result = metric.compute()
    assert result["ece"] == pytest.approx(
        float(calibration_metrics(probs, labels)["ece"]), abs=1e-7
    )


def test_evaluate_module_is_shipped_as_package_data():
    folder = Path(evaluate_module_path())
    assert sorted(p.name for p in folder.glob("*.py")) == [
        "evaluate_module.py",
        "nlpcal_calibration.py",
    ]
    assert os.path.basename(evaluate_module_path(script=True)) == "nlpcal_calibration.py"
