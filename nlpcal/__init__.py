"""nlpcal: calibrated confidence for fine-tuned transformer classifiers.

The public API is imported lazily, so ``import nlpcal.functional`` stays free of transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CalibratedTrainer": "nlpcal.trainer",
    "Predictions": "nlpcal.trainer",
    "CalibrationArguments": "nlpcal.args",
    "CalibratedModel": "nlpcal.hub",
    "DeepEnsemble": "nlpcal.ensemble",
    "load_calibrated": "nlpcal.hub",
    "CalibrationLoss": "nlpcal.losses",
    "create_loss": "nlpcal.losses",
    "list_losses": "nlpcal.losses",
    "register_loss": "nlpcal.losses",
    "TokenAttribution": "nlpcal.explain",
    "create_attribution": "nlpcal.explain",
    "list_attributions": "nlpcal.explain",
    "Calibrator": "nlpcal.posthoc",
    "create_calibrator": "nlpcal.posthoc",
    "list_calibrators": "nlpcal.posthoc",
    "load_calibrator": "nlpcal.posthoc",
    "register_calibrator": "nlpcal.posthoc",
    "TemperatureScaler": "nlpcal.posthoc",
    "VectorScaler": "nlpcal.posthoc",
    "AdaTS": "nlpcal.posthoc",
    "ExponentialCalibrator": "nlpcal.posthoc",
    "calibration_metrics": "nlpcal.functional.metrics",
    "expected_calibration_error": "nlpcal.functional.metrics",
    "reliability_diagram": "nlpcal.metrics.plots",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nlpcal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
