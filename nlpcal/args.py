"""Every calibration knob in one dataclass, so ``HfArgumentParser`` gives a CLI and YAML/JSON
configs (:func:`parse_config`, :func:`read_config`)."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from transformers import TrainingArguments

__all__ = [
    "CalibrationArguments",
    "PosthocVariant",
    "calibration_settings",
    "parse_config",
    "posthoc_variants",
    "read_config",
]

_VARIANT = re.compile(r"[a-z0-9][a-z0-9_]*")


@dataclass
class CalibrationArguments(TrainingArguments):
    """``TrainingArguments`` plus the calibration settings of :class:`~nlpcal.CalibratedTrainer`.

    >>> args = CalibrationArguments(output_dir="out", calibration_loss="label_smoothing",
    ...                             loss_kwargs={"alpha": 0.1}, report_to="none")
    >>> args.calibration_loss, args.posthoc
    ('label_smoothing', ['auto'])
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
    posthoc: list[str] | str = field(
        default_factory=lambda: ["auto"],
        metadata={
            "help": "Post-hoc calibrators fitted after training, one or more entries: a name from "
            "nlpcal.list_calibrators(), 'auto' (the loss's own: temperature; exponential for ova), "
            "or VARIANT=NAME to fit NAME under the variant name VARIANT (e.g. one calibrator twice, "
            "with different posthoc_kwargs); 'none' fits none."
        },
    )
    posthoc_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Constructor arguments of the post-hoc calibrators, as a dict or JSON string: "
            "with one calibrator, its arguments; with several, variant name -> its arguments (a "
            "variant not named keeps the defaults)."
        },
    )
    active_calibrator: str | None = field(
        default=None,
        metadata={
            "help": "The posthoc variant that calibrated_probs applies and that a saved model loads "
            "by default (default: the first listed)."
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
    drift_variants: list[str] | str = field(
        default_factory=list,
        metadata={
            "help": "Post-hoc variants fitted drift-aware (Tomani et al. 2021): on the calibration "
            "data plus its perturbed copies (the trainer's drift_datasets, or drift_perturbation), "
            "the clean data and every copy weighted equally; the other variants are fitted on the "
            "calibration data alone."
        },
    )
    drift_perturbation: str | None = field(
        default=None,
        metadata={
            "help": "Perturbed copies for the drift_variants built by the trainer in "
            "input-embedding space, instead of drift_datasets: 'gaussian' (noise) or 'gradient' "
            "(signed-gradient steps against the clean prediction), at levels whose strengths are "
            "searched on the calibration data so that its accuracy falls in equal steps towards "
            "chance (nlpcal.robustness.EmbeddingDrift)."
        },
    )
    drift_perturbation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Arguments of the embedding perturbation, as a dict or a JSON string: levels "
            "(10), accuracy_drop (0.9: the strongest level's share of the way to chance), "
            "strengths (a fixed increasing list instead of the search), steps and norm "
            "(gradient), seed, search_steps, min_strength, max_strength."
        },
    )
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
        for name in ("loss_kwargs", "posthoc_kwargs", "drift_perturbation_kwargs"):
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
        drift = self.drift_variants
        self.drift_variants = [drift] if isinstance(drift, str) else list(drift or [])
        posthoc = [self.posthoc] if isinstance(self.posthoc, str) else list(self.posthoc)
        self.posthoc = [] if [p.lower() for p in posthoc] == ["none"] else posthoc
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
    for name in ("loss_kwargs", "posthoc_kwargs", "drift_perturbation_kwargs"):
        settings[name] = settings[name] or {}
    return settings


class PosthocVariant(NamedTuple):
    """One post-hoc variant: the registered calibrator and its constructor arguments."""

    calibrator: str
    kwargs: dict[str, Any]


