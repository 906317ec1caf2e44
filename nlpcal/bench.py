"""Benchmark runner: every method × seed of a recipe, in-domain and under shift, with ensembles.

A recipe (YAML) names a model, a task, the data, the training arguments shared by every run, the
methods and the seeds::

    model: sentence-transformers/all-MiniLM-L6-v2
    task: sentiment
    max_length: 64
    data:
      train: sample:sst2/train
      calibration: sample:sst2/dev          # held-out data the post-hoc calibrators are fitted on,
                                            # or {holdout: 1000}: rows held out of the train source
      test: {name: sst2, source: sample:sst2/test}
      shifted:
        - {name: imdb, source: sample:imdb}
        - {name: sst2_c3, source: sample:sst2/test,
           corrupt: {corruption: mixed, severity: 3, seed: 0}}
    slicing: {max_train_samples: 1000, max_eval_samples: 500, seed: 0}
    training: {num_train_epochs: 1, learning_rate: 5.0e-5, per_device_train_batch_size: 32}
    methods:
      - {name: cross_entropy, calibration_loss: cross_entropy, posthoc: [temperature]}
      - {name: label_smoothing, calibration_loss: label_smoothing, loss_kwargs: {alpha: 0.1},
         posthoc: [temperature]}
    seeds: [0, 1]

A recipe may start with ``base: other.yaml`` (relative to the recipe file): it is read first and the
recipe's own keys are merged over it (mappings key by key, lists and values replaced). Sources are
those of :func:`nlpcal.data.load_source`; ``data_dir`` (for ``shared:`` sources) is relative to the
working directory. The slicing seed fixes the data, so every cell sees the same examples.

For each method × seed (a *cell*) :func:`run_bench` fine-tunes once, fits each listed post-hoc
calibrator on the calibration data, and stores the predicted probabilities on every set before and
after calibration. For each method it then averages the probabilities of its seeds into an
ensemble (of the uncalibrated and of each calibrated variant) and writes the report
(:mod:`nlpcal.report`). The run folder holds::

    recipe.json                      the normalised recipe, checked on resume
    cells/<method>/seed_<seed>/
        predictions.npz              labels/<set> and probs/<set>/<variant> arrays
        result.json                  the cell's metrics, written last: the cell is finished
    results.json  results.md  report.html  reliability_<method>_<variant>.png

An interrupted run resumes in the same folder: finished cells are kept, missing ones are run. The
recipe may then only gain methods or seeds.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nlpcal._io import staged, write_text_atomic
from nlpcal.args import CalibrationArguments
from nlpcal.data import LABEL_NAMES, LabelMap, Task, corrupt_dataset, load_source
from nlpcal.functional.metrics import evaluation_metrics, expected_calibration_error
from nlpcal.functional.ood import ood_detection_metrics
from nlpcal.functional.predictive import predictive_ood_score, split_confidence
from nlpcal.losses import create_loss
from nlpcal.pipeline import (
    DEFAULT_MODEL,
    load_tokenizer,
    parse_config,
    read_config,
    subsample,
    tokenize,
    train_calibrated,
)
from nlpcal.posthoc import create_calibrator, list_calibrators

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "EvalSet",
    "Method",
    "Recipe",
    "demo_recipe",
    "environment",
    "load_recipe",
    "run_bench",
    "shift_metrics",
]

logger = logging.getLogger(__name__)

RECIPE_NAME = "recipe.json"
RESULT_NAME = "result.json"
PREDICTIONS_NAME = "predictions.npz"
MODEL_DIR = "model"
NONE = "none"
ENSEMBLE = "ensemble"
# The runner's columns, named by the metric vocabulary (nlpcal.metrics.vocabulary).
METRICS = ("accuracy", "ece_10", "ece", "brier", "nll", "aurc", "ood_auroc")

_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
_TOP_KEYS = (
    "name",
    "model",
    "task",
    "max_length",
    "data_dir",
    "data",
    "slicing",
    "training",
    "methods",
    "seeds",
    "ood_score",
    "labels",
    "save_model",
)
_DATA_KEYS = ("train", "calibration", "test", "shifted")
_SLICING_KEYS = ("max_train_samples", "max_eval_samples", "seed")
_COLUMN_KEYS = ("text_column", "text_pair_column", "label_column")
_SOURCE_KEYS = ("source", *_COLUMN_KEYS)
_SET_KEYS = ("name", *_SOURCE_KEYS, "corrupt", "label_map")
_CORRUPT_KEYS = ("corruption", "severity", "seed")
_METHOD_KEYS = ("name", "calibration_loss", "loss_kwargs", "posthoc")
# Set per cell by the runner; a recipe's shared ``training`` section must not set them.
_PER_CELL = (
    "output_dir",
    "seed",
    "calibration_loss",
    "loss_kwargs",
    "posthoc",
    "posthoc_kwargs",
    "calibration_set",
    "in_domain_set",
    "ood_sets",
    "ood_score",
)
# Training defaults of a benchmark cell: no checkpoints (nothing needs them), no logging services.
_TRAINING_DEFAULTS = {"save_strategy": "no", "report_to": "none"}


@dataclass(frozen=True)
class DataSource:
    """Where a split's data comes from: a source string (:func:`~nlpcal.data.load_source`: a
    bundled sample, the shared data, a Hub dataset or a TSV/CSV/JSONL file) or a
    ``datasets.Dataset`` passed in code, and the columns holding the text, the second text and
    the label (found by their usual names when not given).

    >>> DataSource.from_dict({"source": "tickets.csv", "text_column": "body"}).to_dict()
    {'source': 'tickets.csv', 'text_column': 'body'}
    """

    source: Any
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str = "label"

    @classmethod
    def from_dict(cls, config: Any, what: str = "data source") -> DataSource:
        """A source string, a ``datasets.Dataset``, or a mapping of :data:`_SOURCE_KEYS`."""
        if isinstance(config, str) or _is_dataset(config):
            return cls(config)
        config = _mapping(config, what, _SOURCE_KEYS, required=("source",))
        source = config["source"]
        if not (isinstance(source, str) or _is_dataset(source)):
            raise ValueError(
                f"{what}: source must be a string or a datasets.Dataset, got {source!r}"
            )
        return cls(source, **{k: config[k] for k in _COLUMN_KEYS if config.get(k) is not None})

    def to_dict(self) -> str | dict[str, Any]:
        """The source in its YAML layout (the bare string when no column is named); an in-code
        dataset is named by its fingerprint."""
        source = self.source
        if _is_dataset(source):
            source = f"<datasets.Dataset {source._fingerprint}>"
        defaults = {f.name: f.default for f in fields(self)}
        columns = {k: getattr(self, k) for k in _COLUMN_KEYS if getattr(self, k) != defaults[k]}
        return {"source": source, **columns} if columns else source

    def load(
        self,
        task: str | None,
        data_dir: str | None,
        labels: Sequence[str] | None = None,
        what: str = "dataset",
    ) -> Dataset:
        """The data in nlpcal's schema, its labels re-encoded onto ``labels`` by name if given."""
        from nlpcal.data import to_schema

        columns = {k: getattr(self, k) for k in _COLUMN_KEYS}
        if _is_dataset(self.source):
            if task is not None:
                labels = labels or list(LABEL_NAMES[Task(task)])
            return to_schema(self.source, labels=labels, name=what, **columns)
        if labels is not None:
            task = None
        return load_source(self.source, task, data_dir, labels=labels, **columns)


