"""Robustness, clean and perturbed predictions of every example of a data set, through a
trainer's loader."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nlpcal.functional.robustness import AttackNorm
from nlpcal.robustness.embedding import (
    EmbeddingPerturbation,
    RobustnessMode,
    attack_accuracy,
    example_robustness,
    perturbed_outputs,
)

__all__ = [
    "DatasetRobustness",
    "PerturbedPredictions",
    "accuracy_under_attack",
    "measure_robustness",
    "perturb_dataset",
]


@contextmanager
def _labelled_batches(
    trainer: Any, dataset: Any, what: str, drop: tuple[str, ...] = ()
) -> Iterator[tuple[Any, Any]]:
    """The unwrapped model, in eval mode until the block ends (then put back in its mode), and
    an iterator over ``(inputs, labels)`` of each batch of ``trainer.get_eval_dataloader(dataset)``
    on the model's device; ``inputs`` without ``labels`` and the ``drop`` keys."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    device = next(model.parameters()).device

    def batches() -> Iterator[tuple[dict[str, Any], Tensor]]:
        for batch in trainer.get_eval_dataloader(dataset):
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            labels = batch.get("labels")
            if labels is None:
                raise ValueError(f"{what} needs labels; batch keys {sorted(batch)}")
            yield {k: v for k, v in batch.items() if k not in ("labels", *drop)}, labels

    was_training = model.training
    model.eval()
    try:
        yield model, batches()
    finally:
        model.train(was_training)


@dataclass
class DatasetRobustness:
    """Per-example robustness of a data set, with the clean predictions, on the CPU.

    Attributes:
        robustness: ``(n,)``, larger is more robust (an infinite margin radius, from a margin
            without gradient, is replaced by the largest finite value plus one).
        probs: the clean predictive distribution ``(n, K)``, or ``None`` if not asked for.
        labels: the labels ``(n,)``.
    """

    robustness: Tensor
    probs: Tensor | None
    labels: Tensor


def measure_robustness(
    trainer: Any,
    dataset: Any,
    mode: RobustnessMode | str = RobustnessMode.MARGIN,
    probs: bool = True,
    seed: int | None = None,
    drop: tuple[str, ...] = (),
    **options: Any,
) -> DatasetRobustness:
    """Measure :func:`~nlpcal.robustness.example_robustness` on every example of ``dataset``.

    The examples come from ``trainer.get_eval_dataloader(dataset)`` (its collator, batch size and
    column handling); under distributed training each process measures its shard and the results
    are gathered in dataset order, so every process returns the same values. The model runs in
    eval mode and is put back in its mode afterwards.

    Args:
        trainer: a ``transformers.Trainer`` (e.g. :class:`~nlpcal.CalibratedTrainer`).
        dataset: a labelled data set the trainer's loader accepts.
        mode: ``"margin"``, ``"noise"`` or ``"pgd"``.
        probs: also collect the clean predictive distribution (one more forward pass).
        seed: seeds the noise of ``mode="noise"`` (a generator on the model's device).
        drop: batch keys that are not model inputs (beyond ``labels``).
        **options: options of the measure (see :func:`~nlpcal.robustness.example_robustness`).
    """
    rows: list[Tensor] = []
    with _labelled_batches(trainer, dataset, "measuring robustness", drop) as (model, batches):
        if RobustnessMode(mode) is RobustnessMode.NOISE and seed is not None:
            device = next(model.parameters()).device
            options["generator"] = torch.Generator(device=device).manual_seed(seed)
        for inputs, labels in batches:
            columns = [example_robustness(model, inputs, labels, mode, **options).float()[:, None]]
            columns.append(labels.float()[:, None])
            if probs:
                with torch.no_grad():
                    columns.append(model(**inputs).logits.float().softmax(dim=-1))
            rows.append(trainer.accelerator.gather_for_metrics(torch.cat(columns, dim=1)))
    table = torch.cat(rows).cpu()
    values = table[:, 0]
    if not bool(torch.isfinite(values).all()):
        finite = values[torch.isfinite(values)]
        top = float(finite.max()) + 1.0 if finite.numel() else 1.0
        values = torch.nan_to_num(values, posinf=top)
    return DatasetRobustness(
        robustness=values,
        probs=table[:, 2:] if probs else None,
        labels=table[:, 1].long(),
    )


