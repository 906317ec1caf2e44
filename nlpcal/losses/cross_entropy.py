"""Plain cross-entropy: the baseline every calibration method is compared against."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import nn

from nlpcal.losses.base import CalibrationLoss, LossContext, LossOutput, register_loss


@register_loss("cross_entropy")
class CrossEntropyLoss(CalibrationLoss):
    """Cross-entropy on the model's logits, reduced as ``transformers.Trainer`` expects.

    >>> from nlpcal.losses import create_loss
    >>> create_loss("cross_entropy")
    CrossEntropyLoss()
    """

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        logits = model(**self.model_inputs(inputs)).logits
        ce = F.cross_entropy(logits.float(), inputs["labels"], reduction="none")
        loss = ctx.reduce(ce)
        return LossOutput(loss=loss, logits=logits, logs={"ce": ce.detach().mean()})