def posthoc_variants(
    posthoc: Sequence[str], posthoc_kwargs: Mapping[str, Any], auto: str
) -> dict[str, PosthocVariant]:
    """The variants that ``posthoc`` entries name, in their order, by variant name.

    An entry is a calibrator name, ``'auto'`` (which stands for the calibrator ``auto``, the
    loss's own) or ``VARIANT=NAME``; a variant is named after its calibrator unless the entry
    names it (to fit one calibrator twice, with different arguments). With one variant,
    ``posthoc_kwargs`` are its constructor arguments; with several, they map variant names to
    constructor arguments (a variant not named keeps the defaults).

    >>> posthoc_variants(["auto", "t2=temperature"], {"t2": {"max_iter": 5}}, "temperature")
    {'temperature': PosthocVariant(calibrator='temperature', kwargs={}), 't2': PosthocVariant(calibrator='temperature', kwargs={'max_iter': 5})}

    Raises:
        ValueError: an unknown calibrator, a variant name that is not lowercase snake_case (or is
            ``'none'``), a variant listed twice, ``'none'`` among calibrators, or with several
            variants a ``posthoc_kwargs`` key that names none of them or a value that is no dict.
    """
    from nlpcal.posthoc import list_calibrators

    names: dict[str, str] = {}
    for entry in posthoc:
        variant, _, name = entry.rpartition("=")
        name = auto if name == "auto" else name
        variant = variant or name
        if name not in list_calibrators():
            raise ValueError(
                f"posthoc: unknown calibrator {name!r} in {entry!r}; available: "
                f"{', '.join(list_calibrators())}, or 'auto', or 'none' alone"
            )
        if not _VARIANT.fullmatch(variant) or variant == "none":
            raise ValueError(
                f"posthoc: a variant name is lowercase letters, digits and '_', and not 'none'; "
                f"got {variant!r} in {entry!r}"
            )
        if variant in names:
            raise ValueError(
                f"posthoc lists the variant {variant!r} twice; name the second VARIANT={name}"
            )
        names[variant] = name
    if len(names) < 2:
        return {
            variant: PosthocVariant(name, dict(posthoc_kwargs)) for variant, name in names.items()
        }
    unknown = sorted(set(posthoc_kwargs) - set(names))
    if unknown:
        raise ValueError(
            f"posthoc_kwargs: with several calibrators its keys are variant names {list(names)}; "
            f"got {unknown}"
        )
    for variant, kwargs in posthoc_kwargs.items():
        if not isinstance(kwargs, Mapping):
            raise ValueError(
                f"posthoc_kwargs[{variant!r}] must be a dict of constructor arguments, "
                f"got {kwargs!r}"
            )
    return {
        variant: PosthocVariant(name, dict(posthoc_kwargs.get(variant, {})))
        for variant, name in names.items()
    }


def parse_config(
    config: Mapping[str, Any],
    dataclass_types: Sequence[type] = (CalibrationArguments,),
    overrides: Sequence[str] = (),
) -> tuple[Any, ...]:
    """Build argument dataclasses from a mapping of field names to values (a YAML/JSON config).

    The values go through the same parser as command-line flags, so they are typed as on the
    command line: a ``1e-5`` that YAML reads as a string becomes a float, dicts may be JSON. A
    ``None`` value keeps the field's default; an empty list empties a list field. ``overrides``
    are ``--key value`` flags that win over the config.

    Raises:
        ValueError: an unknown key, or a value the field's type does not accept.

    >>> (args,) = parse_config({"output_dir": "out", "learning_rate": "1e-5"}, [CalibrationArguments])
    >>> args.learning_rate
    1e-05
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(list(dataclass_types), allow_abbrev=False, exit_on_error=False)
    argv = []
    for key, value in config.items():
        if value is None:
            continue
        if value == [] and isinstance(parser.get_default(key), list):
            parser.set_defaults(**{key: []})  # a flag takes no empty list
            continue
        argv.append(f"--{key}")
        if isinstance(value, list):
            argv += [str(v) for v in value]
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(
            [*argv, *overrides], return_remaining_strings=True, look_for_args_file=False
        )
    except argparse.ArgumentError as err:
        raise ValueError(f"bad configuration value: {err}") from None
    except ValueError as err:  # the dataclasses' own checks, e.g. TrainingArguments.__post_init__
        raise ValueError(f"bad configuration: {err}") from err
    if unknown:
        raise ValueError(f"unknown configuration keys or flags: {unknown}")
    return tuple(parsed)


def read_config(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file (JSON for a ``.json`` file); an empty file is an empty mapping.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message calls it a ``what`` file).
        ValueError: naming ``path``, when it cannot be read, is not valid YAML/JSON (with the line
            of the error) or does not hold a mapping.
    """
    import yaml

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {what} file {path}: {err}") from None
    try:
        config = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = str(path) if mark is None else f"{path}:{mark.line + 1}"
        raise ValueError(
            f"{where}: invalid YAML ({getattr(err, 'problem', None) or err})"
        ) from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(
            f"{what} file {path} must hold a mapping of names to values, "
            f"got a {type(config).__name__}"
        )
    return config
