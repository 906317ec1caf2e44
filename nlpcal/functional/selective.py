"""Selective prediction: abstain on the least confident examples and measure the risk of the rest.

Examples are accepted from the most confident down. Examples with equal confidence are accepted or
rejected together by a threshold, so the risk-coverage curve has one point per distinct
confidence. Where a coverage falls inside a group of tied examples (AURC, accuracy at a fixed
coverage) nlpcal uses the expected value over the orders of the tied examples: the risk of
accepting ``m`` of a tied group of ``g`` examples with ``e`` errors counts ``m·e/g`` errors.
The result is therefore deterministic and independent of the input order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nlpcal.functional._checks import check_scores

__all__ = ["accuracy_at_coverage", "aurc", "risk_coverage_curve"]


def _inputs(confidence: Any, correct: Any) -> tuple[Tensor, Tensor]:
    confidence = check_scores(confidence, "confidence")
    correct = check_scores(correct, "correct").to(device=confidence.device)
    if correct.shape != confidence.shape:
        raise ValueError(
            f"correct has {correct.shape[0]} entries but confidence has {confidence.shape[0]}"
        )
    if bool((correct < 0).any()) or bool((correct > 1).any()):
        raise ValueError("correct must hold 0/1 (or booleans, or soft values in [0, 1])")
    return confidence, correct.double()


def _groups(confidence: Tensor, correct: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Group sizes, errors per group and the group of each rank, most confident group first."""
    ordered, order = torch.sort(confidence, descending=True, stable=True)
    _, group, sizes = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    errors = torch.zeros(sizes.shape[0], dtype=torch.float64, device=confidence.device)
    errors.index_add_(0, group, 1 - correct[order])
    return sizes, errors, group


def _expected_risk(confidence: Tensor, correct: Tensor) -> Tensor:
    """Risk after accepting the ``k`` most confident examples, ``k = 1..n`` (ties in expectation)."""
    sizes, errors, group = _groups(confidence, correct)
    sizes = sizes.double()
    errors_before = torch.cumsum(errors, dim=0) - errors
    accepted_before = torch.cumsum(sizes, dim=0) - sizes
    k = torch.arange(1, group.shape[0] + 1, dtype=torch.float64, device=confidence.device)
    within = k - accepted_before[group]
    return (errors_before[group] + within * errors[group] / sizes[group]) / k


def risk_coverage_curve(confidence: Any, correct: Any) -> tuple[Tensor, Tensor]:
    """Coverage and selective risk at every distinct confidence threshold.

    Args:
        confidence: per-example confidence ``(n,)``, e.g. the maximum softmax probability.
        correct: whether each prediction is right ``(n,)`` (booleans, 0/1, or a loss in [0, 1]).

    Returns:
        ``(coverage, risk)``, float64 tensors of the number of distinct confidences, coverage
        increasing to 1: the fraction of examples with confidence at least the threshold, and the
        error rate among them.

    >>> risk_coverage_curve(torch.tensor([0.9, 0.6, 0.6, 0.3]), torch.tensor([1, 1, 0, 0]))
    (tensor([0.2500, 0.7500, 1.0000], dtype=torch.float64), tensor([0.0000, 0.3333, 0.5000], dtype=torch.float64))
    """
    confidence, correct = _inputs(confidence, correct)
    sizes, errors, _ = _groups(confidence, correct)
    accepted = torch.cumsum(sizes, dim=0).double()
    return accepted / confidence.shape[0], torch.cumsum(errors, dim=0) / accepted


def aurc(confidence: Any, correct: Any) -> Tensor:
    """Area under the risk-coverage curve: the mean selective risk over coverages ``k/n``.

    ``AURC = (1/n) Σ_{k=1..n} risk(k)`` where ``risk(k)`` is the error rate among the ``k`` most
    confident examples (Geifman et al. 2019), ties taken in expectation. Lower is better.

    References:
        Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural
        Classifiers", ICLR 2019.

    >>> round(aurc(torch.tensor([0.9, 0.6, 0.6, 0.3]), torch.tensor([1, 1, 0, 0])).item(), 4)
    0.2708
    """
    confidence, correct = _inputs(confidence, correct)
    return _expected_risk(confidence, correct).mean()


def accuracy_at_coverage(
    confidence: Any,
    correct: Any,
    coverages: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 1.0),
) -> dict[float, Tensor]:
    """Accuracy on the ``ceil(c·n)`` most confident examples for each coverage ``c``.

    Args:
        confidence: per-example confidence ``(n,)``.
        correct: whether each prediction is right ``(n,)``.
        coverages: fractions of the examples to accept, each in ``(0, 1]``.

    Returns:
        ``{coverage: accuracy}``, scalar float64 tensors; ties at the cut-off are taken in
        expectation.

    >>> acc = accuracy_at_coverage(torch.tensor([0.9, 0.6, 0.6, 0.3]), torch.tensor([1, 1, 0, 0]), [0.5])
    >>> acc[0.5].item()
    0.75
    """
    for coverage in coverages:
        if not 0 < coverage <= 1:
            raise ValueError(f"coverages must lie in (0, 1], got {coverage!r}")
    confidence, correct = _inputs(confidence, correct)
    risk = _expected_risk(confidence, correct)
    n = confidence.shape[0]
    # Rounding first keeps ceil(0.95 · 100) at 95 despite 0.95 · 100 = 95.00000000000001.
    return {c: 1 - risk[max(1, math.ceil(round(c * n, 9))) - 1] for c in coverages}
