"""Post-hoc calibrators fitted on held-out logits (never on test data)."""

from nlpcal.posthoc.adats import AdaTS
from nlpcal.posthoc.base import (
    Calibrator,
    calibrator_class,
    create_calibrator,
    list_calibrators,
    load_calibrator,
    register_calibrator,
)
from nlpcal.posthoc.exponential import ExponentialCalibrator
from nlpcal.posthoc.temperature import TemperatureScaler
from nlpcal.posthoc.vector import VectorScaler

__all__ = [
    "AdaTS",
    "Calibrator",
    "ExponentialCalibrator",
    "TemperatureScaler",
    "VectorScaler",
    "calibrator_class",
    "create_calibrator",
    "list_calibrators",
    "load_calibrator",
    "register_calibrator",
]
