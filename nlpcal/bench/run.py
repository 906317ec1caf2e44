"""Running a recipe: one fine-tuning run per method × seed (a *cell*), resumable.

For each cell :func:`run_bench` fine-tunes a fresh classifier (:func:`train_calibrated`), the
trainer fits the method's post-hoc calibrators on the calibration data, and the cell stores the
class probabilities and OOD scores of every variant on every set (:mod:`nlpcal.bench.store`).
With a ``robustness`` section, each cell also measures the model's accuracy under PGD on the
input embeddings of the attacked sets (:func:`~nlpcal.robustness.accuracy_under_attack`).
An interrupted run resumes in the same folder: finished cells are kept, missing ones are run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpcal.adapters.timm import (
    TimmClassifierConfig,
    TimmForImageClassification,
    is_timm_name,
    timm_classifier_for,
)
from nlpcal.args import CalibrationArguments
from nlpcal.bench.collect import set_metrics, shift_metrics, write_results
from nlpcal.bench.recipe import NONE, SAVED_PREFIX, DriftSpec, Method, Recipe, some_methods
from nlpcal.bench.store import (
    EXPLAIN_NAME,
    MODEL_DIR,
    RESULT_NAME,
    Outputs,
    cell_folder,
    check_resumable,
    device_name,
    save_predictions,
    write_json,
    write_recipe,
)
from nlpcal.data import LabelMap, align_labels, corrupt_dataset, model_label_names
from nlpcal.data.augmix import AugMix, augmix_dataset
from nlpcal.data.prepare import (
    length_order,
    load_tokenizer,
    resolve_model_path,
    subsample,
    tokenize,
)
from nlpcal.posthoc import calibrator_class
from nlpcal.robustness import accuracy_under_attack

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from nlpcal.posthoc import Calibrator
    from nlpcal.trainer import CalibratedTrainer

__all__ = ["calibrate_pretrained", "run_bench", "saved_loss", "train_calibrated"]

logger = logging.getLogger(__name__)
# The files of a Hub model that loading it needs (no other frameworks' weights); PyTorch's
# pickled weights only for a repository without safetensors.
_MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
_PICKLED_WEIGHTS = ["pytorch_model*.bin"]


def run_bench(
    recipe: Recipe,
    output_dir: str | os.PathLike[str],
    resume: bool = True,
    methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run every cell of ``recipe`` that is not finished, then write the report.

    Args:
        recipe: the benchmark (see :func:`~nlpcal.bench.load_recipe`).
        output_dir: the run folder (see :mod:`nlpcal.bench.store`).
        resume: keep the finished cells of an earlier run of the same recipe (it may have gained
            methods or seeds since). ``False`` deletes the folder's cells and starts over.
        methods: run and report only these methods of the recipe (default: all); the folder
            keeps the whole recipe, so the others can follow.

    Returns:
        The content of ``results.json``: the recipe, the environment, every cell's metrics and
        the aggregated rows.

    Raises:
        ValueError: on resume, the folder holds a run of a recipe that differs in more than added
            methods or seeds; or bad data (unknown source, empty split).
    """
    part = some_methods(recipe, methods) if methods else recipe
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        check_resumable(recipe, out)
    else:
        shutil.rmtree(out / "cells", ignore_errors=True)
    write_recipe(recipe, out)
    recipe = part
    cells = [(method, seed) for method in recipe.methods for seed in recipe.seeds]
    data = None
    for index, (method, seed) in enumerate(cells, 1):
        folder = cell_folder(out, method, seed)
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
    return write_results(recipe, out)


@dataclass
class _Data:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset
    calibration: Dataset
    sets: dict[str, Dataset]
    label_maps: dict[str, LabelMap]
    drift: list[Dataset]
    drift_description: str  # the drift-aware copies in words, for the saved record
    explain: dict[str, Dataset]  # the raw rows of each eval set that the report explains
    attacked: dict[str, Dataset]


