"""Label smoothing: the Desai & Durrett form against PyTorch's built-in smoothing."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from nlpcal.losses import LossContext, create_loss
from tests.conftest import tiny_batch, tiny_model


def test_loss_matches_torch_label_smoothing_after_converting_alpha(arch) -> None:
    model = tiny_model(arch)
    batch = tiny_batch()
    alpha, k = 0.1, 3
    out = create_loss("label_smoothing", alpha=alpha)(model, batch, LossContext())
    expected = F.cross_entropy(out.logits, batch["labels"], label_smoothing=alpha * k / (k - 1))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logs["ce"], F.cross_entropy(out.logits, batch["labels"]))


class _FixedLogits(nn.Module):
    """A stand-in model whose logits are a parameter."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits)


def test_smoothing_pushes_confidence_down() -> None:
    model = _FixedLogits(torch.tensor([[8.0, 0.0, 0.0]]))
    batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long), "labels": torch.tensor([0])}
    create_loss("label_smoothing", alpha=0.1)(model, batch, LossContext()).loss.backward()
    assert model.logits.grad[0, 0] > 0  # gradient descent lowers z_y: the target is 0.9, not 1
    model.logits.grad = None
    create_loss("label_smoothing", alpha=0.0)(model, batch, LossContext()).loss.backward()
    assert model.logits.grad[0, 0] < 0  # plain cross-entropy keeps pushing z_y up
