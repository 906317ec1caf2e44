"""Stateful metric pieces: streaming accumulator, Trainer/evaluate integration, plots."""

from nlpcal.metrics.accumulator import CalibrationAccumulator
from nlpcal.metrics.compute_metrics import make_compute_metrics
from nlpcal.metrics.hf_evaluate import evaluate_module_path
from nlpcal.metrics.plots import confidence_histogram, reliability_diagram

__all__ = [
    "CalibrationAccumulator",
    "confidence_histogram",
    "evaluate_module_path",
    "make_compute_metrics",
    "reliability_diagram",
]
