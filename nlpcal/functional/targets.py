"""Soft-label targets and the cross-entropy against them.

These run inside the training step, so they check shapes and hyper-parameters (cheap, no device
synchronisation) but not values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["smoothed_targets", "soft_cross_entropy"]


def smoothed_targets(labels: Tensor, num_classes: int, alpha: float | Tensor) -> Tensor:
    """Label-smoothed targets in the Desai & Durrett (2020) form, shape ``(n, K)``, float32.

    The true class gets ``1 − α`` and each of the ``K − 1`` other classes gets ``α / (K − 1)``, so
    every row sums to 1. (PyTorch's ``label_smoothing=ε`` instead spreads ``ε / K`` over all
    classes; the two agree for ``ε = α K / (K − 1)``.)

    Args:
        labels: integer class indices, shape ``(n,)``.
        num_classes: number of classes ``K`` (at least 2).
        alpha: smoothing mass taken from the true class, in ``[0, 1)``: one float, or a tensor of
            shape ``(n,)`` with one value per example (whose range is the caller's to ensure, as
            checking it would synchronise with the device).

    >>> smoothed_targets(torch.tensor([0, 2]), num_classes=3, alpha=0.1)
    tensor([[0.9000, 0.0500, 0.0500],
            [0.0500, 0.0500, 0.9000]])
    >>> smoothed_targets(torch.tensor([0, 1]), num_classes=2, alpha=torch.tensor([0.0, 0.2]))
    tensor([[1.0000, 0.0000],
            [0.2000, 0.8000]])
    """
    if num_classes < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got num_classes={num_classes}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n_examples,), got {tuple(labels.shape)}")
    n = labels.shape[0]
    if isinstance(alpha, Tensor):
        if alpha.shape not in ((), (n,)):
            raise ValueError(
                f"alpha must be a scalar or have shape ({n},), got {tuple(alpha.shape)}"
            )
        alpha = alpha.to(device=labels.device, dtype=torch.float32).expand(n)
    elif not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    else:
        alpha = torch.full((n,), float(alpha), device=labels.device)
    targets = (alpha / (num_classes - 1)).unsqueeze(1).repeat(1, num_classes)
    return targets.scatter_(1, labels.long().unsqueeze(1), (1.0 - alpha).unsqueeze(1))


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy ``−Σ_k t_k log softmax(z)_k`` against soft targets, shape ``(n,)``.

    The log-softmax is computed in float32 whatever the logits' dtype. With one-hot targets this
    equals ``F.cross_entropy(logits, labels, reduction="none")``.

    Args:
        logits: unnormalised scores, shape ``(n, K)``.
        targets: target distributions, shape ``(n, K)``.

    >>> soft_cross_entropy(torch.zeros(1, 4), torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    tensor([1.3863])
    """
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            "logits and targets must both have shape (n_examples, n_classes), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    return -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