def _load_data(recipe: Recipe) -> _Data:
    """Load, slice, corrupt and tokenize every split once; every cell uses the same data.

    A recipe that trains takes the label set of its ``labels``, else of its task, else of the
    training data: the calibration split and every evaluation set without a ``label_map`` are
    re-encoded onto it by name. A recipe that takes its model as it is takes the model's classes
    (``id2label``): each split is matched to them by name ignoring case, or through its
    ``label_map`` (else the recipe's); the calibration split is re-encoded onto the model's ids
    (one to one), the evaluation sets keep their own labels and a :class:`LabelMap`. A set with
    a ``label_map`` keeps its own labels and a :class:`LabelMap`; an unlabelled set has no labels.
    """
    data, slicing, data_dir = recipe.data, recipe.slicing, recipe.data_dir
    seed, n_eval = slicing.seed, slicing.max_eval_samples
    if is_timm_name(recipe.model) and not recipe.trains:
        raise ValueError(
            f"model {recipe.model!r} is built from timm untrained: its methods must train "
            "(train: false takes a fine-tuned classifier as it is, e.g. the folder of an image "
            "model saved by nlpcal)"
        )
    if recipe.trains:
        full = data.train.load(recipe.task, data_dir, recipe.labels, "data.train")
        names = full.features["label"].names
        images = is_timm_name(recipe.model)
    else:
        full = None if data.train is None else data.train.load(None, data_dir, None, "data.train")
        config = _load_config(recipe.model)
        names = model_label_names(config)
        images = _is_image_config(config)
        if images and recipe.explain is not None:
            raise ValueError(
                f"explain shows token heat maps of text models; {recipe.model} is an image model"
            )
    train = full
    calibration = None
    if data.calibration is not None and data.calibration.holdout is not None:
        split = full.train_test_split(test_size=data.calibration.holdout, seed=seed)
        train, calibration = split["train"], split["test"]
    elif data.calibration is not None:
        labels = names if recipe.trains else None
        calibration = data.calibration.load(None, data_dir, labels, "data.calibration")
    if calibration is not None:
        if not recipe.trains:
            calibration = _onto_model_labels(calibration, names, recipe.label_map)
        calibration = subsample(calibration, n_eval, seed)
    if recipe.trains:
        train = subsample(train, slicing.max_train_samples, seed)
    drift = []
    ladder = (data.calibration.drift if data.calibration is not None else None) or DriftSpec()
    if any(m.drift_posthoc for m in recipe.methods) and ladder.is_text:
        # Text-corrupted copies of the calibration rows; the trainer perturbs embeddings itself.
        drift = [
            corrupt_dataset(calibration, ladder.corruption, severity, ladder.seed)
            for severity in ladder.severities
        ]
    sets, label_maps = {}, {}
    for spec in recipe.eval_sets:
        if not spec.labeled:
            dataset = spec.load(None, data_dir, None, spec.name, require_labels=False)
            if "label" in dataset.column_names:
                dataset = dataset.remove_columns("label")
        elif spec.label_map is None and recipe.trains:
            dataset = spec.load(None, data_dir, names, spec.name)
        else:
            dataset = spec.load(None, data_dir, None, spec.name)
            set_names = dataset.features["label"].names
            renames = spec.label_map if spec.label_map is not None else recipe.label_map
            label_maps[spec.name] = LabelMap(names, set_names, renames)
        dataset = subsample(dataset, n_eval, seed)
        if spec.corrupt is not None:
            dataset = corrupt_dataset(dataset, **spec.corrupt.to_dict())
        sets[spec.name] = dataset
    explain = {}
    if recipe.explain is not None:
        explain = {
            name: ds.select(range(min(recipe.explain.examples, len(ds))))
            for name, ds in sets.items()
        }
    if images:  # pixel_values as loaded, no tokenizer
        tokenizer = None

        def prepared(dataset: Dataset | None) -> Dataset | None:
            return dataset

    else:
        tokenizer = load_tokenizer(recipe.model if recipe.trains else _model_folder(recipe.model))

        def prepared(dataset: Dataset | None) -> Dataset | None:
            return None if dataset is None else tokenize(dataset, tokenizer, recipe.max_length)

    prepared_sets = {name: prepared(ds) for name, ds in sets.items()}
    return _Data(
        tokenizer=tokenizer,
        train=prepared(train) if recipe.trains else None,
        calibration=prepared(calibration),
        sets=prepared_sets,
        label_maps=label_maps,
        drift=[prepared(ds) for ds in drift],
        drift_description=ladder.describe(),
        explain=explain,
        attacked={
            name: _attacked_set(prepared_sets[name], label_maps.get(name), name, recipe)
            for name in recipe.attacked_sets
        },
    )


