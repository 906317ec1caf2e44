"""Pure tensor maths: tensors in, tensors out. No modules, no trainer, no I/O.

Metrics take probabilities (``probs``) or logits (``logits``), as each signature says; numpy
arrays and torch tensors on any device are accepted, and half precision is computed in float32.
"""

from nlpcal.functional.ensemble import ensemble_ood_score, ensemble_probabilities
from nlpcal.functional.metrics import (
    Binning,
    Norm,
    ReliabilityCurve,
    accuracy,
    brier_score,
    calibration_metrics,
    classwise_calibration_error,
    debiased_calibration_error,
    evaluation_metrics,
    expected_calibration_error,
    max_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from nlpcal.functional.mixing import mix, mix_attention_masks, mixed_cross_entropy, sample_lambda
from nlpcal.functional.ood import OODScore, ood_detection_metrics, ood_score
from nlpcal.functional.ova import ova_log_probabilities, ova_loss, ova_probabilities
from nlpcal.functional.robustness import (
    AttackNorm,
    ascent_step,
    bisect_radius,
    embedding_scale,
    first_order_radius,
    masked_norm,
    prediction_margin,
    project,
)
from nlpcal.functional.scaling import (
    confidence_exponent_nll,
    fit_confidence_exponent,
    fit_temperature,
    fit_vector_scaling,
    fold_affine,
    grid_search_temperature,
    reference_temperature_grid,
    temperature_nll,
)
from nlpcal.functional.selective import accuracy_at_coverage, aurc, risk_coverage_curve
from nlpcal.functional.strata import (
    adapt_smoothing,
    assign_strata,
    equal_count_strata,
    stratum_calibration_gap,
)
from nlpcal.functional.targets import smoothed_targets, soft_cross_entropy

__all__ = [
    "AttackNorm",
    "Binning",
    "Norm",
    "OODScore",
    "ReliabilityCurve",
    "accuracy",
    "accuracy_at_coverage",
    "adapt_smoothing",
    "ascent_step",
    "assign_strata",
    "aurc",
    "bisect_radius",
    "brier_score",
    "calibration_metrics",
    "classwise_calibration_error",
    "confidence_exponent_nll",
    "debiased_calibration_error",
    "embedding_scale",
    "ensemble_ood_score",
    "ensemble_probabilities",
    "equal_count_strata",
    "evaluation_metrics",
    "expected_calibration_error",
    "first_order_radius",
    "fit_confidence_exponent",
    "fit_temperature",
    "fit_vector_scaling",
    "fold_affine",
    "grid_search_temperature",
    "masked_norm",
    "max_calibration_error",
    "mix",
    "mix_attention_masks",
    "mixed_cross_entropy",
    "negative_log_likelihood",
    "ood_detection_metrics",
    "ood_score",
    "ova_log_probabilities",
    "ova_loss",
    "ova_probabilities",
    "prediction_margin",
    "project",
    "reference_temperature_grid",
    "reliability_curve",
    "risk_coverage_curve",
    "sample_lambda",
    "smoothed_targets",
    "soft_cross_entropy",
    "stratum_calibration_gap",
    "temperature_nll",
]