def accuracy_under_attack(
    trainer: Any,
    dataset: Any,
    budgets: Sequence[float],
    norm: AttackNorm | str = AttackNorm.L2,
    steps: int = 5,
    drop: tuple[str, ...] = (),
) -> Tensor:
    """Per example and budget, whether the model's prediction is right and stays right under PGD
    on its input embeddings: :func:`~nlpcal.robustness.attack_accuracy` at each budget on each
    batch of ``trainer.get_eval_dataloader(dataset)``, shape ``(n, len(budgets))``, bool, in
    dataset order (gathered over processes as :func:`measure_robustness`). A budget of 0 is the
    clean correctness (no attack); the mean of a column is the accuracy under that budget.

    Args:
        trainer: a ``transformers.Trainer`` (e.g. :class:`~nlpcal.CalibratedTrainer`).
        dataset: a labelled data set the trainer's loader accepts, labels in the model's ids.
        budgets: relative budgets ``≥ 0`` (see :mod:`nlpcal.robustness.embedding`).
        norm: ``"l2"`` or ``"linf"``.
        steps: PGD steps per budget (each one forward and one backward pass of the batch).
        drop: batch keys that are not model inputs (beyond ``labels``).
    """
    budgets = [float(b) for b in budgets]
    if not budgets or any(not b >= 0 for b in budgets):
        raise ValueError(f"budgets must be a non-empty list of numbers >= 0, got {budgets}")
    rows: list[Tensor] = []
    with _labelled_batches(trainer, dataset, "accuracy under attack", drop) as (model, batches):
        for inputs, labels in batches:
            columns = []
            for budget in budgets:
                if budget == 0:
                    with torch.no_grad():
                        right = model(**inputs).logits.argmax(dim=-1) == labels
                else:
                    right = attack_accuracy(model, inputs, labels, budget, norm, steps)
                columns.append(right.float())
            rows.append(trainer.accelerator.gather_for_metrics(torch.stack(columns, dim=1)))
    return torch.cat(rows).cpu().bool()


@dataclass
class PerturbedPredictions:
    """Raw outputs of a data set with its input embeddings perturbed at ``S`` strengths, on the CPU.

    Attributes:
        clean: the clean logits ``(n, K)``.
        logits: the perturbed logits ``(S, n, K)``, strength by strength.
        labels: the labels ``(n,)``.
        features: the perturbed first-token features ``(S, n, H)``, or ``None`` if not asked for.
    """

    clean: Tensor
    logits: Tensor
    labels: Tensor
    features: Tensor | None

    def accuracy(self) -> tuple[float, Tensor]:
        """The clean accuracy and the accuracy at each strength ``(S,)``."""
        clean = (self.clean.argmax(-1) == self.labels).float().mean()
        perturbed = (self.logits.argmax(-1) == self.labels).float().mean(dim=-1)
        return float(clean), perturbed


def perturb_dataset(
    trainer: Any,
    dataset: Any,
    family: EmbeddingPerturbation | str,
    strengths: Sequence[float] | Tensor,
    seed: int = 0,
    features: bool = False,
    drop: tuple[str, ...] = (),
    **options: Any,
) -> PerturbedPredictions:
    """:func:`~nlpcal.robustness.perturbed_outputs` on every example of a labelled ``dataset``,
    at every strength, in one pass of ``trainer.get_eval_dataloader(dataset)``.

    As :func:`measure_robustness`: gathered over processes in dataset order, the model in eval
    mode and put back in its mode afterwards. The noise comes from one generator on the model's
    device seeded with ``seed`` and drawn batch after batch, so a pass is deterministic under a
    seed for a given eval batch size, and two passes at different strengths perturb each example
    in the same direction.

    Args:
        options: ``steps`` and ``norm`` of the gradient family.
        drop: batch keys that are not model inputs (beyond ``labels``).
    """
    parts: list[tuple[Tensor, ...]] = []
    with _labelled_batches(trainer, dataset, "perturbing a data set", drop) as (model, batches):
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        for inputs, labels in batches:
            clean, logits, feats = perturbed_outputs(
                model, inputs, family, strengths, generator, features=features, **options
            )
            part = (clean, logits.transpose(0, 1), labels)  # example-major, for the gather
            if feats is not None:
                part += (feats.transpose(0, 1),)
            parts.append(trainer.accelerator.gather_for_metrics(part))
    if not parts:
        raise ValueError("cannot perturb an empty data set")
    columns = [torch.cat(c).cpu() for c in zip(*parts, strict=True)]
    return PerturbedPredictions(
        clean=columns[0].float(),
        logits=columns[1].transpose(0, 1).float(),
        labels=columns[2].long(),
        features=columns[3].transpose(0, 1).float() if features else None,
    )
