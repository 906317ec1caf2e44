"""A ``compute_metrics`` function for ``transformers.Trainer`` that reports calibration metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from nlpcal.functional._checks import check_labels, check_logits
from nlpcal.functional.metrics import (
    _check_n_bins,
    classwise_calibration_error,
    evaluation_metrics,
)

if TYPE_CHECKING:
    from transformers import EvalPrediction

__all__ = ["make_compute_metrics"]

PREFIX = "calibration_"


def make_compute_metrics(
    n_bins: int = 15, prefix_free: bool = True
) -> Callable[[EvalPrediction], dict[str, float]]:
    """Build a ``compute_metrics`` for ``transformers.Trainer(compute_metrics=...)``.

    The returned function takes an ``EvalPrediction`` whose ``predictions`` are logits ``(n, K)``
    (when they are a tuple, the first element is used) and whose ``label_ids`` are integer labels,
    applies a float32 softmax and returns plain floats: ``accuracy``, ``ece``, ``mce``, ``rmsce``,
    ``brier``, ``nll`` (see :func:`~nlpcal.functional.metrics.calibration_metrics`),
    ``classwise_ece`` and ``aurc`` (of the maximum softmax probability).

    Args:
        n_bins: number of equal-width bins of the calibration errors.
        prefix_free: return the bare names (``"ece"``; the Trainer logs ``"eval_ece"``). With
            ``False`` every name is prefixed by ``"calibration_"`` (``"eval_calibration_ece"``),
            for use next to other metrics with clashing names.

    >>> import numpy as np
    >>> compute_metrics = make_compute_metrics(n_bins=10)
    >>> logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    >>> metrics = compute_metrics((logits, np.array([0, 1, 1])))
    >>> sorted(metrics)
    ['accuracy', 'aurc', 'brier', 'classwise_ece', 'ece', 'mce', 'nll', 'rmsce']
    >>> round(metrics["accuracy"], 4)
    0.6667
    """
    n_bins = _check_n_bins(n_bins)
    prefix = "" if prefix_free else PREFIX

    def compute_metrics(eval_pred: EvalPrediction | tuple[Any, Any]) -> dict[str, float]:
        predictions, label_ids = _unpack(eval_pred)
        probs = torch.softmax(check_logits(predictions, "predictions").float(), dim=1)
        labels = check_labels(label_ids, probs.shape[0], probs.shape[1], "label_ids")
        metrics = evaluation_metrics(probs, labels, n_bins=n_bins)
        metrics["classwise_ece"] = classwise_calibration_error(probs, labels, n_bins=n_bins)
        return {prefix + name: float(value) for name, value in metrics.items()}

    return compute_metrics


def _unpack(eval_pred: Any) -> tuple[Any, Any]:
    if hasattr(eval_pred, "predictions"):
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, label_ids = eval_pred[0], eval_pred[1]
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    if isinstance(label_ids, (tuple, list)):
        label_ids = label_ids[0]
    if label_ids is None:
        raise ValueError("the evaluation set has no labels (label_ids is None)")
    return predictions, label_ids
