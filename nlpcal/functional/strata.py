"""Equal-count strata of a per-example score and per-stratum calibration gaps (AR-AdaLS)."""

from __future__ import annotations

import torch
from torch import Tensor

from nlpcal.functional.metrics import expected_calibration_error

__all__ = [
    "adapt_smoothing",
    "assign_strata",
    "equal_count_strata",
    "stratum_calibration_gap",
    "stratum_metrics",
]


def equal_count_strata(values: Tensor, num_strata: int) -> tuple[Tensor, Tensor]:
    """Split examples into ``R`` strata of equal count by rank of ``values`` (low to high).

    The example of rank ``i`` (stable sort, ties in index order) goes to stratum
    ``⌊i R / n⌋``, so stratum sizes differ by at most one even when values tie. The edges
    (``R − 1`` values) are the midpoints between the last value of one stratum and the first of
    the next; :func:`assign_strata` places new examples with them.

    Args:
        values: finite scores, shape ``(n,)``, ``n ≥ R``.
        num_strata: the number of strata ``R ≥ 2``.

    Returns:
        ``(strata, edges)``: stratum per example ``(n,)`` (int64), and the edges ``(R − 1,)``.

    >>> equal_count_strata(torch.tensor([0.3, 0.1, 0.9, 0.5]), 2)
    (tensor([0, 0, 1, 1]), tensor([0.4000]))
    """
    if isinstance(num_strata, bool) or not isinstance(num_strata, int) or num_strata < 2:
        raise ValueError(f"num_strata must be an integer >= 2, got {num_strata!r}")
    if values.ndim != 1:
        raise ValueError(f"values must have shape (n,), got {tuple(values.shape)}")
    n = values.shape[0]
    if n < num_strata:
        raise ValueError(f"cannot split {n} examples into num_strata={num_strata} strata")
    order = torch.sort(values, stable=True).indices
    rank_stratum = torch.arange(n, device=values.device) * num_strata // n
    strata = torch.empty_like(rank_stratum).scatter_(0, order, rank_stratum)
    first = torch.searchsorted(rank_stratum, torch.arange(1, num_strata, device=values.device))
    ordered = values[order]
    edges = (ordered[first - 1] + ordered[first]) / 2
    return strata, edges


def assign_strata(values: Tensor, edges: Tensor) -> Tensor:
    """Stratum of each value given the ``R − 1`` ascending edges: ``#{edges < v}``, shape ``(n,)``.

    >>> assign_strata(torch.tensor([0.0, 0.4, 0.41, 2.0]), torch.tensor([0.4, 1.0]))
    tensor([0, 0, 1, 2])
    """
    return torch.bucketize(values.contiguous(), edges.to(values.dtype).contiguous(), right=False)


def stratum_calibration_gap(
    confidence: Tensor, correct: Tensor, strata: Tensor, num_strata: int
) -> tuple[Tensor, Tensor]:
    """Mean confidence minus accuracy in each stratum, and the stratum sizes.

    Args:
        confidence: top-label confidence per example, shape ``(n,)``.
        correct: whether the prediction is right, shape ``(n,)`` (bool or 0/1).
        strata: stratum per example in ``[0, R)``, shape ``(n,)``.
        num_strata: ``R``.

    Returns:
        ``(gap, counts)``, each ``(R,)``; the gap of an empty stratum is 0.

    >>> stratum_calibration_gap(torch.tensor([0.9, 0.7, 0.6]), torch.tensor([0, 1, 1]),
    ...                         torch.tensor([0, 0, 1]), 3)
    (tensor([ 0.3000, -0.4000,  0.0000]), tensor([2., 1., 0.]))
    """
    strata = strata.long()
    gap = (confidence.float() - correct.float()).to(confidence.device)
    totals = torch.zeros(num_strata, device=gap.device).index_add_(0, strata, gap)
    counts = torch.zeros(num_strata, device=gap.device).index_add_(0, strata, torch.ones_like(gap))
    return totals / counts.clamp_min(1), counts


def adapt_smoothing(
    epsilon: Tensor, gap: Tensor, counts: Tensor, step: float, max_value: float
) -> Tensor:
    """``ε_b ← clip(ε_b + step · gap_b, 0, max_value)`` for strata with examples; others unchanged.

    An over-confident stratum (``gap > 0``) gets more smoothing, an under-confident one less.

    >>> adapt_smoothing(torch.tensor([0.1, 0.1, 0.1]), torch.tensor([0.2, -0.1, 0.5]),
    ...                 torch.tensor([5.0, 5.0, 0.0]), step=0.5, max_value=0.5)
    tensor([0.2000, 0.0500, 0.1000])
    """
    updated = (epsilon + step * gap.to(epsilon)).clamp(0.0, max_value)
    return torch.where(counts.to(epsilon.device) > 0, updated, epsilon)


def stratum_metrics(
    probs: Tensor, labels: Tensor, strata: Tensor, num_strata: int, n_bins: int = 15
) -> dict[str, Tensor]:
    """Count, accuracy, mean confidence and ECE of the examples of each stratum, each ``(R,)``.

    An empty stratum has count 0 and NaN metrics.

    Args:
        probs: predictive distributions ``(n, K)``.
        labels: integer labels ``(n,)``.
        strata: stratum per example in ``[0, R)``.
        num_strata: ``R``.
        n_bins: equal-width bins of each stratum's ECE.

    >>> m = stratum_metrics(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]),
    ...                     torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 3)
    >>> m["count"].tolist(), m["accuracy"][:2].tolist()
    ([2.0, 1.0, 0.0], [0.5, 1.0])
    """
    strata = strata.long()
    confidence, predicted = probs.float().max(dim=-1)
    correct = (predicted == labels).float()
    counts = torch.bincount(strata, minlength=num_strata).float()
    sums = torch.zeros(2, num_strata, device=probs.device)
    sums.index_add_(1, strata, torch.stack([correct, confidence]))
    nan = torch.full((num_strata,), float("nan"), device=probs.device)
    ece = nan.clone()
    for b in counts.nonzero().squeeze(1).tolist():  # one ECE per stratum (R is small)
        members = strata == b
        ece[b] = expected_calibration_error(probs[members], labels[members], n_bins=n_bins)
    mean = torch.where(counts > 0, sums / counts.clamp_min(1), nan)
    return {"count": counts, "accuracy": mean[0], "confidence": mean[1], "ece": ece}