def _attacked_set(
    dataset: Dataset, label_map: LabelMap | None, name: str, recipe: Recipe
) -> Dataset:
    """An eval set as the attack reads it: labels in the model's ids (through a one-to-one
    ``label_map``), at most ``robustness.max_samples`` rows drawn with the slicing seed, from
    the longest to the shortest (batches pad less; the order does not change an accuracy)."""
    if label_map is not None:
        to_set = label_map.model_to_set
        if sorted(to_set) != list(range(len(to_set))):
            raise ValueError(
                f"robustness: the eval set {name!r} merges the model's classes ("
                f"{label_map.describe()}), and the attack changes the model's own prediction: "
                "leave it out of robustness.sets"
            )
        to_model = np.argsort(to_set)  # set class -> the model class that maps onto it
        labels = to_model[np.asarray(dataset["label"])]
        dataset = dataset.remove_columns("label").add_column("label", labels.tolist())
    dataset = subsample(dataset, recipe.robustness.max_samples, recipe.slicing.seed)
    order = length_order(dataset)
    return dataset if order is None else dataset.select(order)


def _onto_model_labels(
    dataset: Dataset, names: Sequence[str], renames: dict[str, str] | None
) -> Dataset:
    """The calibration split with the model's label ids: post-hoc calibrators are fitted in the
    model's label space, so its classes must match the split's one to one."""
    from datasets import ClassLabel

    set_names = dataset.features["label"].names
    label_map = LabelMap(names, set_names, renames)
    if sorted(label_map.model_to_set) != list(range(len(set_names))) or len(names) != len(
        set_names
    ):
        raise ValueError(
            "data.calibration: the calibrators are fitted in the model's label space, so its "
            f"classes must map one to one onto the data's; {label_map.describe()}"
        )
    renamed = [names[label_map.model_to_set.index(j)] for j in range(len(set_names))]
    dataset = dataset.cast_column("label", ClassLabel(names=renamed))
    return align_labels(dataset, names, name="data.calibration")


