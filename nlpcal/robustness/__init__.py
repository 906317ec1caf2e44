"""Robustness of examples to perturbations of their input embeddings (AR-AdaLS, evaluation)."""

from nlpcal.functional.robustness import AttackNorm
from nlpcal.robustness.embedding import (
    RobustnessMode,
    attack_accuracy,
    check_robustness_options,
    example_robustness,
    flip_radius,
    margin_radius,
    noise_accuracy,
    pgd_flips,
)
from nlpcal.robustness.measure import DatasetRobustness, accuracy_under_attack, measure_robustness
from nlpcal.robustness.report import robustness_strata, strata_figure, strata_markdown

__all__ = [
    "AttackNorm",
    "DatasetRobustness",
    "RobustnessMode",
    "accuracy_under_attack",
    "attack_accuracy",
    "check_robustness_options",
    "example_robustness",
    "flip_radius",
    "margin_radius",
    "measure_robustness",
    "noise_accuracy",
    "pgd_flips",
    "robustness_strata",
    "strata_figure",
    "strata_markdown",
]
