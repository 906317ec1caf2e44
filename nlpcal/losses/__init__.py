"""Training-time calibration losses, each registered under a snake_case name."""

from nlpcal.losses.base import (
    CalibrationLoss,
    LossContext,
    LossOutput,
    create_loss,
    list_losses,
    register_loss,
)
from nlpcal.losses.cross_entropy import CrossEntropyLoss

__all__ = [
    "CalibrationLoss",
    "CrossEntropyLoss",
    "LossContext",
    "LossOutput",
    "create_loss",
    "list_losses",
    "register_loss",
]