def _run_cell(recipe: Recipe, method: Method, seed: int, data: _Data, folder: Path) -> None:
    """Train one cell (the trainer fits its calibrators), predict every set with every variant,
    measure the model's accuracy under attack on the attacked sets; write the predictions, then
    the result."""
    start = time.time()
    saved = _saved_variants(recipe.model, method)
    args = recipe.training_arguments(method, seed, folder)
    drift = data.drift if method.drift_posthoc else None
    if method.train:
        train = data.train
        if method.augmix is not None:  # a fresh augmentation of each batch as it is read
            train = augmix_dataset(train, AugMix(**{"seed": seed, **method.augmix}))
        trainer = train_calibrated(
            recipe.model, args, train, data.calibration, data.tokenizer, drift_datasets=drift
        )
    else:
        trainer = calibrate_pretrained(
            recipe.model, args, data.calibration, data.tokenizer, drift_datasets=drift
        )
    if drift:
        trainer.drift_description = data.drift_description
    calibrators = {**trainer.calibrators, **saved}
    features = any(c.requires_features for c in calibrators.values())
    outputs = Outputs({}, {}, {})
    for name, dataset in data.sets.items():
        label_map = data.label_maps.get(name)
        if label_map is not None:  # labels in the set's own space: scored after the map
            outputs.labels[name] = np.asarray(dataset["label"])
            dataset = dataset.remove_columns("label")
        preds = trainer.predictions(dataset, name, features=features)
        if label_map is None and preds.labels is not None:
            outputs.labels[name] = preds.labels.numpy()
        variants = trainer.variant_outputs(preds, calibrators)
        outputs.probs[name] = {
            v: (
                out.class_probs if label_map is None else label_map.apply_probs(out.class_probs)
            ).numpy()
            for v, out in variants.items()
        }
        outputs.ood[name] = {v: out.ood.numpy() for v, out in variants.items()}
    selection = (
        None
        if data.calibration is None
        else _calibration_split_metrics(trainer, data.calibration, seed, saved)
    )
    metrics = set_metrics(outputs, recipe.data.test.name)
    attacked, spec = {}, recipe.robustness
    for name, dataset in data.attacked.items():
        logger.info("%s: PGD on %d examples at budgets %s", name, len(dataset), spec.budgets)
        right = accuracy_under_attack(trainer, dataset, spec.budgets, spec.norm, spec.steps)
        accuracy = right.float().mean(dim=0).tolist()
        metrics[name][NONE].update(zip(spec.metric_keys, accuracy, strict=True))
        attacked[name] = len(dataset)
    if recipe.save_model:  # recorded with the model, shown on its card: the variants it holds
        trainer.last_eval_metrics = {
            name: {v: values for v, values in variants.items() if v not in saved}
            for name, variants in metrics.items()
        }
        trainer.save_model(str(folder / MODEL_DIR))
    train_log = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    save_predictions(folder, outputs)
    if data.explain and seed == recipe.seeds[0]:
        write_json(folder / EXPLAIN_NAME, _explanations(recipe, trainer, data))
    write_json(
        folder / RESULT_NAME,
        {
            "method": method.name,
            "seed": seed,
            "metrics": metrics,
            **({} if selection is None else {"calibration_split": selection}),
            **(
                {}
                if trainer.drift_schedule is None
                else {"drift_schedule": trainer.drift_schedule.to_dict()}
            ),
            "train": train_log,
            "seconds": round(time.time() - start, 1),
            "device": device_name(trainer.args.device),
            "label_maps": {name: m.describe() for name, m in data.label_maps.items()},
            **({"attacked_rows": attacked} if attacked else {}),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def _explanations(recipe: Recipe, trainer: CalibratedTrainer, data: _Data) -> dict[str, Any]:
    """Token heat maps of the rows ``data.explain`` holds, as ``explain.json`` stores them: the
    model's label names and, per eval set, each row's tokens, scores, prediction and confidence
    (with its label when the set's classes are the model's)."""
    from dataclasses import asdict

    from nlpcal.explain import explain_texts

    spec = recipe.explain
    config = trainer.model.config
    sets = {}
    for name, rows in data.explain.items():
        labeled = "label" in rows.column_names and name not in data.label_maps
        explanations = explain_texts(
            trainer.model,
            data.tokenizer,
            list(rows["text"]),
            labels=list(rows["label"]) if labeled else None,
            method=spec.method,
            method_kwargs=spec.method_kwargs,
            text_pairs=list(rows["text_pair"]) if "text_pair" in rows.column_names else None,
            max_length=recipe.max_length,
        )
        sets[name] = [asdict(e) for e in explanations]
    names = [config.id2label[i] for i in range(config.num_labels)]
    return {"method": spec.method, "label_names": names, "sets": sets}


def _calibration_split_metrics(
    trainer: CalibratedTrainer,
    calibration: Dataset,
    seed: int,
    saved: dict[str, Calibrator] | None = None,
) -> dict[str, dict[str, float]]:
    """Every variant's metrics on the calibration split, each calibrator cross-fitted (2 folds):
    what methods may be compared and chosen by without looking at a test or shifted set. The
    ``saved`` calibrators of a model taken as it is were fitted elsewhere: scored as they are."""
    saved = saved or {}
    features = any(
        calibrator_class(v.calibrator).requires_features for v in trainer.posthoc.values()
    ) or any(c.requires_features for c in saved.values())
    preds = trainer.predictions(calibration, "calibration", features=features)
    outputs = {}
    if trainer.posthoc:
        drift = trainer.drift_predictions(n=len(calibration))
        outputs = trainer.cross_fitted_outputs(preds, folds=2, seed=seed, drift=drift)
    outputs.update(trainer.variant_outputs(preds, saved))
    return {v: shift_metrics(out.class_probs, preds.labels) for v, out in outputs.items()}


def _saved_variants(model: str, method: Method) -> dict[str, Calibrator]:
    """The calibrators of ``method.saved_posthoc``, loaded from the nlpcal folder of ``model``,
    under their variant names (``saved_<variant>``)."""
    if not method.saved_posthoc:
        return {}
    from nlpcal.hub import saved_calibrators

    folder = _model_folder(model)
    if saved_loss(folder) is None:
        raise ValueError(
            f"method {method.name!r}: saved_posthoc {list(method.saved_posthoc)} needs a model "
            f"saved by nlpcal; {model} was not (it holds no calibrators)"
        )
    fitted, _ = saved_calibrators(folder)
    missing = [v for v in method.saved_posthoc if v not in fitted]
    if missing:
        raise ValueError(
            f"method {method.name!r}: saved_posthoc names {missing}, which {model} does not "
            f"hold; its saved variants: {list(fitted)}"
        )
    return {f"{SAVED_PREFIX}{v}": fitted[v] for v in method.saved_posthoc}


def train_calibrated(
    model_name_or_path: str,
    args: CalibrationArguments,
    train: Dataset,
    calibration: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    eval_dataset: dict[str, Dataset] | None = None,
    drift_datasets: Sequence[Dataset] | None = None,
) -> CalibratedTrainer:
    """Fine-tune a freshly loaded classifier with the loss of ``args``, then fit its post-hoc
    calibrators on ``calibration``.

    The random state is seeded with ``args.seed`` before the classification head is created, so a
    seed fixes the whole run. A ``"timm:NAME"`` model is a fresh timm image classifier
    (:mod:`nlpcal.adapters.timm`) for ``train``'s images; ``tokenizer`` is then ``None``. ``train`` and ``calibration`` are tokenized
    (:func:`~nlpcal.data.prepare.tokenize`); the
    label names come from ``train``'s ``label`` feature.
    """
    from transformers import set_seed

    from nlpcal.trainer import CalibratedTrainer

    set_seed(args.seed)
    if is_timm_name(model_name_or_path):
        model = timm_classifier_for(model_name_or_path, train)
    else:
        model = _load_classifier(model_name_or_path, train.features["label"].names)
    trainer = CalibratedTrainer(
        model,
        args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        calibration_dataset=calibration,
        drift_datasets=drift_datasets,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def calibrate_pretrained(
    model_name_or_path: str,
    args: CalibrationArguments,
    calibration: Dataset | None,
    tokenizer: PreTrainedTokenizerBase,
    drift_datasets: Sequence[Dataset] | None = None,
) -> CalibratedTrainer:
    """Take a fine-tuned sequence classifier as it is (a folder or a Hub id), or the folder of
    an image classifier saved through :mod:`nlpcal.adapters.timm`, and fit the post-hoc
    calibrators of ``args`` on ``calibration`` (none without them); no training.

    ``calibration`` is tokenized (images: their ``pixel_values``; ``tokenizer`` is then
    ``None``), with labels in the model's ids (``config.id2label``); ``args.calibration_loss``
    says how the model's outputs are read.

    Raises:
        ValueError: the checkpoint is not a sequence classifier.
        FileNotFoundError: no such folder, and no reachable Hub repository (offline, say).
    """
    from transformers import set_seed

    from nlpcal.trainer import CalibratedTrainer

    set_seed(args.seed)
    model = _load_classifier(model_name_or_path)
    trainer = CalibratedTrainer(
        model,
        args,
        calibration_dataset=calibration,
        drift_datasets=drift_datasets,
        processing_class=tokenizer,
    )
    if trainer.posthoc:
        trainer.calibrate()
    return trainer


def _model_folder(model_name_or_path: str) -> str:
    """A local folder with the model: a folder, the default encoder's package, or the Hub
    repository's files (downloaded once; offline, an error that says why)."""
    from nlpcal.hub import _find_folder

    path = resolve_model_path(model_name_or_path)
    if os.path.isdir(path):
        return path
    folder = _find_folder(path, {"allow_patterns": _MODEL_FILES})
    if not any(folder.glob("*.safetensors")):  # an older repository: PyTorch weights only
        folder = _find_folder(path, {"allow_patterns": [*_MODEL_FILES, *_PICKLED_WEIGHTS]})
    return str(folder)


def saved_loss(folder: str | os.PathLike[str]) -> tuple[str, dict[str, Any]] | None:
    """The training loss (name and arguments) of a model folder saved by nlpcal, else ``None``:
    how its outputs are read, whatever calibration it carries."""
    from nlpcal._io import read_json
    from nlpcal.hub import CONFIG_NAME

    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    record = read_json(path, required=("loss",))
    return record["loss"], dict(record.get("loss_config") or {})


def _load_config(model_name_or_path: str) -> PretrainedConfig:
    """The config of a model taken as it is, which must be a sequence classifier."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(_model_folder(model_name_or_path))
    architectures = list(config.architectures or [])
    if not _is_image_config(config) and not any(
        name.endswith("ForSequenceClassification") for name in architectures
    ):
        raise ValueError(
            f"model {model_name_or_path!r} is not a sequence classifier: its config names the "
            f"architectures {architectures or 'none'} (expected a fine-tuned "
            "*ForSequenceClassification model, or an image classifier saved through "
            "nlpcal.adapters.timm; `nlpcal train` makes one from a base encoder or a timm: name)"
        )
    return config


def _is_image_config(config: PretrainedConfig) -> bool:
    """Whether a model's config is that of nlpcal's timm adapter (an image classifier)."""
    return config.model_type == TimmClassifierConfig.model_type


def _load_classifier(
    model_name_or_path: str, label_names: Sequence[str] | None = None
) -> PreTrainedModel:
    """A sequence classifier with ``label_names``, quietly when only its head is new; without
    ``label_names``, the fine-tuned classifier as it is (which must be one, or an image
    classifier saved through :mod:`nlpcal.adapters.timm`).

    A classifier built on a base encoder gets a freshly initialised head (and drops the
    checkpoint's own pretraining head), which transformers reports on every load. That report
    is held back and shown only when something else went wrong: weights of the encoder itself
    missing from, or unexpected in, the checkpoint (or, as it is, any weight missing). The
    progress bar of the load is off.
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

    if label_names is None:
        config = _load_config(model_name_or_path)  # a classifier, or a clear error
        path, labels = _model_folder(model_name_or_path), {}
        if saved_loss(path) is not None:  # saved by nlpcal: the model as trained, unfolded
            from nlpcal.hub import load_calibrated

            return load_calibrated(path, calibrator=NONE).model
        if _is_image_config(config):  # the adapter's save_pretrained, without nlpcal's files
            return TimmForImageClassification.from_pretrained(path)
    else:
        path = resolve_model_path(model_name_or_path)
        labels = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)},
        }
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    load_logger.addFilter(hold_report)
    only_head = False
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, **labels
        )
        encoder = model.base_model_prefix
        only_head = bool(encoder) and not any(
            key.startswith(f"{encoder}.") for key in info["missing_keys"] | info["unexpected_keys"]
        )
        if label_names is None:
            only_head = not (info["missing_keys"] or info["mismatched_keys"])
    finally:
        load_logger.removeFilter(hold_report)
        if bars:
            hf_logging.enable_progress_bar()
        if not only_head:
            for record in held:
                load_logger.handle(record)
    return model
