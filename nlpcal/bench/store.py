"""The run folder: the recipe it ran, each cell's predictions and result, the environment stamp.

A run folder holds::

    recipe.json                      the normalised recipe, checked on resume
    cells/<method>/seed_<seed>/
        predictions.npz              labels/<set>, probs/<set>/<variant> and ood/<set>/<variant>
                                     (left out where it is the largest class probability,
                                     which the flag ood_implied says)
        explain.json                 token heat maps of a few rows (recipe `explain`, first seed)
        result.json                  the cell's metrics, written last: the cell is finished
        model/                       the calibrated model, when the recipe saves it
    results.json  results.md  report.html  reliability_<method>_<variant>.png
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlpcal._io import staged, write_text_atomic
from nlpcal.bench.recipe import Method, Recipe

__all__ = [
    "MODEL_DIR",
    "RESULT_NAME",
    "Outputs",
    "cell_folder",
    "check_resumable",
    "device_name",
    "environment",
    "load_predictions",
    "read_result",
    "save_predictions",
    "write_json",
    "write_recipe",
]

RECIPE_NAME = "recipe.json"
RESULT_NAME = "result.json"
PREDICTIONS_NAME = "predictions.npz"
# Marks a predictions file whose missing OOD scores are the largest class probability.
_IMPLIED_OOD = "ood_implied"
EXPLAIN_NAME = "explain.json"
MODEL_DIR = "model"


@dataclass
class Outputs:
    """A cell's (or an ensemble's) outputs: ``probs[set][variant]`` (class probabilities),
    ``ood[set][variant]`` (OOD scores) and ``labels[set]`` (none for an unlabelled set)."""

    probs: dict[str, dict[str, np.ndarray]]
    ood: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray]


def cell_folder(out: Path, method: Method, seed: int) -> Path:
    return out / "cells" / method.name / f"seed_{seed}"


def write_json(path: Path, content: Any) -> None:
    write_text_atomic(path, json.dumps(content, indent=2) + "\n")


def write_recipe(recipe: Recipe, out: Path) -> None:
    write_json(out / RECIPE_NAME, recipe.to_dict())


def check_resumable(recipe: Recipe, out: Path) -> None:
    """Refuse to resume in ``out`` a run of a recipe that differs in more than added methods or
    seeds. The stored recipe is read through the schema, so keys it lacks (written by an older
    nlpcal) take their defaults."""
    stored_file = out / RECIPE_NAME
    if not stored_file.is_file():
        return
    try:
        stored = Recipe.from_dict(json.loads(stored_file.read_text())).to_dict()
    except ValueError as err:
        raise ValueError(
            f"{out} holds a run of a recipe that this nlpcal cannot read ({err}). Use another "
            "output folder, or --no-resume to start over."
        ) from None
    new = recipe.to_dict()
    changed = sorted(
        key
        for key in stored.keys() | new.keys()
        if key not in ("name", "methods", "seeds") and stored.get(key) != new.get(key)
    )
    changed += [f"method {m['name']!r}" for m in stored["methods"] if m not in new["methods"]]
    changed += [f"seed {s}" for s in stored["seeds"] if s not in new["seeds"]]
    if changed:
        raise ValueError(
            f"{out} holds a run of a different recipe (changed or removed: {', '.join(changed)}); "
            "on resume a recipe may only add methods or seeds. Use another output folder, "
            "or --no-resume to start over."
        )


def save_predictions(folder: Path, outputs: Outputs) -> None:
    """Writes a cell's outputs. An OOD score that is exactly the largest class probability (the
    ``"confidence"`` score) is not stored: the file is marked (``ood_implied``) and loading
    recomputes it, which keeps run folders a quarter smaller."""
    arrays: dict[str, np.ndarray] = {_IMPLIED_OOD: np.array(True)}
    arrays.update({f"labels/{name}": values for name, values in outputs.labels.items()})
    for name, variants in outputs.probs.items():
        arrays.update({f"probs/{name}/{variant}": probs for variant, probs in variants.items()})
    for name, variants in outputs.ood.items():
        for variant, ood in variants.items():
            probs = outputs.probs.get(name, {}).get(variant)
            implied = (
                probs is not None
                and ood.dtype == probs.dtype
                and np.array_equal(ood, probs.max(axis=1))
            )
            if not implied:
                arrays[f"ood/{name}/{variant}"] = ood
    with staged(folder / PREDICTIONS_NAME) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **arrays)


def load_predictions(folder: Path, ood_score: str) -> Outputs:
    """A finished cell's outputs, each OOD score that was left out recomputed. Folders written
    before OOD scores were stored get the ``"confidence"`` score (the largest class probability),
    the only one they used."""
    outputs = Outputs({}, {}, {})
    with np.load(folder / PREDICTIONS_NAME) as arrays:
        implied = _IMPLIED_OOD in arrays.files
        for key in arrays.files:
            if key == _IMPLIED_OOD:
                continue
            kind, name, *variant = key.split("/")
            if kind == "labels":
                outputs.labels[name] = arrays[key]
            else:
                getattr(outputs, kind).setdefault(name, {})[variant[0]] = arrays[key]
    for name, variants in outputs.probs.items():
        for variant, probs in variants.items():
            if variant not in outputs.ood.get(name, {}):
                if not implied and ood_score != "confidence":
                    raise ValueError(
                        f"{folder / PREDICTIONS_NAME} holds no OOD scores (written by an older "
                        f"nlpcal) and the recipe asks for ood_score {ood_score!r}: rerun the "
                        "cell (--no-resume)"
                    )
                outputs.ood.setdefault(name, {})[variant] = probs.max(axis=1)
    return outputs


def read_result(folder: Path) -> dict[str, Any]:
    """A finished cell's result; results written before the metric vocabulary called the
    15-bin ECE ``ece_15``."""
    result = json.loads((folder / RESULT_NAME).read_text())
    for variants in result["metrics"].values():
        for values in variants.values():
            if "ece_15" in values:
                values["ece"] = values.pop("ece_15")
    return result


def _program() -> str:
    """The command's name: ``nlpcal`` also when run as ``python -m nlpcal``."""
    path = Path(sys.argv[0])
    return "nlpcal" if path.name == "__main__.py" and path.parent.name == "nlpcal" else path.name


def environment(devices: Sequence[str] = ()) -> dict[str, Any]:
    """Where and how the results were produced: command, versions, platform, devices."""
    import datasets
    import transformers

    import nlpcal

    return {
        "command": shlex.join([_program(), *sys.argv[1:]]),
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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