@dataclass(frozen=True)
class EvalSet:
    """A named evaluation set: a :class:`DataSource`, optionally corrupted
    (:func:`~nlpcal.data.corrupt_dataset`), optionally with its own label space: ``label_map``
    renames or merges the model's classes onto the set's (:class:`~nlpcal.data.LabelMap`; an
    empty mapping matches names only), and metrics are computed in the set's label space.

    >>> EvalSet.from_dict({"name": "sst2_c3", "source": "sample:sst2/test",
    ...                    "corrupt": {"severity": 3}}).corrupt
    {'severity': 3}
    """

    name: str
    data: DataSource
    corrupt: dict[str, Any] | None = None
    label_map: dict[str, str] | None = None

    @property
    def source(self) -> Any:
        return self.data.source

    @classmethod
    def from_dict(cls, config: Any, what: str = "eval set") -> EvalSet:
        config = _mapping(config, what, _SET_KEYS, required=("name", "source"))
        name = _check_name(config["name"], what)
        corrupt = config.get("corrupt")
        if corrupt is not None:
            corrupt = _mapping(corrupt, f"{what} {name!r}: corrupt", _CORRUPT_KEYS)
        label_map = config.get("label_map")
        if label_map is not None:
            label_map = {
                str(k): str(v)
                for k, v in _mapping(label_map, f"{what} {name!r}: label_map").items()
            }
        data = DataSource.from_dict({k: config[k] for k in _SOURCE_KEYS if k in config}, what)
        return cls(name, data, corrupt, label_map)

    def to_dict(self) -> dict[str, Any]:
        data = self.data.to_dict()
        config = {"name": self.name, **(data if isinstance(data, dict) else {"source": data})}
        if self.corrupt is not None:
            config["corrupt"] = dict(self.corrupt)
        if self.label_map is not None:
            config["label_map"] = dict(self.label_map)
        return config


