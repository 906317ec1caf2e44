"""What a classifier's output logits mean: class probabilities, top-label confidence, OOD scores.

Most losses and calibrators output *normalised* logits: their softmax is the predictive
distribution. SLOVA's one-vs-all head and its exponential calibrator output *unnormalised* log
class confidences: ``log q`` with ``q`` summing to at most one over the classes (the rest is "none
of these"), and ``a · log q`` after calibration, whose ``q^a`` need not sum to one at all. Each
class confidence lies in ``[0, 1]``, and the confidence of a prediction is the largest of them,
not the maximum of their renormalisation. Every consumer reads the same two quantities from a row
of class confidences:

* the top-label **confidence** ``max_k q_k``: ECE, MCE, reliability diagrams, AURC and the
  ``"confidence"`` OOD score;
* the **distribution** ``q / Σ_k q_k``: Brier score and NLL.

For normalised outputs both are the usual softmax quantities.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor

from nlpcal.functional._checks import check_logits
from nlpcal.functional.ood import ood_score

__all__ = ["PredictiveOOD", "class_probabilities", "predictive_ood_score", "split_confidence"]


class PredictiveOOD(str, Enum):
    """OOD score of a model's outputs; higher means more in-distribution.

    ``CONFIDENCE``: the top-label confidence ``max_k q_k`` — the maximum softmax probability for
    normalised outputs and SLOVA's own score (low when no class fires) for one-vs-all outputs.
    ``MSP``: the maximum of the renormalised distribution. ``ENTROPY``: its negative entropy.
    ``ENERGY``: ``logsumexp`` of the output logits (for SLOVA, ``log Σ_k q_k``).
    """

    CONFIDENCE = "confidence"
    MSP = "msp"
    ENTROPY = "entropy"
    ENERGY = "energy"


def class_probabilities(logits: Any, normalized: bool = True) -> Tensor:
    """Class confidences ``(n, K)`` of output logits: ``softmax(logits)`` for normalised outputs,
    ``exp(logits)`` for unnormalised log confidences (each in ``[0, 1]``, rows summing to any
    positive value).

    >>> class_probabilities(torch.log(torch.tensor([[0.2, 0.3]])), normalized=False)
    tensor([[0.2000, 0.3000]])
    >>> class_probabilities(torch.log(torch.tensor([[0.2, 0.3]])))
    tensor([[0.4000, 0.6000]])
    """
    logits = check_logits(logits).float()
    if normalized:
        return logits.softmax(dim=-1)
    excess = float(logits.max()) if logits.numel() else 0.0
    if excess > 1e-4:
        raise ValueError(
            "unnormalised logits must be log confidences, at most 0 (confidences at most 1); "
            f"got a logit of {excess:.4g} (pass normalized=True for ordinary logits)"
        )
    return logits.exp()


def split_confidence(class_probs: Any) -> tuple[Tensor, Tensor]:
    """``(probs, confidence)`` of class confidences (see :func:`class_probabilities`).

    ``probs`` is each row renormalised to sum to one (what Brier and NLL read); ``confidence`` is
    the largest class confidence of the row, before renormalising (what ECE, MCE, reliability
    diagrams and AURC read).

    >>> probs, confidence = split_confidence(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    >>> probs[0].tolist(), confidence.tolist()
    ([0.25, 0.75], [0.75, 0.5])
    """
    class_probs = torch.as_tensor(class_probs)
    if class_probs.ndim != 2 or class_probs.shape[1] == 0:
        raise ValueError(f"class_probs must have shape (n, K), got {tuple(class_probs.shape)}")
    total = class_probs.sum(dim=-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("class_probs has a row with no confidence mass; cannot renormalise")
    return class_probs / total, class_probs.amax(dim=-1)


def predictive_ood_score(
    logits: Any,
    method: PredictiveOOD | str = PredictiveOOD.CONFIDENCE,
    normalized: bool = True,
) -> Tensor:
    """Per-example in-distribution score ``(n,)`` of output logits (see :class:`PredictiveOOD`).

    Args:
        logits: a model's (or a calibrator's) output logits ``(n, K)``.
        method: ``"confidence"`` (default), ``"msp"``, ``"entropy"`` or ``"energy"``.
        normalized: whether the softmax of ``logits`` is the predictive distribution (``False``
            for unnormalised log confidences such as SLOVA's ``log q``).

    >>> log_q = torch.log(torch.tensor([[0.05, 0.05], [0.9, 0.05]]))
    >>> predictive_ood_score(log_q, "confidence", normalized=False)
    tensor([0.0500, 0.9000])
    >>> predictive_ood_score(log_q, "msp", normalized=False)
    tensor([0.5000, 0.9474])
    """
    method = _method(method)
    if method is PredictiveOOD.CONFIDENCE:
        return class_probabilities(logits, normalized).amax(dim=-1)
    return ood_score(logits, method.value)


def _method(method: Any) -> PredictiveOOD:
    try:
        return PredictiveOOD(method)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in PredictiveOOD)
        raise ValueError(f"ood_score must be one of {allowed}, got {method!r}") from None
