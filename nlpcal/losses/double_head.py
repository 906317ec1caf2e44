"""Annealing Double-Head: a small calibration head that predicts a per-example temperature."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import TrainerCallback
from transformers.utils import ModelOutput

from nlpcal.losses._modules import num_labels, unwrap_model
from nlpcal.losses.base import CalibrationLoss, LossContext, LossOutput, register_loss

HEAD_NAME = "nlpcal_calibration_head"
TEMPERATURE_KEY = "nlpcal_temperature"


class TemperatureHead(nn.Module):
    """``T(z) = softplus(MLP(z)) + ε`` with one hidden ReLU layer, from ``K`` logits to ``(n,)``.

    The output layer starts with zero weights and the bias ``softplus⁻¹(1 − ε)``, so ``T ≡ 1``
    at initialisation.

    Args:
        num_labels: number of classes ``K`` (the input width).
        hidden_size: width of the hidden layer.
        eps: lower bound of the temperature, in ``(0, 1)``.

    >>> import torch
    >>> TemperatureHead(num_labels=3)(torch.randn(2, 3))
    tensor([1., 1.], grad_fn=<AddBackward0>)
    """

    def __init__(self, num_labels: int, hidden_size: int = 64, eps: float = 0.01) -> None:
        super().__init__()
        self.hidden = nn.Linear(num_labels, hidden_size)
        self.out = nn.Linear(hidden_size, 1)
        self.eps = eps
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, math.log(math.expm1(1.0 - eps)))

    def forward(self, logits: Tensor) -> Tensor:
        return F.softplus(self.out(F.relu(self.hidden(logits)))).squeeze(-1) + self.eps


@register_loss("double_head")
class DoubleHeadLoss(CalibrationLoss):
    """Cross-entropy for the backbone plus a jointly trained per-example temperature head.

    nlpcal's definition (the paper confirms a one-hidden-layer calibration head on the logits,
    trained jointly, with annealed logit scaling and no post-processing): :meth:`prepare_model`
    attaches a :class:`TemperatureHead` ``T`` to the model as the submodule ``nlpcal_calibration_head``
    (so the optimizer, DDP and checkpoints include it). The backbone is trained by plain
    cross-entropy on its logits ``z``. The applied temperature is ``(1 − β_t) + β_t T``, with
    ``β_t = min(1, progress / anneal_fraction)`` rising linearly from 0 to 1 over the first
    ``anneal_fraction`` of training, and the head is trained by ``head_weight`` times the NLL of
    ``softmax(z.detach() / ((1 − β_t) + β_t T(z.detach())))``: it never changes the backbone, gets
    no gradient at the start of training (``β = 0``) and the full NLL gradient once ``β = 1``. The
    logs hold the mean raw (``temperature``) and applied (``applied_temperature``) temperatures.

    :meth:`transform_logits` divides by the applied temperature with the ``β`` of the last training
    step while training runs (a batch computed with the model in training mode sets it), so an
    evaluation during training sees the predictions that the head is being trained on. When
    training is over (``CalibratedTrainer`` calls ``on_train_end`` of the callback from
    :meth:`callbacks`), and for a loss that has not trained (e.g. recreated from :meth:`config`
    with a saved model), ``β = 1`` and it returns ``z / T(z)``. The argmax never changes.
    ``head_weight=0`` is plain cross-entropy.

    References:
        Guo, Draper & De Iorio, "Annealing Double-Head: An Architecture for Online Calibration of
        Deep Neural Networks", arXiv:2212.13621, 2022.

    Args:
        hidden_size: width of the head's hidden layer.
        head_weight: weight of the head's NLL (``≥ 0``).
        anneal_fraction: fraction of training over which ``β`` rises to 1, in ``[0, 1]``
            (0: no annealing).
        eps: lower bound of the temperature, in ``(0, 1)``.
        anneal_head_loss: deprecated and ignored (with a ``DeprecationWarning``); the head's NLL
            always uses the applied temperature. Accepted so that configurations saved by earlier
            versions still load.

    >>> from nlpcal.losses import create_loss
    >>> loss = create_loss("double_head")
    >>> loss.beta(0.25), loss.beta(0.75)
    (0.5, 1.0)
    """

    strength = "head_weight"

    def __init__(
        self,
        hidden_size: int = 64,
        head_weight: float = 1.0,
        anneal_fraction: float = 0.5,
        eps: float = 0.01,
        anneal_head_loss: bool | None = None,
    ) -> None:
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        if not head_weight >= 0:
            raise ValueError(f"head_weight must be >= 0, got {head_weight}")
        if not 0.0 <= anneal_fraction <= 1.0:
            raise ValueError(f"anneal_fraction must lie in [0, 1], got {anneal_fraction}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.hidden_size = hidden_size
        self.head_weight = float(head_weight)
        self.anneal_fraction = float(anneal_fraction)
        self.eps = float(eps)
        if anneal_head_loss is not None:
            warnings.warn(
                "DoubleHeadLoss(anneal_head_loss=...) is deprecated and ignored: the head's NLL "
                "always uses the applied (annealed) temperature",
                DeprecationWarning,
                stacklevel=2,
            )
        # β that transform_logits applies: the last training step's while training runs, else 1.
        self._beta = 1.0

    def beta(self, progress: float) -> float:
        """Annealing weight ``β_t = min(1, progress / anneal_fraction)`` at training ``progress``."""
        if self.anneal_fraction == 0:
            return 1.0
        return min(1.0, max(0.0, progress) / self.anneal_fraction)

    def prepare_model(self, model: nn.Module) -> None:
        """Attach a fresh :class:`TemperatureHead`, or keep a compatible one already attached."""
        super().prepare_model(model)
        inner = unwrap_model(model)
        k = num_labels(inner)
        if k < 2:
            raise ValueError(f"the double_head loss needs at least 2 classes, got num_labels={k}")
        existing = getattr(inner, HEAD_NAME, None)
        if not getattr(inner, "_nlpcal_temperature_hook", False):
            # The head runs inside the model's forward, so DDP sees its parameters used there.
            inner.register_forward_hook(_add_temperature)
            inner._nlpcal_temperature_hook = True
        if existing is not None:
            if not (
                isinstance(existing, TemperatureHead)
                and existing.hidden.in_features == k
                and existing.hidden.out_features == self.hidden_size
                and existing.eps == self.eps
            ):
                raise ValueError(
                    f"{type(inner).__name__} already has a {HEAD_NAME} that does not match "
                    f"num_labels={k}, hidden_size={self.hidden_size}, eps={self.eps}"
                )
            return
        reference = next(p for p in inner.parameters() if p.is_floating_point())
        head = TemperatureHead(k, self.hidden_size, self.eps)
        inner.add_module(HEAD_NAME, head.to(device=reference.device, dtype=reference.dtype))

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        _head(model)
        labels = inputs["labels"]
        outputs = model(**self.model_inputs(inputs))
        logits = outputs.logits
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        detached = logits.detach()
        temperature = outputs[TEMPERATURE_KEY]
        beta = self.beta(ctx.progress)
        if model.training:
            self._beta = beta
        applied = _applied_temperature(temperature, beta)
        head_nll = F.cross_entropy(detached.float() / applied[:, None], labels, reduction="none")
        logs = {
            "ce": ce.detach().mean(),
            "head_nll": head_nll.detach().mean(),
            "temperature": temperature.detach().mean(),
            "applied_temperature": applied.detach().mean(),
        }
        return LossOutput(
            loss=ctx.reduce(ce + self.head_weight * head_nll), logits=logits, logs=logs
        )

    def transform_logits(self, logits: Tensor, model: nn.Module | None = None) -> Tensor:
        """``z / ((1 − β) + β T(z))`` with the model's head; ``β = 1`` unless training runs."""
        if model is None:
            raise ValueError("the double_head loss needs the model (its head) to transform logits")
        temperature = _temperature(_head(model), logits)
        return logits.float() / _applied_temperature(temperature, self._beta)[:, None]

    def callbacks(self) -> list[TrainerCallback]:
        """A callback that sets ``β = 1`` for :meth:`transform_logits` when training ends."""
        return [_EndAnnealing(self)]

    def config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "head_weight": self.head_weight,
            "anneal_fraction": self.anneal_fraction,
            "eps": self.eps,
        }