@dataclass(frozen=True)
class Method:
    """A calibration loss with its hyper-parameters and the post-hoc calibrators evaluated after it.

    ``posthoc`` defaults to the loss's own calibrator (temperature; exponential for ``ova``); an
    empty list evaluates none. A calibrator that needs penultimate features (AdaTS) must come first:
    the trainer fits the first one and collects features only for it.

    >>> Method.from_dict({"calibration_loss": "label_smoothing", "loss_kwargs": {"alpha": 0.1}})
    Method(name='label_smoothing', calibration_loss='label_smoothing', loss_kwargs={'alpha': 0.1}, posthoc=('temperature',))
    """

    name: str
    calibration_loss: str
    loss_kwargs: dict[str, Any]
    posthoc: tuple[str, ...]

    @classmethod
    def from_dict(cls, config: Any) -> Method:
        config = _mapping(config, "method", _METHOD_KEYS, required=("calibration_loss",))
        loss_name = str(config["calibration_loss"])
        name = _check_name(config.get("name", loss_name), "method")
        kwargs = dict(_mapping(config.get("loss_kwargs") or {}, f"method {name!r}: loss_kwargs"))
        try:
            loss = create_loss(loss_name, **kwargs)
        except TypeError as err:
            raise ValueError(f"method {name!r}: bad loss_kwargs for {loss_name!r}: {err}") from None
        posthoc = config.get("posthoc", [loss.default_calibrator])
        if not isinstance(posthoc, list) or len(set(posthoc)) != len(posthoc):
            raise ValueError(
                f"method {name!r}: posthoc must be a list of distinct calibrator names"
            )
        for calibrator in posthoc:
            if calibrator not in list_calibrators():
                raise ValueError(
                    f"method {name!r}: unknown calibrator {calibrator!r}; "
                    f"available: {', '.join(list_calibrators())}"
                )
        return cls(name, loss_name, kwargs, tuple(posthoc))

    @property
    def variants(self) -> tuple[str, ...]:
        """``"none"`` (uncalibrated) and each post-hoc calibrator."""
        return (NONE, *self.posthoc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "calibration_loss": self.calibration_loss,
            "loss_kwargs": dict(self.loss_kwargs),
            "posthoc": list(self.posthoc),
        }


