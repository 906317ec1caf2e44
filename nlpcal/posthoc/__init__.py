"""Post-hoc calibrators fitted on held-out logits."""

from nlpcal.posthoc.base import (
    Calibrator,
    create_calibrator,
    list_calibrators,
    load_calibrator,
    register_calibrator,
)

__all__ = ["Calibrator", "create_calibrator", "list_calibrators", "load_calibrator", "register_calibrator"]
