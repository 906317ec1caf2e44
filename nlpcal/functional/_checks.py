"""Input conversion and validation shared by every functional module.

Every public function of :mod:`nlpcal.functional` accepts torch tensors or numpy arrays on any
device. Half-precision input is upcast to float32; float64 stays float64. Bad input raises a
``ValueError`` that says what was wrong and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_float", "check_labels", "check_logits", "check_probs", "check_scores"]

_PROB_ATOL = 1e-3


def as_float(x: Any, name: str) -> Tensor:
    """Return ``x`` as a floating tensor: half and bfloat16 become float32, integers float32."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a tensor or array, got {type(x).__name__}") from err
    if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point():
        x = x.float()
    return x


def _check_2d(x: Tensor, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n_examples, n_classes), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one example is needed")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero classes")


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf)")


def check_logits(logits: Any, name: str = "logits") -> Tensor:
    """Validate unnormalised scores of shape ``(n, K)``: finite floats."""
    logits = as_float(logits, name)
    _check_2d(logits, name)
    _check_finite(logits, name)
    return logits


def check_probs(probs: Any, name: str = "probs", atol: float = _PROB_ATOL) -> Tensor:
    """Validate probabilities of shape ``(n, K)``: finite, in [0, 1], rows summing to 1.

    Half-precision rows are accepted with the rounding their dtype allows (bfloat16 sums to
    1 ± 4e-3); the returned tensor is float32.
    """
    if isinstance(probs, Tensor) and probs.dtype in (torch.float16, torch.bfloat16):
        atol = max(atol, 4 * torch.finfo(probs.dtype).eps)
    probs = as_float(probs, name)
    _check_2d(probs, name)
    lo, hi = torch.aminmax(probs)
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        _check_finite(probs, name)
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{float(lo):.4g}, {float(hi):.4g}]; "
            "these look like logits: apply softmax over the classes first "
            "(torch.softmax(logits, dim=1))"
        )
    row_err = (probs.sum(dim=1) - 1).abs().max()
    if row_err > atol:
        if (probs.sum(dim=0) - 1).abs().max() <= atol:
            hint = (
                f"its columns do: pass {name} of shape (n_examples, n_classes), not its transpose"
            )
        else:
            hint = "apply softmax over the classes if these are logits, else normalise each row"
        raise ValueError(
            f"{name} rows must sum to 1 (max deviation {float(row_err):.3g} > {atol}); {hint}"
        )
    return probs


def check_scores(scores: Any, name: str = "scores") -> Tensor:
    """Validate a non-empty, finite, one-dimensional float tensor of per-example scores."""
    scores = as_float(scores, name)
    if scores.ndim != 1:
        raise ValueError(f"{name} must have shape (n_examples,), got {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one example is needed")
    _check_finite(scores, name)
    return scores


def check_labels(labels: Any, n_examples: int, num_classes: int, name: str = "labels") -> Tensor:
    """Validate integer class labels of shape ``(n,)`` with values in ``[0, num_classes)``.

    Integral floats are accepted; strings, objects and booleans are not.
    """
    if not isinstance(labels, Tensor):
        try:
            labels = np.asarray(labels)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name} must be integer class indices of shape (n_examples,), but the "
                f"{type(labels).__name__} does not convert to an array: {err}"
            ) from err
        if labels.dtype.kind not in "biufc":  # bool and complex are rejected below
            example = f" such as {str(labels.flat[0])!r}" if labels.size else ""
            raise ValueError(
                f"{name} must be integer class indices in [0, {num_classes - 1}], got "
                f"{labels.dtype} values{example}; map label names to indices first "
                "(e.g. with model.config.label2id)"
            )
        labels = torch.from_numpy(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        if labels.is_floating_point() and bool((labels == labels.round()).all()):
            labels = labels.long()
        else:
            raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must have shape (n_examples,), got {tuple(labels.shape)}")
    if labels.shape[0] != n_examples:
        raise ValueError(
            f"{name} has {labels.shape[0]} entries but there are {n_examples} predictions"
        )
    if n_examples:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                f"got values in [{lo}, {hi}]"
            )
    return labels.long()
