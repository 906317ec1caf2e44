"""Deep ensembles of calibrated classifiers: build, predict, save and load.

An ensemble folder holds each member as a calibrated model folder (``members/<i>/``, what
:meth:`~nlpcal.hub.CalibratedModel.save_pretrained` writes) and one small file,
``nlpcal_ensemble.json``, that lists them and says whether the members' calibrators apply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nlpcal import __version__
from nlpcal._io import read_json, staged_folder, write_text_atomic
from nlpcal.functional.ensemble import ensemble_probabilities
from nlpcal.functional.predictive import split_confidence
from nlpcal.hub import CalibratedModel, load_calibrated

__all__ = ["ENSEMBLE_CONFIG", "DeepEnsemble"]

ENSEMBLE_CONFIG = "nlpcal_ensemble.json"
MEMBERS_DIR = "members"


class DeepEnsemble:
    """The average of the class probabilities of several fine-tuned members (Ovadia et al. 2019).

    Each member is a :class:`~nlpcal.hub.CalibratedModel` (any training loss); with
    ``calibrated=True`` each member's own post-hoc calibrator applies before averaging. All
    members must predict the same labels (``id2label``, in order) and share one tokenizer (the
    same class and vocabulary), so that one tokenisation of the text serves them all.

    References:
        Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
        Estimation using Deep Ensembles", NeurIPS 2017; Ovadia et al., "Can You Trust Your
        Model's Uncertainty?", NeurIPS 2019.

    Args:
        members: the members, at least one.
        names: a name per member for error messages and the saved file (default: ``member_<i>``).
        calibrated: whether each member's calibrator applies before averaging.

    Example:
        >>> ensemble = DeepEnsemble.from_pretrained(["run/seed_0", "run/seed_1"])  # doctest: +SKIP
        >>> ensemble.predict_proba(["a fine film", "a dull film"])  # doctest: +SKIP
        >>> ensemble.save_pretrained("ensemble")  # doctest: +SKIP
    """

    def __init__(
        self,
        members: Sequence[CalibratedModel],
        names: Sequence[str] | None = None,
        calibrated: bool = True,
    ) -> None:
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member, got none")
        names = [f"member_{i}" for i in range(len(members))] if names is None else list(names)
        if len(names) != len(members):
            raise ValueError(f"{len(members)} members but {len(names)} names")
        _check_same_labels(members, names)
        _check_same_tokenizer(members, names)
        self.members = members
        self.names = names
        self.calibrated = bool(calibrated)

    @classmethod
    def from_pretrained(
        cls,
        paths: Sequence[str | os.PathLike],
        calibrated: bool = True,
        device: str | torch.device | None = None,
        **hub_kwargs: Any,
    ) -> DeepEnsemble:
        """Members loaded with :func:`~nlpcal.load_calibrated` from folders or Hub ids; or, with
        one path to a folder saved by :meth:`save_pretrained`, that ensemble."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if len(paths) == 1 and (Path(paths[0]) / ENSEMBLE_CONFIG).is_file():
            return cls._load(Path(paths[0]), device)
        variant = None if calibrated else "none"
        members = [load_calibrated(p, device, calibrator=variant, **hub_kwargs) for p in paths]
        return cls(members, [str(p) for p in paths], calibrated)

    @torch.no_grad()
    def class_probabilities(
        self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, **kwargs: Any
    ) -> Tensor:
        """The mean of the members' class probabilities ``(n, K)`` on raw texts; arguments as
        :meth:`~nlpcal.hub.CalibratedModel.class_probabilities`."""
        return ensemble_probabilities(
            [self._member(m).class_probabilities(texts, text_pairs, **kwargs) for m in self.members]
        )

    def predict_proba(self, texts: Sequence[str], **kwargs: Any) -> Tensor:
        """The ensemble's predictive distribution ``(n, K)``, rows summing to one."""
        return split_confidence(self.class_probabilities(texts, **kwargs))[0]

    def predict(self, texts: Sequence[str], **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Predicted class ids ``(n,)`` and the ensemble's confidence in them ``(n,)``."""
        confidence, labels = self.class_probabilities(texts, **kwargs).max(dim=-1)
        return labels, confidence

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write each member's calibrated folder under ``members/<i>/`` and ``nlpcal_ensemble.json``;
        atomically (a failed save leaves a previous one intact)."""
        with staged_folder(directory, (MEMBERS_DIR, ENSEMBLE_CONFIG)) as staging:
            entries = []
            for i, (member, name) in enumerate(zip(self.members, self.names, strict=True)):
                folder = f"{MEMBERS_DIR}/{i}"
                member.save_pretrained(Path(staging) / folder)
                entries.append({"name": name, "folder": folder})
            meta = {
                "nlpcal_version": __version__,
                "calibrated": self.calibrated,
                "members": entries,
            }
            write_text_atomic(Path(staging) / ENSEMBLE_CONFIG, json.dumps(meta, indent=2))

    @classmethod
    def _load(cls, folder: Path, device: str | torch.device | None) -> DeepEnsemble:
        meta = read_json(folder / ENSEMBLE_CONFIG, required=("members", "calibrated"))
        calibrated = bool(meta["calibrated"])
        variant = None if calibrated else "none"
        members = [
            load_calibrated(folder / entry["folder"], device, calibrator=variant)
            for entry in meta["members"]
        ]
        return cls(members, [entry["name"] for entry in meta["members"]], calibrated)

    def _member(self, member: CalibratedModel) -> CalibratedModel:
        if self.calibrated or member.calibrator is None:
            return member
        return CalibratedModel(member.model, member.loss, None, member.tokenizer)

    def __len__(self) -> int:
        return len(self.members)


def _check_same_labels(members: Sequence[CalibratedModel], names: Sequence[str]) -> None:
    from nlpcal.data import model_label_names

    labels = [model_label_names(m.model.config) for m in members]
    differing = [n for n, lab in zip(names, labels, strict=True) if lab != labels[0]]
    if differing:
        raise ValueError(
            f"ensemble members predict different labels: {names[0]} has {labels[0]}, but "
            + "; ".join(
                f"{n} has {lab}" for n, lab in zip(names, labels, strict=True) if lab != labels[0]
            )
        )


def _check_same_tokenizer(members: Sequence[CalibratedModel], names: Sequence[str]) -> None:
    tokenizers = [m.tokenizer for m in members]
    if all(t is None for t in tokenizers):
        return
    missing = [n for n, t in zip(names, tokenizers, strict=True) if t is None]
    if missing:
        raise ValueError(f"ensemble members {missing} have no tokenizer while others have one")
    first = tokenizers[0]
    differing = [
        n
        for n, t in zip(names, tokenizers, strict=True)
        if type(t) is not type(first) or t.get_vocab() != first.get_vocab()
    ]
    if differing:
        raise ValueError(
            f"ensemble members {differing} use a different tokenizer than {names[0]} "
            f"({type(first).__name__}, {len(first.get_vocab())} tokens): an ensemble shares one "
            "tokenizer"
        )
