"""Image backbones behind the interface of text classifiers: a timm model as a Hugging Face model.

:class:`TimmForImageClassification` wraps a timm model, or any module with timm's contract
(``forward_features``, ``forward_head(x, pre_logits=...)``, ``num_features``,
``reset_classifier``, ``get_classifier``, ``pretrained_cfg``), into a
``transformers.PreTrainedModel``: it takes ``pixel_values`` (and ``labels``), returns a
``SequenceClassifierOutput`` and has a config with ``num_labels``, ``id2label`` and
``label2id``, so :class:`~nlpcal.CalibratedTrainer`, the calibration losses and the post-hoc
calibrators use it as they use a text classifier. Its logits are the wrapped model's own
``forward`` output, unchanged.

timm is imported only when a model is built (``pip install nlpcal[vision]``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from nlpcal.losses.sites import InputView

__all__ = [
    "TIMM_PREFIX",
    "TimmClassifierConfig",
    "TimmForImageClassification",
    "TimmSites",
    "create_timm_classifier",
    "is_timm_name",
    "timm_classifier_for",
]

# A model string with this prefix names a timm architecture (``timm:resnet18``), not a Hub id.
TIMM_PREFIX = "timm:"
_CONTRACT = (
    "forward_features",
    "forward_head",
    "num_features",
    "reset_classifier",
    "get_classifier",
)


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            "image backbones need timm: install it with `pip install nlpcal[vision]`"
        ) from err
    return timm


def is_timm_name(model: Any) -> bool:
    """Whether a model string names a timm architecture (``"timm:NAME"``).

    >>> is_timm_name("timm:test_resnet"), is_timm_name("bert-base-uncased")
    (True, False)
    """
    return isinstance(model, str) and model.startswith(TIMM_PREFIX)


def check_architecture(name: str) -> str:
    """``name`` if timm knows it, else a ``ValueError`` listing the closest known names."""
    timm = _timm()
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"timm has no model named {name!r}{hint} (see timm.list_models())")


class TimmClassifierConfig(PretrainedConfig):
    """The config of :class:`TimmForImageClassification`.

    Args:
        architecture: the timm model name the backbone is rebuilt from when loading.
        num_channels: the input channels the model takes.
        image_size: ``(height, width)`` the model takes, or ``None`` for any size.
        model_kwargs: further keyword arguments of ``timm.create_model`` (``drop_rate``, ...).
        **kwargs: ``PretrainedConfig`` arguments: ``num_labels``, ``id2label``, ``label2id``.
    """

    model_type = "nlpcal_timm"

    def __init__(
        self,
        architecture: str | None = None,
        num_channels: int = 3,
        image_size: Sequence[int] | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.architecture = architecture
        self.num_channels = int(num_channels)
        self.image_size = None if image_size is None else [int(s) for s in image_size]
        self.model_kwargs = dict(model_kwargs or {})
        super().__init__(**kwargs)


class TimmSites:
    """The calibration sites of an image classifier (see :mod:`nlpcal.losses.sites`).

    Input: the pixels ``(B, C, H, W)``, viewed as ``(B, C, H·W)`` (one row per channel, no
    padding); mixing sites: the modules of the backbone's ``feature_info`` (the stem, then each
    stage); features: the input of the classification layer (the pooled pre-logits).
    """

    input_key = "pixel_values"

    def __init__(self, model: TimmForImageClassification) -> None:
        self.model = model

    def check_input(self) -> None:
        """Pixels are always a continuous input."""

    def input_view(self, inputs: Mapping[str, Any]) -> InputView:
        pixels = inputs.get("pixel_values")
        if pixels is None:
            raise ValueError(
                f"the input of an image model is 'pixel_values'; got keys {sorted(inputs)}"
            )
        rest = {k: v for k, v in inputs.items() if k not in ("labels", "label", "pixel_values")}
        values = pixels.flatten(2)
        mask = torch.ones(values.shape[:2], dtype=torch.long, device=pixels.device)
        return InputView(values, mask, rest, "pixel_values", tuple(pixels.shape[1:]))

    def mixing_sites(self) -> list[nn.Module]:
        backbone = self.model.timm_model
        info = getattr(backbone, "feature_info", None)
        names = [entry["module"] for entry in info] if info else []
        if not names:
            raise ValueError(
                f"cannot find the stages of {type(backbone).__name__}: it has no timm "
                "feature_info listing them"
            )
        return [backbone.get_submodule(name) for name in names]

    def features(self, outputs: Any) -> Tensor:
        return outputs.hidden_states[-1]


class TimmForImageClassification(PreTrainedModel):
    """A timm backbone as a Hugging Face image classifier (see the module docstring).

    ``forward(pixel_values, labels=None, output_hidden_states=None)`` returns a
    ``SequenceClassifierOutput``: ``logits`` are the backbone's ``forward(pixel_values)``
    exactly; ``loss`` the cross-entropy when ``labels`` are given; with
    ``output_hidden_states``, ``hidden_states`` holds the output of each stage of the backbone's
    ``feature_info`` and, last, the pre-logits features ``(B, num_features)`` (the input of the
    classification layer), which feature calibrators read.

    Build one with :func:`create_timm_classifier` (a timm name or a module); save and load it
    with ``save_pretrained`` / ``from_pretrained`` (the backbone is rebuilt from
    ``config.architecture`` with ``pretrained=False`` and the saved weights loaded).

    >>> model = create_timm_classifier("test_resnet", ["zero", "one"], num_channels=1,
    ...                                image_size=(28, 28))
    >>> model(pixel_values=torch.zeros(2, 1, 28, 28)).logits.shape
    torch.Size([2, 2])
    """

    config_class = TimmClassifierConfig
    base_model_prefix = "timm_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: TimmClassifierConfig, timm_model: nn.Module | None = None) -> None:
        super().__init__(config)
        if timm_model is None:
            if not config.architecture:
                raise ValueError(
                    "TimmClassifierConfig.architecture is not set: cannot build the backbone "
                    "(pass timm_model=, or use create_timm_classifier)"
                )
            timm_model = _timm().create_model(
                check_architecture(config.architecture),
                pretrained=False,
                num_classes=config.num_labels,
                in_chans=config.num_channels,
                **config.model_kwargs,
            )
        _check_contract(timm_model)
        classes = _classifier_outputs(timm_model)
        if classes != config.num_labels:
            raise ValueError(
                f"the backbone's classifier has {classes} outputs but config.num_labels is "
                f"{config.num_labels}"
            )
        self.timm_model = timm_model
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """timm initialises its own weights; nothing to add."""

    def get_input_embeddings(self) -> None:
        return None

    def calibration_sites(self) -> TimmSites:
        """The sites calibration losses use (:mod:`nlpcal.losses.sites`)."""
        return TimmSites(self)

    def forward(
        self,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if pixel_values is None:
            raise ValueError("TimmForImageClassification needs pixel_values (B, C, H, W)")
        self._check_pixels(pixel_values)
        hidden: list[Tensor] = []
        handles = []
        if output_hidden_states:
            for site in self.calibration_sites().mixing_sites():
                handles.append(site.register_forward_hook(lambda _m, _a, out: hidden.append(out)))
            handles.append(
                self.timm_model.get_classifier().register_forward_hook(
                    lambda _m, args, _out: hidden.append(args[0].flatten(1))
                )
            )
        try:
            logits = self.timm_model(pixel_values)
        finally:
            for handle in handles:
                handle.remove()
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=tuple(hidden) if output_hidden_states else None
        )

    def _check_pixels(self, pixels: Tensor) -> None:
        config = self.config
        if pixels.ndim != 4 or pixels.shape[1] != config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (B, {config.num_channels}, H, W) for this model "
                f"({config.architecture or type(self.timm_model).__name__} takes "
                f"{config.num_channels}-channel images), got {tuple(pixels.shape)}"
            )
        if config.image_size is not None and list(pixels.shape[2:]) != config.image_size:
            height, width = config.image_size
            raise ValueError(
                f"pixel_values must be {height}x{width} images for this model, got "
                f"{pixels.shape[2]}x{pixels.shape[3]} (shape {tuple(pixels.shape)})"
            )
        patch = getattr(self.timm_model, "patch_embed", None)
        size = getattr(patch, "patch_size", None)
        if (
            size is not None
            and not getattr(patch, "dynamic_img_pad", True)
            and any(int(n) % int(p) for n, p in zip(pixels.shape[2:], size, strict=True))
        ):
            raise ValueError(
                f"pixel_values must have a height and width divisible by the patch size "
                f"{tuple(int(p) for p in size)} of this model, got "
                f"{pixels.shape[2]}x{pixels.shape[3]}"
            )
        if not pixels.is_floating_point():
            raise ValueError(
                f"pixel_values must be floating point (scaled images), got {pixels.dtype}"
            )


def create_timm_classifier(
    model: str | nn.Module,
    labels: Sequence[str] | int,
    num_channels: int | None = None,
    image_size: Sequence[int] | None = None,
    **model_kwargs: Any,
) -> TimmForImageClassification:
    """An image classifier for ``labels`` from a timm name or a module with timm's contract.

    A name (``"resnet18"`` or ``"timm:resnet18"``) is built with ``pretrained=False`` and a new
    head of ``len(labels)`` classes; a module keeps its weights, its classifier is reset to
    ``len(labels)`` classes (``reset_classifier``) only when its count differs.

    Args:
        model: a timm model name, or a module with timm's contract.
        labels: the class names in id order, or their number.
        num_channels: input channels (default: 3 for a name; a module's own ``in_chans``).
        image_size: ``(height, width)`` to require of inputs (default: any size, except models
            with a fixed input size such as ViTs, which record theirs).
        **model_kwargs: keyword arguments of ``timm.create_model`` (e.g. ``img_size`` for ViTs).

    Raises:
        ValueError: an unknown timm name (with close matches), a module without timm's
            contract, no labels.
    """
    names = [f"LABEL_{i}" for i in range(labels)] if isinstance(labels, int) else list(labels)
    if not names:
        raise ValueError("labels must name at least one class")
    label_kwargs = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    if isinstance(model, str):
        name = check_architecture(model.removeprefix(TIMM_PREFIX))
        config = TimmClassifierConfig(
            architecture=name,
            num_channels=3 if num_channels is None else num_channels,
            image_size=image_size,
            model_kwargs=model_kwargs,
            **label_kwargs,
        )
        classifier = TimmForImageClassification(config)
    else:
        if model_kwargs:
            raise ValueError(
                f"model_kwargs {sorted(model_kwargs)} only apply when building from a timm name"
            )
        _check_contract(model)
        if _classifier_outputs(model) != len(names):
            model.reset_classifier(len(names))
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        channels = num_channels or _input_channels(model) or 3
        config = TimmClassifierConfig(
            architecture=cfg.get("architecture"),
            num_channels=channels,
            image_size=image_size,
            **label_kwargs,
        )
        classifier = TimmForImageClassification(config, timm_model=model)
    if image_size is None:
        fixed = _fixed_image_size(classifier.timm_model)
        if fixed is not None:
            classifier.config.image_size = fixed
    return classifier


def timm_classifier_for(model: str, dataset: Any) -> TimmForImageClassification:
    """A fresh classifier ``model`` (``"timm:NAME"``) for the images and labels of ``dataset``:
    its channels and image size from the ``pixel_values`` feature, its classes from ``label``."""
    feature = dataset.features.get("pixel_values")
    shape = getattr(feature, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(
            f"{model} is an image model: the training data needs a pixel_values column of "
            f"(C, H, W) images; its columns: {dataset.column_names}"
        )
    return create_timm_classifier(
        model, dataset.features["label"].names, num_channels=shape[0], image_size=shape[1:]
    )


def _check_contract(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"expected a timm model name or an nn.Module with timm's contract, got "
            f"{type(model).__name__}"
        )
    missing = [name for name in _CONTRACT if not hasattr(model, name)]
    if missing:
        raise ValueError(
            f"{type(model).__name__} lacks timm's model contract: no {', '.join(missing)} "
            f"(expected {', '.join(_CONTRACT)})"
        )


def _classifier_outputs(model: nn.Module) -> int | None:
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        return head.out_features
    return getattr(model, "num_classes", None)


def _input_channels(model: nn.Module) -> int | None:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else first.in_channels


def _fixed_image_size(model: nn.Module) -> list[int] | None:
    """The input size of a model that only takes one (a patch embedding with fixed position
    embeddings, as ViTs built without ``dynamic_img_size``)."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None or getattr(model, "dynamic_img_size", False):
        return None
    return [int(s) for s in size]


def register_auto_classes() -> None:
    """Register the config and model with transformers' ``AutoConfig`` and
    ``AutoModelForImageClassification`` (once), so that ``from_pretrained`` of a saved folder
    finds them."""
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        AutoConfig.register(TimmClassifierConfig.model_type, TimmClassifierConfig)
        AutoModelForImageClassification.register(TimmClassifierConfig, TimmForImageClassification)
    except ValueError:  # already registered
        pass


register_auto_classes()
