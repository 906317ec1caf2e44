"""Every calibration knob in one dataclass, so ``HfArgumentParser`` gives a CLI and YAML/JSON configs."""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

__all__ = ["CalibrationArguments", "calibration_settings"]


@dataclass
class CalibrationArguments(TrainingArguments):
    """``TrainingArguments`` plus the calibration settings of :class:`~nlpcal.CalibratedTrainer`.

    >>> args = CalibrationArguments(output_dir="out", calibration_loss="label_smoothing",
    ...                             loss_kwargs={"alpha": 0.1}, report_to="none")
    >>> args.calibration_loss, args.posthoc
    ('label_smoothing', 'auto')
    """

    calibration_loss: str = field(
        default="cross_entropy",
        metadata={
            "help": "Training loss, a name from nlpcal.list_losses() (e.g. label_smoothing)."
        },
    )
    loss_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Hyper-parameters of the loss, as a dict or a JSON string: '{\"alpha\": 0.1}'."
        },
    )
    posthoc: str | None = field(
        default="auto",
        metadata={
            "help": "Post-hoc calibrator fitted after training, a name from nlpcal.list_calibrators(); "
            "'auto' takes the loss's own (temperature; exponential for ova); 'none' disables it."
        },
    )
    posthoc_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Constructor arguments of the post-hoc calibrator, as a dict or JSON string."
        },
    )
    calibration_set: str | None = field(
        default=None,
        metadata={
            "help": "Name of the eval set (a key of eval_dataset) the post-hoc calibrator is fitted on; "
            "it must be held-out data, never a test set. A calibration_dataset passed to the trainer wins."
        },
    )
    in_domain_set: str | None = field(
        default=None,
        metadata={
            "help": "Name of the in-domain eval set (default: the first eval set that is not OOD)."
        },
    )
    ood_sets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Names of out-of-domain eval sets; each gets OOD-detection metrics vs in-domain."
        },
    )
    ece_bins: int = field(default=15, metadata={"help": "Equal-width bins of the reported ECE."})
    ood_score: str = field(
        default="confidence",
        metadata={
            "help": "OOD score of the OOD-detection metrics: 'confidence' (the top-label "
            "confidence: maximum softmax probability, SLOVA's own score for ova), 'msp' "
            "(maximum of the renormalised distribution), 'entropy' or 'energy'."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("loss_kwargs", "posthoc_kwargs"):
            value = getattr(self, name)
            if value is None or (isinstance(value, str) and not value.strip()):
                value = {}
            elif isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{name} must be a dict or a JSON object string, got {value!r}: "
                        f"invalid JSON ({err.msg} at character {err.pos})"
                    ) from None
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a dict or a JSON object string, got {value!r}")
            setattr(self, name, value)
        if self.posthoc is not None and self.posthoc.lower() == "none":
            self.posthoc = None
        if self.ece_bins < 1:
            raise ValueError(f"ece_bins must be >= 1, got {self.ece_bins}")


_OWN_FIELDS = [
    f for f in fields(CalibrationArguments) if f.name not in TrainingArguments.__dataclass_fields__
]


def calibration_settings(args: TrainingArguments | None) -> dict[str, Any]:
    """The calibration settings of ``args``; a plain ``TrainingArguments`` gets the defaults."""
    settings = {}
    for f in _OWN_FIELDS:
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        settings[f.name] = getattr(args, f.name, default)
    for name in ("loss_kwargs", "posthoc_kwargs"):
        settings[name] = settings[name] or {}
    return settings
