"""Where calibration methods act on a classifier: the model-side interface of the losses.

Losses, robustness measures and the trainer need three *sites* of a classifier:

* the **input** to perturb or mix: a continuous tensor the model can be fed instead of its raw
  input (text: the token embeddings, fed as ``inputs_embeds``; images: the pixels);
* the **mixing sites**: modules whose outputs are hidden states that Manifold Mixup may mix
  (text: the embeddings module and the encoder layers; images: the backbone's stages);
* the **features**: the penultimate representation that feature calibrators (AdaTS) read
  (text: the first token's last hidden state; images: the pooled pre-logits features).

A model provides them through :class:`CalibrationSites`: a model whose inner module (inside DDP
or ``torch.compile`` wrappers) has a ``calibration_sites()`` method returns its own (the image
adapter, :class:`~nlpcal.adapters.timm.TimmForImageClassification`); any other model is read as a
Hugging Face sequence classifier (:class:`TextSites`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from nlpcal.losses._modules import input_embeddings, mixing_sites, unwrap_model

__all__ = ["CalibrationSites", "InputView", "TextSites", "model_sites"]

# Batch keys that are never passed on with the rest of the model inputs.
_NOT_MODEL_INPUTS = ("labels", "label")


@dataclass
class InputView:
    """A batch as a continuous input tensor, the mask of its real positions and the other inputs.

    Attributes:
        values: the input to perturb or mix, shape ``(B, L, H)``: token embeddings (text), or the
            pixels with one row per channel, ``(B, C, H·W)`` (images).
        mask: ``(B, L)``, 1 on real positions (text: tokens, not padding; images: all ones).
        rest: the other model inputs (attention mask, token type ids, ...), without labels.
        key: the model argument that takes the input (``"inputs_embeds"``, ``"pixel_values"``).
        shape: the per-example shape the model takes, e.g. ``(C, H, W)``.
        mask_key: the model argument that takes ``mask`` (``"attention_mask"``), or ``None``
            when the model takes none.
    """

    values: Tensor
    mask: Tensor
    rest: dict[str, Any] = field(default_factory=dict)
    key: str = "inputs_embeds"
    shape: tuple[int, ...] = ()
    mask_key: str | None = None

    def model_inputs(self, values: Tensor, rest: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of a forward pass on ``values`` (any batch size)."""
        rest = self.rest if rest is None else rest
        return {**rest, self.key: values.reshape(values.shape[0], *self.shape)}


@runtime_checkable
class CalibrationSites(Protocol):
    """The sites of one classifier (see the module docstring)."""

    input_key: str

    def check_input(self) -> None:
        """Raise a ``ValueError`` saying why the model cannot take a continuous input."""
        ...

    def input_view(self, inputs: Mapping[str, Any]) -> InputView:
        """The batch ``inputs`` (model inputs, labels ignored) as an :class:`InputView`."""
        ...

    def mixing_sites(self) -> list[nn.Module]:
        """Modules whose output is a hidden state, shallowest first (site 0 = the input stem)."""
        ...

    def features(self, outputs: Any) -> Tensor:
        """Penultimate features ``(B, H)`` from the outputs of a forward pass run with
        ``output_hidden_states=True``."""
        ...


class TextSites:
    """The sites of a Hugging Face sequence classifier.

    Input: ``get_input_embeddings()(input_ids)``, fed back as ``inputs_embeds`` (an
    ``inputs_embeds`` already in the batch is used as it is); mixing sites:
    :func:`~nlpcal.losses._modules.mixing_sites`; features: ``hidden_states[-1][:, 0]``.
    """

    input_key = "input_ids"

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap_model(model)

    def check_input(self) -> None:
        input_embeddings(self.model)

    def embed(self, input_ids: Tensor) -> Tensor:
        """The token embeddings of ``input_ids``."""
        return input_embeddings(self.model)(input_ids)

    def input_view(self, inputs: Mapping[str, Any]) -> InputView:
        rest = {
            k: v
            for k, v in inputs.items()
            if k not in (*_NOT_MODEL_INPUTS, "input_ids", "inputs_embeds")
        }
        embeds = inputs.get("inputs_embeds")
        if embeds is None:
            ids = inputs.get("input_ids")
            if ids is None:
                raise ValueError(
                    f"the input of a text model is 'input_ids' (or 'inputs_embeds'); got keys "
                    f"{sorted(inputs)}"
                )
            embeds = self.embed(ids)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return InputView(
            embeds, mask, rest, "inputs_embeds", tuple(embeds.shape[1:]), "attention_mask"
        )

    def mixing_sites(self) -> list[nn.Module]:
        return mixing_sites(self.model)

    def features(self, outputs: Any) -> Tensor:
        return outputs.hidden_states[-1][:, 0]


def model_sites(model: nn.Module) -> CalibrationSites:
    """The :class:`CalibrationSites` of ``model`` (possibly wrapped by DDP or ``torch.compile``).

    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
    ...                     intermediate_size=8, vocab_size=10)
    >>> type(model_sites(BertForSequenceClassification(config))).__name__
    'TextSites'
    """
    inner = unwrap_model(model)
    own = getattr(inner, "calibration_sites", None)
    if callable(own):
        return own()
    return TextSites(inner)
