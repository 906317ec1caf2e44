"""The token-attribution interface and its registry.

A token attribution explains a batch of a Hugging Face sequence classifier: one score per token,
``(B, L)``, exactly 0 on padding. Every method attributes the same quantity, the log-likelihood of
a target class (its gradient is minus the gradient of the cross-entropy), so the methods differ
only in *where* they look: the last layer's attention (``attention_gradient``) or the input
embeddings (captum's ``saliency``, ``input_x_gradient``, ``integrated_gradients``).

Two entry points share one implementation:

* ``method(model, inputs, target=None)`` explains a batch on its own (the predicted class by
  default) and returns detached attributions;
* inside a training step, a loss runs its forward pass within :meth:`TokenAttribution.recording`
  and then calls :meth:`TokenAttribution.attribute` with the loss it computed, so a method that
  reads the forward pass (the attention) costs no extra forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpcal._registry import Registry
from nlpcal.functional.pairwise import attribution_distribution

__all__ = [
    "Recording",
    "TokenAttribution",
    "attention_mask_of",
    "create_attribution",
    "list_attributions",
    "register_attribution",
]

_ATTRIBUTIONS: Registry[TokenAttribution] = Registry("attribution method")


def register_attribution(name: str):
    """Class decorator: register a :class:`TokenAttribution` under ``name`` (raises if taken)."""
    return _ATTRIBUTIONS.register(name)


def create_attribution(name: str, **kwargs: Any) -> TokenAttribution:
    """Instantiate the attribution method registered as ``name``; unknown names list the others.

    >>> create_attribution("integrated_gradients", n_steps=4)
    IntegratedGradientsAttribution(n_steps=4, internal_batch_size=None)
    """
    import nlpcal.explain  # noqa: F401  (registers the built-in methods)

    return _ATTRIBUTIONS.create(name, **kwargs)


def list_attributions() -> list[str]:
    """Names of every registered attribution method, sorted.

    >>> list_attributions()
    ['attention_gradient', 'input_x_gradient', 'integrated_gradients', 'saliency']
    """
    import nlpcal.explain  # noqa: F401

    return _ATTRIBUTIONS.names()


@dataclass
class Recording:
    """What a method read from the forward pass run inside :meth:`TokenAttribution.recording`.

    Attributes:
        attention: the last encoder layer's attention weights ``(B, H, L, L)``, if recorded.
    """

    attention: Tensor | None = None


def attention_mask_of(inputs: Mapping[str, Any]) -> Tensor:
    """The batch's attention mask ``(B, L)`` (all ones if absent); raises on an all-padding row.

    >>> attention_mask_of({"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    tensor([[1, 1, 1],
            [1, 1, 1]])
    """
    ids = inputs.get("input_ids")
    if ids is None:
        ids = inputs.get("inputs_embeds")
    if ids is None:
        raise ValueError(
            f"cannot attribute a batch without input_ids or inputs_embeds; got keys {sorted(inputs)}"
        )
    mask = inputs.get("attention_mask")
    if mask is None:
        return torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
    if mask.shape != ids.shape[:2]:
        raise ValueError(
            f"attention_mask must have shape {tuple(ids.shape[:2])} (batch, seq_len), "
            f"got {tuple(mask.shape)}"
        )
    empty = ~(mask != 0).any(dim=-1)
    if bool(empty.any()):
        raise ValueError(
            f"the batch has examples made only of padding (rows {empty.nonzero().flatten().tolist()}"
            "): every example needs at least one token to attribute to"
        )
    return mask


class TokenAttribution:
    """Base class of token-attribution methods.

    Subclasses implement :meth:`attribute` and, if they read the forward pass, :meth:`recording`.
    """

    name: ClassVar[str]

    def check_model(self, model: nn.Module) -> None:
        """Raise a ``ValueError`` early if ``model`` cannot be attributed with this method."""

    @contextmanager
    def recording(self, model: nn.Module) -> Iterator[Recording]:
        """Context in which the caller runs its forward pass; yields what the method records."""
        yield Recording()

    def attribute(
        self,
        model: nn.Module,
        inputs: Mapping[str, Any],
        target: Tensor,
        objective: Tensor,
        recording: Recording,
    ) -> Tensor:
        """Token attributions ``(B, L)``, float32, 0 on padding.

        Args:
            model: the classifier (possibly wrapped by DDP or ``torch.compile``).
            inputs: the model's inputs (no labels) used for the recorded forward pass.
            target: the class attributed for each example ``(B,)``.
            objective: ``Σ_i CE(logits_i, target_i)`` (or another per-example loss summed) of
                the recorded forward pass; methods that read the forward pass differentiate it.
            recording: what :meth:`recording` captured during that forward pass.

        The result may still carry the autograd graph of the forward pass (the attention factor
        of ``attention_gradient``); callers detach it unless they mean to differentiate it.
        """
        raise NotImplementedError

    def __call__(
        self, model: nn.Module, inputs: Mapping[str, Any], target: Tensor | None = None
    ) -> Tensor:
        """Explain a batch on its own: detached attributions ``(B, L)`` of ``target``.

        Args:
            model: the classifier; its mode (train / eval) is left as it is.
            inputs: model inputs (``input_ids``, ``attention_mask``, ...); ``labels`` is ignored.
            target: class per example; default the predicted class.
        """
        return self.explain(model, inputs, target)[0]

    def explain(
        self, model: nn.Module, inputs: Mapping[str, Any], target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Like calling the method, but also returns the logits ``(B, K)`` of the forward pass."""
        self.check_model(model)
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        attention_mask_of(inputs)
        with torch.enable_grad():
            with self.recording(model) as recorded:
                logits = model(**inputs).logits
            if target is None:
                target = logits.argmax(dim=-1)
            objective = F.cross_entropy(logits.float(), target, reduction="sum")
            attributions = self.attribute(model, inputs, target, objective, recorded)
        return attributions.detach(), logits.detach()

    def scores(
        self, model: nn.Module, inputs: Mapping[str, Any], target: Tensor | None = None
    ) -> Tensor:
        """Normalised token scores ``softmax(|a|)`` over each example's tokens, 0 on padding."""
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        return attribution_distribution(self(model, inputs, target), attention_mask_of(inputs))

    def config(self) -> dict[str, Any]:
        """Hyper-parameters that recreate this method with :func:`create_attribution`."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
