"""Finding the parts of a Hugging Face classifier that calibration losses use, and hooking them.

Everything here accepts the model as the trainer passes it (possibly wrapped by DDP, FSDP or
``torch.compile``) and looks inside the wrapper. A model whose layout is not recognised raises a
``ValueError`` that says what was looked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

__all__ = [
    "check_layers",
    "classifier_layer",
    "eligible_sites",
    "input_embeddings",
    "mixing_sites",
    "num_labels",
    "output_layer",
    "transform_output",
    "unwrap_model",
]

_WRAPPER_ATTRS = ("module", "_orig_mod")
_LAYER_LIST_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")
# Where sequence classifiers keep the linear layer whose output is the logits: BERT, DistilBERT,
# DeBERTa (`classifier`); RoBERTa, XLM-R, ELECTRA (`classifier.out_proj`); BART
# (`classification_head.out_proj`); GPT-2, Llama, Mistral (`score`).
_OUTPUT_LAYER_PATHS = ("classifier.out_proj", "classifier", "classification_head.out_proj", "score")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / FSDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = next(
            (
                getattr(model, a)
                for a in _WRAPPER_ATTRS
                if isinstance(getattr(model, a, None), nn.Module)
            ),
            None,
        )
        if inner is None:
            return model
        model = inner


def num_labels(model: nn.Module) -> int:
    """``model.config.num_labels``, the number of classes ``K`` the classifier predicts."""
    config = getattr(unwrap_model(model), "config", None)
    if config is None or getattr(config, "num_labels", None) is None:
        raise ValueError(
            f"{type(unwrap_model(model)).__name__} has no config.num_labels; calibration losses "
            "need a Hugging Face sequence classifier"
        )
    return int(config.num_labels)


def input_embeddings(model: nn.Module) -> nn.Module:
    """The token-embedding module (``get_input_embeddings()``); ``ValueError`` if there is none."""
    inner = unwrap_model(model)
    try:
        embeddings = inner.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if embeddings is None:
        raise ValueError(
            f"{type(inner).__name__} has no input embeddings (get_input_embeddings() returned "
            "None or is not implemented)"
        )
    return embeddings


def mixing_sites(model: nn.Module) -> list[nn.Module]:
    """Modules whose output is the hidden state after ``k`` encoder layers, for ``k = 0..L``.

    Site 0 is the embeddings module of ``model.base_model`` (token, position and type embeddings
    after their layer norm); site ``k ≥ 1`` is encoder layer ``k − 1``. The layer list is looked for
    at ``base_model.encoder.layer`` (BERT, RoBERTa, ELECTRA, DeBERTa), ``.transformer.layer``
    (DistilBERT), ``.encoder.layers`` and ``.layers`` (ModernBERT).
    """
    inner = unwrap_model(model)
    base = getattr(inner, "base_model", inner)
    embeddings = getattr(base, "embeddings", None)
    layers = next(
        (
            m
            for m in (_submodule(base, p) for p in _LAYER_LIST_PATHS)
            if isinstance(m, nn.ModuleList)
        ),
        None,
    )
    if not isinstance(embeddings, nn.Module) or not layers:
        raise ValueError(
            f"cannot find the hidden-state mixing sites of {type(base).__name__}: expected an "
            "`embeddings` module and a list of encoder layers at one of "
            f"{', '.join('base_model.' + p for p in _LAYER_LIST_PATHS)}"
        )
    return [embeddings, *layers]


def check_layers(layers: Sequence[int] | None) -> tuple[int, ...] | None:
    """Validate a ``layers`` hyper-parameter: ``None`` or distinct mixing-site numbers ``≥ 0``."""
    if layers is None:
        return None
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ValueError(f"layers must be a sequence of layer numbers or None, got {layers!r}")
    if (
        not layers
        or len(set(layers)) != len(layers)
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in layers)
    ):
        raise ValueError(
            f"layers must be distinct integers >= 0 (0 = embeddings), got {list(layers)!r}"
        )
    return tuple(layers)


def eligible_sites(model: nn.Module, layers: Sequence[int] | None) -> list[nn.Module]:
    """The mixing sites numbered ``layers``; by default ``0..min(2, L − 1)`` (Manifold Mixup).

    The sites are the model's own (:func:`~nlpcal.losses.sites.model_sites`): for text
    :func:`mixing_sites`, for an image backbone its stages."""
    from nlpcal.losses.sites import model_sites  # sites builds on this module

    sites = model_sites(model).mixing_sites()
    n_layers = len(sites) - 1
    if layers is None:
        layers = range(min(2, n_layers - 1) + 1)
    too_deep = [k for k in layers if k > n_layers]
    if too_deep:
        raise ValueError(
            f"mixing layers {too_deep} do not exist: {type(unwrap_model(model)).__name__} has "
            f"{n_layers} encoder layers (or stages), so layers must lie in [0, {n_layers}]"
        )
    return [sites[k] for k in layers]


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final classification layer: the last ``nn.Linear`` with ``config.num_labels`` outputs."""
    k = num_labels(model)
    inner = unwrap_model(model)
    linear = next(
        (
            m
            for m in reversed(list(inner.modules()))
            if isinstance(m, nn.Linear) and m.out_features == k
        ),
        None,
    )
    if linear is None:
        raise ValueError(
            f"cannot find the classification layer of {type(inner).__name__}: no nn.Linear has "
            f"out_features == config.num_labels == {k}"
        )
    return linear


