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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nlpcal._io import staged, write_text_atomic
from nlpcal.args import CalibrationArguments
from nlpcal.data import Task, corrupt_dataset, load_source
from nlpcal.functional.metrics import evaluation_metrics, expected_calibration_error
from nlpcal.functional.ood import ood_detection_metrics
from nlpcal.losses import create_loss
from nlpcal.pipeline import (
    DEFAULT_MODEL,
    load_slice,
    load_tokenizer,
    parse_config,
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
NONE = "none"
ENSEMBLE = "ensemble"
METRICS = ("accuracy", "ece_10", "ece_15", "brier", "nll", "aurc", "ood_auroc")

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
)
_DATA_KEYS = ("train", "calibration", "test", "shifted")
_SLICING_KEYS = ("max_train_samples", "max_eval_samples", "seed")
_SET_KEYS = ("name", "source", "corrupt")
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
)
# Training defaults of a benchmark cell: no checkpoints (nothing needs them), no logging services.
_TRAINING_DEFAULTS = {"save_strategy": "no", "report_to": "none"}


@dataclass(frozen=True)
class EvalSet:
    """A named evaluation set: a data source, optionally corrupted (:func:`~nlpcal.data.corrupt_dataset`).

    >>> EvalSet.from_dict({"name": "sst2_c3", "source": "sample:sst2/test",
    ...                    "corrupt": {"severity": 3}}).corrupt
    {'severity': 3}
    """

    name: str
    source: str
    corrupt: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, config: Any, what: str = "eval set") -> EvalSet:
        config = _mapping(config, what, _SET_KEYS, required=("name", "source"))
        corrupt = config.get("corrupt")
        if corrupt is not None:
            corrupt = _mapping(corrupt, f"{what} {config['name']!r}: corrupt", _CORRUPT_KEYS)
        return cls(_check_name(config["name"], what), str(config["source"]), corrupt)

    def to_dict(self) -> dict[str, Any]:
        config = {"name": self.name, "source": self.source}
        if self.corrupt is not None:
            config["corrupt"] = dict(self.corrupt)
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
    split off the training source instead.
    """

    name: str
    model: str
    task: str
    max_length: int
    data_dir: str | None
    train: str
    calibration: str | None
    holdout: int | float | None
    test: EvalSet
    shifted: tuple[EvalSet, ...]
    max_train_samples: int | None
    max_eval_samples: int | None
    data_seed: int
    training: dict[str, Any]
    methods: tuple[Method, ...]
    seeds: tuple[int, ...]

    @classmethod
    def from_dict(cls, config: Any, name: str = "recipe") -> Recipe:
        """Validate a recipe mapping (as read from YAML, without ``base``).

        Defaults: ``model`` all-MiniLM-L6-v2, ``max_length`` 128, no ``data_dir``, no shifted sets,
        no slicing (slicing seed 0), transformers' training defaults (without checkpoints), and
        for a method, its loss's own post-hoc calibrator.

        Raises:
            ValueError: an unknown key, loss, calibrator or task, a missing section, no methods
                or seeds, duplicate names, or training arguments the runner sets per cell.
        """
        config = _mapping(
            config, "recipe", _TOP_KEYS, required=("task", "data", "methods", "seeds")
        )
        data = _mapping(
            config["data"], "data", _DATA_KEYS, required=("train", "calibration", "test")
        )
        slicing = _mapping(config.get("slicing") or {}, "slicing", _SLICING_KEYS)
        training = dict(_mapping(config.get("training") or {}, "training"))
        task = str(config["task"])
        if task not in {t.value for t in Task}:
            raise ValueError(
                f"unknown task {task!r}; available: {', '.join(t.value for t in Task)}"
            )
        calibration, holdout = data["calibration"], None
        if isinstance(calibration, Mapping):
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
            train=str(data["train"]),
            test=test,
            methods=methods,
            seeds=tuple(seeds),
            calibration=None if calibration is None else str(calibration),
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
        )
        # Fails early on unknown or ill-typed training arguments.
        recipe.training_arguments(methods[0], recipe.seeds[0], "unused")
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """The recipe in its YAML layout, with every default filled in."""
        calibration = {"holdout": self.holdout} if self.calibration is None else self.calibration
        return {
            "name": self.name,
            "model": self.model,
            "task": self.task,
            "max_length": self.max_length,
            "data_dir": self.data_dir,
            "data": {
                "train": self.train,
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
        }
        (args,) = parse_config(config, [CalibrationArguments])
        return args


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file; its name defaults to the file name without suffix.

    >>> load_recipe("recipes/demo.yaml").seeds  # doctest: +SKIP
    (0, 1)
    """
    path = Path(path)
    return Recipe.from_dict(_read_recipe(path, ()), name=path.stem)


def demo_recipe() -> Recipe:
    """The recipe ``nlpcal demo`` runs, shipped in the package (``nlpcal/recipes/demo.yaml``).

    >>> [m.name for m in demo_recipe().methods]
    ['cross_entropy', 'label_smoothing']
    """
    from importlib.resources import as_file, files

    with as_file(files("nlpcal") / "recipes" / "demo.yaml") as path:
        return load_recipe(path)


