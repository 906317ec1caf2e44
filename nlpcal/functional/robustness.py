"""Tensor maths of embedding-space robustness: margins, budgets, projections, radius search.

A perturbation ``δ`` of a batch of embedded sequences has shape ``(B, L, H)``; ``mask`` of shape
``(B, L)`` marks the real tokens (1) and the padding (0). Padding is never perturbed and never
counts in a norm. Budgets are *relative*: a radius ``ρ`` allows ``‖δ‖ ≤ ρ · s(e)``, where the scale
``s(e)`` of the clean embeddings (:func:`embedding_scale`) is their Frobenius norm over the real
tokens for L2 and their root-mean-square entry for L∞, so one radius means the same relative
change for short and long sequences.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

__all__ = [
    "AttackNorm",
    "accuracy_ladder",
    "ascent_step",
    "bisect_radius",
    "embedding_scale",
    "first_order_radius",
    "masked_norm",
    "prediction_margin",
    "project",
]

_TINY = 1e-12


class AttackNorm(str, Enum):
    """The norm of an embedding perturbation budget."""

    L2 = "l2"
    LINF = "linf"


def _norm(norm: AttackNorm | str) -> AttackNorm:
    try:
        return AttackNorm(norm)
    except ValueError:
        raise ValueError(
            f"norm must be one of {[n.value for n in AttackNorm]}, got {norm!r}"
        ) from None


def _check_mask(x: Tensor, mask: Tensor, name: str) -> Tensor:
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise ValueError(
            f"{name} must have shape (B, L, H) and mask shape (B, L), got {tuple(x.shape)} and "
            f"{tuple(mask.shape)}"
        )
    return mask.to(dtype=x.dtype).unsqueeze(-1)


def prediction_margin(logits: Tensor, target: Tensor) -> Tensor:
    """``z_t − max_{k≠t} z_k`` for each row: positive while class ``t`` is predicted, shape ``(B,)``.

    Args:
        logits: scores, shape ``(B, K)`` with ``K ≥ 2``.
        target: the class whose lead is measured (usually the clean prediction), shape ``(B,)``.

    >>> prediction_margin(torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 0]))
    tensor([ 1., -3.])
    """
    if logits.ndim != 2 or logits.shape[1] < 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            "logits must have shape (B, K) with K >= 2 and target shape (B,), got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    target = target.long().unsqueeze(1)
    own = logits.gather(1, target).squeeze(1)
    others = logits.scatter(1, target, float("-inf"))
    return own - others.max(dim=1).values


def masked_norm(x: Tensor, mask: Tensor, norm: AttackNorm | str) -> Tensor:
    """Per-example norm of ``x`` (``(B, L, H)``) over the real tokens: Frobenius or max-abs.

    >>> x = torch.tensor([[[3.0, 4.0], [100.0, 0.0]]])
    >>> masked_norm(x, torch.tensor([[1, 0]]), "l2"), masked_norm(x, torch.tensor([[1, 0]]), "linf")
    (tensor([5.]), tensor([4.]))
    """
    m = _check_mask(x, mask, "x")
    x = x * m
    if _norm(norm) is AttackNorm.L2:
        return x.flatten(1).norm(dim=1)
    return x.flatten(1).abs().amax(dim=1)


def embedding_scale(embeds: Tensor, mask: Tensor, norm: AttackNorm | str) -> Tensor:
    """The scale that relative budgets multiply, shape ``(B,)``.

    L2: the Frobenius norm of the real tokens' embeddings; L∞: their root-mean-square entry.

    >>> e = torch.tensor([[[3.0, 4.0], [1.0, 1.0]]])
    >>> embedding_scale(e, torch.tensor([[1, 0]]), "l2"), embedding_scale(e, torch.tensor([[1, 0]]), "linf")
    (tensor([5.]), tensor([3.5355]))
    """
    m = _check_mask(embeds, mask, "embeds")
    frobenius = (embeds * m).flatten(1).norm(dim=1)
    if _norm(norm) is AttackNorm.L2:
        return frobenius
    entries = (m.squeeze(-1).sum(dim=1) * embeds.shape[-1]).clamp_min(1)
    return frobenius / entries.sqrt()


def project(delta: Tensor, mask: Tensor, radius: Tensor, norm: AttackNorm | str) -> Tensor:
    """``δ`` projected onto the ball ``{‖δ‖ ≤ radius}`` (absolute radius, ``(B,)``), padding zeroed.

    >>> d = torch.tensor([[[3.0, 4.0]]])
    >>> project(d, torch.ones(1, 1), torch.tensor([1.0]), "l2")
    tensor([[[0.6000, 0.8000]]])
    >>> project(d, torch.ones(1, 1), torch.tensor([1.0]), "linf")
    tensor([[[1., 1.]]])
    """
    m = _check_mask(delta, mask, "delta")
    delta = delta * m
    r = radius.to(delta.dtype).view(-1, 1, 1)
    if _norm(norm) is AttackNorm.LINF:
        return torch.maximum(torch.minimum(delta, r), -r)
    length = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
    return delta * torch.clamp(r / length.clamp_min(_TINY), max=1.0)


def ascent_step(grad: Tensor, mask: Tensor, step: Tensor, norm: AttackNorm | str) -> Tensor:
    """The steepest-ascent step of absolute length ``step`` (``(B,)``) for the gradient ``grad``.

    L2: ``step · g / ‖g‖₂``; L∞: ``step · sign(g)``; zero on padding and where ``g = 0``.

    >>> g = torch.tensor([[[3.0, -4.0]]])
    >>> ascent_step(g, torch.ones(1, 1), torch.tensor([1.0]), "l2")
    tensor([[[ 0.6000, -0.8000]]])
    >>> ascent_step(g, torch.ones(1, 1), torch.tensor([0.5]), "linf")
    tensor([[[ 0.5000, -0.5000]]])
    """
    m = _check_mask(grad, mask, "grad")
    grad = grad * m
    s = step.to(grad.dtype).view(-1, 1, 1)
    if _norm(norm) is AttackNorm.LINF:
        return s * grad.sign()
    length = grad.flatten(1).norm(dim=1).view(-1, 1, 1)
    return s * grad / length.clamp_min(_TINY)


def first_order_radius(
    margin: Tensor, grad: Tensor, mask: Tensor, norm: AttackNorm | str
) -> Tensor:
    """Linearised distance to the decision boundary: ``max(m, 0) / ‖∇m‖_*``, shape ``(B,)``.

    ``‖·‖_*`` is the dual norm of the budget's norm over the real tokens: L2 for L2, L1 for L∞.
    For a model linear in its embeddings this is the exact smallest flipping perturbation of a
    two-class margin. An example with a zero gradient gets ``inf`` (no direction flips it).

    >>> g = torch.tensor([[[3.0, -4.0]]])
    >>> first_order_radius(torch.tensor([10.0]), g, torch.ones(1, 1), "l2")
    tensor([2.])
    >>> first_order_radius(torch.tensor([14.0]), g, torch.ones(1, 1), "linf")
    tensor([2.])
    """
    m = _check_mask(grad, mask, "grad")
    flat = (grad * m).flatten(1)
    dual = flat.norm(dim=1) if _norm(norm) is AttackNorm.L2 else flat.abs().sum(dim=1)
    gap = margin.to(dual.dtype).clamp_min(0)
    return torch.where(dual > 0, gap / dual.clamp_min(_TINY), torch.full_like(gap, float("inf")))


def bisect_radius(low: Tensor, high: Tensor, flipped: Tensor) -> tuple[Tensor, Tensor]:
    """One step of a per-example binary search: ``flipped`` answers whether the midpoint flips.

    Returns the new ``(low, high)``: ``high ← mid`` where the midpoint flipped, else
    ``low ← mid``. The smallest flipping radius stays in ``(low, high]``.

    >>> bisect_radius(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([True, False]))
    (tensor([0.0000, 0.5000]), tensor([0.5000, 1.0000]))
    """
    mid = (low + high) / 2
    return torch.where(flipped, low, mid), torch.where(flipped, mid, high)


def accuracy_ladder(clean: float, chance: float, levels: int, drop: float) -> Tensor:
    """Target accuracies of ``levels`` perturbation strengths, ``(levels,)``: falling in equal
    steps from ``clean`` to ``clean − drop · (clean − chance)`` (``drop = 1``: chance).

    >>> accuracy_ladder(0.9, 0.5, 4, 1.0)
    tensor([0.8000, 0.7000, 0.6000, 0.5000])
    """
    fractions = torch.arange(1, levels + 1, dtype=torch.float64) / levels
    return (clean - drop * (clean - chance) * fractions).float()
