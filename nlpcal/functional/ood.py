"""Out-of-distribution detection: confidence scores from logits and threshold-free metrics.

Every score is oriented so that **higher means more in-distribution**, and every metric treats
the in-distribution examples as the positive class. Ties are handled exactly: AUROC is the
Mann-Whitney statistic with tied pairs counted as one half, the precision-recall and ROC curves
only have points between distinct score values, so the order of tied examples never matters.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from nlpcal.functional._checks import check_logits, check_scores
from nlpcal.functional.ova import ova_log_probabilities

__all__ = ["OODScore", "ood_detection_metrics", "ood_score"]


class OODScore(str, Enum):
    """Score computed from logits ``z``; higher means more in-distribution.

    ``MSP``: the maximum softmax probability (Hendrycks & Gimpel 2017). ``ENTROPY``: the negative
    entropy of ``softmax(z)``. ``ENERGY``: ``logsumexp(z)``, the negative free energy (Liu et al.
    2020). ``SLOVA``: ``max_k q_k`` of the one-vs-all probabilities of a SLOVA head (its OOD score
    ``1 - max_k q_k``, negated); the logits must then be one-vs-all logits.
    """

    MSP = "msp"
    ENTROPY = "entropy"
    ENERGY = "energy"
    SLOVA = "slova"


def _negative_entropy(logits: Tensor) -> Tensor:
    log_probs = torch.log_softmax(logits, dim=1)
    return (log_probs.exp() * log_probs).sum(dim=1)


_SCORES: dict[OODScore, Callable[[Tensor], Tensor]] = {
    OODScore.MSP: lambda z: torch.softmax(z, dim=1).amax(dim=1),
    OODScore.ENTROPY: _negative_entropy,
    OODScore.ENERGY: lambda z: torch.logsumexp(z, dim=1),
    OODScore.SLOVA: lambda z: ova_log_probabilities(z).amax(dim=1).exp(),
}


def ood_score(logits: Any, method: OODScore | str = OODScore.MSP) -> Tensor:
    """Per-example in-distribution score ``(n,)`` from logits ``(n, K)``; higher = more in-distribution.

    Args:
        logits: unnormalised scores ``(n, K)`` (one-vs-all logits for ``"slova"``).
        method: ``"msp"``, ``"entropy"``, ``"energy"`` or ``"slova"``, see :class:`OODScore`.

    >>> ood_score(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), "msp")
    tensor([0.8808, 0.5000])
    """
    try:
        method = OODScore(method)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in OODScore)
        raise ValueError(f"method must be one of {allowed}, got {method!r}") from None
    return _SCORES[method](check_logits(logits))


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of ``x`` in ascending order, tied values sharing their mean rank (float64)."""
    ordered, order = torch.sort(x)
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, dim=0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def _ranking_curve(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Cumulative true and false positives at each distinct threshold, highest threshold first."""
    ordered, order = torch.sort(scores, descending=True)
    hits = positive[order].double()
    _, counts = torch.unique_consecutive(ordered, return_counts=True)
    last = torch.cumsum(counts, dim=0) - 1
    tp = torch.cumsum(hits, dim=0)[last]
    fp = (last + 1).double() - tp
    return tp, fp


def _average_precision(scores: Tensor, positive: Tensor) -> Tensor:
    """``Σ_t (R_t - R_{t-1}) P_t`` over the distinct thresholds ``t`` (scikit-learn's definition)."""
    tp, fp = _ranking_curve(scores, positive)
    precision = tp / (tp + fp)
    recall_step = torch.diff(tp, prepend=tp.new_zeros(1)) / tp[-1]
    return (recall_step * precision).sum()


def ood_detection_metrics(score_in: Any, score_out: Any) -> dict[str, Tensor]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95 % TPR, with in-distribution as positive.

    Args:
        score_in: scores of the in-distribution examples ``(n_in,)`` (higher = more in-distribution).
        score_out: scores of the out-of-distribution examples ``(n_out,)``.

    Returns:
        Scalar float64 tensors: ``"auroc"`` (the probability that an in-distribution example
        scores higher than an OOD one, ties counting one half), ``"aupr_in"`` (average precision
        with in-distribution positive), ``"aupr_out"`` (average precision of the negated score with
        OOD positive) and ``"fpr95"`` (the fraction of OOD examples accepted by the highest
        threshold that accepts at least 95 % of the in-distribution examples).

    >>> metrics = ood_detection_metrics(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.75, 0.1]))
    >>> round(metrics["auroc"].item(), 4), metrics["fpr95"].item()
    (0.8333, 0.5)
    """
    score_in = check_scores(score_in, "score_in")
    score_out = check_scores(score_out, "score_out").to(score_in.device)
    dtype = torch.promote_types(score_in.dtype, score_out.dtype)
    scores = torch.cat([score_in.to(dtype), score_out.to(dtype)])
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[: score_in.shape[0]] = True
    n_in, n_out = score_in.shape[0], score_out.shape[0]

    rank_sum = _average_ranks(scores)[:n_in].sum()
    auroc = (rank_sum - n_in * (n_in + 1) / 2) / (n_in * n_out)

    tp, fp = _ranking_curve(scores, positive)
    reached = tp * 100 >= 95 * n_in
    fpr_at_tpr = fp[reached][0] / n_out

    return {
        "auroc": auroc,
        "aupr_in": _average_precision(scores, positive),
        "aupr_out": _average_precision(-scores, ~positive),
        "fpr95": fpr_at_tpr,
    }