@dataclass(frozen=True)
class Recipe:
    """A validated benchmark recipe (build it with :meth:`from_dict` or :func:`load_recipe`); see
    the module docstring for the YAML layout and :meth:`from_dict` for the defaults.

    ``calibration`` is a source, or ``None`` when ``holdout`` rows (a count, or a fraction) are
    split off the training source instead. The label set is ``labels``, else the built-in
    ``task``'s, else the training data's; every other split is mapped onto it by name.
    """

    name: str
    model: str
    task: str | None
    max_length: int
    data_dir: str | None
    train: DataSource
    calibration: DataSource | None
    holdout: int | float | None
    test: EvalSet
    shifted: tuple[EvalSet, ...]
    max_train_samples: int | None
    max_eval_samples: int | None
    data_seed: int
    training: dict[str, Any]
    methods: tuple[Method, ...]
    seeds: tuple[int, ...]
    ood_score: str = "confidence"
    labels: tuple[str, ...] | None = None
    save_model: bool | None = None

    @classmethod
    def from_dict(cls, config: Any, name: str = "recipe") -> Recipe:
        """Validate a recipe mapping (as read from YAML, without ``base``).

        Defaults: ``model`` all-MiniLM-L6-v2, ``max_length`` 128, no ``data_dir``, no shifted sets,
        no slicing (slicing seed 0), transformers' training defaults (without checkpoints), the
        ``"confidence"`` OOD score (see :class:`~nlpcal.functional.predictive.PredictiveOOD`), and
        for a method, its loss's own post-hoc calibrator.

        Raises:
            ValueError: an unknown key, loss, calibrator or task, a missing section, no methods
                or seeds, duplicate names, or training arguments the runner sets per cell.
        """
        config = _mapping(config, "recipe", _TOP_KEYS, required=("data", "methods", "seeds"))
        data = _mapping(
            config["data"], "data", _DATA_KEYS, required=("train", "calibration", "test")
        )
        slicing = _mapping(config.get("slicing") or {}, "slicing", _SLICING_KEYS)
        training = dict(_mapping(config.get("training") or {}, "training"))
        task = config.get("task")
        if task is not None and task not in {t.value for t in Task}:
            raise ValueError(
                f"unknown task {task!r}; available: {', '.join(t.value for t in Task)}, or leave "
                "it out to take the label names from the data"
            )
        labels = config.get("labels")
        if labels is not None:
            if task is not None:
                raise ValueError("give the recipe a task or labels, not both")
            if not isinstance(labels, list) or len(labels) < 2:
                raise ValueError(f"labels must be a list of at least two names, got {labels!r}")
            labels = tuple(str(label) for label in labels)
        save_model = config.get("save_model")
        if save_model is not None and not isinstance(save_model, bool):
            raise ValueError(f"save_model must be true or false, got {save_model!r}")
        calibration, holdout = data["calibration"], None
        if isinstance(calibration, Mapping) and "holdout" in calibration:
            holdout = _mapping(
                calibration, "data.calibration", ("holdout",), required=("holdout",)
            )["holdout"]
            calibration = None
            if isinstance(holdout, bool) or not isinstance(holdout, int | float) or holdout <= 0:
                raise ValueError(
                    f"data.calibration.holdout must be a count or a fraction, got {holdout!r}"
                )
        test = EvalSet.from_dict(data["test"], "data.test")
        shifted = tuple(
            EvalSet.from_dict(s, "data.shifted entry") for s in data.get("shifted") or []
        )
        _check_unique([s.name for s in (test, *shifted)], "eval set")
        methods = config["methods"]
        if not isinstance(methods, list) or not methods:
            raise ValueError("the recipe needs at least one method under 'methods'")
        methods = tuple(Method.from_dict(m) for m in methods)
        _check_unique([m.name for m in methods], "method")
        seeds = config["seeds"]
        if not isinstance(seeds, list) or not seeds:
            raise ValueError(
                f"seeds must be a non-empty list of non-negative integers, got {seeds!r}"
            )
        seeds = [_count(seed, "seed", minimum=0) for seed in seeds]
        _check_unique(seeds, "seed")
        per_cell = sorted(set(training) & set(_PER_CELL))
        if per_cell:
            raise ValueError(f"training must not set {per_cell}: the runner sets them per cell")
        recipe = cls(
            name=_check_name(config.get("name", name), "recipe"),
            task=task,
            train=DataSource.from_dict(data["train"], "data.train"),
            test=test,
            methods=methods,
            seeds=tuple(seeds),
            calibration=None
            if calibration is None
            else DataSource.from_dict(calibration, "data.calibration"),
            holdout=holdout,
            shifted=shifted,
            model=str(config.get("model", DEFAULT_MODEL)),
            max_length=_count(config.get("max_length", 128), "max_length"),
            data_dir=config.get("data_dir"),
            max_train_samples=_count(
                slicing.get("max_train_samples"), "max_train_samples", optional=True
            ),
            max_eval_samples=_count(
                slicing.get("max_eval_samples"), "max_eval_samples", optional=True
            ),
            data_seed=_count(slicing.get("seed", 0), "slicing.seed", minimum=0),
            training=training,
            ood_score=str(config.get("ood_score", "confidence")),
            labels=labels,
            save_model=save_model,
        )
        # Fails early on unknown or ill-typed training arguments.
        recipe.training_arguments(methods[0], recipe.seeds[0], "unused")
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """The recipe in its YAML layout, with every default filled in."""
        calibration = (
            {"holdout": self.holdout} if self.calibration is None else self.calibration.to_dict()
        )
        return {
            "name": self.name,
            "model": self.model,
            "task": self.task,
            "labels": None if self.labels is None else list(self.labels),
            "max_length": self.max_length,
            "data_dir": self.data_dir,
            "data": {
                "train": self.train.to_dict(),
                "calibration": calibration,
                "test": self.test.to_dict(),
                "shifted": [s.to_dict() for s in self.shifted],
            },
            "slicing": {
                "max_train_samples": self.max_train_samples,
                "max_eval_samples": self.max_eval_samples,
                "seed": self.data_seed,
            },
            "training": dict(self.training),
            "methods": [m.to_dict() for m in self.methods],
            "seeds": list(self.seeds),
            "ood_score": self.ood_score,
            "save_model": self.save_model,
        }

    @property
    def eval_sets(self) -> tuple[EvalSet, ...]:
        """The in-domain test set, then the shifted sets."""
        return (self.test, *self.shifted)

    def training_arguments(
        self, method: Method, seed: int, output_dir: str | os.PathLike[str]
    ) -> CalibrationArguments:
        """The ``CalibrationArguments`` of one cell: the shared training section plus the cell's
        loss, seed and first post-hoc calibrator (the trainer fits that one)."""
        config = {
            **_TRAINING_DEFAULTS,
            **self.training,
            "output_dir": str(output_dir),
            "seed": seed,
            "calibration_loss": method.calibration_loss,
            "loss_kwargs": method.loss_kwargs,
            "posthoc": method.posthoc[0] if method.posthoc else "none",
            "ood_score": self.ood_score,
        }
        (args,) = parse_config(config, [CalibrationArguments])
        return args


