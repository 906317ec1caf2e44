"""``CalibratedTrainer``: a ``transformers.Trainer`` with pluggable calibration losses.

It overrides the documented hooks only: ``compute_loss`` delegates to the configured
:class:`~nlpcal.losses.CalibrationLoss`; ``prediction_step`` returns raw logits (and penultimate
features when a post-hoc calibrator needs them); ``evaluate`` scores any number of named eval
sets, in-domain and out-of-domain, for every variant; ``train`` fits the post-hoc calibrators
afterwards; ``save_model`` stores the calibration with the model; ``log`` flushes the loss's own
diagnostics.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, speed_metrics

from nlpcal._io import staged_folder, write_text_atomic
from nlpcal.args import PosthocVariant, calibration_settings, posthoc_variants
from nlpcal.data.prepare import length_order
from nlpcal.functional.metrics import evaluation_metrics
from nlpcal.functional.ood import ood_detection_metrics
from nlpcal.functional.predictive import (
    class_probabilities,
    predictive_ood_score,
    split_confidence,
)
from nlpcal.hub import (
    DIAGRAM_NAME,
    REPLACED_ON_SAVE,
    HubError,
    calibration_record,
    hub_reason,
    model_card,
    save_calibration,
)
from nlpcal.losses import EXAMPLE_INDEX, CalibrationLoss, LossContext, create_loss
from nlpcal.losses.sites import model_sites
from nlpcal.posthoc import Calibrator, calibrator_class, create_calibrator
from nlpcal.robustness.drift import DriftSchedule, EmbeddingDrift

logger = logging.getLogger(__name__)

__all__ = ["CalibratedTrainer", "Predictions", "VariantOutput"]

LOSS_STATE_NAME = "nlpcal_loss_state.json"
UNCALIBRATED = "none"


@dataclass
class Predictions:
    """Predictions of a model on one dataset, gathered over processes.

    Attributes:
        logits: the loss's predictive logits (``transform_logits`` of the raw logits), ``(n, K)``.
        labels: integer labels ``(n,)``, or ``None`` for an unlabelled set.
        features: penultimate features ``(n, H)`` when a calibrator needs them, else ``None``.
    """

    logits: Tensor
    labels: Tensor | None
    features: Tensor | None = None


@dataclass
class VariantOutput:
    """What every metric reads from one variant (uncalibrated, or after one calibrator) on one set.

    Attributes:
        class_probs: class confidences ``(n, K)``; rows sum to one, except for SLOVA's
            unnormalised outputs (see :mod:`nlpcal.functional.predictive`).
        ood: per-example in-distribution score ``(n,)`` (``args.ood_score``).
    """

    class_probs: Tensor
    ood: Tensor

    @property
    def probs(self) -> Tensor:
        """The predictive distribution, rows renormalised to sum to one (Brier, NLL)."""
        return split_confidence(self.class_probs)[0]

    def metrics(self, labels: Tensor, n_bins: int) -> dict[str, Tensor]:
        """:func:`~nlpcal.functional.metrics.evaluation_metrics` on the top-label confidence."""
        probs, confidence = split_confidence(self.class_probs)
        return evaluation_metrics(probs, labels, n_bins=n_bins, confidence=confidence)


class CalibratedTrainer(Trainer):
    """A ``Trainer`` whose loss, evaluation and saving are calibration-aware.

    Args:
        model: an ``AutoModelForSequenceClassification``-style model (returns ``.logits``).
        args: :class:`~nlpcal.CalibrationArguments`, or a plain ``TrainingArguments`` (then the
            calibration defaults apply: cross-entropy, automatic post-hoc calibrator).
        loss: overrides ``args.calibration_loss``: a registered name or a loss instance.
        calibrator: a fitted :class:`~nlpcal.posthoc.Calibrator` to use from the start, as the
            only variant (under its name) until :meth:`calibrate` fits ``args.posthoc``.
        calibration_dataset: held-out data the post-hoc calibrators are fitted on after training
            (default: the eval set named by ``args.calibration_set``).
        drift_datasets: perturbed copies of the calibration data (e.g. text corruptions, built
            by the caller from the raw text) that the variants of ``args.drift_variants`` are
            fitted on too; none with ``args.drift_perturbation``, which builds its own copies.
        **kwargs: everything ``transformers.Trainer`` takes (train_dataset, eval_dataset as one
            dataset or a dict of named datasets, processing_class, data_collator, callbacks, ...).

    Attributes:
        posthoc: the post-hoc variants that :meth:`calibrate` fits, by variant name
            (:func:`~nlpcal.args.posthoc_variants` of ``args.posthoc``).
        calibrators: the fitted post-hoc calibrators by variant name, in ``args.posthoc`` order.
        active_calibrator: the variant that :meth:`calibrated_probs` applies and a saved model
            loads by default (``args.active_calibrator``, else the first); ``None`` without one.
        drift_schedule: with ``args.drift_perturbation``, the strengths of the embedding copies
            found on the calibration data by the last :meth:`calibrate` (and the accuracies they
            give); ``None`` before.
        drift_description: how the caller built the trainer's ``drift_datasets`` (``"mixed
            text corruptions at severities 1, 2, 3, 4, 5, seed 0"``), kept in the saved
            calibration record; ``None`` unless set, and reset by :meth:`calibrate` with other
            ``drift_datasets``.

    Example:
        >>> from nlpcal import CalibratedTrainer, CalibrationArguments  # doctest: +SKIP
        >>> args = CalibrationArguments("out", calibration_loss="label_smoothing",
        ...                             calibration_set="dev", ood_sets=["imdb"])  # doctest: +SKIP
        >>> trainer = CalibratedTrainer(model, args, train_dataset=train,
        ...     eval_dataset={"sst2": test, "dev": dev, "imdb": imdb})  # doctest: +SKIP
        >>> trainer.train(); trainer.evaluate()["eval_imdb_ece"]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        *,
        loss: str | CalibrationLoss | None = None,
        calibrator: Calibrator | None = None,
        calibration_dataset: Any = None,
        drift_datasets: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("CalibratedTrainer needs a model (model_init is not supported)")
        self.calibration = calibration_settings(args)
        if isinstance(loss, CalibrationLoss):
            self.calibration_loss = loss
        else:
            name = loss or self.calibration["calibration_loss"]
            self.calibration_loss = create_loss(name, **self.calibration["loss_kwargs"])
        self.posthoc: dict[str, PosthocVariant] = posthoc_variants(
            self.calibration["posthoc"],
            self.calibration["posthoc_kwargs"],
            self.calibration_loss.default_calibrator,
        )
        unknown = [v for v in self.calibration["drift_variants"] if v not in self.posthoc]
        if unknown:
            raise ValueError(
                f"drift_variants {unknown} are not posthoc variants; variants: {list(self.posthoc)}"
            )
        self.drift_perturbation = _embedding_drift(
            self.calibration["drift_perturbation"],
            self.calibration["drift_perturbation_kwargs"],
            drift_datasets,
        )
        active = self.calibration["active_calibrator"]
        if active is not None and active not in self.posthoc:
            raise ValueError(
                f"active_calibrator {active!r} is not a posthoc variant; "
                f"variants: {list(self.posthoc)}"
            )
        predictive_ood_score(torch.zeros(1, 2), self.calibration["ood_score"])
        self.calibration_loss.prepare_model(model)
        model.config.nlpcal_loss = self.calibration_loss.name
        super().__init__(model=model, args=args, **kwargs)
        # compute_loss normalises by num_items_in_batch itself; this makes the Trainer count it
        # and skip its own division by the gradient-accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.calibrators: dict[str, Calibrator] = {}
        self.active_calibrator: str | None = None
        self.calibrator = calibrator
        self.calibration_dataset = calibration_dataset
        self.drift_datasets = list(drift_datasets or [])
        self._drift_copies = 0  # how many perturbed copies the last calibrate() fitted on
        self.drift_description: str | None = None
        self.drift_schedule: DriftSchedule | None = None
        self._diagnostics: dict[str, Tensor] = {}
        self._diagnostic_steps = 0
        self._collect_features = False
        self.last_eval_metrics: dict[str, float] = {}
        self.last_eval_curves: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.calibration_loss.attach(self)
        for callback in self.calibration_loss.callbacks():
            self.add_callback(callback)
        self.add_callback(_SaveLossState(self))
        if self.eval_dataset is not None:
            self._check_eval_set_names()

    # -- training --------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        ctx = LossContext(
            num_items_in_batch=num_items_in_batch,
            progress=self.state.global_step / max(self.state.max_steps, 1),
            trainer=self,
        )
        out = self.calibration_loss(model, inputs, ctx)
        loss = out.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's examples while DDP averages gradients.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if model.training:
            for key, value in out.logs.items():
                self._diagnostics[key] = self._diagnostics.get(key, 0.0) + value.detach().float()
            self._diagnostic_steps += 1
        return (loss, {"logits": out.logits}) if return_outputs else loss

    def _set_signature_columns_if_needed(self) -> None:
        # The columns the loss consumes (extra_inputs, e.g. the example index) survive
        # remove_unused_columns next to the model's own inputs and the labels.
        super()._set_signature_columns_if_needed()
        extra = [c for c in self.calibration_loss.extra_inputs if c not in self._signature_columns]
        self._signature_columns += extra

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._diagnostic_steps:
            prefix = self.calibration_loss.name
            for key, total in self._diagnostics.items():
                logs[f"{prefix}/{key}"] = round(float(total) / self._diagnostic_steps, 6)
            self._diagnostics.clear()
            self._diagnostic_steps = 0
        super().log(logs, start_time)

    def train(
        self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any
    ):
        if self.train_dataset is not None:
            _check_dataset_labels(self.train_dataset, "train_dataset", self.model.config)
            if EXAMPLE_INDEX in self.calibration_loss.extra_inputs:
                self.train_dataset = _with_example_index(self.train_dataset)
        self._check_eval_set_names()
        if resume_from_checkpoint:
            checkpoint = resume_from_checkpoint
            if checkpoint is True:
                checkpoint = get_last_checkpoint(self.args.output_dir)
                if checkpoint is None:
                    raise ValueError(f"no checkpoint found in output_dir {self.args.output_dir}")
            state_file = Path(checkpoint) / LOSS_STATE_NAME
            if state_file.is_file():
                self.calibration_loss.load_state_dict(json.loads(state_file.read_text()))
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        if self.posthoc and self._calibration_data() is not None:
            self.calibrate()
        return output

    # -- post-hoc calibration ----------------------------------------------------------------------
    @property
    def calibrator(self) -> Calibrator | None:
        """The active post-hoc calibrator, or ``None``. Setting one makes it the only variant,
        under its name; setting ``None`` drops every calibrator."""
        return self.calibrators.get(self.active_calibrator)

    @calibrator.setter
    def calibrator(self, calibrator: Calibrator | None) -> None:
        self.calibrators = {} if calibrator is None else {calibrator.name: calibrator}
        self.active_calibrator = None if calibrator is None else calibrator.name

    def calibrate(
        self, dataset: Any = None, drift_datasets: Sequence[Any] | None = None
    ) -> dict[str, Calibrator]:
        """Fit every post-hoc variant of ``args.posthoc`` on held-out ``dataset`` (one prediction
        pass) and log ECE, NLL and Brier before and after each, on ``dataset``.

        ``dataset`` defaults to ``calibration_dataset`` or the eval set named by
        ``args.calibration_set``. Never pass test data. The variants of ``args.drift_variants``
        are fitted drift-aware: on ``dataset`` and its perturbed copies (:meth:`drift_predictions`:
        ``drift_datasets``, by default the trainer's, or with ``args.drift_perturbation`` copies
        in embedding space at strengths searched anew on ``dataset``, kept in
        :attr:`drift_schedule`). The mixture weights the clean data and each copy equally: they
        hold the same rows, so they are concatenated (with ``L`` copies the clean rows are
        ``1 / (L + 1)`` of the fitting data). Returns :attr:`calibrators`.
        """
        dataset = dataset if dataset is not None else self._calibration_data()
        if dataset is None:
            raise ValueError(
                "no calibration data: pass calibration_dataset= to the trainer, set "
                "args.calibration_set to the name of a held-out eval set, or call calibrate(dataset)"
            )
        if not self.posthoc:
            raise ValueError("post-hoc calibration is disabled (args.posthoc is 'none')")
        features = any(
            calibrator_class(v.calibrator).requires_features for v in self.posthoc.values()
        )
        preds = self._predict(dataset, "calibration", features=features)
        if preds.labels is None:
            raise ValueError("the calibration dataset has no labels")
        self.drift_schedule = None
        if drift_datasets is not None:  # copies the trainer's description does not describe
            self.drift_description = None
        drift = self.drift_predictions(drift_datasets, len(preds.labels), dataset)
        self._drift_copies = len(drift)
        self.calibrators = self._fit_variants(preds, drift)
        self.active_calibrator = self.calibration["active_calibrator"] or next(iter(self.posthoc))
        bins = self.calibration["ece_bins"]
        outputs = self.variant_outputs(preds)
        before = outputs[UNCALIBRATED].metrics(preds.labels, bins)
        logs = {f"calibration_{k}_before": float(before[k]) for k in ("ece", "nll", "brier")}
        if self.drift_schedule is not None:
            for level, (strength, accuracy) in enumerate(
                zip(self.drift_schedule.strengths, self.drift_schedule.accuracies, strict=True), 1
            ):
                logs[f"calibration_drift_{level}_strength"] = strength
                logs[f"calibration_drift_{level}_accuracy"] = accuracy
        for variant in self.calibrators:
            after = outputs[variant].metrics(preds.labels, bins)
            logs.update(
                {
                    f"calibration_{variant}_{k}_after": float(after[k])
                    for k in ("ece", "nll", "brier")
                }
            )
        self.log(logs)
        return self.calibrators

    def drift_predictions(
        self,
        drift_datasets: Sequence[Any] | None = None,
        n: int | None = None,
        dataset: Any = None,
    ) -> list[Predictions]:
        """Predictions on the perturbed copies of the calibration data that drift-aware variants
        are fitted on (none when ``args.drift_variants`` is empty).

        The copies are ``drift_datasets`` (default: the trainer's), data sets the caller built
        (text corruptions need the raw text); or, with ``args.drift_perturbation``, copies of
        ``dataset`` (default: the calibration data) perturbed in input-embedding space by
        :class:`~nlpcal.robustness.EmbeddingDrift`, at the strengths of :attr:`drift_schedule`
        (searched on ``dataset`` and kept there when there is none yet). Embedding copies are
        deterministic under ``drift_perturbation_kwargs["seed"]`` for a given eval batch size.

        Raises:
            ValueError: drift-aware variants without perturbed copies, both kinds of copies, or
                a copy whose rows differ in number from the calibration data's ``n``.
        """
        if not self.calibration["drift_variants"]:
            return []
        features = any(
            calibrator_class(self.posthoc[v].calibrator).requires_features
            for v in self.calibration["drift_variants"]
        )
        if self.drift_perturbation is not None:
            if drift_datasets:
                raise ValueError(
                    "drift_datasets were passed, but args.drift_perturbation builds the perturbed "
                    "copies: give one or the other"
                )
            preds = self._embedding_drift_predictions(dataset, features)
        else:
            datasets = list(drift_datasets) if drift_datasets is not None else self.drift_datasets
            if not datasets:
                raise ValueError(
                    f"drift_variants {self.calibration['drift_variants']} need perturbed copies of "
                    "the calibration data: pass drift_datasets= to the trainer or to calibrate(), "
                    "or set args.drift_perturbation"
                )
            preds = [
                self._predict(d, f"calibration (perturbed copy {i})", features=features)
                for i, d in enumerate(datasets, 1)
            ]
        for i, p in enumerate(preds, 1):
            if p.labels is None or (n is not None and len(p.labels) != n):
                raise ValueError(
                    f"perturbed copy {i} of the calibration data must be labelled and have its "
                    f"{n} rows, got {None if p.labels is None else len(p.labels)}"
                )
        return preds

    def _embedding_drift_predictions(self, dataset: Any, features: bool) -> list[Predictions]:
        """The copies of ``dataset`` perturbed in embedding space, as predictive logits."""
        dataset = dataset if dataset is not None else self._calibration_data()
        if dataset is None:
            raise ValueError(
                "no calibration data to perturb: pass calibration_dataset= to the trainer or "
                "call calibrate(dataset)"
            )
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        known = self.drift_schedule
        schedule, copies = self.drift_perturbation(
            self,
            dataset,
            features=features,
            drop=tuple(self.calibration_loss.extra_inputs),
            strengths=None if known is None else known.strengths,
        )
        if known is None:
            self.drift_schedule = schedule
        model = self.accelerator.unwrap_model(self.model)
        preds = []
        with torch.no_grad():
            for level, raw in enumerate(copies.logits):
                z = raw.to(self.args.device)
                logits = self.calibration_loss.transform_logits(z, model).float().cpu()
                level_features = None if copies.features is None else copies.features[level]
                preds.append(Predictions(logits, copies.labels, level_features))
        return preds

    def _fit_variants(
        self, preds: Predictions, drift: Sequence[Predictions], rows: Tensor | None = None
    ) -> dict[str, Calibrator]:
        """Every post-hoc variant fitted on ``preds`` (its ``rows`` only, if given); the drift-aware
        ones on ``preds`` and each perturbed copy of the same rows."""

        def part(p: Predictions) -> Predictions:
            if rows is None:
                return p
            return Predictions(p.logits[rows], p.labels[rows], _rows(p.features, rows))

        clean = part(preds)
        mixture = _concat([clean, *(part(p) for p in drift)]) if drift else clean
        fitted = {}
        for variant, (name, kwargs) in self.posthoc.items():
            data = mixture if variant in self.calibration["drift_variants"] else clean
            fitted[variant] = create_calibrator(name, **kwargs).fit(
                data.logits, data.labels, data.features
            )
        return fitted

    def _calibration_data(self) -> Any:
        if self.calibration_dataset is not None:
            return self.calibration_dataset
        name = self.calibration["calibration_set"]
        if name is None:
            return None
        self._check_eval_set_names()
        return self.eval_dataset[name]

    def _check_eval_set_names(self) -> None:
        """Every eval set that the arguments name exists: checked when the trainer is built with
        eval sets and again before the first training step. Without eval sets only the
        calibration set must exist then (training ends by fitting on it); the OOD sets may come
        with a later ``evaluate(eval_dataset=...)``."""
        named = {"calibration_set": [self.calibration["calibration_set"]]}
        if self.calibration_dataset is not None:
            named["calibration_set"] = []
        if self.eval_dataset is not None:
            named["in_domain_set"] = [self.calibration["in_domain_set"]]
            named["ood_sets"] = list(self.calibration["ood_sets"])
        sets = self.eval_dataset if isinstance(self.eval_dataset, Mapping) else {}
        for argument, names in named.items():
            missing = [n for n in names if n is not None and n not in sets]
            if missing:
                raise ValueError(
                    f"{argument} names {missing}, which are not eval sets; "
                    f"eval_dataset names: {sorted(sets)} (pass eval_dataset as a dict of named sets)"
                )

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Score every eval set: accuracy, ECE, MCE, Brier, NLL, AURC, before and after calibration.

        With a dict of named sets, keys are ``{prefix}_{set}_{metric}``, metrics after each post-hoc
        calibrator are ``{prefix}_{set}_{variant}_{metric}``, and each out-of-domain set
        (``args.ood_sets``) gets ``{prefix}_{set}_ood_auroc`` (and AUPR-in/out, FPR@95%TPR)
        against the in-domain set, with in-distribution as the positive class. ``ignore_keys`` is
        accepted for compatibility; only logits are collected.
        """
        start = time.time()
        sets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if sets is None:
            raise ValueError("evaluate needs an eval_dataset")
        named = dict(sets) if isinstance(sets, Mapping) else {None: sets}
        preds = {name: self.predictions(ds, name or "eval") for name, ds in named.items()}
        outputs = {name: self.variant_outputs(pred) for name, pred in preds.items()}
        metrics: dict[str, float] = {}
        for name, pred in preds.items():
            key = f"{metric_key_prefix}_{name}" if name else metric_key_prefix
            metrics.update(self._set_metrics(pred, outputs[name], key))
        metrics.update(self._ood_metrics(outputs, metric_key_prefix))
        self.last_eval_curves = self._reliability_curves(preds, outputs)
        n_samples = sum(len(p.logits) for p in preds.values())
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=n_samples))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        self.last_eval_metrics = metrics
        return metrics

    def predictions(
        self, dataset: Any, name: str = "predict", features: bool | None = None
    ) -> Predictions:
        """Uncalibrated predictive logits, OOD scores and labels of the model on ``dataset``.

        ``features`` collects the penultimate (first-token) features; by default only when a
        fitted calibrator needs them.
        """
        if features is None:
            features = any(c.requires_features for c in self.calibrators.values())
        return self._predict(dataset, name, features=features)

    def variant_outputs(
        self, preds: Predictions, calibrators: Mapping[str, Calibrator] | None = None
    ) -> dict[str, VariantOutput]:
        """The outputs of every variant on one set: ``"none"`` (uncalibrated) and each calibrator.

        ``calibrators`` maps variant names to fitted calibrators; by default the trainer's own
        (:attr:`calibrators`). Each variant reads its outputs the way its last stage defines them
        (``normalized``): the loss for ``"none"``, the calibrator otherwise.
        """
        if calibrators is None:
            calibrators = self.calibrators
        method = self.calibration["ood_score"]
        variants = {UNCALIBRATED: (preds.logits, self.calibration_loss.normalized)}
        with torch.no_grad():
            for name, calibrator in calibrators.items():
                logits = calibrator(preds.logits, preds.features).float()
                variants[name] = (logits, calibrator.normalized)
        return {
            name: VariantOutput(
                class_probs=class_probabilities(logits, normalized),
                ood=predictive_ood_score(logits, method, normalized),
            )
            for name, (logits, normalized) in variants.items()
        }

    def cross_fitted_outputs(
        self,
        preds: Predictions,
        folds: int = 2,
        seed: int = 0,
        drift: Sequence[Predictions] = (),
    ) -> dict[str, VariantOutput]:
        """The outputs of every variant of ``args.posthoc`` on held-out data, each example scored
        by calibrators fitted on the other folds only (cross-fitting), so that methods can be
        compared on the calibration split without scoring a calibrator on its own fitting data.

        ``preds`` are the predictions on the calibration data (with features when a variant needs
        them); the folds are a seeded random partition. ``"none"`` is the uncalibrated model,
        which never saw this data. Drift-aware variants are fitted on the other folds' rows of
        ``preds`` and of each perturbed copy in ``drift`` (:meth:`drift_predictions`). The
        trainer's own :attr:`calibrators` are left alone.

        Raises:
            ValueError: ``preds`` without labels, ``folds < 2``, or a fold with fewer than two
                examples.
        """
        if preds.labels is None:
            raise ValueError("cross-fitting needs labelled predictions")
        n = len(preds.labels)
        if folds < 2 or n < 2 * folds:
            raise ValueError(
                f"folds={folds}: expected at least 2 folds of at least 2 examples each "
                f"({n} examples)"
            )
        generator = torch.Generator().manual_seed(seed)
        fold_of = torch.randperm(n, generator=generator) % folds
        class_probs = {}
        ood = {}
        for fold in range(folds):
            fit, held = fold_of != fold, fold_of == fold
            calibrators = self._fit_variants(preds, drift, rows=fit)
            part = Predictions(preds.logits[held], preds.labels[held], _rows(preds.features, held))
            for variant, output in self.variant_outputs(part, calibrators).items():
                class_probs.setdefault(variant, preds.logits.new_empty(preds.logits.shape))
                ood.setdefault(variant, preds.logits.new_empty(n))
                class_probs[variant][held] = output.class_probs
                ood[variant][held] = output.ood
        return {v: VariantOutput(class_probs[v], ood[v]) for v in class_probs}

    def calibrated_probs(self, preds: Predictions) -> Tensor:
        """The predictive distribution after the active post-hoc calibrator (uncalibrated if none
        is fitted); rows sum to one. For SLOVA's outputs the confidence is not its maximum: see
        :meth:`variant_outputs`."""
        active = {} if self.calibrator is None else {self.active_calibrator: self.calibrator}
        return self.variant_outputs(preds, active)[self.active_calibrator or UNCALIBRATED].probs

    def _set_metrics(
        self, pred: Predictions, outputs: Mapping[str, VariantOutput], key: str
    ) -> dict[str, float]:
        if pred.labels is None:
            return {}
        bins = self.calibration["ece_bins"]
        metrics = {f"{key}_loss": float(F.cross_entropy(pred.logits.float(), pred.labels))}
        for variant, output in outputs.items():
            tag = "" if variant == UNCALIBRATED else f"{variant}_"
            values = output.metrics(pred.labels, bins)
            metrics.update({f"{key}_{tag}{k}": float(v) for k, v in values.items()})
        return metrics

    def _ood_metrics(
        self, outputs: Mapping[str | None, Mapping[str, VariantOutput]], prefix: str
    ) -> dict[str, float]:
        """OOD detection of each out-of-domain set against the in-domain set, per variant."""
        ood_names = self.calibration["ood_sets"]
        if not ood_names:
            return {}
        missing = [n for n in ood_names if n not in outputs]
        if missing:
            raise ValueError(
                f"ood_sets {missing} are not among the eval sets {sorted(map(str, outputs))}"
            )
        in_name = self._in_domain_name(outputs)
        if in_name not in outputs:
            raise ValueError(
                f"in-domain set {in_name!r} is not among the eval sets {sorted(map(str, outputs))}"
            )
        metrics = {}
        for name in ood_names:
            for variant, output in outputs[name].items():
                tag = "" if variant == UNCALIBRATED else f"{variant}_"
                values = ood_detection_metrics(outputs[in_name][variant].ood, output.ood)
                metrics.update(
                    {f"{prefix}_{name}_{tag}ood_{k}": float(v) for k, v in values.items()}
                )
        return metrics

    def _in_domain_name(self, names: Any) -> str | None:
        """``args.in_domain_set``, else the first eval set that is neither out-of-domain nor the
        calibration set."""
        return self.calibration["in_domain_set"] or next(
            (
                n
                for n in names
                if n not in self.calibration["ood_sets"]
                and n != self.calibration["calibration_set"]
            ),
            None,
        )

    def _reliability_curves(
        self, preds: Mapping[str | None, Predictions], outputs: Mapping[Any, Any]
    ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """What the model card's reliability diagram draws: ``(probs, labels, confidence)`` of
        the in-domain set before and after the active calibrator, and of each shifted set after
        it."""
        variant = self.active_calibrator or UNCALIBRATED
        names = [n for n in preds if n is not None]
        in_name = self._in_domain_name(names) if names else None
        chosen = [(in_name, UNCALIBRATED), (in_name, variant)]
        chosen += [(n, variant) for n in self.calibration["ood_sets"]]
        curves = {}
        for name, which in dict.fromkeys(chosen):
            if name not in preds or preds[name].labels is None or which not in outputs[name]:
                continue
            probs, confidence = split_confidence(outputs[name][which].class_probs)
            kind = "shifted" if name in self.calibration["ood_sets"] else "in-domain"
            label = "uncalibrated" if which == UNCALIBRATED else which
            curves[f"{name or 'eval'} ({kind}), {label}"] = (probs, preds[name].labels, confidence)
        return curves

    def _predict(self, dataset: Any, name: str, features: bool = False) -> Predictions:
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        if hasattr(dataset, "column_names"):
            _check_dataset_labels(dataset, f"eval set {name!r}", self.model.config, required=False)
        order = length_order(dataset)
        if order is not None:  # batches of similar lengths pad less; the order is restored below
            dataset = dataset.select(order)
        self._collect_features = features
        try:
            output = self._evaluation_output(dataset, name)
        finally:
            self._collect_features = False
        raw, feats = output.predictions if features else (output.predictions, None)
        if raw is None or len(raw) == 0:
            raise ValueError(f"eval set {name!r} is empty")
        raw = torch.as_tensor(np.asarray(raw))
        model = self.accelerator.unwrap_model(self.model)
        with torch.no_grad():
            z = raw.to(self.args.device)
            logits = self.calibration_loss.transform_logits(z, model).float().cpu()
        labels = (
            None
            if output.label_ids is None
            else torch.as_tensor(np.asarray(output.label_ids)).long()
        )
        preds = Predictions(
            logits=logits,
            labels=labels,
            features=None if feats is None else torch.as_tensor(np.asarray(feats)).float(),
        )
        if order is None:
            return preds
        inverse = torch.as_tensor(np.argsort(order, kind="stable"))
        return Predictions(
            logits=preds.logits[inverse],
            labels=None if preds.labels is None else preds.labels[inverse],
            features=None if preds.features is None else preds.features[inverse],
        )

    def _evaluation_output(self, dataset: Any, name: str) -> Any:
        """The evaluation loop over ``dataset``; out of memory, the eval batch size is halved
        (and kept) until a batch fits."""
        from accelerate.utils.memory import should_reduce_batch_size

        while True:
            try:
                return self.evaluation_loop(
                    self.get_eval_dataloader(dataset),
                    description=f"Predicting {name}",
                    prediction_loss_only=False,
                    metric_key_prefix=name,
                )
            except Exception as err:
                size = self.args.per_device_eval_batch_size
                if size <= 1 or not should_reduce_batch_size(err):
                    raise
                self.args.per_device_eval_batch_size = size // 2
                logger.warning(
                    "out of memory predicting %s %d examples a batch: trying %d",
                    name,
                    size,
                    size // 2,
                )
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | tuple[Tensor, Tensor] | None, Tensor | None]:
        """Raw logits (and the model's penultimate features if needed: the first token's for
        text, :func:`~nlpcal.losses.sites.model_sites`); the loss is the predictive NLL."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        features = self._collect_features
        with torch.no_grad():
            outputs = model(
                **self.calibration_loss.model_inputs(inputs), output_hidden_states=features or None
            )
            logits = outputs.logits
            loss = None
            if labels is not None:
                unwrapped = self.accelerator.unwrap_model(model)
                predictive = self.calibration_loss.transform_logits(logits, unwrapped)
                loss = F.cross_entropy(predictive.float(), labels).detach()
        if prediction_loss_only:
            return loss, None, None
        if features:
            sites = model_sites(self.accelerator.unwrap_model(model))
            return loss, (logits, sites.features(outputs)), labels
        return loss, logits, labels

    # -- saving --------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model as ``Trainer`` does, plus the loss and every fitted calibrator (under
        ``calibrators/<variant>/``, the active one recorded; see :func:`~nlpcal.load_calibrated`).

        Outside training, the active calibrator is folded into the saved output layer when it
        can be (:func:`~nlpcal.hub.save_calibration`): plain ``transformers`` then loads a
        calibrated model, and ``load_calibrated`` restores the unfolded layer before applying
        any saved variant. The other variants are saved as they are, applied by
        ``load_calibrated(..., calibrator=variant)`` only. Checkpoints written during training
        are never folded, so that resuming continues from the trained weights.

        The saving process writes weights, config, tokenizer, training arguments and calibration
        to a temporary folder beside ``output_dir`` and moves them in only once all are written:
        a failed save leaves the previous one intact. Weight shards and calibrators of a previous
        save that this one does not write are removed; checkpoints, logs and any other content of
        ``output_dir`` are left alone.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            with staged_folder(output_dir, REPLACED_ON_SAVE) as staging:
                super().save_model(str(staging), _internal_call=True)
                save_calibration(
                    staging,
                    self.calibration_loss,
                    self.calibrators,
                    self.active_calibrator,
                    self.accelerator.unwrap_model(self.model),
                    **self._record_kwargs(),
                )
        else:
            # The other processes only join the collective gathers of a distributed save.
            super().save_model(output_dir, _internal_call=True)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def create_model_card(self, **kwargs: Any) -> None:
        """``Trainer``'s model card made calibration-aware (:func:`~nlpcal.hub.model_card`):
        which loaders give calibrated outputs, the loss and calibrators with their references,
        the metrics table of the last :meth:`evaluate`, a ``model-index`` of the calibrated
        metrics, and the reliability diagram of the last evaluation, saved beside it as
        ``reliability_diagram.png``."""
        from huggingface_hub import ModelCard

        from nlpcal.metrics.plots import reliability_diagram

        super().create_model_card(**kwargs)
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        record = calibration_record(
            self.calibration_loss,
            self.calibrators,
            self.active_calibrator,
            self.accelerator.unwrap_model(self.model),
            **self._record_kwargs(),
        )
        diagram = None
        if self.last_eval_curves:
            bins = self.calibration["ece_bins"]
            reliability_diagram(self.last_eval_curves, n_bins=bins, path=output_dir / DIAGRAM_NAME)
            diagram = DIAGRAM_NAME
        card_file = output_dir / "README.md"
        card = model_card(
            record,
            model_name=kwargs.get("model_name"),
            diagram=diagram,
            card=ModelCard.load(card_file),
        )
        card.save(card_file)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """``Trainer.push_to_hub``: saves the model with its calibration (folded where it can
        be, see :meth:`save_model`), writes the card and the reliability diagram
        (:meth:`create_model_card`), and uploads ``output_dir`` except checkpoints.

        Raises:
            HubError: in one line naming the repository and the reason, when the Hub cannot be
                reached, there is no token or the Hub refuses it; what was saved in
                ``output_dir`` stays there, complete.
        """
        try:
            return super().push_to_hub(
                commit_message=commit_message,
                blocking=blocking,
                token=token,
                revision=revision,
                private=private,
                **kwargs,
            )
        except HubError:
            raise
        except Exception as err:
            reason = hub_reason(err)
            if reason is None:
                raise
            repo = self.hub_model_id or self.args.hub_model_id or Path(self.args.output_dir).name
            raise HubError(f"pushing to the Hub repository {repo} failed: {reason}") from err

    def _record_kwargs(self) -> dict[str, Any]:
        """What the calibration record holds beyond the loss and calibrators: the last
        evaluation's metrics, ECE bins and eval-set roles; no fold while training runs."""
        return {
            "metrics": self.last_eval_metrics,
            "ece_bins": self.calibration["ece_bins"],
            "eval_sets": {
                "in_domain": self.calibration["in_domain_set"],
                "shifted": list(self.calibration["ood_sets"]),
                "calibration": self.calibration["calibration_set"],
            },
            "fold": not self.is_in_train,
            "drift": self._drift_record(),
        }

    def _drift_record(self) -> dict[str, Any] | None:
        """How the drift-aware variants were fitted, for the calibration record (which keeps
        the variants it saves)."""
        if not self._drift_copies:
            return None
        schedule = self.drift_schedule
        return {
            "variants": list(self.calibration["drift_variants"]),
            "perturbation": self.calibration["drift_perturbation"] or "given",
            "description": None if schedule else self.drift_description,
            "copies": self._drift_copies,
            "schedule": None if schedule is None else schedule.to_dict(),
        }


