"""Every consumer reads the confidence that was calibrated: SLOVA's q_ŷ and q_ŷ^a, OOD scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nlpcal.posthoc.exponential as exponential
from nlpcal import CalibratedTrainer, load_calibrated
from nlpcal.bench import Recipe, run_bench
from nlpcal.functional.metrics import expected_calibration_error
from nlpcal.functional.ood import ood_detection_metrics
from nlpcal.functional.ova import ova_probabilities
from nlpcal.functional.predictive import class_probabilities
from tests.conftest import tiny_model
from tests.test_bench import save_tiny_classifier, tiny_recipe
from tests.test_trainer import make_args, signal_dataset


@pytest.fixture
def exponent_two(monkeypatch):
    """The exponential calibrator fits a = 2 (an over-confident model's exponent)."""
    monkeypatch.setattr(exponential, "fit_confidence_exponent", lambda *a, **k: torch.tensor(2.0))


def ova_trainer(tmp_path, extra_sets=None, **overrides) -> CalibratedTrainer:
    args = make_args(tmp_path, calibration_loss="ova", calibration_set="dev", **overrides)
    evals = {"test": signal_dataset(40, seed=1), "dev": signal_dataset(48, seed=3)}
    evals.update(extra_sets or {})
    return CalibratedTrainer(
        tiny_model("bert"), args, train_dataset=signal_dataset(), eval_dataset=evals
    )


def test_an_exponent_below_one_raises_the_confidence_even_past_a_row_sum_of_one(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(exponential, "fit_confidence_exponent", lambda *a, **k: torch.tensor(0.1))
    trainer = ova_trainer(tmp_path)
    trainer.train()
    outputs = trainer.variant_outputs(trainer.predictions(trainer.eval_dataset["test"]))
    raw = outputs["none"].class_probs.amax(1)
    calibrated = outputs["exponential"].class_probs
    torch.testing.assert_close(calibrated.amax(1), raw**0.1)
    assert (calibrated.sum(1) > 1).any()  # q^a with a < 1 need not sum to at most one
    assert trainer.evaluate()["eval_test_exponential_ece"] >= 0


def test_exponent_above_one_lowers_every_confidence_the_trainer_reports(tmp_path, exponent_two):
    trainer = ova_trainer(tmp_path)
    trainer.train()
    assert trainer.calibrator.name == "exponential"
    preds = trainer.predictions(trainer.eval_dataset["test"])
    outputs = trainer.variant_outputs(preds)
    raw = outputs["none"].class_probs.amax(1)
    calibrated = outputs["exponential"].class_probs.amax(1)
    # the confidence is q_ŷ^a, not the maximum of q^a renormalised (which would rise for a > 1)
    torch.testing.assert_close(calibrated, raw.square())
    assert (calibrated < raw).all()
    metrics = trainer.evaluate()
    labels = preds.labels
    probs = outputs["exponential"].probs
    expected = expected_calibration_error(probs, labels, confidence=calibrated)
    assert metrics["eval_test_exponential_ece"] == pytest.approx(float(expected), abs=1e-6)
    renormalised = expected_calibration_error(probs, labels)
    assert float(expected) != pytest.approx(float(renormalised), abs=1e-3)
    # the uncalibrated SLOVA confidence is its own q_ŷ, not the renormalised maximum
    q = ova_probabilities(trainer.model(**_inputs(trainer.eval_dataset["test"])).logits)
    torch.testing.assert_close(raw, q.amax(1).detach(), atol=1e-5, rtol=1e-5)


def test_a_loaded_slova_model_reports_the_calibrated_confidence(tmp_path, exponent_two):
    trainer = ova_trainer(tmp_path)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    loaded = load_calibrated(tmp_path / "saved")
    assert not loaded.normalized
    test = trainer.eval_dataset["test"]
    expected = trainer.variant_outputs(trainer.predictions(test))["exponential"].class_probs
    actual = class_probabilities(loaded(**_inputs(test)), loaded.normalized)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def _inputs(dataset) -> dict[str, torch.Tensor]:
    batch = dataset[:]
    return {k: torch.tensor(batch[k]) for k in ("input_ids", "attention_mask")}


def test_runner_stores_and_scores_the_calibrated_confidence(tmp_path, exponent_two):
    model = save_tiny_classifier(tmp_path / "model")
    config = tiny_recipe(model, seeds=[0])
    config["methods"] = [{"name": "ova", "calibration_loss": "ova", "posthoc": ["exponential"]}]
    results = run_bench(Recipe.from_dict(config), tmp_path / "run")
    saved = np.load(tmp_path / "run" / "cells" / "ova" / "seed_0" / "predictions.npz")
    for name in ("sst2", "imdb"):
        raw, calibrated = saved[f"probs/{name}/none"], saved[f"probs/{name}/exponential"]
        np.testing.assert_allclose(calibrated.max(1), raw.max(1) ** 2, rtol=1e-5)
        assert (raw.sum(1) < 1).all()  # SLOVA keeps its "none of these" mass
        # The OOD score is left out of the file only when it is exactly the calibrated q_ŷ^a.
        assert f"ood/{name}/exponential" not in saved.files
    row = next(
        r
        for r in results["rows"]
        if (r["variant"], r["set"]) == ("exponential", "sst2") and r["method"] == "ova"
    )
    probs = saved["probs/sst2/exponential"]
    expected = expected_calibration_error(
        probs / probs.sum(1, keepdims=True), saved["labels/sst2"], confidence=probs.max(1)
    )
    assert row["values"]["ece"]["mean"] == pytest.approx(float(expected), abs=1e-6)


def test_the_default_ood_score_of_slova_is_its_own_max_q(tmp_path):
    """Not the maximum of q renormalised, which for K = 2 discards the "no class fires" signal."""
    shifted = {"shifted": signal_dataset(30, seed=2, shift=50)}
    trainer = ova_trainer(
        tmp_path, shifted, ood_sets=["shifted"], in_domain_set="test", posthoc="none"
    )
    trainer.train()
    metrics = trainer.evaluate()
    preds = {n: trainer.predictions(ds, n) for n, ds in trainer.eval_dataset.items()}
    q = {n: p.logits.exp().amax(1) for n, p in preds.items()}  # SLOVA's max_k q_k
    expected = ood_detection_metrics(q["test"], q["shifted"])["auroc"]
    assert metrics["eval_shifted_ood_auroc"] == pytest.approx(float(expected))


@pytest.mark.parametrize("score", ["confidence", "msp", "entropy", "energy"])
def test_swapping_in_and_out_of_domain_flips_the_auroc(tmp_path, score):
    sets = {"clean": signal_dataset(40, seed=1), "shifted": signal_dataset(30, seed=2, shift=50)}
    aurocs = []
    for in_name, out_name in (("clean", "shifted"), ("shifted", "clean")):
        args = make_args(
            tmp_path, ood_sets=[out_name], in_domain_set=in_name, posthoc="none", ood_score=score
        )
        trainer = CalibratedTrainer(tiny_model("bert"), args, eval_dataset=sets)
        aurocs.append(trainer.evaluate()[f"eval_{out_name}_ood_auroc"])
    assert aurocs[0] + aurocs[1] == pytest.approx(1.0)
    assert abs(aurocs[0] - 0.5) > 0.02


def test_unknown_ood_score_is_refused_when_the_trainer_is_built(tmp_path):
    with pytest.raises(ValueError, match="ood_score must be one of"):
        CalibratedTrainer(tiny_model("bert"), make_args(tmp_path, ood_score="mahalanobis"))
