"""The CME paper's attribution: last-layer attention to the first token times its loss gradient."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from nlpcal.explain.base import Recording, TokenAttribution, register_attribution
from nlpcal.losses._modules import unwrap_model

__all__ = ["AttentionGradientAttribution", "first_token_attention_attribution"]


def first_token_attention_attribution(attention: Tensor, gradient: Tensor) -> Tensor:
    """``mean_h A[:, h, 0, :] · mean_h ∂ℓ/∂A[:, h, 0, :]``: what the first token attends to,
    weighted by how much the loss cares.

    As in the CME authors' code, the head average is taken of the attention and of its gradient
    separately, then multiplied.

    Args:
        attention: attention weights of one layer ``(B, H, L, L)`` (query, then key position).
        gradient: the gradient of the loss with respect to ``attention``, same shape.

    Returns:
        ``(B, L)``, one value per key token, in float32.

    >>> a = torch.full((1, 2, 3, 3), 1 / 3)
    >>> first_token_attention_attribution(a, torch.ones_like(a))
    tensor([[0.3333, 0.3333, 0.3333]])
    """
    if attention.ndim != 4 or gradient.shape != attention.shape:
        raise ValueError(
            "attention and its gradient must both have shape (batch, heads, seq_len, seq_len), "
            f"got {tuple(attention.shape)} and {tuple(gradient.shape)}"
        )
    return attention[:, :, 0, :].float().mean(dim=1) * gradient[:, :, 0, :].float().mean(dim=1)


@register_attribution("attention_gradient")
class AttentionGradientAttribution(TokenAttribution):
    """The last encoder layer's attention from the first token (``[CLS]`` / ``<s>``), averaged
    over heads, times the gradient of the loss with respect to that attention.

    The forward pass runs with eager attention (fused kernels do not return attention weights)
    and ``output_attentions=True``; the model's attention implementation is restored afterwards.
    Inside a training step this reuses the step's own forward pass: the only extra work is one
    partial backward from the loss to the last layer's attention. The gradient factor is a
    constant (no second-order terms); the attention factor keeps its graph, so a loss may let
    gradients flow through it, as the authors' code does.

    The gradient is that of the summed per-example loss, so each example's attribution is the
    gradient of its own loss and does not depend on the batch size (the authors' code
    differentiates the batch mean, which scales every attribution by ``1/B``).

    References:
        Li, Hu & Chen, "Calibration Meets Explanation: A Simple and Effective Approach for Model
        Confidence Estimates", EMNLP 2022.

    >>> from nlpcal.explain import create_attribution
    >>> create_attribution("attention_gradient")
    AttentionGradientAttribution()
    """

    def check_model(self, model: nn.Module) -> None:
        inner = unwrap_model(model)
        config = getattr(inner, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            raise ValueError(
                f"cannot read the attention of {type(inner).__name__}: the attention_gradient "
                "attribution needs a Hugging Face transformer whose config selects its attention "
                "implementation (config._attn_implementation)"
            )

    @contextmanager
    def recording(self, model: nn.Module) -> Iterator[Recording]:
        self.check_model(model)
        inner = unwrap_model(model)
        config = inner.config
        recorded = Recording()

        def ask_for_attentions(_module, args, kwargs):
            return args, {**kwargs, "output_attentions": True}

        def keep_last_attention(_module, _args, _kwargs, output):
            attentions = getattr(output, "attentions", None)
            recorded.attention = attentions[-1] if attentions else None

        previous = config._attn_implementation
        handles = [
            inner.register_forward_pre_hook(ask_for_attentions, with_kwargs=True),
            inner.register_forward_hook(keep_last_attention, with_kwargs=True),
        ]
        config._attn_implementation = "eager"
        try:
            yield recorded
        finally:
            config._attn_implementation = previous
            for handle in handles:
                handle.remove()

    def attribute(
        self,
        model: nn.Module,
        inputs: Mapping[str, Any],
        target: Tensor,
        objective: Tensor,
        recording: Recording,
    ) -> Tensor:
        attention = recording.attention
        mask = inputs.get("attention_mask")
        ids = inputs.get("input_ids", inputs.get("inputs_embeds"))
        batch, length = ids.shape[:2]
        name = type(unwrap_model(model)).__name__
        if not (
            isinstance(attention, Tensor)
            and attention.ndim == 4
            and attention.shape[0] == batch
            and attention.shape[-2:] == (length, length)
        ):
            got = "nothing" if attention is None else f"shape {tuple(attention.shape)}"
            raise ValueError(
                f"cannot read the attention of {name}: with output_attentions=True and eager "
                "attention its output should hold the last layer's weights of shape "
                f"({batch}, heads, {length}, {length}), got {got}"
            )
        if not attention.requires_grad:
            raise ValueError(
                "the recorded attention carries no gradient: run the forward pass with "
                "gradients enabled (not under torch.no_grad())"
            )
        (gradient,) = torch.autograd.grad(
            objective, attention, retain_graph=True, allow_unused=True
        )
        if gradient is None:
            raise ValueError(
                f"the loss of {name} does not depend on its last layer's attention, so the "
                "attention_gradient attribution is undefined"
            )
        scores = first_token_attention_attribution(attention, gradient)
        if mask is not None:
            scores = scores * (mask != 0)
        return scores