class _SaveLossState(TrainerCallback):
    """Writes the loss's training state into each checkpoint folder (restored by ``train``)."""

    def __init__(self, trainer: CalibratedTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        loss_state = self.trainer.calibration_loss.state_dict()
        if loss_state and args.should_save:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(folder / LOSS_STATE_NAME, json.dumps(loss_state))
        return control


def _embedding_drift(
    family: str | None, kwargs: Mapping[str, Any], drift_datasets: Sequence[Any] | None
) -> EmbeddingDrift | None:
    """The embedding perturbation of ``args.drift_perturbation``, checked; ``None`` without one."""
    if family is None:
        if kwargs:
            raise ValueError(
                f"drift_perturbation_kwargs {dict(kwargs)} are given without drift_perturbation "
                "('gaussian' or 'gradient')"
            )
        return None
    if drift_datasets:
        raise ValueError(
            f"drift_perturbation={family!r} builds the perturbed copies of the calibration data; "
            "pass no drift_datasets with it"
        )
    try:
        return EmbeddingDrift(family, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad drift_perturbation_kwargs {dict(kwargs)}: {err}") from None
    except ValueError as err:
        raise ValueError(f"drift_perturbation={family!r}: {err}") from None


def _concat(parts: Sequence[Predictions]) -> Predictions:
    """The rows of every part; features only when every part has them (the perturbed copies
    carry features only when a drift-aware variant needs them)."""
    features = [p.features for p in parts]
    return Predictions(
        logits=torch.cat([p.logits for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        features=None if any(f is None for f in features) else torch.cat(features),
    )


def _rows(features: Tensor | None, mask: Tensor) -> Tensor | None:
    return None if features is None else features[mask]


def _with_example_index(dataset: Any) -> Any:
    """``dataset`` with an :data:`EXAMPLE_INDEX` column ``0..n−1`` (kept if already valid).

    Added for a loss that lists it in ``extra_inputs`` (per-example state, e.g. AR-AdaLS).

    A ``datasets.Dataset`` gets the column added; any other dataset must already yield the key.
    """
    n = len(dataset)
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        first = dataset[0] if n else {}
        if EXAMPLE_INDEX not in first:
            raise ValueError(
                f"the training set must yield each example's index under {EXAMPLE_INDEX!r} "
                "(a datasets.Dataset gets it added automatically)"
            )
        return dataset
    if EXAMPLE_INDEX not in columns:
        return dataset.add_column(EXAMPLE_INDEX, np.arange(n, dtype=np.int64))
    index = np.asarray(dataset[EXAMPLE_INDEX])
    if not np.array_equal(np.sort(index), np.arange(n)):
        raise ValueError(
            f"the training set's {EXAMPLE_INDEX!r} column must hold each of 0..{n - 1} once"
        )
    return dataset


def _check_dataset_labels(dataset: Any, what: str, config: Any, required: bool = True) -> None:
    """Fail early, naming the problem, when a dataset's labels do not fit the model: a label
    column of integer ids within the model's classes, and ``ClassLabel`` names that are the
    model's ``id2label`` names in the same order (case-insensitively) where the model has names."""
    num_labels = config.num_labels
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        return
    column = next((c for c in ("labels", "label") if c in columns), None)
    if column is None:
        if required:
            raise ValueError(f"{what} has no 'label' or 'labels' column; columns: {columns}")
        return
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty")
    feature = dataset.features.get(column) if hasattr(dataset, "features") else None
    n_names = getattr(feature, "num_classes", None)
    if n_names is not None and n_names != num_labels:
        raise ValueError(
            f"{what} has {n_names} classes ({feature.names}) but the model has num_labels={num_labels}"
        )
    if n_names is not None:
        _check_label_names(feature.names, config, what)
    if hasattr(dataset, "with_format"):  # the stored labels, not through a transform (AugMix)
        dataset = dataset.with_format(None)
    labels = np.asarray(dataset[column])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: '{column}' must hold integer class indices, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_labels:
        raise ValueError(
            f"{what}: labels lie in [{lo}, {hi}] but the model has num_labels={num_labels}"
        )


def _check_label_names(names: list[str], config: Any, what: str) -> None:
    """Refuse a dataset whose label names are not the model's ``id2label`` in the same order
    (ignoring case), through the one :class:`~nlpcal.data.LabelMap` mechanism. A model whose
    ``id2label`` holds only transformers' placeholders (``LABEL_0``, ...) has no names to compare.
    """
    from nlpcal.data import LabelMap, model_label_names

    model_names = model_label_names(config)
    if model_names == [f"LABEL_{i}" for i in range(len(model_names))]:
        return
    try:
        label_map = LabelMap(model_names, names)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    if not label_map.is_identity:
        raise ValueError(
            f"{what} has the label names {list(names)} (by id), but the model's id2label is "
            f"{model_names}: label ids would be scored against the wrong classes. Put the set "
            "in the model's label order (nlpcal.data.align_labels(dataset, "
            "nlpcal.data.model_label_names(model))) or fine-tune with the data's label order"
        )