def _read_recipe(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    if path.resolve() in seen:
        raise ValueError(f"recipe {path} is its own base (a cycle of 'base:' references)")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"recipe {path} must hold a mapping, got {type(config).__name__}")
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
def shift_metrics(probs: Any, labels: Any, in_domain_probs: Any | None = None) -> dict[str, float]:
    """The benchmark's metrics of one set: accuracy, ECE (10 and 15 bins), Brier, NLL, AURC and,
    when ``in_domain_probs`` are given, the OOD AUROC of this set against the in-domain set.

    Selective prediction (AURC) and OOD detection score examples by their maximum probability;
    the OOD AUROC treats the in-domain examples as positive.

    >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> values = shift_metrics(probs, torch.tensor([0, 1, 1]), in_domain_probs=probs[:2])
    >>> round(values["accuracy"], 4), round(values["ood_auroc"], 4)
    (0.6667, 0.6667)
    """
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels)
    values = evaluation_metrics(probs, labels, n_bins=15)
    result = {
        "accuracy": values["accuracy"],
        "ece_10": expected_calibration_error(probs, labels, n_bins=10),
        "ece_15": values["ece"],
        "brier": values["brier"],
        "nll": values["nll"],
        "aurc": values["aurc"],
    }
    if in_domain_probs is not None:
        reference = torch.as_tensor(in_domain_probs).max(dim=-1).values
        confidence = probs.max(dim=-1).values
        result["ood_auroc"] = ood_detection_metrics(reference, confidence)["auroc"]
    return {key: float(value) for key, value in result.items()}


def _set_metrics(
    probs: Mapping[str, Mapping[str, np.ndarray]], labels: Mapping[str, np.ndarray], test: str
) -> dict[str, dict[str, dict[str, float]]]:
    """``metrics[set][variant]``; shifted sets are scored for OOD against the same variant in-domain."""
    return {
        name: {
            variant: shift_metrics(p, labels[name], None if name == test else probs[test][variant])
            for variant, p in variants.items()
        }
        for name, variants in probs.items()
    }


# -- running -------------------------------------------------------------------------------------
@dataclass
class _Data:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset
    calibration: Dataset
    sets: dict[str, Dataset]


def _load_data(recipe: Recipe) -> _Data:
    """Load, slice, corrupt and tokenize every split once; every cell uses the same data."""
    seed, n_train, n_eval = recipe.data_seed, recipe.max_train_samples, recipe.max_eval_samples
    if recipe.calibration is None:
        full = load_source(recipe.train, recipe.task, recipe.data_dir)
        split = full.train_test_split(test_size=recipe.holdout, seed=seed)
        train, calibration = (
            subsample(split["train"], n_train, seed),
            subsample(split["test"], n_eval, seed),
        )
    else:
        train = load_slice(recipe.train, recipe.task, recipe.data_dir, n_train, seed)
        calibration = load_slice(recipe.calibration, recipe.task, recipe.data_dir, n_eval, seed)
    sets = {}
    for spec in recipe.eval_sets:
        dataset = load_slice(spec.source, recipe.task, recipe.data_dir, n_eval, seed)
        sets[spec.name] = (
            dataset if spec.corrupt is None else corrupt_dataset(dataset, **spec.corrupt)
        )
    tokenizer = load_tokenizer(recipe.model)
    return _Data(
        tokenizer=tokenizer,
        train=tokenize(train, tokenizer, recipe.max_length),
        calibration=tokenize(calibration, tokenizer, recipe.max_length),
        sets={name: tokenize(ds, tokenizer, recipe.max_length) for name, ds in sets.items()},
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
    probs: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, np.ndarray] = {}
    for name, dataset in data.sets.items():
        preds = trainer.predictions(dataset, name, features=features)
        labels[name] = preds.labels.numpy()
        probs[name] = {NONE: preds.logits.float().softmax(-1).numpy()}
        with torch.no_grad():
            for variant, calibrator in calibrators.items():
                calibrated = calibrator(preds.logits, preds.features).float().softmax(-1)
                probs[name][variant] = calibrated.numpy()
    train_log = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    result = {
        "method": method.name,
        "seed": seed,
        "metrics": _set_metrics(probs, labels, recipe.test.name),
        "train": train_log,
        "seconds": round(time.time() - start, 1),
        "device": _device_name(trainer.args.device),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    arrays = {f"labels/{name}": values for name, values in labels.items()}
    arrays.update(
        {
            f"probs/{name}/{variant}": p
            for name, variants in probs.items()
            for variant, p in variants.items()
        }
    )
    with staged(folder / PREDICTIONS_NAME) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **arrays)
    _write_json(folder / RESULT_NAME, result)


def _load_predictions(
    folder: Path,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    probs: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, np.ndarray] = {}
    with np.load(folder / PREDICTIONS_NAME) as arrays:
        for key in arrays.files:
            kind, name, *variant = key.split("/")
            if kind == "labels":
                labels[name] = arrays[key]
            else:
                probs.setdefault(name, {})[variant[0]] = arrays[key]
    return probs, labels


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
        results = [json.loads((f / RESULT_NAME).read_text()) for f in folders]
        cells += results
        members = [_load_predictions(f) for f in folders]
        labels = members[0][1]
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
            ensemble = {
                name: {
                    _ensemble_variant(v): np.mean([p[name][v] for p, _ in members], axis=0)
                    for v in method.variants
                }
                for name in kinds
            }
            metrics = _set_metrics(ensemble, labels, recipe.test.name)
            for name, kind in kinds.items():
                base = {"method": method.name, "set": name, "kind": kind, "n": len(labels[name])}
                for variant, values in metrics[name].items():
                    rows.append(
                        {**base, "variant": variant, "seeds": list(recipe.seeds), "values": values}
                    )
        for variant in method.variants:
            path = out / f"reliability_{method.name}_{variant}.png"
            curves = {
                f"{name} ({kind})": (
                    np.concatenate([p[name][variant] for p, _ in members]),
                    np.concatenate([y[name] for _, y in members]),
                )
                for name, kind in kinds.items()
            }
            title = f"{method.name}, {_variant_label(variant)} ({len(members)} seeds pooled)"
            reliability_diagram(curves, n_bins=15, path=path, title=title)
            figures[f"{method.name}: {_variant_label(variant)}"] = path
    results = {
        "recipe": recipe.to_dict(),
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
