"""Label smoothing in the form used to calibrate pre-trained transformers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import nn

from nlpcal.functional.targets import smoothed_targets, soft_cross_entropy
from nlpcal.losses._modules import num_labels
from nlpcal.losses.base import CalibrationLoss, LossContext, LossOutput, register_loss


@register_loss("label_smoothing")
class LabelSmoothingLoss(CalibrationLoss):
    """Cross-entropy against smoothed targets: ``1 − α`` on the label, ``α / (K − 1)`` elsewhere.

    This is the form of Desai & Durrett (2020). PyTorch's ``label_smoothing`` spreads ``α / K``
    over every class instead (the true class keeps ``1 − α + α / K``); the two coincide for
    ``ε_torch = α K / (K − 1)``. ``alpha=0`` is plain cross-entropy.

    References:
        Desai & Durrett, "Calibration of Pre-trained Transformers", EMNLP 2020.

    Args:
        alpha: probability mass moved from the label to the other classes, in ``[0, 1)``.

    >>> from nlpcal.losses import create_loss
    >>> create_loss("label_smoothing", alpha=0.05)
    LabelSmoothingLoss(alpha=0.05)
    """

    strength = "alpha"

    def __init__(self, alpha: float = 0.1) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
        self.alpha = float(alpha)

    def prepare_model(self, model: nn.Module) -> None:
        super().prepare_model(model)
        k = num_labels(model)
        if k < 2:
            raise ValueError(f"label smoothing needs at least 2 classes, got num_labels={k}")

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        logits = model(**self.model_inputs(inputs)).logits
        targets = smoothed_targets(inputs["labels"], logits.shape[-1], self.alpha)
        per_example = soft_cross_entropy(logits, targets)
        ce = F.cross_entropy(logits.detach().float(), inputs["labels"])
        logs = {"ce": ce, "smoothed_ce": per_example.detach().mean()}
        return LossOutput(loss=ctx.reduce(per_example), logits=logits, logs=logs)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}
