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

__all__ = [
    "AttackNorm",
    "RobustnessMode",
    "attack_accuracy",
    "check_robustness_options",
    "example_robustness",
    "flip_radius",
    "margin_radius",
    "noise_accuracy",
    "pgd_flips",
]
