"""Robustness of examples to perturbations of their input embeddings (AR-AdaLS, evaluation), and
perturbed copies of held-out data for drift-aware post-hoc fitting."""

from nlpcal.functional.robustness import AttackNorm
from nlpcal.robustness.drift import DriftSchedule, DriftScheduleError, EmbeddingDrift
from nlpcal.robustness.embedding import (
    EmbeddingPerturbation,
    RobustnessMode,
    attack_accuracy,
    check_robustness_options,
    example_robustness,
    flip_radius,
    margin_radius,
    noise_accuracy,
    perturbed_outputs,
    pgd_flips,
)
from nlpcal.robustness.measure import (
    DatasetRobustness,
    PerturbedPredictions,
    accuracy_under_attack,
    measure_robustness,
    perturb_dataset,
)
from nlpcal.robustness.report import robustness_strata, strata_figure, strata_markdown

__all__ = [
    "AttackNorm",
    "DatasetRobustness",
    "DriftSchedule",
    "DriftScheduleError",
    "EmbeddingDrift",
    "EmbeddingPerturbation",
    "PerturbedPredictions",
    "RobustnessMode",
    "accuracy_under_attack",
    "attack_accuracy",
    "check_robustness_options",
    "example_robustness",
    "flip_radius",
    "margin_radius",
    "measure_robustness",
    "noise_accuracy",
    "perturb_dataset",
    "perturbed_outputs",
    "pgd_flips",
    "robustness_strata",
    "strata_figure",
    "strata_markdown",
]
