"""Entry point of ``evaluate.load(<this folder>)``, which looks for ``<folder name>.py``."""

from nlpcal.metrics.evaluate_module.nlpcal_calibration import NlpcalCalibration

__all__ = ["NlpcalCalibration"]
