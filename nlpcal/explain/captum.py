"""captum attributions on the input embeddings: Saliency, InputXGradient, IntegratedGradients.

captum is imported only when a method runs. Each method explains the log-probability of the
target class as a function of the token embeddings (``get_input_embeddings()(input_ids)``, fed as
``inputs_embeds`` so that the model still adds its position and token-type embeddings) and sums
the attribution over the embedding dimension, captum's usual reduction to one score per token.
The passes run on the model inside any DDP / ``torch.compile`` wrapper and touch no parameter
gradient; their result carries no graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nlpcal.explain.base import Recording, TokenAttribution, register_attribution
from nlpcal.losses._modules import input_embeddings, unwrap_model

__all__ = [
    "InputXGradientAttribution",
    "IntegratedGradientsAttribution",
    "SaliencyAttribution",
]


def _captum_attr() -> Any:
    try:
        import captum.attr
    except ImportError as err:
        raise ImportError(
            "the saliency, input_x_gradient and integrated_gradients attributions need captum, "
            "a dependency of nlpcal: pip install 'captum>=0.7'"
        ) from err
    return captum.attr


class _CaptumAttribution(TokenAttribution):
    """Shared plumbing: embeddings in, captum's attribution per embedding coordinate out."""

    captum_class: ClassVar[str]

    def check_model(self, model: nn.Module) -> None:
        try:
            input_embeddings(model)
        except ValueError as err:
            raise ValueError(
                f"the {self.name} attribution runs on inputs_embeds, but {err}"
            ) from None

    def attribute(
        self,
        model: nn.Module,
        inputs: Mapping[str, Any],
        target: Tensor,
        objective: Tensor,
        recording: Recording,
    ) -> Tensor:
        attr = _captum_attr()
        inner = unwrap_model(model)
        embeds = inputs.get("inputs_embeds")
        if embeds is None:
            embeds = input_embeddings(inner)(inputs["input_ids"])
        embeds = embeds.detach().requires_grad_()
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "inputs_embeds")}
        batched = [
            k for k, v in rest.items() if isinstance(v, Tensor) and v.shape[:1] == (len(embeds),)
        ]
        fixed = {k: v for k, v in rest.items() if k not in batched}

        def log_likelihood(inputs_embeds: Tensor, *args: Tensor) -> Tensor:
            out = inner(
                inputs_embeds=inputs_embeds, **fixed, **dict(zip(batched, args, strict=True))
            )
            return out.logits.float().log_softmax(dim=-1)

        method = getattr(attr, self.captum_class)(log_likelihood)
        with torch.enable_grad():
            per_coordinate = method.attribute(
                embeds,
                target=target,
                additional_forward_args=tuple(rest[k] for k in batched),
                **self._attribute_kwargs(),
            )
        scores = per_coordinate.float().sum(dim=-1)
        mask = inputs.get("attention_mask")
        if mask is not None:
            scores = scores * (mask != 0)
        return scores.detach()

    def _attribute_kwargs(self) -> dict[str, Any]:
        return {}


@register_attribution("saliency")
class SaliencyAttribution(_CaptumAttribution):
    """``Σ_d |∂ log p_target / ∂e_{t,d}|`` per token ``t`` (captum ``Saliency``).

    References:
        Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", ICLR 2014 workshop.

    >>> from nlpcal.explain import create_attribution
    >>> create_attribution("saliency")
    SaliencyAttribution()
    """

    captum_class = "Saliency"


@register_attribution("input_x_gradient")
class InputXGradientAttribution(_CaptumAttribution):
    """``Σ_d e_{t,d} · ∂ log p_target / ∂e_{t,d}`` per token ``t`` (captum ``InputXGradient``).

    References:
        Shrikumar, Greenside & Kundaje, "Learning Important Features Through Propagating
        Activation Differences", ICML 2017.

    >>> from nlpcal.explain import create_attribution
    >>> create_attribution("input_x_gradient")
    InputXGradientAttribution()
    """

    captum_class = "InputXGradient"


@register_attribution("integrated_gradients")
class IntegratedGradientsAttribution(_CaptumAttribution):
    """Integrated gradients of ``log p_target`` from all-zero embeddings, summed per token
    (captum ``IntegratedGradients``, Gauss–Legendre nodes).

    Each attribution costs ``n_steps`` forward and backward passes over the batch.

    References:
        Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.

    Args:
        n_steps: integration nodes (``≥ 1``); captum defaults to 50, a few suffice to
            rank tokens during training.
        internal_batch_size: examples per captum pass (``None``: all ``B · n_steps`` at once).

    >>> from nlpcal.explain import create_attribution
    >>> create_attribution("integrated_gradients", n_steps=8)
    IntegratedGradientsAttribution(n_steps=8, internal_batch_size=None)
    """

    captum_class = "IntegratedGradients"

    def __init__(self, n_steps: int = 4, internal_batch_size: int | None = None) -> None:
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        if internal_batch_size is not None and (
            isinstance(internal_batch_size, bool)
            or not isinstance(internal_batch_size, int)
            or internal_batch_size < 1
        ):
            raise ValueError(
                f"internal_batch_size must be an integer >= 1 or None, got {internal_batch_size!r}"
            )
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size

    def _attribute_kwargs(self) -> dict[str, Any]:
        return {"n_steps": self.n_steps, "internal_batch_size": self.internal_batch_size}

    def config(self) -> dict[str, Any]:
        return {"n_steps": self.n_steps, "internal_batch_size": self.internal_batch_size}