def load_recipe(path: str | os.PathLike[str], training: Mapping[str, Any] | None = None) -> Recipe:
    """Read and validate a recipe file; its name defaults to the file name without suffix.
    ``training`` entries override those of the recipe's ``training`` section.

    >>> load_recipe("recipes/demo.yaml").seeds  # doctest: +SKIP
    (0, 1)
    """
    path = Path(path)
    config = _read_recipe(path, ())
    if training:
        config = _merge(config, {"training": dict(training)})
    return Recipe.from_dict(config, name=path.stem)


def single_cell(recipe: Recipe, method: str | None = None, seed: int | None = None) -> Recipe:
    """The recipe reduced to one method and one seed (what ``nlpcal train`` runs); it saves the
    calibrated model unless the recipe says ``save_model: false``.

    >>> cell = single_cell(demo_recipe(), "label_smoothing", 1)
    >>> [m.name for m in cell.methods], cell.seeds, cell.save_model
    (['label_smoothing'], (1,), True)
    """
    methods = {m.name: m for m in recipe.methods}
    if method is None and len(methods) > 1:
        raise ValueError(
            f"recipe {recipe.name!r} has the methods {list(methods)}: choose one with --method"
        )
    if method is not None and method not in methods:
        raise ValueError(f"recipe {recipe.name!r} has no method {method!r}; it has {list(methods)}")
    if seed is None and len(recipe.seeds) > 1:
        raise ValueError(
            f"recipe {recipe.name!r} has the seeds {list(recipe.seeds)}: choose one with --seed"
        )
    return replace(
        recipe,
        methods=(methods[method] if method is not None else recipe.methods[0],),
        seeds=(recipe.seeds[0] if seed is None else _count(seed, "seed", minimum=0),),
        save_model=recipe.save_model is not False,
    )


def demo_recipe() -> Recipe:
    """The recipe ``nlpcal demo`` runs, shipped in the package (``nlpcal/recipes/demo.yaml``).

    >>> [m.name for m in demo_recipe().methods]
    ['cross_entropy', 'label_smoothing']
    """
    from importlib.resources import as_file, files

    with as_file(files("nlpcal") / "recipes" / "demo.yaml") as path:
        return load_recipe(path)


def _read_recipe(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ValueError(f"recipe {path} is its own base (a cycle of 'base:' references)")
    config = read_config(path, "recipe")
    base = config.pop("base", None)
    if base is None:
        return config
    return _merge(_read_recipe(path.parent / str(base), (*seen, path.resolve())), config)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = _merge(dict(merged[key]), value)
        merged[key] = value
    return merged


# -- metrics -------------------------------------------------------------------------------------
def shift_metrics(
    class_probs: Any, labels: Any, ood: Any | None = None, in_domain_ood: Any | None = None
) -> dict[str, float]:
    """The benchmark's metrics of one set: accuracy, ECE (10 and, as ``ece``, 15 bins), Brier, NLL, AURC and,
    when the OOD scores of this set and of the in-domain set are given, the OOD AUROC of this set
    against the in-domain set (in-domain as positive).

    ``class_probs`` rows sum to one, or hold SLOVA's unnormalised confidences: ECE and AURC read the
    top-label confidence ``max_k class_probs``, Brier and NLL the renormalised rows (see
    :mod:`nlpcal.functional.predictive`).

    >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> conf = probs.max(dim=1).values
    >>> values = shift_metrics(probs, torch.tensor([0, 1, 1]), ood=conf, in_domain_ood=conf[:2])
    >>> round(values["accuracy"], 4), round(values["ood_auroc"], 4)
    (0.6667, 0.6667)
    """
    probs, confidence = split_confidence(torch.as_tensor(class_probs))
    labels = torch.as_tensor(labels)
    values = evaluation_metrics(probs, labels, n_bins=15, confidence=confidence)
    result = {
        "accuracy": values["accuracy"],
        "ece_10": expected_calibration_error(probs, labels, n_bins=10, confidence=confidence),
        "ece": values["ece"],
        "brier": values["brier"],
        "nll": values["nll"],
        "aurc": values["aurc"],
    }
    if in_domain_ood is not None:
        result["ood_auroc"] = ood_detection_metrics(in_domain_ood, ood)["auroc"]
    return {key: float(value) for key, value in result.items()}


def _set_metrics(outputs: _Outputs, test: str) -> dict[str, dict[str, dict[str, float]]]:
    """``metrics[set][variant]``; shifted sets are scored for OOD against the same variant in-domain."""
    return {
        name: {
            variant: shift_metrics(
                p,
                outputs.labels[name],
                outputs.ood[name][variant],
                None if name == test else outputs.ood[test][variant],
            )
            for variant, p in variants.items()
        }
        for name, variants in outputs.probs.items()
    }


@dataclass
class _Outputs:
    """A cell's (or an ensemble's) outputs: ``probs[set][variant]`` (class probabilities),
    ``ood[set][variant]`` (OOD scores) and ``labels[set]``."""

    probs: dict[str, dict[str, np.ndarray]]
    ood: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray]


