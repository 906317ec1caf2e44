"""Shared data for the post-hoc calibrator tests."""

from __future__ import annotations

import torch
from torch import Tensor


def calibrated_logits(
    n: int, num_classes: int = 4, scale: float = 2.0, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Logits of a perfectly calibrated model and labels sampled from its softmax."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, num_classes, generator=g)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
    return logits, labels


def nll(logits: Tensor, labels: Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double(), labels))
