"""Streaming calibration metrics for evaluation sets too large to hold in memory.

The state is a handful of float64 sums whose size depends on the number of bins and classes, never
on the number of examples: per equal-width bin the count, the correct predictions and the summed
confidence; per class and bin the count, the positives and the summed probability (classwise ECE);
and the Brier and NLL totals. Sums add up across batches and across processes, so
:meth:`CalibrationAccumulator.compute` gives the values (up to float rounding) that
:func:`nlpcal.functional.metrics.calibration_metrics` gives on all the data at once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from nlpcal.functional.metrics import (
    _bin_sums,
    _brier_sum,
    _check_eps,
    _check_n_bins,
    _classwise_bin_sums,
    _classwise_error,
    _inputs,
    _metrics_from_sums,
    _nll_sum,
    _top_label,
    _true_class_probs,
    _uniform_bin_index,
)

__all__ = ["CalibrationAccumulator"]


class CalibrationAccumulator:
    """Accumulates calibration statistics batch by batch; ``compute()`` returns the metrics.

    Under ``torch.distributed`` (when a process group is initialised and has more than one
    process) :meth:`compute` sums the state of every process with one ``all_reduce``, so each
    process gets the metrics of the whole evaluation set; every process must call it. A process
    that saw no batch takes part with an empty state when the size of the state is known, that is
    with ``classwise=False`` or with ``num_classes`` given.

    Args:
        n_bins: number of equal-width bins.
        num_classes: the number of classes, checked on every batch; inferred from the first batch
            when ``None``.
        classwise: also keep the per-class state and report ``"classwise_ece"``.
        eps: lower clamp of ``p_y`` in the NLL.
        process_group: the group to reduce over (the default group when ``None``).

    >>> acc = CalibrationAccumulator(n_bins=2)
    >>> acc.update(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]))
    >>> acc.update(torch.tensor([[0.3, 0.7]]), torch.tensor([1]))
    >>> round(acc.compute()["ece"].item(), 4)
    0.1333
    """

    def __init__(
        self,
        n_bins: int = 15,
        num_classes: int | None = None,
        classwise: bool = True,
        eps: float = 1e-12,
        process_group: Any = None,
    ) -> None:
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        self.n_bins = _check_n_bins(n_bins)
        self._num_classes_arg = num_classes
        self.classwise = classwise
        self.eps = _check_eps(eps)
        self.process_group = process_group
        self.reset()

    def reset(self) -> None:
        """Forget every update (and the number of classes, unless it was given)."""
        self.num_classes = self._num_classes_arg
        self._top: Tensor | None = None
        self._totals: Tensor | None = None
        self._per_class: Tensor | None = None
        self._dtype = torch.float32

    @property
    def num_examples(self) -> int:
        """The number of examples seen by this process."""
        return 0 if self._top is None else int(self._top[0].sum())

    def update(self, probs: Any, labels: Any) -> None:
        """Add a batch of probabilities ``(n, K)`` and integer labels ``(n,)``."""
        probs, labels = _inputs(probs, labels)
        n_classes = probs.shape[1]
        if self.num_classes is not None and n_classes != self.num_classes:
            raise ValueError(f"probs has {n_classes} classes, expected {self.num_classes}")
        if self._top is None:
            self._init_state(n_classes, probs.device)
            self._dtype = probs.dtype
        device = self._top.device
        confidence, correct = _top_label(probs, labels)
        idx = _uniform_bin_index(confidence, self.n_bins)
        self._top += _bin_sums(idx, correct, confidence, self.n_bins).to(device)
        p_true = _true_class_probs(probs, labels)
        totals = torch.stack([_brier_sum(probs, p_true), _nll_sum(p_true, self.eps)])
        self._totals += totals.to(device)
        if self._per_class is not None:
            self._per_class += _classwise_bin_sums(probs, labels, self.n_bins).to(device)

    def _init_state(self, n_classes: int, device: torch.device | None = None) -> None:
        self.num_classes = n_classes
        zeros = dict(dtype=torch.float64, device=device)
        self._top = torch.zeros(3, self.n_bins, **zeros)
        self._totals = torch.zeros(2, **zeros)
        self._per_class = (
            torch.zeros(3, n_classes, self.n_bins, **zeros) if self.classwise else None
        )

    def sync(self) -> CalibrationAccumulator:
        """A new accumulator holding the sum of the states of every process; this one is unchanged.

        Without an initialised process group (or with one process) it is a copy of this one.
        Under ``torch.distributed`` every process must call it, as it runs collective operations.
        """
        merged = CalibrationAccumulator(
            self.n_bins, self._num_classes_arg, self.classwise, self.eps, self.process_group
        )
        merged._dtype = self._dtype
        distributed = _distributed(self.process_group)
        if self._top is None and (self.num_classes is not None or not self.classwise):
            merged._init_state(self.num_classes or 1)
        elif self._top is not None:
            merged._init_state(self.num_classes or 1, self._top.device)
            merged._top += self._top
            merged._totals += self._totals
            if merged._per_class is not None:
                merged._per_class += self._per_class
        if distributed:
            merged._all_reduce()
        return merged

    def _all_reduce(self) -> None:
        parts = [] if self._top is None else [self._top, self._totals]
        if self._per_class is not None:
            parts.append(self._per_class)
        device = _collective_device(self.process_group, parts)
        flat = torch.cat([part.reshape(-1) for part in parts]).to(device) if parts else None
        size = torch.tensor([0 if flat is None else flat.numel()], device=device)
        extremes = torch.cat([size, -size])
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=self.process_group)
        if int(extremes[0]) != -int(extremes[1]):
            raise ValueError(
                "processes hold calibration states of different sizes: every process needs the "
                "same number of classes and, unless num_classes is given, at least one update()"
            )
        if flat is None:
            return
        dist.all_reduce(flat, group=self.process_group)
        for part, reduced in zip(parts, flat.split([p.numel() for p in parts]), strict=True):
            part.copy_(reduced.view_as(part))

    def compute(self) -> dict[str, Tensor]:
        """Accuracy, ECE, MCE, RMS calibration error, Brier, NLL (and classwise ECE) so far.

        The keys are those of :func:`~nlpcal.functional.metrics.calibration_metrics`, plus
        ``"classwise_ece"`` when ``classwise=True``; the values are scalar tensors in the dtype of
        the first batch (float32 for half precision).
        """
        state = self.sync()
        if state._top is None or state.num_examples == 0:
            raise ValueError("compute() called before any update()")
        metrics = _metrics_from_sums(state._top, state._totals[0], state._totals[1], self._dtype)
        if state._per_class is not None:
            metrics["classwise_ece"] = _classwise_error(state._per_class).to(self._dtype)
        return metrics


def _distributed(group: Any) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _collective_device(group: Any, parts: list[Tensor]) -> torch.device:
    """NCCL reduces CUDA tensors of the current device; other backends take the state as it is."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return parts[0].device if parts else torch.device("cpu")
