"""The calibration-loss interface and its registry.

A calibration loss is a small class: its constructor takes the method's hyper-parameters and
rejects bad values; calling it with the model, the batch and a :class:`LossContext` returns a
:class:`LossOutput` (the loss, the logits and a dict of scalars to log). Adding a method touches
one new file and one ``@register_loss`` line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from nlpcal._registry import Registry
from nlpcal.losses.sites import model_sites

__all__ = [
    "EXAMPLE_INDEX",
    "CalibrationLoss",
    "LossContext",
    "LossOutput",
    "create_loss",
    "list_losses",
    "register_loss",
]

_LOSSES: Registry[CalibrationLoss] = Registry("calibration loss")

# The batch key of each training example's stable position in the training set. A loss that
# lists it in ``extra_inputs`` gets it from :class:`~nlpcal.CalibratedTrainer`, which adds the
# column to the training set and keeps it past ``remove_unused_columns``.
EXAMPLE_INDEX = "example_index"


def register_loss(name: str):
    """Class decorator: register a :class:`CalibrationLoss` under ``name`` (raises if taken)."""
    return _LOSSES.register(name)


def create_loss(name: str, **kwargs: Any) -> CalibrationLoss:
    """Instantiate the loss registered as ``name``; unknown names list the available ones.

    >>> create_loss("cross_entropy").name
    'cross_entropy'
    """
    import nlpcal.losses  # noqa: F401  (registers the built-in losses)

    return _LOSSES.create(name, **kwargs)


def list_losses() -> list[str]:
    """Names of every registered calibration loss, sorted."""
    import nlpcal.losses  # noqa: F401

    return _LOSSES.names()


@dataclass
class LossContext:
    """What a loss may know about the training run beyond the batch.

    Attributes:
        num_items_in_batch: examples in the whole accumulated batch (over gradient-accumulation
            micro-batches and, with ``average_tokens_across_devices``, over processes), as
            computed by ``transformers.Trainer``; ``None`` means "this micro-batch only".
        progress: fraction of training done, in [0, 1] (for annealed schedules).
        trainer: the running trainer, for losses that keep per-example state; may be ``None``.
    """

    num_items_in_batch: int | Tensor | None = None
    progress: float = 0.0
    trainer: Any = None

    def reduce(self, per_example: Tensor) -> Tensor:
        """Sum per-example losses and divide by the accumulated batch size.

        Summing the micro-batch results over gradient accumulation then gives exactly the mean
        over the effective batch, as with one large batch.
        """
        if self.num_items_in_batch is None:
            return per_example.mean()
        n = self.num_items_in_batch
        if isinstance(n, Tensor):
            n = n.to(per_example.device)
        return per_example.sum() / n

    def batch_weight(self, batch_size: int) -> float | Tensor:
        """Weight of a per-micro-batch term (a batch mean) in the accumulated mean."""
        if self.num_items_in_batch is None:
            return 1.0
        n = self.num_items_in_batch
        return batch_size / (n.float() if isinstance(n, Tensor) else n)


@dataclass
class LossOutput:
    """The result of a calibration loss on one batch.

    Attributes:
        loss: scalar to back-propagate, already reduced with :meth:`LossContext.reduce`.
        logits: the clean (unmixed) logits of the batch, shape ``(B, K)``.
        logs: detached scalars to log, e.g. ``{"ce": ..., "mix_ce": ...}``; the trainer averages
            them over the logging interval.
    """

    loss: Tensor
    logits: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class CalibrationLoss:
    """Base class of calibration losses.

    Subclasses implement :meth:`compute` and may override the hooks below. Class attributes:

    * ``strength``: the name of the constructor argument whose value 0 turns the method into
      plain cross-entropy (``None`` if the method has no such knob, e.g. one-vs-all).
    * ``requires_embeddings``: the method feeds a continuous input to the model (text:
      ``inputs_embeds``; images: pixels), through :func:`~nlpcal.losses.sites.model_sites`.
    * ``extra_inputs``: batch keys the loss consumes that the model must not receive; with
      :data:`EXAMPLE_INDEX` among them the trainer adds each training example's index.
    * ``deterministic``: the loss is a deterministic function of model and batch (no sampling),
      so gradient accumulation reproduces a large batch.
    * ``matches_large_batch``: the loss of a batch is the sum of its examples' terms, so
      accumulating micro-batches reproduces one large batch exactly. ``False`` for losses that
      couple the examples of a micro-batch by design (mixup partners, CME's pairs); each
      micro-batch then carries its share of the accumulated batch
      (:meth:`LossContext.batch_weight`).
    * ``default_calibrator``: the registered post-hoc calibrator that suits the method's outputs.
    * ``normalized``: the softmax of :meth:`transform_logits` is the predictive distribution.
      ``False`` means they are unnormalised log class confidences (SLOVA's ``log q``), whose
      largest exponential is the confidence (see :mod:`nlpcal.functional.predictive`).
    """

    name: ClassVar[str]
    strength: ClassVar[str | None] = None
    requires_embeddings: ClassVar[bool] = False
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    deterministic: ClassVar[bool] = True
    matches_large_batch: ClassVar[bool] = True
    default_calibrator: ClassVar[str] = "temperature"
    normalized: ClassVar[bool] = True

    def __call__(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        if "labels" not in inputs or inputs["labels"] is None:
            raise ValueError(
                f"the {self.name} loss needs 'labels' in the batch; got keys {sorted(inputs)}"
            )
        return self.compute(model, inputs, ctx)

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        raise NotImplementedError

    # -- hooks ---------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> None:
        """Check and adapt the model once, before the optimizer is built (heads, bias init)."""
        if self.requires_embeddings:
            try:
                model_sites(model).check_input()
            except ValueError as err:
                raise ValueError(
                    f"the {self.name} loss feeds inputs_embeds to the model, but {err}"
                ) from None

    def trained_with(self, model: nn.Module) -> bool:
        """Whether ``model`` was already prepared for (and trained with) this loss.

        :class:`~nlpcal.CalibratedTrainer` records the loss name in ``model.config.nlpcal_loss``;
        ``prepare_model`` uses this to keep, not re-initialise, weights of a trained model.
        """
        config = getattr(model, "config", None)
        return getattr(config, "nlpcal_loss", None) == self.name

    def transform_logits(self, logits: Tensor, model: nn.Module | None = None) -> Tensor:
        """Map raw model logits to logits whose softmax is the predictive distribution."""
        return logits

    @property
    def raw_logits(self) -> bool:
        """Whether the model's own logits are the predictive logits: the loss keeps the default
        :meth:`transform_logits` and is ``normalized``. Only then does what a plain
        ``transformers`` model outputs mean what nlpcal calibrated, so that an affine post-hoc
        calibrator can be folded into the model's weights (``ova`` and ``double_head`` are not).

        >>> create_loss("label_smoothing").raw_logits, create_loss("ova").raw_logits
        (True, False)
        """
        return self.normalized and type(self).transform_logits is CalibrationLoss.transform_logits

    def attach(self, trainer: Any) -> None:
        """Called once by :class:`~nlpcal.CalibratedTrainer` when it is built, before
        :meth:`callbacks`: a loss whose callbacks read the trainer's data keeps a reference."""

    def callbacks(self) -> list[Any]:
        """``transformers.TrainerCallback`` objects the trainer must register (refreshes)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Training state of the loss (per-example statistics), saved in checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"the {self.name} loss keeps no state, got keys {sorted(state)}")

    def config(self) -> dict[str, Any]:
        """Hyper-parameters that recreate this loss with :func:`create_loss`."""
        return {}

    # -- helpers for subclasses ----------------------------------------------------------------
    def model_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The batch without labels and loss-only keys, ready for ``model(**...)``."""
        drop = {"labels", *self.extra_inputs}
        return {k: v for k, v in inputs.items() if k not in drop}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