def output_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The linear layer whose output is the model's logits, and its name in ``state_dict()``.

    It must sit at a known head path (``classifier.out_proj``, ``classifier``,
    ``classification_head.out_proj``, ``score``), have ``config.num_labels`` outputs and be the
    last such layer of the model (:func:`classifier_layer`), so that nothing the model computes
    after it can change the logits' meaning. Anything else raises a ``ValueError`` naming what
    was found.

    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
    ...                     intermediate_size=8, vocab_size=10, num_labels=3)
    >>> output_layer(BertForSequenceClassification(config))[0]
    'classifier'
    """
    inner = unwrap_model(model)
    k = num_labels(inner)
    for path in _OUTPUT_LAYER_PATHS:
        layer = _submodule(inner, path)
        if isinstance(layer, nn.Linear) and layer.out_features == k:
            last = classifier_layer(inner)
            if last is not layer:
                last_name = next(n for n, m in inner.named_modules() if m is last)
                raise ValueError(
                    f"{type(inner).__name__} has its classification layer at `{path}` but another "
                    f"nn.Linear with {k} outputs after it (`{last_name}`): cannot tell which one "
                    "outputs the logits"
                )
            return path, layer
    raise ValueError(
        f"cannot find the output layer of {type(inner).__name__}: none of "
        f"{', '.join(f'`{p}`' for p in _OUTPUT_LAYER_PATHS)} is an nn.Linear with "
        f"config.num_labels == {k} outputs"
    )


@contextmanager
def transform_output(module: nn.Module, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Replace the hidden state ``h`` that ``module`` returns by ``fn(h)`` inside the block.

    The output may be a tensor, a tuple whose first element is the hidden state, or a mapping
    (``ModelOutput``) whose first entry is. The hook is removed on exit, also when the forward
    raises.

    >>> import torch
    >>> layer = nn.Identity()
    >>> with transform_output(layer, lambda h: 2 * h):
    ...     layer(torch.ones(1))
    tensor([2.])
    >>> len(layer._forward_hooks)
    0
    """
    handle = module.register_forward_hook(
        lambda _module, _args, output: _replace_hidden(output, fn)
    )
    try:
        yield
    finally:
        handle.remove()


def _replace_hidden(output: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(output, Tensor):
        return fn(output)
    if isinstance(output, Mapping):
        first = next(iter(output))
        return type(output)(**{**output, first: fn(output[first])})
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    raise TypeError(
        f"cannot mix the output of this module: expected a tensor, a tuple or a ModelOutput, "
        f"got {type(output).__name__}"
    )


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None
