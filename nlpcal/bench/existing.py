"""Models users already have: evaluate a fine-tuned classifier as it is, or calibrate it post hoc.

Both are the benchmark runner with one method that does not train (``train: false``): the model
(a folder, a Hub id or a folder saved by nlpcal) is scored on the recipe's data, in-domain and
under shift, before and after each post-hoc calibrator fitted on the calibration split, and the
run folder gets the same ``results.json``, ``results.md``, ``report.html`` and reliability
diagrams as a benchmark. :func:`calibrate_model` also saves the calibrated model.

>>> from nlpcal.data.prepare import DEFAULT_MODEL
>>> data = {"test": {"name": "sst2", "source": "sample:sst2/test"}}
>>> recipe = existing_model_recipe(DEFAULT_MODEL, data)  # doctest: +SKIP
>>> recipe.methods[0].train, recipe.methods[0].posthoc, recipe.seeds  # doctest: +SKIP
(False, (), (0,))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpcal.bench.recipe import Data, Method, Recipe, Robustness
from nlpcal.bench.run import _model_folder, run_bench, saved_loss
from nlpcal.bench.store import MODEL_DIR, cell_folder

if TYPE_CHECKING:
    from nlpcal.hub import CalibratedModel

__all__ = ["calibrate_model", "default_posthoc", "evaluate_model", "existing_model_recipe"]

METHOD = "model"  # the one method of a run on an existing model: the model as it is


def existing_model_recipe(
    model: str | os.PathLike[str],
    data: Data | Mapping[str, Any],
    *,
    posthoc: Sequence[str] = (),
    posthoc_kwargs: Mapping[str, Any] | None = None,
    drift_posthoc: Sequence[str] = (),
    label_map: Mapping[str, str] | None = None,
    calibration_loss: str = "cross_entropy",
    max_length: int = 128,
    max_eval_samples: int | None = None,
    batch_size: int = 64,
    data_dir: str | None = None,
    name: str = "model",
    save_model: bool = False,
    saved_calibration: bool = True,
    robustness: Robustness | Mapping[str, Any] | None = None,
) -> Recipe:
    """The recipe of a run on an existing classifier: one method, ``train: false``, seed 0.

    Args:
        model: a fine-tuned ``*ForSequenceClassification`` folder or Hub id.
        data: the recipe's ``data`` section (``calibration``, ``test``, ``shifted``; no
            ``train`` needed), as a mapping or a :class:`~nlpcal.bench.Data`.
        posthoc: post-hoc calibrators to fit on ``data.calibration`` (names, ``VARIANT=NAME``).
        posthoc_kwargs: their constructor arguments, as in recipes.
        drift_posthoc: calibrators to fit drift-aware, on ``data.calibration`` plus its
            perturbed copies (``data.calibration.drift``; default: mixed text corruptions at
            severities 1-5), each the variant ``<name>_drift``.
        label_map: model class -> data class where the names differ beyond case
            (``{"LABEL_0": "negative", "LABEL_1": "positive"}``).
        calibration_loss: how the model's outputs are read (``cross_entropy``: a softmax
            classifier); a folder saved by nlpcal says it itself. Such a folder is evaluated as
            trained (any calibration folded into its weights taken out first), and calibrating
            it again replaces its calibration rather than adding to it.
        max_length: most tokens per example.
        max_eval_samples: most rows of each set (default: all).
        batch_size: examples per forward pass.
        data_dir: the shared data folder, for ``shared:`` sources.
        name: the run's name.
        save_model: save the calibrated model with its calibrators.
        saved_calibration: for a folder saved by nlpcal, also score the calibrators it carries,
            as they are (the variants ``saved_<variant>``); :func:`calibrate_model` saves only
            the newly fitted ones.
        robustness: also measure the accuracy under PGD on the input embeddings, the recipe's
            ``robustness`` section (``{"norm": "linf", "budgets": [0.01, 0.05]}``).
    """
    if not isinstance(data, Data):
        data = Data.from_dict(dict(data), "data")
    loss_kwargs: dict[str, Any] = {}
    saved_variants: tuple[str, ...] = ()
    folder = _model_folder(os.fspath(model))
    saved = saved_loss(folder)
    if saved is not None:  # a model saved by nlpcal: its outputs are read as its loss defines
        calibration_loss, loss_kwargs = saved
        if saved_calibration:
            from nlpcal.hub import saved_calibrators

            saved_variants = tuple(saved_calibrators(folder)[0])
    method = Method(
        name=METHOD,
        calibration_loss=calibration_loss,
        loss_kwargs=loss_kwargs,
        posthoc=tuple(posthoc),
        posthoc_kwargs=dict(posthoc_kwargs or {}),
        drift_posthoc=tuple(drift_posthoc),
        train=False,
        saved_posthoc=saved_variants,
    )
    training = {"per_device_eval_batch_size": batch_size, "dataloader_pin_memory": _cuda()}
    if _cuda():  # half precision for inference on a GPU
        training["bf16_full_eval" if _bf16() else "fp16_full_eval"] = True
    return Recipe.from_dict(
        {
            "name": name,
            "model": os.fspath(model),
            "max_length": max_length,
            "data_dir": data_dir,
            "data": data,
            "slicing": {"max_eval_samples": max_eval_samples},
            "training": training,
            "methods": [method],
            "seeds": [0],
            "label_map": None if label_map is None else dict(label_map),
            "save_model": save_model,
            "robustness": robustness,
        }
    )


def evaluate_model(
    model: str | os.PathLike[str] | Recipe,
    data: Data | Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike[str] = "outputs/evaluate",
    **options: Any,
) -> dict[str, Any]:
    """Score a fine-tuned classifier as it is (and after any ``posthoc`` calibrators) on
    ``data``: accuracy, ECE (15 and 10 bins), Brier, NLL, AURC and OOD AUROC of each shifted
    set (and, with ``robustness``, the accuracy under PGD), with the report files in
    ``output_dir``.

    Args:
        model: a classifier folder or Hub id, or a recipe made by
            :func:`existing_model_recipe` (then ``data`` and ``options`` are not given).
        data: the ``data`` section (see :func:`existing_model_recipe`).
        output_dir: the run folder; an earlier run there is replaced.
        **options: the keyword arguments of :func:`existing_model_recipe`.

    Returns:
        The content of ``results.json`` (``rows``: the metrics per set and variant).
    """
    recipe = model if isinstance(model, Recipe) else existing_model_recipe(model, data, **options)
    if recipe.trains:
        raise ValueError(f"recipe {recipe.name!r} trains its model: run it with run_bench")
    return run_bench(recipe, output_dir, resume=False)


def calibrate_model(
    model: str | os.PathLike[str] | Recipe,
    data: Data | Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike[str] = "outputs/calibrate",
    *,
    posthoc: Sequence[str] | None = None,
    drift_posthoc: Sequence[str] = (),
    **options: Any,
) -> tuple[dict[str, Any], CalibratedModel]:
    """Fit post-hoc calibrators to a fine-tuned classifier on ``data.calibration``, score it
    before and after on the other sets, and save the calibrated model (the first calibrator
    active: the first of ``posthoc``, else of ``drift_posthoc``) in ``output_dir/model``.

    Args:
        model: a classifier folder or Hub id, or a recipe made by :func:`existing_model_recipe`.
        data: the ``data`` section, with ``calibration``.
        output_dir: the run folder; an earlier run there is replaced.
        posthoc: the calibrators (default: :func:`default_posthoc`: temperature scaling,
            none when ``drift_posthoc`` are given).
        drift_posthoc: calibrators fitted drift-aware (see :func:`existing_model_recipe`).
        **options: the other keyword arguments of :func:`existing_model_recipe`.

    Returns:
        The content of ``results.json``, and the calibrated model loaded back
        (:func:`~nlpcal.load_calibrated`).
    """
    from nlpcal.hub import load_calibrated

    if isinstance(model, Recipe):
        recipe = replace(model, save_model=True)
    else:
        recipe = existing_model_recipe(
            model,
            data,
            posthoc=default_posthoc(posthoc, drift_posthoc),
            drift_posthoc=drift_posthoc,
            save_model=True,
            **options,
        )
    if not (recipe.methods[0].posthoc or recipe.methods[0].drift_posthoc):
        raise ValueError(
            "calibrate needs at least one post-hoc calibrator (posthoc=... or drift_posthoc=...)"
        )
    results = evaluate_model(recipe, output_dir=output_dir)
    folder = model_folder(recipe, output_dir)
    return results, load_calibrated(folder)


def default_posthoc(
    posthoc: Sequence[str] | None, drift_posthoc: Sequence[str] = ()
) -> tuple[str, ...]:
    """The calibrators that calibrating an existing model fits: ``posthoc`` when given, else
    temperature scaling, or none when drift-aware ones are asked for (then the first of those is
    the calibration saved).

    >>> default_posthoc(None), default_posthoc(None, ["temperature"]), default_posthoc(["vector"])
    (('temperature',), (), ('vector',))
    """
    if posthoc is not None:
        return tuple(posthoc)
    return () if drift_posthoc else ("temperature",)


def model_folder(recipe: Recipe, output_dir: str | os.PathLike[str]) -> Path:
    """Where a run on an existing model saved the calibrated model."""
    return cell_folder(Path(output_dir), recipe.methods[0], recipe.seeds[0]) / MODEL_DIR


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _bf16() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()
