"""Calibration metrics on predicted probabilities.

Every function takes ``probs`` of shape ``(n, K)`` (rows are probability vectors) and integer
``labels`` of shape ``(n,)``, as torch tensors or numpy arrays on any device; the result is a
scalar tensor on the device of ``probs``. Half precision is computed in float32, float64 stays
float64. Per-bin sums are accumulated in float64 (they are added sequentially) and the
other totals use torch's cascade summation, so ten million examples lose no precision.

Binning conventions:

* **Uniform** (equal width, the default): ``M`` bins over ``[0, 1]``; bin ``j`` holds the
  confidences in ``[j/M, (j+1)/M)``, the last bin also holds ``1.0``, so nothing is ever dropped.
  The edge ``j/M`` is the value of ``j/M`` correctly rounded to the dtype of ``probs``, and a
  confidence equal to an edge goes to the bin above it (``torch.bucketize(..., right=True)``), so
  a confidence written as ``0.2`` lands in bin 3 of 15 and ``0.7`` in bin 7 of 10. This is the
  binning of ``torchmetrics.classification.MulticlassCalibrationError`` with two known
  differences: torchmetrics puts confidences of exactly ``1.0`` into an extra bin of their own,
  and its edges come from ``torch.linspace``, which rounds a few edges one ulp away from ``j/M``
  (for ``M = 15``: ``0.2``, ``0.4``, ``7/15``, ...), so a confidence within an ulp of such an edge
  can land one bin lower there. On every other input the two agree.
* **Quantile** (equal mass, "adaptive"): the edges are the sorted confidences at positions
  ``floor(j n / M)`` for ``j = 1..M-1``, with duplicates and edges equal to the minimum removed,
  and a confidence goes to the bin of the largest edge not above it. Equal confidences therefore
  always share a bin, no bin is empty, and without ties the bin sizes differ by at most one. With
  heavy ties fewer than ``M`` bins remain.

The Desai & Durrett (2020) protocol reports ECE with ``n_bins=10`` multiplied by 100; the default
here is ``n_bins=15`` (Guo et al. 2017, torchmetrics).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor

from nlpcal.functional._checks import check_labels, check_probs
from nlpcal.functional.selective import aurc

__all__ = [
    "Binning",
    "Norm",
    "ReliabilityCurve",
    "accuracy",
    "brier_score",
    "calibration_metrics",
    "classwise_calibration_error",
    "debiased_calibration_error",
    "evaluation_metrics",
    "expected_calibration_error",
    "max_calibration_error",
    "negative_log_likelihood",
    "reliability_curve",
]

_E = TypeVar("_E", bound=Enum)


class Norm(str, Enum):
    """How the per-bin gaps ``|acc - conf|`` are combined.

    ``L1``: the expected calibration error, ``Σ_b (n_b/n)·gap_b``. ``L2``: its root-mean-square
    version, ``sqrt(Σ_b (n_b/n)·gap_b²)``. ``MAX``: the maximum calibration error over non-empty
    bins.
    """

    L1 = "l1"
    L2 = "l2"
    MAX = "max"


class Binning(str, Enum):
    """``UNIFORM``: equal-width bins over ``[0, 1]``; ``QUANTILE``: equal-mass bins."""

    UNIFORM = "uniform"
    QUANTILE = "quantile"


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics of a reliability diagram.

    Attributes:
        confidence: mean confidence per bin ``(B,)``, NaN for an empty bin.
        accuracy: accuracy per bin ``(B,)``, NaN for an empty bin.
        count: number of examples per bin ``(B,)``.
        edges: bin edges ``(B + 1,)``, from 0 to 1.
    """

    confidence: Tensor
    accuracy: Tensor
    count: Tensor
    edges: Tensor


