"""Save, load and share calibrated models.

A calibrated model folder is a normal ``save_pretrained`` folder plus ``nlpcal_config.json`` (the
training loss and the post-hoc calibrator's name) and, when fitted, ``calibrator/``. It loads back
with :func:`load_calibrated` from a local path or a Hub repository id.
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
from nlpcal._io import write_text_atomic
from nlpcal.losses import CalibrationLoss, create_loss
from nlpcal.posthoc import Calibrator, load_calibrator

__all__ = ["CalibratedModel", "calibration_card", "load_calibrated", "save_calibration"]

CONFIG_NAME = "nlpcal_config.json"
CALIBRATOR_DIR = "calibrator"


def save_calibration(
    directory: str | os.PathLike, loss: CalibrationLoss, calibrator: Calibrator | None
) -> None:
    """Write the loss and the fitted calibrator next to a ``save_pretrained`` folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if calibrator is not None:
        calibrator.save(directory / CALIBRATOR_DIR)
    meta = {
        "nlpcal_version": __version__,
        "loss": loss.name,
        "loss_config": loss.config(),
        "calibrator": None if calibrator is None else calibrator.name,
    }
    write_text_atomic(directory / CONFIG_NAME, json.dumps(meta, indent=2))


def calibration_card(
    loss: CalibrationLoss,
    calibrator: Calibrator | None,
    metrics: Mapping[str, float] | None = None,
) -> str:
    """The model card's calibration section: the method, the fitted calibrator, the metrics."""
    lines = [
        "## Calibration (nlpcal)",
        "",
        f"- Training loss: `{loss.name}` {json.dumps(loss.config()) if loss.config() else ''}".rstrip(),
        f"- Post-hoc calibrator: `{calibrator.name}` {json.dumps(calibrator.config())}"
        if calibrator is not None
        else "- Post-hoc calibrator: none",
    ]
    if calibrator is not None and hasattr(calibrator, "temperature"):
        lines.append(f"- Fitted temperature: {float(calibrator.temperature):.4f}")
    rows = _card_rows(metrics or {}, None if calibrator is None else calibrator.name)
    if rows:
        lines += [
            "",
            "| eval set | metric | uncalibrated | calibrated |",
            "|---|---|---|---|",
            *rows,
        ]
    lines += [
        "",
        "Load it with calibration applied:",
        "",
        "```python",
        "from nlpcal import load_calibrated",
        'model = load_calibrated("<this repo or folder>")',
        'model.predict_proba(["some text"])',
        "```",
        "",
    ]
    return "\n".join(lines)


def _card_rows(metrics: Mapping[str, float], calibrator: str | None) -> list[str]:
    rows = []
    for key, value in metrics.items():
        for metric in ("accuracy", "ece", "brier", "nll"):
            suffix = f"_{metric}"
            if not key.endswith(suffix) or (calibrator and key.endswith(f"_{calibrator}{suffix}")):
                continue
            prefix = key[: -len(suffix)]
            after = metrics.get(f"{prefix}_{calibrator}{suffix}") if calibrator else None
            after_cell = "" if after is None else f"{after:.4f}"
            rows.append(
                f"| {prefix.removeprefix('eval_')} | {metric} | {value:.4f} | {after_cell} |"
            )
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
    """

    def __init__(
        self,
        model: nn.Module,
        loss: CalibrationLoss,
        calibrator: Calibrator | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.calibrator = calibrator
        self.tokenizer = tokenizer

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

    @torch.no_grad()
    def predict_proba(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 32,
        max_length: int = 128,
    ) -> Tensor:
        """Calibrated class probabilities ``(n, K)`` for raw texts (and second segments)."""
        if self.tokenizer is None:
            raise ValueError("predict_proba needs a tokenizer: pass tokenizer= or load one")
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
            chunks.append(self(**batch).softmax(-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.model.config.num_labels)

    def save_pretrained(
        self, directory: str | os.PathLike, metrics: Mapping[str, float] | None = None
    ) -> None:
        """Write model, tokenizer, calibration and a model card (``README.md``).

        ``metrics`` (e.g. ``CalibratedTrainer.evaluate()``'s result) go into the card.
        """
        self.model.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        save_calibration(directory, self.loss, self.calibrator)
        card = "---\nlibrary_name: transformers\ntags:\n- nlpcal\n- calibration\n---\n\n"
        card += calibration_card(self.loss, self.calibrator, metrics)
        (Path(directory) / "README.md").write_text(card)

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
        """
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="nlpcal-push-") as folder:
            self.save_pretrained(folder, metrics)
            api.create_repo(repo_id, private=private, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message
            )

    def _needs_features(self) -> bool:
        return self.calibrator is not None and self.calibrator.requires_features


def load_calibrated(
    path: str | os.PathLike, device: str | torch.device | None = None, **hub_kwargs: Any
) -> CalibratedModel:
    """Load a calibrated model saved by ``CalibratedTrainer.save_model`` or ``save_pretrained``.

    ``path`` is a local folder or a Hub repository id (downloaded with ``snapshot_download``).
    Heads that the loss adds to the model (e.g. the double head's temperature network) are
    re-attached and their weights restored.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        if os.path.exists(path):
            raise ValueError(f"{path} is a file; expected a model folder")
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(path), **hub_kwargs))
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not saved by nlpcal")
    meta = json.loads(config_file.read_text())
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    loss = create_loss(meta["loss"], **meta.get("loss_config", {}))
    loss.prepare_model(model)
    _restore_weights(model, folder)
    calibrator = load_calibrator(folder / CALIBRATOR_DIR) if meta.get("calibrator") else None
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    calibrated = CalibratedModel(model.eval(), loss, calibrator, tokenizer)
    if device is not None:
        calibrated.to(device)
    return calibrated


def _restore_weights(model: nn.Module, folder: Path) -> None:
    """Reload every saved tensor, including those of modules the loss attached after loading."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors weights in {folder}")
    own = model.state_dict()
    for file in files:
        state = {k: v for k, v in load_file(str(file)).items() if k in own}
        model.load_state_dict(state, strict=False)
