"""Pairwise penalties on per-example scores, and the explanation scores CME ranks.

CME (calibration with model explanations) scores each example by how concentrated its token
attribution is, times its confidence, and penalises every pair in which a wrongly predicted
example scores higher than a correctly predicted one. Everything here is pure tensor maths on a
batch: attributions ``(B, L)`` over tokens, an attention mask ``(B, L)`` (1 = token, 0 = padding),
confidences ``(B,)``, correctness ``(B,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["attribution_distribution", "correct_wrong_penalty", "explanation_scores"]


def attribution_distribution(attributions: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """``softmax(|a|)`` over each example's tokens, with padding masked out (exactly 0).

    Computed in float32 (or float64 for float64 input). Raises if a row has no token at all,
    because its distribution would be undefined.

    Args:
        attributions: token attributions, shape ``(B, L)``; the sign is ignored.
        attention_mask: ``(B, L)``, non-zero on real tokens; ``None`` means no padding.

    Returns:
        ``(B, L)`` rows that sum to 1 over the real tokens.

    >>> attribution_distribution(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[1, 1, 0]]))
    tensor([[0.5000, 0.5000, 0.0000]])
    """
    if attributions.ndim != 2:
        raise ValueError(
            f"attributions must have shape (batch, seq_len), got {tuple(attributions.shape)}"
        )
    a = attributions.abs()
    if a.dtype != torch.float64:
        a = a.float()
    if attention_mask is None:
        return a.softmax(dim=-1)
    if attention_mask.shape != attributions.shape:
        raise ValueError(
            f"attention_mask must have the shape of attributions {tuple(attributions.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    keep = attention_mask.to(device=a.device) != 0
    empty = ~keep.any(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"attention_mask has rows with no token at all (rows {rows}): every example needs "
            "at least one unmasked token to attribute to"
        )
    return a.masked_fill(~keep, float("-inf")).softmax(dim=-1)


def explanation_scores(
    attributions: Tensor, confidence: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """CME's score ``s_i = ‖softmax_tokens(|a_i|)‖₂ · c_i`` of each example.

    The norm is large when a few tokens carry the attribution (a confident explanation) and
    ``1/√n`` when ``n`` tokens share it equally. Gradients flow into ``confidence`` and, unless
    the caller detaches them, into ``attributions``.

    Args:
        attributions: token attributions ``(B, L)``.
        confidence: the top-label confidence of each example ``(B,)``.
        attention_mask: ``(B, L)``, non-zero on real tokens; ``None`` means no padding.

    >>> explanation_scores(torch.zeros(1, 4), torch.tensor([0.8]))
    tensor([0.4000])
    """
    if confidence.shape != attributions.shape[:1]:
        raise ValueError(
            f"confidence must have shape ({attributions.shape[0]},) to match attributions "
            f"{tuple(attributions.shape)}, got {tuple(confidence.shape)}"
        )
    distribution = attribution_distribution(attributions, attention_mask)
    return torch.linalg.vector_norm(distribution, dim=-1) * confidence.to(distribution.dtype)


def correct_wrong_penalty(scores: Tensor, correct: Tensor) -> Tensor:
    """``Σ_{i correct} Σ_{j wrong} max(0, s_j − s_i)²``: wrong predictions must score lower.

    Vectorised over all ``B × B`` pairs; 0 (with a gradient of 0) when the batch has no correct or
    no wrong prediction.

    Args:
        scores: per-example scores ``(B,)``.
        correct: ``(B,)`` booleans, whether each prediction is right.

    >>> correct_wrong_penalty(torch.tensor([0.2, 0.5, 0.1]), torch.tensor([True, False, False]))
    tensor(0.0900)
    """
    if scores.ndim != 1 or correct.shape != scores.shape:
        raise ValueError(
            "scores and correct must both have shape (batch,), got "
            f"{tuple(scores.shape)} and {tuple(correct.shape)}"
        )
    correct = correct.to(device=scores.device, dtype=torch.bool)
    gap = (scores[None, :] - scores[:, None]).clamp(min=0) ** 2  # gap[i, j] = s_j − s_i, clipped
    pairs = correct[:, None] & ~correct[None, :]
    return (gap * pairs).sum()