def _option(enum: type[_E], value: Any, name: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins


def _inputs(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    probs = check_probs(probs)
    labels = check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    return probs, labels


def _uniform_edges(n_bins: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``j / n_bins`` for ``j = 0..n_bins``, each correctly rounded to ``dtype``."""
    return (torch.arange(n_bins + 1, dtype=torch.float64, device=device) / n_bins).to(dtype)


def _uniform_bin_index(x: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin (int32) of each value of ``x`` in ``[0, 1]``; ``1.0`` goes to the last bin."""
    edges = _uniform_edges(n_bins, x.dtype, x.device)[1:-1]
    return torch.bucketize(x, edges, right=True, out_int32=True)


def _quantile_edges(x: Tensor, n_bins: int) -> Tensor:
    """Interior edges of the equal-mass bins of ``x`` (see the module docstring)."""
    ordered = torch.sort(x).values
    n = ordered.shape[0]
    positions = torch.arange(1, n_bins, device=x.device) * n // n_bins
    candidates = ordered[positions]
    return torch.unique(candidates[candidates > ordered[0]])


def _weighted_bincount(idx: Tensor, weights: Tensor, size: int) -> Tensor:
    """Float64 sums of ``weights`` per index.

    ``index_add_`` is deterministic on CUDA under ``torch.use_deterministic_algorithms(True)``,
    where a weighted ``torch.bincount`` raises.
    """
    total = torch.zeros(size, dtype=torch.float64, device=weights.device)
    return total.index_add_(0, idx, weights.double())


def _bin_sums(idx: Tensor, correct: Tensor, confidence: Tensor, n_bins: int) -> Tensor:
    """Per-bin ``(count, correct, Σ confidence)`` in float64, shape ``(3, n_bins)``."""
    counts = torch.bincount(torch.add(correct, idx, alpha=2), minlength=2 * n_bins).view(n_bins, 2)
    confidence_sum = _weighted_bincount(idx, confidence, n_bins)
    return torch.stack([counts.sum(dim=1).double(), counts[:, 1].double(), confidence_sum])


def _calibration_errors(sums: Tensor) -> dict[Norm, Tensor]:
    """ECE, RMS calibration error and MCE from per-bin ``(count, correct, Σ confidence)``."""
    count, correct, confidence = sums
    filled = count > 0
    safe = count.clamp(min=1)
    gap = torch.where(filled, (correct - confidence).abs() / safe, torch.zeros_like(count))
    weight = count / count.sum()
    return {
        Norm.L1: (weight * gap).sum(),
        Norm.L2: (weight * gap.square()).sum().sqrt(),
        Norm.MAX: gap.max(),
    }


def _top_label(
    probs: Tensor, labels: Tensor, confidence: Any | None = None
) -> tuple[Tensor, Tensor]:
    """Top-label confidence and correctness; ``confidence`` overrides ``max(probs)`` when given."""
    top, prediction = probs.max(dim=1)
    if confidence is not None:
        top = _check_confidence(confidence, probs)
    return top, prediction == labels


def _check_confidence(confidence: Any, probs: Tensor) -> Tensor:
    confidence = torch.as_tensor(confidence, device=probs.device)
    if confidence.shape != probs.shape[:1]:
        raise ValueError(
            f"confidence must have shape ({probs.shape[0]},), one value per row of probs, "
            f"got {tuple(confidence.shape)}"
        )
    if not confidence.is_floating_point():
        raise ValueError(f"confidence must be floating point, got {confidence.dtype}")
    confidence = confidence.to(probs.dtype)
    bad = (confidence < 0) | (confidence > 1) | confidence.isnan()
    if bool(bad.any()):
        raise ValueError(
            f"confidence must lie in [0, 1]; {int(bad.sum())} values do not, e.g. "
            f"{confidence[bad][:3].tolist()}"
        )
    return confidence


def reliability_curve(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    binning: Binning | str = Binning.UNIFORM,
    confidence: Any | None = None,
) -> ReliabilityCurve:
    """Mean confidence, accuracy and count of the top-label prediction in each bin.

    Args:
        probs: predicted probabilities ``(n, K)``.
        labels: integer labels ``(n,)``.
        n_bins: number of bins (at most this many with quantile binning).
        binning: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass).
        confidence: the top-label confidence ``(n,)`` when it is not ``max(probs)`` (SLOVA's
            ``q_ŷ``, see :mod:`nlpcal.functional.predictive`); the prediction is still
            ``argmax(probs)``.

    Returns:
        A :class:`ReliabilityCurve`; empty bins have NaN confidence and accuracy.

    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> curve = reliability_curve(probs, torch.tensor([0, 1, 1]), n_bins=2)
    >>> curve.count.tolist(), curve.accuracy.tolist()
    ([0, 3], [nan, 0.6666666666666666])
    """
    n_bins = _check_n_bins(n_bins)
    binning = _option(Binning, binning, "binning")
    probs, labels = _inputs(probs, labels)
    confidence, correct = _top_label(probs, labels, confidence)
    if binning is Binning.UNIFORM:
        idx = _uniform_bin_index(confidence, n_bins)
        edges = _uniform_edges(n_bins, probs.dtype, probs.device).double()
    else:
        inner = _quantile_edges(confidence, n_bins)
        idx = torch.bucketize(confidence, inner, right=True, out_int32=True)
        n_bins = inner.shape[0] + 1
        edges = torch.cat([inner.new_zeros(1), inner, inner.new_ones(1)]).double()
    count, hits, confidence_sum = _bin_sums(idx, correct, confidence, n_bins)
    return ReliabilityCurve(confidence_sum / count, hits / count, count.long(), edges)


def expected_calibration_error(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    norm: Norm | str = Norm.L1,
    binning: Binning | str = Binning.UNIFORM,
    confidence: Any | None = None,
) -> Tensor:
    """Top-label calibration error of ``probs`` against ``labels``.

    Args:
        probs: predicted probabilities ``(n, K)``.
        labels: integer labels ``(n,)``.
        n_bins: number of bins; 15 by default, 10 for the Desai & Durrett (2020) protocol.
        norm: ``"l1"`` (ECE), ``"l2"`` (root-mean-square) or ``"max"`` (MCE), see :class:`Norm`.
        binning: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass), see :class:`Binning`.
        confidence: the top-label confidence ``(n,)`` when it is not ``max(probs)`` (see
            :func:`reliability_curve`).

    Returns:
        A scalar tensor in the dtype of ``probs`` (float32 for half input).

    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> round(expected_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=2).item(), 4)
    0.1333
    """
    n_bins = _check_n_bins(n_bins)
    norm = _option(Norm, norm, "norm")
    binning = _option(Binning, binning, "binning")
    probs, labels = _inputs(probs, labels)
    confidence, correct = _top_label(probs, labels, confidence)
    if binning is Binning.UNIFORM:
        idx = _uniform_bin_index(confidence, n_bins)
    else:
        edges = _quantile_edges(confidence, n_bins)
        idx = torch.bucketize(confidence, edges, right=True, out_int32=True)
        n_bins = edges.shape[0] + 1
    sums = _bin_sums(idx, correct, confidence, n_bins)
    return _calibration_errors(sums)[norm].to(probs.dtype)


def max_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> Tensor:
    """Maximum calibration error: the largest ``|acc - conf|`` over non-empty equal-width bins.

    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> round(max_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=2).item(), 4)
    0.1333
    """
    return expected_calibration_error(probs, labels, n_bins=n_bins, norm=Norm.MAX)


def classwise_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> Tensor:
    """Mean over classes ``k`` of the equal-width ECE of ``p_k`` against ``1[y = k]``.

    Every class counts, including classes that never occur in ``labels``.

    >>> probs = torch.tensor([[0.75, 0.25], [0.25, 0.75]])
    >>> classwise_calibration_error(probs, torch.tensor([0, 1]), n_bins=4).item()
    0.25
    """
    n_bins = _check_n_bins(n_bins)
    probs, labels = _inputs(probs, labels)
    sums = _classwise_bin_sums(probs, labels, n_bins)
    return _classwise_error(sums).to(probs.dtype)


def _classwise_bin_sums(probs: Tensor, labels: Tensor, n_bins: int) -> Tensor:
    """Per-class, per-bin ``(count, positives, Σ p_k)`` in float64, shape ``(3, K, n_bins)``."""
    n_classes = probs.shape[1]
    idx = _uniform_bin_index(probs, n_bins)
    key = idx + torch.arange(n_classes, device=probs.device) * n_bins
    size = n_classes * n_bins
    count = torch.bincount(key.view(-1), minlength=size)
    positive_key = key.gather(1, labels.unsqueeze(1)).squeeze(1)
    positives = torch.bincount(positive_key, minlength=size)
    prob_sum = _weighted_bincount(key.view(-1), probs.reshape(-1), size)
    return torch.stack([count.double(), positives.double(), prob_sum]).view(3, n_classes, n_bins)


def _classwise_error(sums: Tensor) -> Tensor:
    count, positives, prob_sum = sums
    n = count.sum(dim=1, keepdim=True)
    per_class = ((positives - prob_sum).abs() / n).sum(dim=1)
    return per_class.mean()


def debiased_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> Tensor:
    """Debiased top-label L2 calibration error (Kumar, Liang & Ma 2019).

    The plug-in squared error ``Σ_b (n_b/n)·(conf_b - acc_b)²`` with the per-bin sampling bias
    ``acc_b (1 - acc_b) / (n_b - 1)`` subtracted, on equal-mass bins, as
    ``get_calibration_error(..., p=2, debias=True, mode="top-label")`` of the
    ``uncertainty-calibration`` package does for continuous scores: the sorted confidences are
    split into chunks of ``ceil(n / n_bins)``, the edges are the midpoints between neighbouring
    chunks (duplicates removed), a confidence equal to an edge goes to the lower bin. The result is
    ``sqrt(max(value, 0))``.

    A bin of one example has no sampling-variance estimate, so, as in that package, it adds
    nothing to the sum while its example still counts in ``n``: such bins occur when ties or a
    short last chunk leave one example alone. When no bin holds two examples (``n ≤ n_bins``
    without ties) the estimate is undefined and a ``ValueError`` is raised.

    References:
        Kumar, Liang & Ma, "Verified Uncertainty Calibration", NeurIPS 2019.

    >>> probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    >>> labels = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0])
    >>> round(debiased_calibration_error(probs, labels, n_bins=2).item(), 4)
    0.344
    """
    n_bins = _check_n_bins(n_bins)
    probs, labels = _inputs(probs, labels)
    confidence, correct = _top_label(probs, labels)
    ordered = torch.sort(confidence).values
    n = ordered.shape[0]
    starts = torch.arange(math.ceil(n / n_bins), n, math.ceil(n / n_bins), device=probs.device)
    midpoints = (ordered[starts - 1] + ordered[starts]) / 2
    edges = torch.unique(torch.cat([midpoints, midpoints.new_ones(1)]))
    idx = torch.bucketize(confidence, edges, right=False, out_int32=True)
    count, hits, confidence_sum = _bin_sums(idx, correct, confidence, edges.shape[0])
    enough = count >= 2
    if not bool(enough.any()):
        raise ValueError(
            f"the debiased calibration error is undefined for n={n} examples in n_bins={n_bins} "
            "equal-mass bins: no bin holds the two examples a variance estimate needs; pass "
            "more examples than n_bins or lower n_bins"
        )
    safe = count.clamp(min=2)
    acc = hits / safe
    squared = (confidence_sum / safe - acc).square() - acc * (1 - acc) / (safe - 1)
    value = (torch.where(enough, squared, torch.zeros_like(squared)) * count).sum() / n
    return value.clamp(min=0).sqrt().to(probs.dtype)


def _true_class_probs(probs: Tensor, labels: Tensor) -> Tensor:
    return probs.gather(1, labels.unsqueeze(1)).squeeze(1)


def _sum_of_squares(x: Tensor, chunk: int = 128) -> Tensor:
    """``Σ x²`` over all entries, fast: norms of contiguous chunks, then a cascade sum."""
    flat = x.reshape(-1)
    head = flat.numel() // chunk * chunk
    chunks = torch.linalg.vector_norm(flat[:head].view(-1, chunk), dim=1).square_().sum()
    return chunks.double() + flat[head:].square().sum().double()


def _brier_sum(probs: Tensor, p_true: Tensor) -> Tensor:
    """``Σ_i Σ_k (p_ik - 1[y_i = k])²`` as ``Σ p² - 2 Σ p_y + n``, combined in float64."""
    brier = _sum_of_squares(probs) - 2 * p_true.sum().double() + p_true.shape[0]
    return brier.clamp(min=0)


def _nll_sum(p_true: Tensor, eps: float) -> Tensor:
    """``Σ_i -log max(p_iy, eps)``."""
    return -p_true.clamp(min=eps).log_().sum().double()


def _check_eps(eps: float) -> float:
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps!r}")
    return eps


def brier_score(probs: Any, labels: Any) -> Tensor:
    """Mean over examples of ``Σ_k (p_k - 1[y = k])²``, in ``[0, 2]``.

    Computed as ``Σ_k p_k² - 2 p_y + 1`` without materialising one-hot labels.

    >>> round(brier_score(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([0, 0])).item(), 6)
    0.25
    """
    probs, labels = _inputs(probs, labels)
    brier = _brier_sum(probs, _true_class_probs(probs, labels))
    return (brier / probs.shape[0]).to(probs.dtype)


def negative_log_likelihood(probs: Any, labels: Any, eps: float = 1e-12) -> Tensor:
    """Mean ``-log p_y`` with ``p_y`` clamped to at least ``eps``, so it is never infinite.

    >>> round(negative_log_likelihood(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), [0, 1]).item(), 4)
    14.1621
    """
    eps = _check_eps(eps)
    probs, labels = _inputs(probs, labels)
    nll = _nll_sum(_true_class_probs(probs, labels), eps)
    return (nll / probs.shape[0]).to(probs.dtype)


def accuracy(probs: Any, labels: Any) -> Tensor:
    """Fraction of examples whose most probable class (the first one on ties) is the label.

    >>> accuracy(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1])).item()
    0.5
    """
    probs, labels = _inputs(probs, labels)
    _, correct = _top_label(probs, labels)
    return correct.sum(dtype=torch.float64).div(probs.shape[0]).to(probs.dtype)


def calibration_metrics(
    probs: Any, labels: Any, n_bins: int = 15, eps: float = 1e-12
) -> dict[str, Tensor]:
    """Accuracy, ECE, MCE, RMS calibration error, Brier score and NLL in one pass.

    The confidence/argmax and the equal-width binning are computed once and shared; the values
    equal those of :func:`accuracy`, :func:`expected_calibration_error` (``norm="l1"``,
    ``"max"``, ``"l2"``), :func:`brier_score` and :func:`negative_log_likelihood`.

    Args:
        probs: predicted probabilities ``(n, K)``.
        labels: integer labels ``(n,)``.
        n_bins: number of equal-width bins.
        eps: lower clamp of ``p_y`` in the NLL.

    Returns:
        Scalar tensors under the keys ``"accuracy"``, ``"ece"``, ``"mce"``, ``"rmsce"``,
        ``"brier"`` and ``"nll"``.

    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> metrics = calibration_metrics(probs, torch.tensor([0, 1, 1]), n_bins=2)
    >>> sorted(metrics)
    ['accuracy', 'brier', 'ece', 'mce', 'nll', 'rmsce']
    >>> round(metrics["ece"].item(), 4)
    0.1333
    """
    n_bins = _check_n_bins(n_bins)
    eps = _check_eps(eps)
    probs, labels = _inputs(probs, labels)
    return _calibration_metrics(probs, labels, *_top_label(probs, labels), n_bins, eps)


def evaluation_metrics(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    eps: float = 1e-12,
    confidence: Any | None = None,
) -> dict[str, Tensor]:
    """:func:`calibration_metrics` plus ``aurc``, the area under the risk-coverage curve when the
    least confident predictions are rejected first.

    These are the per-set metrics that ``CalibratedTrainer.evaluate``, the benchmark runner and
    :func:`~nlpcal.metrics.make_compute_metrics` report. ``confidence`` ``(n,)`` replaces
    ``max(probs)`` as the top-label confidence where the two differ (SLOVA's ``q_ŷ``, see
    :mod:`nlpcal.functional.predictive`): ECE, MCE, RMSCE and AURC read it, Brier and NLL read
    ``probs``.

    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> metrics = evaluation_metrics(probs, torch.tensor([0, 1, 1]))
    >>> sorted(metrics)
    ['accuracy', 'aurc', 'brier', 'ece', 'mce', 'nll', 'rmsce']
    """
    n_bins = _check_n_bins(n_bins)
    eps = _check_eps(eps)
    probs, labels = _inputs(probs, labels)
    confidence, correct = _top_label(probs, labels, confidence)
    metrics = _calibration_metrics(probs, labels, confidence, correct, n_bins, eps)
    metrics["aurc"] = aurc(confidence, correct)
    return metrics


def _calibration_metrics(
    probs: Tensor, labels: Tensor, confidence: Tensor, correct: Tensor, n_bins: int, eps: float
) -> dict[str, Tensor]:
    sums = _bin_sums(_uniform_bin_index(confidence, n_bins), correct, confidence, n_bins)
    p_true = _true_class_probs(probs, labels)
    return _metrics_from_sums(sums, _brier_sum(probs, p_true), _nll_sum(p_true, eps), probs.dtype)


def _metrics_from_sums(
    sums: Tensor, brier: Tensor, nll: Tensor, dtype: torch.dtype
) -> dict[str, Tensor]:
    """The :func:`calibration_metrics` dict from per-bin sums and the Brier and NLL totals."""
    errors = _calibration_errors(sums)
    n = sums[0].sum()
    values = {
        "accuracy": sums[1].sum() / n,
        "ece": errors[Norm.L1],
        "mce": errors[Norm.MAX],
        "rmsce": errors[Norm.L2],
        "brier": brier / n,
        "nll": nll / n,
    }
    return {key: value.to(dtype) for key, value in values.items()}
