"""One-vs-all (SLOVA) probabilities and loss, in log space for stability.

With per-class sigmoids ``s_k = σ(z_k)``, the SLOVA probability of class ``k`` is
``q_k = s_k · Π_{j≠k} (1 − s_j)``: high only when class ``k`` fires and every other class is off.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["ova_log_probabilities", "ova_loss", "ova_probabilities"]


def ova_log_probabilities(logits: Tensor) -> Tensor:
    """``log q_k = log σ(z_k) + Σ_{j≠k} log(1 − σ(z_j))`` for one-vs-all logits ``(n, K)``.

    >>> import torch
    >>> ova_log_probabilities(torch.tensor([[0.0, 0.0]])).exp()
    tensor([[0.2500, 0.2500]])
    """
    log_on = F.logsigmoid(logits)
    log_off = F.logsigmoid(-logits)
    return log_on - log_off + log_off.sum(dim=-1, keepdim=True)


def ova_probabilities(logits: Tensor) -> Tensor:
    """SLOVA probabilities ``q`` ``(n, K)``; rows sum to at most 1 (the rest is "none of these")."""
    return ova_log_probabilities(logits).exp()


def ova_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example one-vs-all loss ``−log s_y − Σ_{k≠y} log(1 − s_k)``, shape ``(n,)``.

    >>> import torch
    >>> ova_loss(torch.zeros(1, 3), torch.tensor([0])).item() == 3 * torch.log(torch.tensor(2.0)).item()
    True
    """
    targets = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=-1)
