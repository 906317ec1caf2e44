"""SLOVA exponential calibration on one-vs-all logits of known miscalibration."""

from __future__ import annotations

import pytest
import torch

from nlpcal.functional.ova import ova_log_probabilities, ova_probabilities
from nlpcal.functional.scaling import confidence_exponent_nll
from nlpcal.posthoc.exponential import ExponentialCalibrator

K = 4


def ova_data(true_exponent: float, n: int = 6000, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One-vs-all logits whose predictions are right with probability ``q_ŷ ** true_exponent``."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, K, generator=g) - 1.5
    predicted = logits.argmax(1)
    confidence = ova_probabilities(logits).max(1).values
    right = torch.rand(n, generator=g) < confidence**true_exponent
    wrong_class = (predicted + torch.randint(1, K, (n,), generator=g)) % K
    labels = torch.where(right, predicted, wrong_class)
    return logits, labels


def binary_nll(
    calibrator: ExponentialCalibrator, logits: torch.Tensor, labels: torch.Tensor
) -> float:
    log_conf, predicted = ova_log_probabilities(logits).max(1)
    return float(confidence_exponent_nll(log_conf, predicted == labels, calibrator.exponent))


@pytest.mark.parametrize(("true_exponent", "over_confident"), [(2.0, True), (0.5, False)])
def test_exponent_moves_in_the_right_direction_and_nll_improves(
    true_exponent: float, over_confident: bool
) -> None:
    logits, labels = ova_data(true_exponent)
    fit_logits, fit_labels, test_logits, test_labels = (
        logits[:3000],
        labels[:3000],
        logits[3000:],
        labels[3000:],
    )
    calibrator = ExponentialCalibrator().fit(ova_log_probabilities(fit_logits), fit_labels)
    exponent = float(calibrator.exponent)
    assert (exponent > 1) if over_confident else (exponent < 1)
    assert exponent == pytest.approx(true_exponent, rel=0.15)
    identity = ExponentialCalibrator()
    assert (
        binary_nll(calibrator, test_logits, test_labels)
        < binary_nll(identity, test_logits, test_labels) - 0.01
    )


def confidence_ece(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> float:
    """Equal-width ECE of a confidence against correctness, as a plain loop over the bins."""
    bins = (confidence * n_bins).long().clamp(max=n_bins - 1)
    ece = 0.0
    for b in bins.unique():
        members = bins == b
        gap = correct[members].float().mean() - confidence[members].mean()
        ece += float(members.float().mean() * gap.abs())
    return ece


def test_calibrated_confidence_has_a_lower_ece_on_an_over_confident_model() -> None:
    logits, labels = ova_data(2.0)
    log_q = ova_log_probabilities(logits)
    calibrator = ExponentialCalibrator().fit(log_q[:3000], labels[:3000])
    assert float(calibrator.exponent) > 1
    test_log_q, correct = log_q[3000:], logits[3000:].argmax(1) == labels[3000:]
    raw = test_log_q.max(dim=1).values.exp()
    calibrated = calibrator.confidence(test_log_q)
    assert confidence_ece(calibrated, correct) < confidence_ece(raw, correct) - 0.05
    assert confidence_ece(calibrated, correct) < 0.03


def test_confidence_is_q_of_the_prediction_to_the_power_a() -> None:
    logits, labels = ova_data(2.0, n=500)
    log_q = ova_log_probabilities(logits)
    calibrator = ExponentialCalibrator().fit(log_q, labels)
    q = ova_probabilities(logits)
    expected = q.gather(1, logits.argmax(1, keepdim=True)).squeeze(1) ** calibrator.exponent
    assert torch.allclose(calibrator.confidence(log_q), expected, rtol=1e-4, atol=1e-7)


def test_softmax_of_the_output_is_q_to_the_a_renormalised() -> None:
    logits, labels = ova_data(2.0, n=500)
    log_q = ova_log_probabilities(logits)
    calibrator = ExponentialCalibrator().fit(log_q, labels)
    powered = ova_probabilities(logits.double()) ** calibrator.exponent.double()
    expected = powered / powered.sum(1, keepdim=True)
    assert torch.allclose(calibrator(log_q).softmax(-1).double(), expected, atol=1e-5)


def test_raw_one_vs_all_logits_are_rejected_with_a_hint() -> None:
    logits, labels = ova_data(2.0, n=200)
    with pytest.raises(ValueError, match="pass ova_log_probabilities"):
        ExponentialCalibrator().fit(logits.abs() + 1, labels)


def test_rejects_bad_max_iter() -> None:
    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        ExponentialCalibrator(max_iter=0)