def _ensemble(members: Sequence[_Outputs], variants: Sequence[str], method: str) -> _Outputs:
    """The seed ensemble: class probabilities averaged over members; its OOD score is the score
    of the averaged probabilities, except ``energy`` (a function of logits, which an average of
    probabilities does not keep): the members' mean."""
    first = members[0]
    probs: dict[str, dict[str, np.ndarray]] = {}
    ood: dict[str, dict[str, np.ndarray]] = {}
    for name in first.labels:
        probs[name], ood[name] = {}, {}
        for variant in variants:
            mean = np.mean([m.probs[name][variant] for m in members], axis=0)
            key = _ensemble_variant(variant)
            probs[name][key] = mean
            if method == "energy":
                ood[name][key] = np.mean([m.ood[name][variant] for m in members], axis=0)
            else:
                log_probs = torch.as_tensor(mean).clamp_min(1e-45).log()
                ood[name][key] = predictive_ood_score(log_probs, method, normalized=False).numpy()
    return _Outputs(probs, ood, first.labels)


# -- running -------------------------------------------------------------------------------------
@dataclass
class _Data:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset
    calibration: Dataset
    sets: dict[str, Dataset]
    label_maps: dict[str, LabelMap]


def _load_data(recipe: Recipe) -> _Data:
    """Load, slice, corrupt and tokenize every split once; every cell uses the same data.

    The label set is the recipe's ``labels``, else the task's, else the training data's; the
    calibration split and every evaluation set without a ``label_map`` are re-encoded onto it by
    name, and a set with a ``label_map`` keeps its own labels and a :class:`LabelMap`.
    """
    seed, n_train, n_eval = recipe.data_seed, recipe.max_train_samples, recipe.max_eval_samples
    full = recipe.train.load(recipe.task, recipe.data_dir, recipe.labels, "data.train")
    names = full.features["label"].names
    if recipe.calibration is None:
        split = full.train_test_split(test_size=recipe.holdout, seed=seed)
        train, calibration = split["train"], split["test"]
    else:
        train = full
        calibration = recipe.calibration.load(None, recipe.data_dir, names, "data.calibration")
    train, calibration = subsample(train, n_train, seed), subsample(calibration, n_eval, seed)
    sets, label_maps = {}, {}
    for spec in recipe.eval_sets:
        if spec.label_map is None:
            dataset = spec.data.load(None, recipe.data_dir, names, spec.name)
        else:
            dataset = spec.data.load(None, recipe.data_dir, None, spec.name)
            set_names = dataset.features["label"].names
            label_maps[spec.name] = LabelMap(names, set_names, spec.label_map)
        dataset = subsample(dataset, n_eval, seed)
        sets[spec.name] = (
            dataset if spec.corrupt is None else corrupt_dataset(dataset, **spec.corrupt)
        )
    tokenizer = load_tokenizer(recipe.model)
    return _Data(
        tokenizer=tokenizer,
        train=tokenize(train, tokenizer, recipe.max_length),
        calibration=tokenize(calibration, tokenizer, recipe.max_length),
        sets={name: tokenize(ds, tokenizer, recipe.max_length) for name, ds in sets.items()},
        label_maps=label_maps,
    )


