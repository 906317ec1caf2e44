"""Where the ``evaluate`` module of nlpcal lives, for ``evaluate.load``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["evaluate_module_path"]

_FOLDER = Path(__file__).resolve().parent / "evaluate_module"


def evaluate_module_path(script: bool = False) -> str:
    """Path of the ``evaluate`` module shipped with nlpcal; it loads offline.

    Args:
        script: return the path of the metric script ``nlpcal_calibration.py`` instead of the
            folder. ``evaluate.load`` accepts both.

    ``evaluate.load(evaluate_module_path())`` then gives a metric whose ``compute(predictions=...,
    references=...)`` takes probability vectors and integer labels.

    >>> Path(evaluate_module_path(script=True)).name
    'nlpcal_calibration.py'
    """
    return str(_FOLDER / "nlpcal_calibration.py" if script else _FOLDER)
