"""The benchmark runner: every method × seed of a recipe, in-domain and under shift, ensembles.

A recipe (:mod:`nlpcal.bench.recipe`, keys in ``docs/recipes.md``) names a model, the data, the
training arguments shared by every run, the methods and the seeds. For each method × seed (a
*cell*) :func:`run_bench` fine-tunes once; the trainer fits the method's post-hoc calibrators on
the calibration data; the cell stores the class probabilities and OOD scores of every variant
(uncalibrated, each calibrator) on every set (:mod:`nlpcal.bench.run`, :mod:`nlpcal.bench.store`).
For each method the probabilities of its seeds are then averaged into ensembles, and the tables,
reliability diagrams and reports are written (:mod:`nlpcal.bench.collect`,
:mod:`nlpcal.bench.report`). A recipe's ``robustness`` section adds the accuracy under PGD on
the input embeddings to every cell's metrics. An interrupted run resumes: finished cells are kept.

>>> recipe = demo_recipe()
>>> [m.name for m in recipe.methods], recipe.seeds
(['cross_entropy', 'label_smoothing'], (0, 1))
"""

from nlpcal.bench.collect import shift_metrics
from nlpcal.bench.recipe import (
    Calibration,
    CorruptionSpec,
    Data,
    DataSource,
    EvalSet,
    Method,
    Recipe,
    Robustness,
    Slicing,
    demo_recipe,
    load_recipe,
    recipe_keys,
    recipe_reference,
    single_cell,
)
from nlpcal.bench.run import run_bench, train_calibrated
from nlpcal.bench.store import environment

__all__ = [
    "Calibration",
    "CorruptionSpec",
    "Data",
    "DataSource",
    "EvalSet",
    "Method",
    "Recipe",
    "Robustness",
    "Slicing",
    "demo_recipe",
    "environment",
    "load_recipe",
    "recipe_keys",
    "recipe_reference",
    "run_bench",
    "shift_metrics",
    "single_cell",
    "train_calibrated",
]