class _EndAnnealing(TrainerCallback):
    """When training ends, the predictions use the full temperature ``T(x)`` (``β = 1``)."""

    def __init__(self, loss: DoubleHeadLoss) -> None:
        self.loss = loss

    def on_train_end(self, args, state, control, **kwargs):
        self.loss._beta = 1.0
        return control


def _applied_temperature(temperature: Tensor, beta: float) -> Tensor:
    """The annealed temperature ``(1 − β) + β T``."""
    return (1.0 - beta) + beta * temperature


def _head(model: nn.Module) -> TemperatureHead:
    head = getattr(unwrap_model(model), HEAD_NAME, None)
    if not isinstance(head, TemperatureHead):
        raise ValueError(
            f"{type(unwrap_model(model)).__name__} has no {HEAD_NAME}: call "
            "DoubleHeadLoss.prepare_model(model) before training or transforming logits"
        )
    return head


def _add_temperature(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: add ``T(z.detach())`` to the model's output under ``TEMPERATURE_KEY``.

    The output is rebuilt as a dataclass subclass of its own type with one more field, since DDP
    flattens and rebuilds model outputs from their declared fields.
    """
    head = getattr(module, HEAD_NAME, None)
    if not (isinstance(head, TemperatureHead) and isinstance(output, ModelOutput)):
        return output
    temperature = _temperature(head, output["logits"].detach())
    return _with_temperature(type(output))(**output, **{TEMPERATURE_KEY: temperature})


@functools.cache
def _with_temperature(cls: type[ModelOutput]) -> type[ModelOutput]:
    if TEMPERATURE_KEY in getattr(cls, "__dataclass_fields__", {}):
        return cls
    return dataclasses.make_dataclass(
        f"{cls.__name__}WithTemperature",
        [(TEMPERATURE_KEY, Tensor | None, dataclasses.field(default=None))],
        bases=(cls,),
        namespace={"__module__": __name__},
    )


def _temperature(head: TemperatureHead, logits: Tensor) -> Tensor:
    """``T(z)`` in float32 on the logits' device, whatever the head's device and dtype."""
    weight = head.hidden.weight
    return head(logits.to(device=weight.device, dtype=weight.dtype)).float().to(logits.device)
