"""Save, load and share calibrated models.

A calibrated model folder is a normal ``save_pretrained`` folder plus ``nlpcal_config.json`` (the
training loss, each post-hoc variant's calibrator and the active variant) and each fitted
calibrator in ``calibrators/<variant>/``. It loads back with :func:`load_calibrated` from a local
path or a Hub repository id; folders saved before several calibrators (one ``calibrator/``
folder) load too.

Saving goes through a temporary folder (:func:`~nlpcal._io.staged_folder`), so a failed save
leaves the previous one as it was; a failed Hub call raises :class:`HubError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nlpcal import __version__
from nlpcal._io import check_safetensors, read_json, staged_folder, write_text_atomic
from nlpcal.functional.predictive import class_probabilities, split_confidence
from nlpcal.losses import CalibrationLoss, create_loss
from nlpcal.metrics.vocabulary import METRICS
from nlpcal.posthoc import Calibrator, load_calibrator

__all__ = [
    "CalibratedModel",
    "HubError",
    "calibration_card",
    "load_calibrated",
    "save_calibration",
]

CONFIG_NAME = "nlpcal_config.json"
CARD_METRICS = ("accuracy", "ece", "brier", "nll")  # keys of nlpcal.metrics.vocabulary
CALIBRATORS_DIR = "calibrators"
LEGACY_CALIBRATOR_DIR = "calibrator"  # the one calibrator of a save from before several
# What a save writes that a new save must not leave behind when it writes no new copy: the
# weights (an older, larger save's shards) and the calibration (calibrators no longer fitted).
REPLACED_ON_SAVE = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    CALIBRATORS_DIR,
    LEGACY_CALIBRATOR_DIR,
    CONFIG_NAME,
)


class HubError(OSError):
    """A call to the Hugging Face Hub failed; the message names the repository and the reason."""


def save_calibration(
    directory: str | os.PathLike,
    loss: CalibrationLoss,
    calibrators: Mapping[str, Calibrator],
    active: str | None = None,
) -> None:
    """Write the loss and the fitted calibrators (by variant name; ``active``, default the first,
    is the one :func:`load_calibrated` applies) next to a ``save_pretrained`` folder."""
    if active is not None and active not in calibrators:
        raise ValueError(f"active calibrator {active!r} is not among {list(calibrators)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for variant, calibrator in calibrators.items():
        calibrator.save(directory / CALIBRATORS_DIR / variant)
    meta = {
        "nlpcal_version": __version__,
        "loss": loss.name,
        "loss_config": loss.config(),
        "calibrators": {variant: c.name for variant, c in calibrators.items()},
        "active_calibrator": active or next(iter(calibrators), None),
    }
    write_text_atomic(directory / CONFIG_NAME, json.dumps(meta, indent=2))


def calibration_card(
    loss: CalibrationLoss,
    calibrators: Mapping[str, Calibrator],
    metrics: Mapping[str, float] | None = None,
    active: str | None = None,
) -> str:
    """The model card's calibration section: the method, the fitted calibrators by variant name
    (``active``, default the first, is the one a load applies), the metrics of each."""
    active = active or next(iter(calibrators), None)
    lines = [
        "## Calibration (nlpcal)",
        "",
        f"- Training loss: `{loss.name}` {json.dumps(loss.config()) if loss.config() else ''}".rstrip(),
    ]
    if not calibrators:
        lines.append("- Post-hoc calibrator: none")
    for variant, calibrator in calibrators.items():
        name = "" if variant == calibrator.name else f" (variant `{variant}`)"
        applied = " — applied when loaded" if variant == active else ""
        config = json.dumps(calibrator.config())
        lines.append(f"- Post-hoc calibrator: `{calibrator.name}`{name} {config}{applied}")
        if hasattr(calibrator, "temperature"):
            lines.append(f"- Fitted temperature: {float(calibrator.temperature):.4f}")
    rows = _card_rows(metrics or {}, list(calibrators))
    if rows:
        lines += [
            "",
            "| eval set | metric | uncalibrated | " + " | ".join(calibrators) + " |",
            "|---|---|---|" + "---|" * len(calibrators),
            *rows,
        ]
    lines += [
        "",
        "Load it with calibration applied:",
        "",
        "```python",
        "from nlpcal import load_calibrated",
        'model = load_calibrated("<this repo or folder>")',
        'model.predict_proba(["some text"])   # the calibrated distribution',
        'labels, confidence = model.predict(["some text"])   # the calibrated confidence',
        "```",
        "",
    ]
    return "\n".join(lines)


def _card_rows(metrics: Mapping[str, float], variants: Sequence[str]) -> list[str]:
    rows = []
    for key, value in metrics.items():
        for metric in CARD_METRICS:
            suffix = f"_{metric}"
            if not key.endswith(suffix) or any(key.endswith(f"_{v}{suffix}") for v in variants):
                continue
            prefix = key[: -len(suffix)]
            after = [metrics.get(f"{prefix}_{v}{suffix}") for v in variants]
            cells = [
                prefix.removeprefix("eval_"),
                METRICS[metric].label,
                *("" if x is None else f"{x:.4f}" for x in (value, *after)),
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


class CalibratedModel(nn.Module):
    """A classifier with its training loss's output transform and its post-hoc calibrator.

    Calling it returns calibrated logits; :meth:`predict_proba` goes from raw text to
    probabilities.

    Args:
        model: the fine-tuned sequence classifier.
        loss: the calibration loss it was trained with (defines the predictive distribution).
        calibrator: a fitted post-hoc calibrator, or ``None``.
        tokenizer: the tokenizer, needed by :meth:`predict_proba`.
        variant: the calibrator's variant name, which :meth:`save_pretrained` saves it under
            (default: the calibrator's name).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: CalibrationLoss,
        calibrator: Calibrator | None = None,
        tokenizer: Any = None,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.calibrator = calibrator
        self.tokenizer = tokenizer
        self.variant = variant

    @torch.no_grad()
    def forward(self, **inputs: Tensor) -> Tensor:
        """Calibrated logits for a tokenised batch."""
        inputs.pop("labels", None)
        outputs = self.model(**inputs, output_hidden_states=self._needs_features() or None)
        logits = self.loss.transform_logits(outputs.logits, self.model).float()
        if self.calibrator is None:
            return logits
        features = outputs.hidden_states[-1][:, 0] if self._needs_features() else None
        return self.calibrator(logits, features)

    @property
    def normalized(self) -> bool:
        """Whether the softmax of the calibrated logits is the predictive distribution (``False``
        for SLOVA's unnormalised outputs, see :mod:`nlpcal.functional.predictive`)."""
        stage = self.calibrator if self.calibrator is not None else self.loss
        return stage.normalized

    @torch.no_grad()
    def class_probabilities(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 32,
        max_length: int = 128,
    ) -> Tensor:
        """Calibrated class probabilities ``(n, K)`` for raw texts (and second segments): rows
        sum to one, except for SLOVA's unnormalised class confidences (see
        :mod:`nlpcal.functional.predictive`)."""
        if self.tokenizer is None:
            raise ValueError("predicting from texts needs a tokenizer: pass tokenizer= or load one")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
        self.eval()
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            pair = None if text_pairs is None else list(text_pairs[start : start + batch_size])
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                pair,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            chunks.append(class_probabilities(self(**batch), self.normalized).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.model.config.num_labels)

    def predict_proba(self, texts: Sequence[str], **kwargs: Any) -> Tensor:
        """The calibrated predictive distribution ``(n, K)``, rows summing to one (what Brier and
        NLL score); arguments as :meth:`class_probabilities`."""
        return split_confidence(self.class_probabilities(texts, **kwargs))[0]

    def predict(self, texts: Sequence[str], **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Predicted class ids ``(n,)`` and their calibrated confidence ``(n,)`` — the quantity
        the calibrator was fitted on and ECE scores; arguments as :meth:`class_probabilities`."""
        probs = self.class_probabilities(texts, **kwargs)
        confidence, labels = probs.max(dim=-1)
        return labels, confidence

    def save_pretrained(
        self, directory: str | os.PathLike, metrics: Mapping[str, float] | None = None
    ) -> None:
        """Write model, tokenizer, calibration and a model card (``README.md``).

        ``metrics`` (e.g. ``CalibratedTrainer.evaluate()``'s result) go into the card. Everything
        is written to a temporary folder first and moved in only once complete, so a failed save
        leaves a previous one in ``directory`` intact; weight shards and calibrators of a previous
        save that this one does not write are removed, other files are left alone.
        """
        calibrators = {}
        if self.calibrator is not None:
            calibrators[self.variant or self.calibrator.name] = self.calibrator
        card = "---\nlibrary_name: transformers\ntags:\n- nlpcal\n- calibration\n---\n\n"
        card += calibration_card(self.loss, calibrators, metrics)
        with staged_folder(directory, REPLACED_ON_SAVE) as staging:
            self.model.save_pretrained(staging)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(staging)
            save_calibration(staging, self.loss, calibrators)
            (staging / "README.md").write_text(card)

    def push_to_hub(
        self,
        repo_id: str,
        metrics: Mapping[str, float] | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload calibrated model (nlpcal)",
    ) -> Any:
        """Upload model, tokenizer, calibration and card to the Hub repository ``repo_id``.

        The files are written to a temporary folder and uploaded from there, so no local copy is
        touched whether the upload succeeds or fails. Returns the commit information.

        Raises:
            HubError: when the Hub cannot be reached, there is no token or the Hub refuses it.
        """
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="nlpcal-push-") as folder:
            self.save_pretrained(folder, metrics)
            try:
                api.create_repo(repo_id, private=private, exist_ok=True)
                return api.upload_folder(
                    repo_id=repo_id, folder_path=folder, commit_message=commit_message
                )
            except Exception as err:  # every failure here is the Hub's; the cause is chained
                raise HubError(
                    f"pushing to the Hub repository {repo_id} failed: {_hub_reason(err)}"
                ) from err

    def _needs_features(self) -> bool:
        return self.calibrator is not None and self.calibrator.requires_features


def load_calibrated(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    calibrator: str | None = None,
    **hub_kwargs: Any,
) -> CalibratedModel:
    """Load a calibrated model saved by ``CalibratedTrainer.save_model`` or ``save_pretrained``.

    ``path`` is a local folder or a Hub repository id (downloaded with ``snapshot_download``,
    which gets ``hub_kwargs``). A path that is no folder is tried on the Hub only if it can be a
    repository id (``name`` or ``owner/name``): ``./x``, ``/x``, ``~/x`` or ``a/b/c`` never are.
    ``calibrator`` names the saved post-hoc variant to apply (default: the active one of the
    save; ``"none"``: none). Heads that the loss adds to the model (e.g. the double head's
    temperature network) are re-attached and their weights restored.

    Raises:
        FileNotFoundError: when there is no such folder (and no such Hub repository), or the
            folder was not saved by nlpcal.
        ValueError: naming the file, when a file of the save is corrupted or truncated; or when
            ``calibrator`` names no saved variant.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = _find_folder(path, hub_kwargs)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not saved by nlpcal")
    meta = read_json(config_file, required=("loss",))
    saved, active, location = _saved_calibrators(folder, meta)
    variant = active if calibrator is None else calibrator
    if variant not in (*saved, None, "none"):
        raise ValueError(
            f"{folder} has no calibrator {variant!r}; saved variants: {list(saved)} (or 'none')"
        )
    try:
        loss = create_loss(meta["loss"], **meta.get("loss_config", {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_file} does not describe a calibration loss: {err}") from err
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"no model*.safetensors weights in {folder}")
    for file in weights:
        check_safetensors(file)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    loss.prepare_model(model)
    _restore_weights(model, weights)
    fitted = None
    if variant in saved:
        fitted = load_calibrator(location[variant])
        if fitted.name != saved[variant]:
            raise ValueError(
                f"{config_file} names the calibrator {saved[variant]!r} but "
                f"{location[variant]} holds {fitted.name!r}"
            )
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    calibrated = CalibratedModel(model.eval(), loss, fitted, tokenizer, variant if fitted else None)
    if device is not None:
        calibrated.to(device)
    return calibrated


def _saved_calibrators(
    folder: Path, meta: Mapping[str, Any]
) -> tuple[dict[str, str], str | None, dict[str, Path]]:
    """The saved variants' calibrator names, the active variant and each variant's folder, from
    ``nlpcal_config.json``; a save from before several calibrators has one, in ``calibrator/``."""
    config_file = folder / CONFIG_NAME
    if "calibrators" in meta:
        saved, active = meta["calibrators"], meta.get("active_calibrator")
        if not isinstance(saved, dict) or (saved and active not in saved):
            raise ValueError(
                f"{config_file} is corrupted: expected 'calibrators' to map variant names to "
                f"calibrator names and 'active_calibrator' to name one of them"
            )
        return saved, active, {v: folder / CALIBRATORS_DIR / v for v in saved}
    if "calibrator" not in meta:
        raise ValueError(
            f"{config_file} lacks the keys ['calibrators']; expected a JSON object with the keys "
            "['loss', 'calibrators', 'active_calibrator']"
        )
    name = meta["calibrator"]
    if name is None:
        return {}, None, {}
    return {name: name}, name, {name: folder / LEGACY_CALIBRATOR_DIR}


def _find_folder(path: str | os.PathLike, hub_kwargs: Mapping[str, Any]) -> Path:
    """The local folder ``path``, or else the downloaded Hub repository ``path``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ValueError(f"{path} is a file; expected a model folder")
    try:
        validate_repo_id(os.fspath(path))
    except HFValidationError:
        raise FileNotFoundError(f"no folder {path}") from None
    try:
        return Path(snapshot_download(os.fspath(path), **hub_kwargs))
    except Exception as err:  # the Hub's reason goes into the message; the cause is chained
        raise FileNotFoundError(
            f"no folder {path} and no Hub repository {path} ({_hub_reason(err)})"
        ) from err


def _hub_reason(err: Exception) -> str:
    """A short reason for a failed Hub call, whichever HTTP library ``huggingface_hub`` uses."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    first_line = str(err).partition("\n")[0]
    detail = f"{type(err).__name__}: {first_line}"
    if isinstance(err, LocalTokenNotFoundError):
        return "no Hugging Face token: log in with `hf auth login` or pass token="
    if isinstance(err, OfflineModeIsEnabled) or (
        isinstance(err, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE
    ):
        return "offline mode: HF_HUB_OFFLINE is set"
    if isinstance(err, LocalEntryNotFoundError):
        return "cannot reach the Hub, and no copy in the local cache"
    if isinstance(err, GatedRepoError):
        return "gated repository: ask for access on the Hub and pass a token"
    if isinstance(err, RepositoryNotFoundError):
        return "not found on the Hub, or private and the token cannot read it"
    if isinstance(err, HfHubHTTPError):
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            return f"the Hub refused the token (HTTP {status}): pass a token with write access"
        return f"the Hub answered HTTP {status} ({detail})"
    if {"ConnectionError", "TimeoutError", "Timeout", "TransportError"} & {
        cls.__name__ for cls in type(err).__mro__
    }:
        return f"cannot reach the Hub ({detail})"
    return detail


def _restore_weights(model: nn.Module, files: Sequence[Path]) -> None:
    """Reload every saved tensor, including those of modules the loss attached after loading."""
    from safetensors.torch import load_file

    own = model.state_dict()
    for file in files:
        state = {k: v for k, v in load_file(str(file)).items() if k in own}
        model.load_state_dict(state, strict=False)
