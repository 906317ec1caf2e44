"""Perturbed copies of held-out data in input-embedding space, at strengths chosen on that data,
for drift-aware post-hoc fitting (:attr:`~nlpcal.CalibrationArguments.drift_perturbation`).

The copies need the model, so :class:`~nlpcal.CalibratedTrainer` builds them (text corruptions,
which need the raw text, are built by the benchmark runner and passed as ``drift_datasets``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nlpcal.functional.robustness import AttackNorm, _norm, accuracy_ladder, bisect_radius
from nlpcal.robustness.embedding import (
    EmbeddingPerturbation,
    _check_budget,
    _check_count,
    _family,
)
from nlpcal.robustness.measure import PerturbedPredictions, perturb_dataset

__all__ = ["DriftSchedule", "DriftScheduleError", "EmbeddingDrift"]


class DriftScheduleError(ValueError):
    """No strength schedule of the asked shape exists for this perturbation family on these data
    (the model is not above the family's floor, the steps are under one example, or the strongest
    strength tried leaves the accuracy above a level's target)."""


@dataclass(frozen=True)
class DriftSchedule:
    """The strengths of the perturbed copies and what they do to the data they perturb.

    Attributes:
        family: ``"gaussian"`` or ``"gradient"``.
        strengths: the relative strengths, increasing.
        accuracies: the data's accuracy at each strength.
        clean_accuracy: its accuracy unperturbed.
        targets: the accuracies the search aimed at (``None`` for strengths given in advance).
    """

    family: str
    strengths: tuple[float, ...]
    accuracies: tuple[float, ...]
    clean_accuracy: float
    targets: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The schedule as JSON holds it."""
        return asdict(self)


class EmbeddingDrift:
    """Perturbed copies of a labelled data set in input-embedding space, one per strength level.

    ``"gaussian"`` adds noise of standard deviation ``s · rms(e)`` to the token embeddings;
    ``"gradient"`` takes ``steps`` signed-gradient steps (FGSM for one step; PGD for more) within
    the relative L∞ radius ``s`` against the clean prediction (see
    :func:`~nlpcal.robustness.perturbed_outputs`). Unless ``strengths`` are given, the ``levels``
    strengths are chosen on the data itself: the copy at level ``l`` aims at the accuracy
    ``a₀ − (l / levels) · accuracy_drop · (a₀ − a_min)``, falling in equal steps from the clean
    accuracy ``a₀`` towards chance, ``a_min = max(1/K, accuracy at max_strength)`` (the second
    when the perturbation cannot take the accuracy lower: a model that collapses onto one class
    under strong noise stays at that class's share). Each level's strength is found by a binary
    search on the log scale over ``[min_strength, max_strength]`` (``search_steps`` rounds, every
    level at once: one pass over the data per round), ending at the weakest strength tried whose
    accuracy is at or below the target. The noise is the same in every round and in the copies
    (one seed), so accuracy changes smoothly with the strength.

    nlpcal's definition of the perturbation ladder of Tomani et al. (the paper perturbs images
    with Gaussian noise at levels spanning in-domain to random accuracy; the text families, the
    embedding scale and the search are nlpcal's). The drift-aware calibrator is fitted on the
    clean data and every copy, each weighted equally (:class:`~nlpcal.CalibratedTrainer`).

    References:
        Tomani, Gruber, Erdem, Cremers, Buettner. Post-hoc Uncertainty Calibration for Domain
        Drift Scenarios. CVPR 2021.

    Args:
        family: ``"gaussian"`` or ``"gradient"``.
        levels: the number of perturbed copies ``L`` (``≥ 1``), when searched.
        accuracy_drop: how far the strongest level takes the accuracy from its clean value
            towards chance (``a_min``), in ``(0, 1]``.
        strengths: the relative strengths of the copies, strictly increasing and ``> 0``, instead
            of the search.
        steps: signed-gradient steps of the gradient family.
        norm: the gradient family's budget norm, ``"linf"`` (signed steps) or ``"l2"``.
        seed: seeds the noise.
        search_steps: rounds of the binary search.
        min_strength, max_strength: the search's interval.

    Raises:
        ValueError: naming the argument and its value.

    >>> EmbeddingDrift("gaussian", levels=5).levels
    5
    >>> EmbeddingDrift("gaussian", strengths=[0.5, 0.2])
    Traceback (most recent call last):
    ...
    ValueError: strengths must be a non-empty, strictly increasing list of numbers > 0, got [0.5, 0.2]
    """

    def __init__(
        self,
        family: EmbeddingPerturbation | str,
        levels: int = 10,
        accuracy_drop: float = 0.9,
        strengths: Sequence[float] | None = None,
        steps: int = 1,
        norm: AttackNorm | str = AttackNorm.LINF,
        seed: int = 0,
        search_steps: int = 8,
        min_strength: float = 1e-3,
        max_strength: float = 10.0,
    ) -> None:
        self.family = _family(family)
        self.levels = _check_count("levels", levels)
        if (
            isinstance(accuracy_drop, bool)
            or not isinstance(accuracy_drop, (int, float))
            or not 0 < accuracy_drop <= 1
        ):
            raise ValueError(f"accuracy_drop must be a number in (0, 1], got {accuracy_drop!r}")
        self.accuracy_drop = float(accuracy_drop)
        if strengths is not None:
            values = list(strengths)
            if (
                not values
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)
                or not all(v > 0 for v in values)
                or any(b <= a for a, b in itertools.pairwise(values))
            ):
                raise ValueError(
                    "strengths must be a non-empty, strictly increasing list of numbers > 0, "
                    f"got {values}"
                )
            strengths = tuple(float(v) for v in values)
            self.levels = len(strengths)
        self.strengths = strengths
        self.steps = _check_count("steps", steps)
        self.norm = _norm(norm)
        if self.family is EmbeddingPerturbation.GAUSSIAN and (
            self.steps != 1 or self.norm is not AttackNorm.LINF
        ):
            raise ValueError("steps and norm apply to the gradient family only, not to 'gaussian'")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self.search_steps = _check_count("search_steps", search_steps)
        self.min_strength = _check_budget("min_strength", min_strength)
        self.max_strength = _check_budget("max_strength", max_strength)
        if self.min_strength >= self.max_strength:
            raise ValueError(
                f"min_strength must be below max_strength, got min_strength={min_strength} and "
                f"max_strength={max_strength}"
            )

    def config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {
            "family": self.family.value,
            "levels": self.levels,
            "accuracy_drop": self.accuracy_drop,
            "strengths": None if self.strengths is None else list(self.strengths),
            "steps": self.steps,
            "norm": self.norm.value,
            "seed": self.seed,
            "search_steps": self.search_steps,
            "min_strength": self.min_strength,
            "max_strength": self.max_strength,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __call__(
        self,
        trainer: Any,
        dataset: Any,
        features: bool = False,
        drop: tuple[str, ...] = (),
        strengths: Sequence[float] | None = None,
    ) -> tuple[DriftSchedule, PerturbedPredictions]:
        """The schedule (searched on ``dataset`` unless ``strengths`` are given here or to the
        constructor) and the perturbed copies of ``dataset`` at its strengths.

        Args:
            trainer: the ``transformers.Trainer`` whose model and eval loader are used.
            dataset: the labelled data to perturb (the calibration split).
            features: also collect the perturbed first-token features.
            drop: batch keys that are not model inputs (beyond ``labels``).
            strengths: a schedule found earlier on the same data, to rebuild its copies.

        Raises:
            DriftScheduleError: (a ``ValueError``) the data are too small or the model not above
                chance on them, so that no ladder of ``levels`` accuracy steps exists; or the
                strongest perturbation leaves the accuracy above a level's target.
        """
        targets = None
        strengths = strengths if strengths is not None else self.strengths
        if strengths is None:
            strengths, targets = self._search(trainer, dataset, drop)
        copies = self._pass(trainer, dataset, strengths, features, drop)
        clean, accuracies = copies.accuracy()
        schedule = DriftSchedule(
            family=self.family.value,
            strengths=tuple(float(s) for s in strengths),
            accuracies=tuple(accuracies.tolist()),
            clean_accuracy=clean,
            targets=targets,
        )
        return schedule, copies

    def _pass(
        self,
        trainer: Any,
        dataset: Any,
        strengths: Sequence[float] | torch.Tensor,
        features: bool,
        drop: tuple[str, ...],
    ) -> PerturbedPredictions:
        options = {}
        if self.family is EmbeddingPerturbation.GRADIENT:
            options = {"steps": self.steps, "norm": self.norm}
        return perturb_dataset(
            trainer, dataset, self.family, strengths, self.seed, features, drop, **options
        )

    def _search(
        self, trainer: Any, dataset: Any, drop: tuple[str, ...]
    ) -> tuple[list[float], tuple[float, ...]]:
        """Each level's strength by a binary search on the log scale, every level at once."""
        low = torch.full((self.levels,), math.log(self.min_strength), dtype=torch.float64)
        high = torch.full_like(low, math.log(self.max_strength))
        targets = None
        for _ in range(self.search_steps):
            tried = ((low + high) / 2).exp()
            if targets is None:  # the first pass also measures the floor, at max_strength
                tried = torch.cat([tried, tried.new_tensor([self.max_strength])])
            out = self._pass(trainer, dataset, tried, False, drop)
            clean, accuracies = out.accuracy()
            if targets is None:
                floor = max(1.0 / out.clean.shape[-1], float(accuracies[-1]))
                targets = self._targets(clean, floor, out.clean.shape[-1], len(out.labels))
                accuracies = accuracies[:-1]
            low, high = bisect_radius(low, high, accuracies.double() <= targets)
        unreached = high == math.log(self.max_strength)
        if bool(unreached.any()):
            level = int(unreached.nonzero()[0])
            raise DriftScheduleError(
                f"the strongest {self.family.value} perturbation tried (near max_strength="
                f"{self.max_strength}) leaves the calibration data's accuracy at "
                f"{float(accuracies[level]):.3f}, above level {level + 1}'s target "
                f"{float(targets[level]):.3f}: raise max_strength or lower accuracy_drop "
                f"(now {self.accuracy_drop})"
            )
        return high.exp().sort().values.tolist(), tuple(targets.tolist())

    def _targets(self, clean: float, floor: float, classes: int, rows: int) -> torch.Tensor:
        if clean <= floor:
            raise DriftScheduleError(
                f"the model's accuracy on the calibration data ({clean:.3f}) is not above chance "
                f"(1/{classes}) or above its accuracy at max_strength={self.max_strength} "
                f"({floor:.3f}): there is no accuracy ladder to descend; fine-tune the model "
                "first, raise max_strength or give the strengths"
            )
        step = self.accuracy_drop * (clean - floor) / self.levels
        if step * rows < 1:
            raise DriftScheduleError(
                f"the calibration data ({rows} rows, accuracy {clean:.3f}, floor {floor:.3f}) are "
                f"too small for levels={self.levels} with accuracy_drop={self.accuracy_drop}: each "
                f"level lowers the accuracy by {step:.4f}, less than one example (1/{rows}); use "
                "fewer levels or more rows"
            )
        return accuracy_ladder(clean, floor, self.levels, self.accuracy_drop).double()