def _run_cell(recipe: Recipe, method: Method, seed: int, data: _Data, folder: Path) -> None:
    """Train one cell, fit its calibrators, predict every set; write predictions, then the result."""
    start = time.time()
    args = recipe.training_arguments(method, seed, folder)
    trainer = train_calibrated(recipe.model, args, data.train, data.calibration, data.tokenizer)
    calibrators = (
        {} if trainer.calibrator is None else {trainer.calibrator.name: trainer.calibrator}
    )
    features = any(create_calibrator(name).requires_features for name in method.posthoc)
    if len(method.posthoc) > 1:
        held_out = trainer.predictions(data.calibration, "calibration", features=features)
        for name in method.posthoc[1:]:
            calibrators[name] = create_calibrator(name).fit(
                held_out.logits, held_out.labels, held_out.features
            )
    outputs = _Outputs({}, {}, {})
    for name, dataset in data.sets.items():
        label_map = data.label_maps.get(name)
        if label_map is not None:  # labels in the set's own space: scored after the map
            outputs.labels[name] = np.asarray(dataset["label"])
            dataset = dataset.remove_columns("label")
        preds = trainer.predictions(dataset, name, features=features)
        if label_map is None:
            outputs.labels[name] = preds.labels.numpy()
        variants = trainer.variant_outputs(preds, calibrators)
        outputs.probs[name] = {
            v: (
                out.class_probs if label_map is None else label_map.apply_probs(out.class_probs)
            ).numpy()
            for v, out in variants.items()
        }
        outputs.ood[name] = {v: out.ood.numpy() for v, out in variants.items()}
    if recipe.save_model:
        trainer.save_model(str(folder / MODEL_DIR))
    train_log = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    result = {
        "method": method.name,
        "seed": seed,
        "metrics": _set_metrics(outputs, recipe.test.name),
        "train": train_log,
        "seconds": round(time.time() - start, 1),
        "device": _device_name(trainer.args.device),
        "label_maps": {name: m.describe() for name, m in data.label_maps.items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    arrays = {f"labels/{name}": values for name, values in outputs.labels.items()}
    for kind in ("probs", "ood"):
        arrays.update(
            {
                f"{kind}/{name}/{variant}": values
                for name, variants in getattr(outputs, kind).items()
                for variant, values in variants.items()
            }
        )
    with staged(folder / PREDICTIONS_NAME) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **arrays)
    _write_json(folder / RESULT_NAME, result)


def _load_predictions(folder: Path, ood_score: str) -> _Outputs:
    """A finished cell's outputs. Folders written before OOD scores were stored get the
    ``"confidence"`` score (the largest class probability), the only one they used."""
    outputs = _Outputs({}, {}, {})
    with np.load(folder / PREDICTIONS_NAME) as arrays:
        for key in arrays.files:
            kind, name, *variant = key.split("/")
            if kind == "labels":
                outputs.labels[name] = arrays[key]
            else:
                getattr(outputs, kind).setdefault(name, {})[variant[0]] = arrays[key]
    for name, variants in outputs.probs.items():
        for variant, probs in variants.items():
            if variant not in outputs.ood.get(name, {}):
                if ood_score != "confidence":
                    raise ValueError(
                        f"{folder / PREDICTIONS_NAME} holds no OOD scores (written by an older "
                        f"nlpcal) and the recipe asks for ood_score {ood_score!r}: rerun the "
                        "cell (--no-resume)"
                    )
                outputs.ood.setdefault(name, {})[variant] = probs.max(axis=1)
    return outputs


def run_bench(
    recipe: Recipe, output_dir: str | os.PathLike[str], resume: bool = True
) -> dict[str, Any]:
    """Run every cell of ``recipe`` that is not finished, then write the report.

    Args:
        recipe: the benchmark (see :func:`load_recipe`).
        output_dir: the run folder.
        resume: keep the finished cells of an earlier run of the same recipe (it may have gained
            methods or seeds since). ``False`` deletes the folder's cells and starts over.

    Returns:
        The content of ``results.json``: the recipe, the environment, every cell's metrics and
        the aggregated rows.

    Raises:
        ValueError: on resume, the folder holds a run of a recipe that differs in more than added
            methods or seeds; or bad data (unknown source, empty split).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        _check_resumable(recipe, out)
    else:
        shutil.rmtree(out / "cells", ignore_errors=True)
    _write_json(out / RECIPE_NAME, recipe.to_dict())
    cells = [(method, seed) for method in recipe.methods for seed in recipe.seeds]
    data = None
    for index, (method, seed) in enumerate(cells, 1):
        folder = _cell_folder(out, method, seed)
        tag = f"cell {index}/{len(cells)}: {method.name}, seed {seed}"
        if (folder / RESULT_NAME).is_file():
            logger.info("%s: finished earlier, kept", tag)
            continue
        if data is None:
            logger.info("loading and tokenizing the data of %s", recipe.name)
            data = _load_data(recipe)
        logger.info("%s: training", tag)
        folder.mkdir(parents=True, exist_ok=True)
        _run_cell(recipe, method, seed, data, folder)
    return _write_report(recipe, out)


def _check_resumable(recipe: Recipe, out: Path) -> None:
    stored_file = out / RECIPE_NAME
    if not stored_file.is_file():
        return
    stored, new = json.loads(stored_file.read_text()), recipe.to_dict()
    stored.setdefault("ood_score", "confidence")  # runs from before the key existed used it
    changed = sorted(
        key
        for key in stored.keys() | new.keys()
        if key not in ("name", "methods", "seeds") and stored.get(key) != new.get(key)
    )
    changed += [
        f"method {m['name']!r}" for m in stored.get("methods", []) if m not in new["methods"]
    ]
    changed += [f"seed {s}" for s in stored.get("seeds", []) if s not in new["seeds"]]
    if changed:
        raise ValueError(
            f"{out} holds a run of a different recipe (changed or removed: {', '.join(changed)}); "
            "on resume a recipe may only add methods or seeds. Use another output folder, "
            "or --no-resume to start over."
        )


def _read_result(path: Path) -> dict[str, Any]:
    """A finished cell's result; results written before the metric vocabulary called the
    15-bin ECE ``ece_15``."""
    result = json.loads(path.read_text())
    for variants in result["metrics"].values():
        for values in variants.values():
            if "ece_15" in values:
                values["ece"] = values.pop("ece_15")
    return result


def _cell_folder(out: Path, method: Method, seed: int) -> Path:
    return out / "cells" / method.name / f"seed_{seed}"


def _write_json(path: Path, content: Any) -> None:
    write_text_atomic(path, json.dumps(content, indent=2) + "\n")


# -- collecting ----------------------------------------------------------------------------------
def _write_report(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Aggregate the finished cells, build the ensembles and write every report file."""
    from nlpcal.metrics.plots import reliability_diagram
    from nlpcal.report import html_report, markdown_report

    cells, rows, figures = [], [], {}
    kinds = {s.name: "in-domain" if s is recipe.test else "shifted" for s in recipe.eval_sets}
    for method in recipe.methods:
        folders = [_cell_folder(out, method, seed) for seed in recipe.seeds]
        results = [_read_result(f / RESULT_NAME) for f in folders]
        cells += results
        members = [_load_predictions(f, recipe.ood_score) for f in folders]
        labels = members[0].labels
        for name, kind in kinds.items():
            base = {"method": method.name, "set": name, "kind": kind, "n": len(labels[name])}
            for variant in method.variants:
                values = {
                    m: _mean_std([r["metrics"][name][variant].get(m) for r in results])
                    for m in METRICS
                }
                rows.append(
                    {**base, "variant": variant, "seeds": list(recipe.seeds), "values": values}
                )
        if len(members) > 1:
            ensemble = _ensemble(members, method.variants, recipe.ood_score)
            metrics = _set_metrics(ensemble, recipe.test.name)
            for name, kind in kinds.items():
                base = {"method": method.name, "set": name, "kind": kind, "n": len(labels[name])}
                for variant, values in metrics[name].items():
                    rows.append(
                        {**base, "variant": variant, "seeds": list(recipe.seeds), "values": values}
                    )
        for variant in method.variants:
            path = out / f"reliability_{method.name}_{variant}.png"
            curves = {}
            for name, kind in kinds.items():
                class_probs = np.concatenate([m.probs[name][variant] for m in members])
                probs, confidence = split_confidence(torch.as_tensor(class_probs))
                labels_pooled = np.concatenate([m.labels[name] for m in members])
                curves[f"{name} ({kind})"] = (probs, labels_pooled, confidence)
            title = f"{method.name}, {_variant_label(variant)} ({len(members)} seeds pooled)"
            reliability_diagram(curves, n_bins=15, path=path, title=title)
            figures[f"{method.name}: {_variant_label(variant)}"] = path
    label_maps = {k: v for c in cells for k, v in c.get("label_maps", {}).items()}
    results = {
        "recipe": recipe.to_dict(),
        "label_maps": label_maps,
        "environment": environment(sorted({c["device"] for c in cells})),
        "cells": cells,
        "rows": rows,
    }
    _write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown_report(results))
    (out / "report.html").write_text(html_report(results, figures))
    return results


