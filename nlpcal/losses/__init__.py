"""Training-time calibration losses, each registered under a snake_case name."""

from nlpcal.losses.ar_adals import ARAdaLSLoss
from nlpcal.losses.base import (
    EXAMPLE_INDEX,
    CalibrationLoss,
    LossContext,
    LossOutput,
    create_loss,
    list_losses,
    register_loss,
)
from nlpcal.losses.cme import CMELoss
from nlpcal.losses.cross_entropy import CrossEntropyLoss
from nlpcal.losses.double_head import DoubleHeadLoss, TemperatureHead
from nlpcal.losses.label_smoothing import LabelSmoothingLoss
from nlpcal.losses.manifold_mixup import ManifoldMixupLoss
from nlpcal.losses.ova import OneVsAllLoss
from nlpcal.losses.regmixup import MixSite, RegMixupLoss

__all__ = [
    "EXAMPLE_INDEX",
    "ARAdaLSLoss",
    "CMELoss",
    "CalibrationLoss",
    "CrossEntropyLoss",
    "DoubleHeadLoss",
    "LabelSmoothingLoss",
    "LossContext",
    "LossOutput",
    "ManifoldMixupLoss",
    "MixSite",
    "OneVsAllLoss",
    "RegMixupLoss",
    "TemperatureHead",
    "create_loss",
    "list_losses",
    "register_loss",
]
