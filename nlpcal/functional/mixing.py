"""Mixup maths: the mixing coefficient, mixed tensors, mixed attention masks and mixed targets.

A batch is mixed with itself under a permutation ``π``: ``x̃ = λ x + (1 − λ) x_π``. The mixing
coefficient stays a tensor on the batch's device, so no step synchronises with the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mix", "mix_attention_masks", "mixed_cross_entropy", "sample_lambda"]


def sample_lambda(alpha: float, device: torch.device | str | None = None) -> Tensor:
    """Draw one mixing coefficient ``λ ~ Beta(α, α)`` from torch's global RNG on ``device``.

    Returns a 0-dim float32 tensor, so that ``torch.manual_seed`` makes the draw reproducible.

    >>> _ = torch.manual_seed(0)
    >>> lam = sample_lambda(20.0)
    >>> lam.shape, bool(0.0 < lam < 1.0)
    (torch.Size([]), True)
    """
    if not alpha > 0:
        raise ValueError(f"the Beta concentration alpha must be > 0, got {alpha}")
    concentration = torch.tensor(float(alpha), device=device)
    return torch.distributions.Beta(concentration, concentration).sample()


def mix(x: Tensor, perm: Tensor, lam: Tensor | float) -> Tensor:
    """``λ x + (1 − λ) x[perm]`` along the batch dimension (dim 0); keeps the dtype of ``x``.

    >>> mix(torch.tensor([[0.0], [4.0]]), torch.tensor([1, 0]), 0.75)
    tensor([[1.],
            [3.]])
    """
    if perm.shape != x.shape[:1]:
        raise ValueError(
            f"perm must have shape ({x.shape[0]},) to permute a batch of {x.shape[0]}, "
            f"got {tuple(perm.shape)}"
        )
    return lam * x + (1 - lam) * x[perm]


def mix_attention_masks(mask: Tensor, perm: Tensor) -> Tensor:
    """The union of each sequence's attention mask with its partner's: ``max(m, m[perm])``.

    A token position is attended in the mixed sequence if it is a real token of either sequence.

    >>> mix_attention_masks(torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([1, 0]))
    tensor([[1, 1, 0],
            [1, 1, 0]])
    """
    if mask.ndim != 2 or perm.shape != mask.shape[:1]:
        raise ValueError(
            "mask must have shape (batch, seq_len) and perm shape (batch,), got "
            f"{tuple(mask.shape)} and {tuple(perm.shape)}"
        )
    return torch.maximum(mask, mask[perm])


def mixed_cross_entropy(
    logits: Tensor, labels: Tensor, perm: Tensor, lam: Tensor | float
) -> Tensor:
    """Per-example ``λ CE(z, y) + (1 − λ) CE(z, y[perm])``, shape ``(n,)``, in float32.

    This is the cross-entropy against the mixed soft target ``λ e_y + (1 − λ) e_{y_π}``.

    >>> z = torch.tensor([[2.0, 0.0]])
    >>> bool(mixed_cross_entropy(z, torch.tensor([0]), torch.tensor([0]), 0.3)
    ...      == F.cross_entropy(z, torch.tensor([0]), reduction="none"))
    True
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or perm.shape != labels.shape:
        raise ValueError(
            "logits must have shape (n, K) and labels and perm shape (n,), got "
            f"{tuple(logits.shape)}, {tuple(labels.shape)} and {tuple(perm.shape)}"
        )
    logits = logits.float()
    ce = F.cross_entropy(logits, labels, reduction="none")
    ce_partner = F.cross_entropy(logits, labels[perm], reduction="none")
    return lam * ce + (1 - lam) * ce_partner
