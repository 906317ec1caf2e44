"""The post-hoc calibrator interface, its registry, and safetensors + JSON persistence.

Every calibrator is an ``nn.Module``: ``fit(logits, labels, features=None)`` learns its parameters
on held-out data (never on test data) and returns ``self``; calling the fitted module on logits
(and features, for sample-dependent methods) returns calibrated logits. The argmax never changes
for the scaling methods. ``state_dict()`` / ``load_state_dict()`` come from ``nn.Module``;
:meth:`Calibrator.save` and :func:`load_calibrator` write and read a folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from nlpcal._io import check_safetensors, read_json, staged
from nlpcal._registry import Registry
from nlpcal.functional._checks import check_labels, check_logits

__all__ = [
    "Calibrator",
    "ScalarCalibrator",
    "calibrator_class",
    "create_calibrator",
    "list_calibrators",
    "load_calibrator",
    "register_calibrator",
]

CONFIG_NAME = "calibrator.json"
WEIGHTS_NAME = "calibrator.safetensors"

_CALIBRATORS: Registry[Calibrator] = Registry("calibrator")


def register_calibrator(name: str):
    """Class decorator: register a :class:`Calibrator` under ``name`` (raises if taken)."""
    return _CALIBRATORS.register(name)


def create_calibrator(name: str, **kwargs: Any) -> Calibrator:
    """Instantiate the calibrator registered as ``name``; unknown names list the available ones."""
    import nlpcal.posthoc  # noqa: F401  (registers the built-in calibrators)

    return _CALIBRATORS.create(name, **kwargs)


def calibrator_class(name: str) -> type[Calibrator]:
    """The class registered as ``name`` (its class attributes, e.g. ``requires_features``, without
    building one); unknown names list the available ones.

    >>> calibrator_class("adats").requires_features
    True
    """
    import nlpcal.posthoc  # noqa: F401

    return _CALIBRATORS.get(name)


def list_calibrators() -> list[str]:
    """Names of every registered calibrator, sorted."""
    import nlpcal.posthoc  # noqa: F401

    return _CALIBRATORS.names()


class Calibrator(nn.Module):
    """Base class of post-hoc calibrators.

    Subclasses implement :meth:`_fit` and :meth:`forward`, return their constructor arguments from
    :meth:`config`, and keep every learned quantity in parameters or buffers (so ``state_dict``
    holds the whole fitted state). ``requires_features`` marks methods that need penultimate
    features (AdaTS). ``normalized = False`` marks methods whose outputs are unnormalised log
    class probabilities (SLOVA's exponential calibration), read as in
    :mod:`nlpcal.functional.predictive`.
    """

    name: ClassVar[str]
    requires_features: ClassVar[bool] = False
    normalized: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.tensor(False), persistent=True)

    # -- public API ----------------------------------------------------------------------------
    def fit(self, logits: Any, labels: Any, features: Any | None = None) -> Calibrator:
        """Fit on held-out ``logits`` ``(n, K)`` and integer ``labels`` ``(n,)``; returns ``self``."""
        logits, labels, features = self._check_fit_inputs(logits, labels, features)
        with torch.enable_grad():
            self._fit(logits, labels, features)
        self.fitted.fill_(True)
        return self

    def config(self) -> dict[str, Any]:
        """Constructor arguments that recreate this calibrator (JSON-serialisable)."""
        return {}

    def affine(self) -> tuple[Tensor, Tensor] | None:
        """``(scale, shift)`` when the calibrated logits are ``scale ⊙ z + shift`` for every
        input ``z`` (each a scalar or ``(K,)``), else ``None`` (the default: sample-dependent or
        non-linear calibrators).

        An affine calibrator can be folded into the classifier's last linear layer
        (:func:`~nlpcal.functional.scaling.fold_affine`), so that the model alone outputs the
        calibrated logits.
        """
        return None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``calibrator.json`` and ``calibrator.safetensors`` into ``directory``.

        Both files are written in full to temporary names (the config is serialised before
        anything is written) and only then renamed over the old ones, so a failed save leaves
        any previous copy intact.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"name": self.name, "config": self.config()}, indent=2)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with (
            staged(directory / WEIGHTS_NAME) as weights_tmp,
            staged(directory / CONFIG_NAME) as config_tmp,
        ):
            save_file(tensors, weights_tmp)
            Path(config_tmp).write_text(meta)
        return directory

    # -- for subclasses ------------------------------------------------------------------------
    def _fit(self, logits: Tensor, labels: Tensor, features: Tensor | None) -> None:
        raise NotImplementedError

    def _check_fit_inputs(
        self, logits: Any, labels: Any, features: Any | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        logits = check_logits(logits)
        if logits.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 held-out examples to fit, got {logits.shape[0]}"
            )
        labels = check_labels(labels, logits.shape[0], logits.shape[1]).to(logits.device)
        if self.requires_features:
            if features is None:
                raise ValueError(f"{type(self).__name__} needs penultimate features to fit")
            features = check_logits(features, name="features")
            if features.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"features have {features.shape[0]} rows but logits have {logits.shape[0]}"
                )
        return logits, labels, features

    def _check_call_inputs(self, logits: Any) -> Tensor:
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call .fit() first")
        return check_logits(logits)


class ScalarCalibrator(Calibrator):
    """Base of calibrators with one positive scalar, stored as its logarithm ``log_value``.

    Subclasses fit the scalar in :meth:`_fit` (``self.log_value.copy_(value.log())``) and read it
    through :attr:`value` (1 before fitting); ``max_iter`` bounds the L-BFGS iterations.
    """

    def __init__(self, max_iter: int = 100) -> None:
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        super().__init__()
        self.max_iter = max_iter
        self.register_buffer("log_value", torch.zeros(()))

    @property
    def value(self) -> Tensor:
        """The fitted scalar ``exp(log_value)``."""
        return self.log_value.exp()

    def config(self) -> dict[str, Any]:
        return {"max_iter": self.max_iter}


def load_calibrator(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> Calibrator:
    """Load a calibrator written by :meth:`Calibrator.save`.

    Raises:
        FileNotFoundError: when ``calibrator.json`` or ``calibrator.safetensors`` is missing.
        ValueError: naming the file, when one is corrupted or truncated, or when the weights do
            not fit the calibrator that the config describes.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"no saved calibrator at {directory}: {path.name} is missing")
    meta = read_json(config_path, required=("name", "config"))
    try:
        calibrator = create_calibrator(meta["name"], **meta["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path} does not describe a calibrator: {err}") from err
    check_safetensors(weights_path)
    try:
        calibrator.load_state_dict(load_file(str(weights_path), device=str(map_location)))
    except RuntimeError as err:
        raise ValueError(
            f"{weights_path} does not hold the weights of the {meta['name']} calibrator "
            f"described by {config_path}: {err}"
        ) from err
    return calibrator
