"""AR-AdaLS: label smoothing per robustness stratum, adapted on validation data."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import TrainerCallback

from nlpcal.functional.strata import (
    adapt_smoothing,
    assign_strata,
    equal_count_strata,
    stratum_calibration_gap,
)
from nlpcal.functional.targets import smoothed_targets, soft_cross_entropy
from nlpcal.losses._modules import num_labels
from nlpcal.losses.base import (
    EXAMPLE_INDEX,
    CalibrationLoss,
    LossContext,
    LossOutput,
    register_loss,
)

UNMEASURED = -1  # the stratum of a training example whose robustness was never measured


def _robustness_api() -> Any:
    # Imported on use: nlpcal.robustness builds on nlpcal.losses._modules, so a module-level
    # import would make the two packages import each other.
    import nlpcal.robustness.embedding as embedding

    return embedding


@register_loss("ar_adals")
class ARAdaLSLoss(CalibrationLoss):
    """Adversarial-robustness-based adaptive label smoothing (AR-AdaLS).

    Confirmed from the paper: examples that are easy to attack are worse calibrated, so each
    training example's label is softened according to its adversarial robustness, by amounts
    adapted on validation data. The internals are nlpcal's definition (``METHODS.md``):

    1. **Robustness** of each training example and each example of the adaptation set, measured
       on the input token embeddings by ``mode`` (:func:`~nlpcal.robustness.example_robustness`):
       ``"margin"`` the first-order estimate of the smallest flipping radius (one forward and
       one backward pass), ``"noise"`` the accuracy under Gaussian noise on the embeddings,
       ``"pgd"`` the PGD flipping radius found by binary search (costly). Misclassified examples
       get 0 in the radius modes.
    2. **Refresh** at the end of each epoch, or every ``refresh_steps`` optimizer steps; none
       after the last step. A refresh measures a random ``refresh_fraction`` of the training
       examples (drawn from ``args.seed`` and the refresh count, the same on every process);
       the others keep their last value. The adaptation set (at most ``adaptation_samples`` of
       it, the same examples each time) is measured at every refresh.
    3. **Strata**: the measured training examples are split by robustness into ``num_strata``
       equal-count strata (by rank; ties in index order); the adaptation examples are placed with
       the same edges.
    4. **Smoothing**: stratum ``b`` has its own ``ε_b`` (0 at the start), updated after each
       refresh by ``ε_b ← clip(ε_b + eta · (conf_b − acc_b), 0, max_smoothing)`` on the
       adaptation examples of stratum ``b`` (a stratum without any keeps its ``ε_b``). Each
       training example's target is label smoothing (Desai & Durrett form) with its stratum's
       ``ε``; an example not yet measured gets the mean of the ``ε_b``.

    **The first epoch** (or the first ``refresh_steps`` steps) is plain cross-entropy: every
    ``ε_b`` is 0 until the first refresh, which measures the model after that epoch; the
    pre-trained encoder's random head says nothing about robustness.

    The **adaptation set** is the eval set named ``adaptation_set``, by default the calibration
    split (``args.calibration_set`` or the trainer's ``calibration_dataset``). The post-hoc
    calibrator is then fitted on data that also tuned the ``ε_b`` (``R`` numbers, a mild
    overlap); name a separate held-out eval set to keep the two apart. It needs at least
    ``num_strata`` examples.

    The loss reads each example's index in the training set from the batch key
    ``example_index``, which :class:`~nlpcal.CalibratedTrainer` adds. Its state (robustness,
    strata, edges, ``ε``, refresh count) is logged after each refresh, saved in checkpoints and
    restored on resume; under distributed training every process measures its shard and the
    values are gathered, so the state is the same on every process. ``max_smoothing=0`` is
    plain cross-entropy.

    References:
        Qin, Wang, Beutel & Chi, "Improving Calibration through the Relationship with
        Adversarial Robustness", NeurIPS 2021.

    Args:
        num_strata: ``R ≥ 2``, the robustness strata.
        eta: step of the ``ε`` update (``> 0``).
        max_smoothing: the largest ``ε``, in ``[0, 1)``.
        mode: ``"margin"``, ``"noise"`` or ``"pgd"``.
        refresh_steps: refresh every this many optimizer steps instead of every epoch.
        refresh_fraction: fraction of the training set measured at each refresh, in ``(0, 1]``.
        adaptation_set: name of the eval set the ``ε`` are adapted on (default: the calibration
            split).
        adaptation_samples: measure at most this many adaptation examples, a random subset drawn
            once from ``args.seed`` and kept for every refresh (``None``: all).
        robustness_kwargs: options of the robustness measure (e.g. ``{"norm": "linf"}``,
            ``{"sigma": 0.5, "copies": 16}``).

    >>> from nlpcal.losses import create_loss
    >>> loss = create_loss("ar_adals", num_strata=5)
    >>> loss.num_strata, loss.mode, loss.refresh_fraction
    (5, 'margin', 0.25)
    """

    strength = "max_smoothing"
    requires_embeddings = True
    extra_inputs = (EXAMPLE_INDEX,)

    def __init__(
        self,
        num_strata: int = 10,
        eta: float = 0.5,
        max_smoothing: float = 0.5,
        mode: str = "margin",
        refresh_steps: int | None = None,
        refresh_fraction: float = 0.25,
        adaptation_set: str | None = None,
        adaptation_samples: int | None = 500,
        robustness_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        api = _robustness_api()
        if isinstance(num_strata, bool) or not isinstance(num_strata, int) or num_strata < 2:
            raise ValueError(f"num_strata must be an integer >= 2, got {num_strata!r}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if not 0.0 <= max_smoothing < 1.0:
            raise ValueError(f"max_smoothing must lie in [0, 1), got {max_smoothing}")
        if refresh_steps is not None and (
            isinstance(refresh_steps, bool)
            or not isinstance(refresh_steps, int)
            or refresh_steps < 1
        ):
            raise ValueError(
                f"refresh_steps must be a positive integer or None, got {refresh_steps!r}"
            )
        if not 0.0 < refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction must lie in (0, 1], got {refresh_fraction}")
        self.robustness_kwargs = dict(robustness_kwargs or {})
        api.check_robustness_options(mode, self.robustness_kwargs)
        self.mode = api.RobustnessMode(mode).value
        self.num_strata = num_strata
        self.eta = float(eta)
        self.max_smoothing = float(max_smoothing)
        self.refresh_steps = refresh_steps
        self.refresh_fraction = float(refresh_fraction)
        self.adaptation_set = adaptation_set
        if adaptation_samples is not None and (
            isinstance(adaptation_samples, bool)
            or not isinstance(adaptation_samples, int)
            or adaptation_samples < num_strata
        ):
            raise ValueError(
                f"adaptation_samples must be None or an integer >= num_strata={num_strata}, "
                f"got {adaptation_samples!r}"
            )
        self.adaptation_samples = adaptation_samples
        self.trainer: Any = None
        self.refresh_seconds = 0.0  # wall time spent refreshing (this process, not saved)
        self._reset(0)

    # -- state ---------------------------------------------------------------------------------
    def _reset(self, num_examples: int) -> None:
        self.robustness = torch.full((num_examples,), float("nan"))
        self.strata = torch.full((num_examples,), UNMEASURED, dtype=torch.long)
        self.edges = torch.zeros(self.num_strata - 1)
        self.epsilon = torch.zeros(self.num_strata)
        self.refreshes = 0
        self._tables: dict[torch.device, Tensor] = {}

    def example_smoothing(self, index: Tensor) -> Tensor:
        """The label smoothing ``ε`` of the training examples at ``index``, on its device."""
        table = self._tables.get(index.device)
        if table is None:
            eps = torch.cat([self.epsilon, self.epsilon.mean().view(1)])
            table = eps[self.strata].to(index.device)  # UNMEASURED (-1) picks the mean
            self._tables[index.device] = table
        if table.numel() == 0:
            return torch.zeros(index.shape, device=index.device)
        return table[index]

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_strata": self.num_strata,
            "refreshes": self.refreshes,
            "robustness": [None if math.isnan(v) else v for v in self.robustness.tolist()],
            "strata": self.strata.tolist(),
            "edges": self.edges.tolist(),
            "epsilon": self.epsilon.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("num_strata") != self.num_strata:
            raise ValueError(
                f"the ar_adals state was saved with num_strata={state.get('num_strata')!r}, but "
                f"this loss has num_strata={self.num_strata}: resume with the same num_strata"
            )
        epsilon = torch.tensor(state["epsilon"], dtype=torch.float32)
        if epsilon.shape != (self.num_strata,) or not bool(
            ((epsilon >= 0) & (epsilon <= self.max_smoothing)).all()
        ):
            raise ValueError(
                f"the ar_adals state's epsilon must hold {self.num_strata} values in "
                f"[0, max_smoothing={self.max_smoothing}], got {state['epsilon']}"
            )
        robustness = [float("nan") if v is None else v for v in state["robustness"]]
        if len(state["strata"]) != len(robustness) or len(state["edges"]) != self.num_strata - 1:
            raise ValueError(
                f"the ar_adals state is inconsistent: {len(robustness)} robustness values, "
                f"{len(state['strata'])} strata and {len(state['edges'])} edges (expected "
                f"{self.num_strata - 1})"
            )
        self._reset(len(robustness))
        self.robustness = torch.tensor(robustness, dtype=torch.float32)
        self.strata = torch.tensor(state["strata"], dtype=torch.long)
        self.edges = torch.tensor(state["edges"], dtype=torch.float32)
        self.epsilon = epsilon
        self.refreshes = int(state["refreshes"])

    def config(self) -> dict[str, Any]:
        return {
            "num_strata": self.num_strata,
            "eta": self.eta,
            "max_smoothing": self.max_smoothing,
            "mode": self.mode,
            "refresh_steps": self.refresh_steps,
            "refresh_fraction": self.refresh_fraction,
            "adaptation_set": self.adaptation_set,
            "adaptation_samples": self.adaptation_samples,
            "robustness_kwargs": self.robustness_kwargs,
        }

    # -- training ------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> None:
        super().prepare_model(model)
        k = num_labels(model)
        if k < 2:
            raise ValueError(
                f"ar_adals smooths labels and needs at least 2 classes, got num_labels={k}"
            )

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        index = inputs.get(EXAMPLE_INDEX)
        if index is None:
            raise ValueError(
                f"the ar_adals loss needs each example's training-set index under "
                f"{EXAMPLE_INDEX!r} in the batch (CalibratedTrainer adds it); got keys {sorted(inputs)}"
            )
        logits = model(**self.model_inputs(inputs)).logits
        labels = inputs["labels"]
        eps = self.example_smoothing(index)
        per_example = soft_cross_entropy(logits, smoothed_targets(labels, logits.shape[-1], eps))
        ce = F.cross_entropy(logits.detach().float(), labels)
        logs = {"ce": ce, "smoothed_ce": per_example.detach().mean(), "smoothing": eps.mean()}
        return LossOutput(loss=ctx.reduce(per_example), logits=logits, logs=logs)

    # -- refresh -------------------------------------------------------------------------------
    def attach(self, trainer: Any) -> None:
        self.trainer = trainer

    def callbacks(self) -> list[Any]:
        return [_Refresh(self)]

    def adaptation_data(self) -> Any:
        """The adaptation set of the attached trainer; ``ValueError`` if there is none."""
        trainer = self.trainer
        if self.adaptation_set is not None:
            sets = trainer.eval_dataset if isinstance(trainer.eval_dataset, Mapping) else {}
            if self.adaptation_set not in sets:
                raise ValueError(
                    f"ar_adals adaptation_set={self.adaptation_set!r} is not an eval set; "
                    f"eval_dataset names: {sorted(sets)}"
                )
            return sets[self.adaptation_set]
        data = trainer._calibration_data()
        if data is None:
            raise ValueError(
                "ar_adals adapts its smoothing on held-out data: set its adaptation_set to the "
                "name of an eval set, or give the trainer a calibration split (args.calibration_set "
                "or calibration_dataset)"
            )
        return data

    def check_data(self) -> None:
        """Fail before training when the data cannot be stratified or does not fit the state."""
        n_train = len(self.trainer.train_dataset)
        measured = math.ceil(self.refresh_fraction * n_train)
        if measured < self.num_strata:
            raise ValueError(
                f"ar_adals cannot split {measured} training examples (refresh_fraction="
                f"{self.refresh_fraction} of {n_train}) into num_strata={self.num_strata} strata"
            )
        n_val = len(self.adaptation_data())  # the cap is >= num_strata
        if n_val < self.num_strata:
            raise ValueError(
                f"the ar_adals adaptation set has {n_val} examples, fewer than "
                f"num_strata={self.num_strata}: use a larger set or fewer strata"
            )
        if self.refreshes and len(self.robustness) != n_train:
            raise ValueError(
                f"the ar_adals state covers {len(self.robustness)} training examples but the "
                f"training set has {n_train}: resume with the same training set"
            )
        if len(self.robustness) != n_train:
            self._reset(n_train)

    def refresh(self) -> dict[str, float]:
        """Measure robustness, re-stratify and update every ``ε_b``; returns the logged values."""
        start = time.perf_counter()
        trainer = self.trainer
        train = trainer.train_dataset
        n = len(train)
        g = torch.Generator().manual_seed(int(trainer.args.seed) * 1_000_003 + self.refreshes)
        subset = torch.arange(n)
        if self.refresh_fraction < 1.0:
            subset = (
                torch.randperm(n, generator=g)[: math.ceil(self.refresh_fraction * n)].sort().values
            )
        values, _, _ = self._measure(_select(train, subset))
        self.robustness[subset] = values
        measured = (~torch.isnan(self.robustness)).nonzero().squeeze(1)
        strata, self.edges = equal_count_strata(self.robustness[measured], self.num_strata)
        self.strata.fill_(UNMEASURED)
        self.strata[measured] = strata
        val_values, confidence, correct = self._measure(self._adaptation_subset(), clean=True)
        gap, counts = stratum_calibration_gap(
            confidence, correct, assign_strata(val_values, self.edges), self.num_strata
        )
        self.epsilon = adapt_smoothing(self.epsilon, gap, counts, self.eta, self.max_smoothing)
        self.refreshes += 1
        self._tables = {}
        seconds = time.perf_counter() - start
        self.refresh_seconds += seconds
        logs = {
            f"{self.name}/refresh_seconds": round(seconds, 3),
            f"{self.name}/robustness_median": float(self.robustness[measured].median()),
            **{f"{self.name}/epsilon_{b}": round(float(e), 6) for b, e in enumerate(self.epsilon)},
            **{f"{self.name}/gap_{b}": round(float(v), 6) for b, v in enumerate(gap)},
        }
        trainer.log(logs)
        return logs

    def _adaptation_subset(self) -> Any:
        """The adaptation examples measured at every refresh: a fixed subset of the cap's size."""
        data = self.adaptation_data()
        n = len(data)
        if self.adaptation_samples is None or n <= self.adaptation_samples:
            return data
        g = torch.Generator().manual_seed(int(self.trainer.args.seed))
        return _select(
            data, torch.randperm(n, generator=g)[: self.adaptation_samples].sort().values
        )

    def _measure(self, dataset: Any, clean: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Robustness of every example of ``dataset`` and, with ``clean``, the clean confidence
        and correctness (else empty), gathered over processes in dataset order."""
        from nlpcal.robustness.measure import measure_robustness

        measured = measure_robustness(
            self.trainer,
            dataset,
            self.mode,
            probs=clean,
            seed=int(self.trainer.args.seed) * 1_000_003 + self.refreshes,
            drop=self.extra_inputs,
            **self.robustness_kwargs,
        )
        if not clean:
            return measured.robustness, torch.empty(0), torch.empty(0)
        confidence, predicted = measured.probs.max(dim=-1)
        return measured.robustness, confidence, (predicted == measured.labels).float()


def _select(dataset: Any, indices: Tensor) -> Any:
    if len(indices) == len(dataset):
        return dataset
    if hasattr(dataset, "select"):
        return dataset.select(indices.tolist())
    return torch.utils.data.Subset(dataset, indices.tolist())


class _Refresh(TrainerCallback):
    """Refreshes the AR-AdaLS state at epoch ends (or every ``refresh_steps`` steps)."""

    def __init__(self, loss: ARAdaLSLoss) -> None:
        self.loss = loss

    def on_train_begin(self, args, state, control, **kwargs):
        self.loss.check_data()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        every = self.loss.refresh_steps
        if every and state.global_step % every == 0 and state.global_step < state.max_steps:
            self.loss.refresh()
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.loss.refresh_steps is None and state.global_step < state.max_steps:
            self.loss.refresh()
        return control