def _ensemble_variant(variant: str) -> str:
    return ENSEMBLE if variant == NONE else f"{ENSEMBLE}+{variant}"


def _variant_label(variant: str) -> str:
    return "uncalibrated" if variant == NONE else variant


def _mean_std(values: Sequence[float | None]) -> dict[str, float | None] | None:
    """Mean and sample standard deviation (ddof=1; ``None`` for one seed) over seeds."""
    if values[0] is None:
        return None
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return {"mean": float(array.mean()), "std": std}


def environment(devices: Sequence[str] = ()) -> dict[str, Any]:
    """Where and how the results were produced: command, versions, platform, devices."""
    import datasets
    import transformers

    import nlpcal

    return {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "devices": list(devices),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "nlpcal": nlpcal.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "numpy": np.__version__,
        },
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _is_dataset(value: Any) -> bool:
    from datasets import Dataset

    return isinstance(value, Dataset)


# -- validation helpers --------------------------------------------------------------------------
def _mapping(
    value: Any, what: str, allowed: Sequence[str] | None = None, required: Sequence[str] = ()
) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping, got {value!r}")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValueError(f"{what}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ValueError(f"{what} needs the keys {missing}")
    return dict(value)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} name must be lowercase letters, digits and '_', got {name!r}")
    return name


def _check_unique(names: Sequence[Any], what: str) -> None:
    duplicates = sorted({str(n) for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate {what} names: {duplicates}")


def _count(value: Any, what: str, minimum: int = 1, optional: bool = False) -> Any:
    """``value`` if it is an integer >= ``minimum`` (or ``None`` when ``optional``), else raise."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value
