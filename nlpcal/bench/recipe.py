"""The recipe schema, declared once: typed dataclasses whose fields are the recipe's keys.

A recipe (YAML) names a model, the data, the training arguments shared by every run, the methods
and the seeds::

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
        - {name: tweets, source: tweets.csv, labeled: false}   # OOD detection only
    slicing: {max_train_samples: 1000, max_eval_samples: 500, seed: 0}
    training: {num_train_epochs: 1, learning_rate: 5.0e-5, per_device_train_batch_size: 32}
    methods:
      - {name: cross_entropy, calibration_loss: cross_entropy, posthoc: [temperature, vector]}
      - {name: label_smoothing, calibration_loss: label_smoothing, loss_kwargs: {alpha: 0.1}}
    seeds: [0, 1]

A recipe may start with ``base: other.yaml`` (relative to the recipe file): it is read first and the
recipe's own keys are merged over it (mappings key by key, lists and values replaced). ``data_dir``
(for ``shared:`` sources) is relative to the working directory. The slicing seed fixes the data,
so every cell sees the same examples.

Each section is a frozen dataclass (:class:`Recipe`, :class:`Data`, :class:`DataSource`, ...);
its fields' type hints, defaults and ``metadata["help"]`` are the only description of the keys:
:meth:`~_Section.from_dict` checks a mapping against them, :meth:`~_Section.to_dict` writes it
back, and :func:`recipe_reference` renders them as the reference in ``docs/recipes.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

from nlpcal.args import CalibrationArguments, parse_config, posthoc_variants, read_config
from nlpcal.data import LABEL_NAMES, Corruption, Task, list_corruptions, load_source
from nlpcal.data.augmix import AugMix
from nlpcal.data.prepare import DEFAULT_MODEL
from nlpcal.functional.predictive import PredictiveOOD
from nlpcal.functional.robustness import AttackNorm
from nlpcal.losses import create_loss
from nlpcal.metrics.vocabulary import attack_metric
from nlpcal.posthoc import create_calibrator
from nlpcal.robustness.drift import EmbeddingDrift
from nlpcal.robustness.embedding import EmbeddingPerturbation

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "Calibration",
    "CorruptionSpec",
    "Data",
    "DataSource",
    "DriftFamily",
    "DriftSpec",
    "EvalSet",
    "Explain",
    "Method",
    "Recipe",
    "Robustness",
    "Slicing",
    "demo_recipe",
    "load_recipe",
    "recipe_keys",
    "recipe_reference",
    "single_cell",
    "some_methods",
]

NONE = "none"
DRIFT_SUFFIX = "_drift"  # the variant of a calibrator fitted drift-aware
SAVED_PREFIX = "saved_"  # the variant of a calibrator saved with a model taken as it is
_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
# Set per cell by the runner; a recipe's shared ``training`` section must not set them.
_PER_CELL = (
    "output_dir",
    "seed",
    "calibration_loss",
    "loss_kwargs",
    "posthoc",
    "posthoc_kwargs",
    "active_calibrator",
    "calibration_set",
    "in_domain_set",
    "ood_sets",
    "ood_score",
    "drift_variants",
    "drift_perturbation",
    "drift_perturbation_kwargs",
)
# Training defaults of a benchmark cell: no checkpoints (nothing needs them), no logging services.
_TRAINING_DEFAULTS = {"save_strategy": "no", "report_to": "none"}
_SOURCE_HELP = (
    "`sample:NAME[/SPLIT]` (bundled), `shared:NAME/SPLIT` (under `data_dir`), `hub:NAME/SPLIT` or "
    "`hub:OWNER/DATASET[:CONFIG]/SPLIT` (Hugging Face Hub), or a TSV, CSV or JSON-lines file; in "
    "code, a `datasets.Dataset`"
)


class _Section:
    """A section of a recipe: a frozen keyword-only dataclass whose fields are its keys.

    Subclasses name themselves in messages (``_what``) and may write only the keys that differ
    from their defaults (``_compact``); ``__post_init__`` checks what types cannot say.
    """

    _what: ClassVar[str]
    _compact: ClassVar[bool] = False

    @classmethod
    def from_dict(cls, config: Any, what: str = "") -> Any:
        """Check ``config`` (a mapping, as read from YAML) against the section's keys and types.

        ``what`` is the section's path in the recipe (``data.test``), used in messages. A key
        given as ``null`` takes its default.

        Raises:
            ValueError: naming the path, for an unknown or missing key or a value of another type.
        """
        label = what or cls._what
        if not isinstance(config, Mapping):
            raise ValueError(f"{label} must be a mapping, got {config!r}")
        keys = {f.name: f for f in fields(cls)}
        unknown = sorted(map(str, set(config) - set(keys)))
        if unknown:
            raise ValueError(f"{label}: unknown keys {unknown}; allowed: {', '.join(keys)}")
        missing = [k for k, f in keys.items() if _required(f) and config.get(k) is None]
        if missing:
            raise ValueError(f"{label} needs the keys {missing}")
        hints = typing.get_type_hints(cls)
        return cls(
            **{
                name: _convert(
                    hints[name], value, f"{what}.{name}" if what else name, keys[name].metadata
                )
                for name, value in config.items()
                if value is not None
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The section in its YAML layout (an in-code dataset named by its fingerprint)."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)
            if not (self._compact and getattr(self, f.name) == _default(f))
        }


@dataclass(frozen=True, kw_only=True)
class DataSource(_Section):
    """Where a split's data come from: a source string alone, or a mapping with the columns that
    hold the text, the second text and the label (found by their usual names when not given).

    >>> DataSource.from_dict({"source": "tickets.csv", "text_column": "body"}).to_dict()
    {'source': 'tickets.csv', 'text_column': 'body'}
    """

    _what: ClassVar[str] = "data source"
    _compact: ClassVar[bool] = True

    source: Any = field(metadata={"help": f"The data: {_SOURCE_HELP}.", "type": "string"})
    text_column: str | None = field(
        default=None,
        metadata={
            "help": "Column of the text (default: the first of text, sentence, premise, "
            "content, review)."
        },
    )
    text_pair_column: str | None = field(
        default=None,
        metadata={
            "help": "Column of the second text of a pair (default: text_pair or hypothesis, "
            "if present)."
        },
    )
    label_column: str = field(
        default="label", metadata={"help": "Column of the label (string names or integer ids)."}
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.source, str) or _is_dataset(self.source)):
            raise ValueError(f"source must be a string or a datasets.Dataset, got {self.source!r}")

    @classmethod
    def from_dict(cls, config: Any, what: str = "") -> Any:
        """A source string, a ``datasets.Dataset``, or a mapping of the section's keys."""
        if isinstance(config, str) or _is_dataset(config):
            config = {"source": config}
        return super().from_dict(config, what)

    def to_dict(self) -> Any:
        """The mapping of the keys that are not at their defaults; the source alone if only it."""
        config = super().to_dict()
        return config["source"] if list(config) == ["source"] else config

    def load(
        self,
        task: Task | None,
        data_dir: str | None,
        labels: Sequence[str] | None = None,
        what: str = "dataset",
        require_labels: bool = True,
    ) -> Dataset:
        """The data in nlpcal's schema, its labels re-encoded onto ``labels`` by name if given;
        data without a label column loads without labels if ``require_labels`` is ``False``."""
        from nlpcal.data import to_schema

        columns = {
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": self.label_column,
            "require_labels": require_labels,
        }
        if _is_dataset(self.source):
            if task is not None:
                labels = labels or list(LABEL_NAMES[task])
            return to_schema(self.source, labels=labels, name=what, **columns)
        if labels is not None:
            task = None
        return load_source(self.source, task, data_dir, labels=labels, **columns)


class DriftFamily(str, Enum):
    """How the perturbed copies of the calibration data are made: text corruptions (built by the
    runner from the raw text), or perturbations of the input embeddings (built by the trainer,
    :class:`~nlpcal.robustness.EmbeddingDrift`)."""

    CORRUPTION = "corruption"
    GAUSSIAN = EmbeddingPerturbation.GAUSSIAN.value
    GRADIENT = EmbeddingPerturbation.GRADIENT.value


@dataclass(frozen=True, kw_only=True)
class DriftSpec(_Section):
    """The perturbed copies of the calibration data that drift-aware post-hoc variants
    (`drift_posthoc`) are fitted on together with it, the clean data and each copy weighted
    equally (Tomani et al. 2021): one copy per severity of a text corruption, or one per level of
    an input-embedding perturbation whose strengths are searched on the calibration data so that
    its accuracy falls in equal steps towards chance. Never applied to an eval set."""

    _what: ClassVar[str] = "data.calibration.drift"
    _compact: ClassVar[bool] = True

    family: DriftFamily = field(
        default=DriftFamily.CORRUPTION,
        metadata={
            "help": "corruption: text corruptions at `severities`; gaussian: Gaussian noise on "
            "the input embeddings; gradient: signed-gradient (FGSM, or PGD with `steps`) "
            "perturbations of them against the clean prediction."
        },
    )
    corruption: Corruption = field(
        default=Corruption.MIXED,
        metadata={
            "help": "corruption family: a corruption from nlpcal.data.list_corruptions(), or "
            "mixed (one per example)."
        },
    )
    severities: tuple[int, ...] = field(
        default=(1, 2, 3, 4, 5),
        metadata={
            "help": "corruption family: one perturbed copy per severity (1 mild to 5 strong), "
            "strictly increasing.",
            "min": 1,
            "max": 5,
        },
    )
    levels: int = field(
        default=10,
        metadata={
            "help": "Embedding families: perturbed copies, at strengths searched on the "
            "calibration data.",
            "min": 1,
        },
    )
    accuracy_drop: float = field(
        default=0.9,
        metadata={
            "help": "Embedding families: how far the strongest level takes the calibration "
            "data's accuracy from its clean value towards chance (1/K, or the accuracy under "
            "the strongest perturbation tried if higher), in (0, 1]; the levels' target "
            "accuracies fall in equal steps in between."
        },
    )
    strengths: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "Embedding families: fixed relative strengths (noise scale or radius, times "
            "the embeddings' rms entry), strictly increasing, instead of the search (their "
            "number is the levels)."
        },
    )
    steps: int = field(
        default=1,
        metadata={"help": "gradient family: signed-gradient steps (1: FGSM).", "min": 1},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the random edits or the noise.", "min": 0}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", DriftFamily(self.family))
        object.__setattr__(self, "corruption", Corruption(self.corruption))
        own = self.family_keys(self.family)
        other = [
            f.name
            for f in fields(self)
            if f.name not in (*own, "family", "seed") and getattr(self, f.name) != _default(f)
        ]
        if other:
            raise ValueError(
                f"data.calibration.drift: {other} do not apply to family "
                f"{self.family.value!r}; its keys: {list(own)} and seed"
            )
        levels = list(self.severities)
        if not levels or any(b <= a for a, b in itertools.pairwise(levels)):
            raise ValueError(
                f"data.calibration.drift.severities must be a non-empty, strictly increasing list "
                f"of severities from 1 to 5, got {levels}"
            )
        if not self.is_text:
            try:
                EmbeddingDrift(self.family.value, **self.perturbation_kwargs())
            except ValueError as err:
                raise ValueError(f"data.calibration.drift.{err}") from None

    @staticmethod
    def family_keys(family: DriftFamily | str) -> tuple[str, ...]:
        """The keys that apply to ``family`` (besides ``family`` and ``seed``).

        >>> DriftSpec.family_keys("gradient")
        ('levels', 'accuracy_drop', 'strengths', 'steps')
        """
        family = DriftFamily(family)
        if family is DriftFamily.CORRUPTION:
            return ("corruption", "severities")
        return ("levels", "accuracy_drop", "strengths") + (
            ("steps",) if family is DriftFamily.GRADIENT else ()
        )

    def describe(self) -> str:
        """The copies in words, as the saved calibration record keeps them."""
        if not self.is_text:
            return f"{self.family.value} perturbations of the input embeddings, seed {self.seed}"
        severities = ", ".join(map(str, self.severities))
        return (
            f"{self.corruption.value} text corruptions at severities {severities}, seed {self.seed}"
        )

    @property
    def is_text(self) -> bool:
        """Whether the copies are text corruptions (built by the runner) rather than embedding
        perturbations (built by the trainer)."""
        return self.family is DriftFamily.CORRUPTION

    def perturbation_kwargs(self) -> dict[str, Any]:
        """The trainer's ``drift_perturbation_kwargs`` of an embedding family."""
        kwargs = {"levels": self.levels, "accuracy_drop": self.accuracy_drop, "seed": self.seed}
        if self.strengths is not None:
            kwargs["strengths"] = list(self.strengths)
        if self.family is DriftFamily.GRADIENT:
            kwargs["steps"] = self.steps
        return kwargs


@dataclass(frozen=True, kw_only=True)
class Calibration(DataSource):
    """The held-out data the post-hoc calibrators are fitted on: a source (as `data.train`), or
    a `holdout` of the training source."""

    _what: ClassVar[str] = "data.calibration"

    source: Any = field(
        default=None,
        metadata={"help": f"The data: {_SOURCE_HELP}. Give it or `holdout`.", "type": "string"},
    )
    holdout: int | float | None = field(
        default=None,
        metadata={
            "help": "Rows split off the training source instead of a source: a count, or a "
            "fraction in (0, 1)."
        },
    )
    drift: DriftSpec | None = field(
        default=None,
        metadata={
            "help": "Its perturbed copies for drift-aware fitting (see below; default when a "
            "method has `drift_posthoc`: mixed corruptions at severities 1-5)."
        },
    )

    def __post_init__(self) -> None:
        if self.holdout is None:
            if self.source is None:
                raise ValueError("data.calibration needs a source or a holdout")
            super().__post_init__()
            return
        if {k: v for k, v in self.to_dict().items() if k != "drift"} != {"holdout": self.holdout}:
            raise ValueError("data.calibration takes a source (with its columns) or a holdout")
        if self.holdout <= 0 or (isinstance(self.holdout, float) and self.holdout >= 1):
            raise ValueError(
                "data.calibration.holdout must be a count (an integer >= 1) or a fraction in "
                f"(0, 1), got {self.holdout!r}"
            )


@dataclass(frozen=True, kw_only=True)
class CorruptionSpec(_Section):
    """A synthetic corruption of the set's texts (:func:`~nlpcal.data.corrupt_dataset`)."""

    _what: ClassVar[str] = "corrupt"

    corruption: Corruption | str = field(
        default=Corruption.MIXED,
        metadata={
            "help": "A corruption from nlpcal.data.list_corruptions() (texts) or "
            "nlpcal.data.image_shift.list_image_corruptions() (images), or mixed (one per example)."
        },
    )
    severity: int = field(
        default=3, metadata={"help": "Strength, 1 (mild) to 5 (strong).", "min": 1, "max": 5}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random edits.", "min": 0})

    def __post_init__(self) -> None:
        from nlpcal.data.image_shift import list_image_corruptions

        if not isinstance(self.corruption, Corruption) and (
            self.corruption not in list_image_corruptions()
        ):
            raise ValueError(
                f"unknown corrupt.corruption {self.corruption!r}; available for texts: "
                f"{', '.join(list_corruptions())}, mixed; for images: "
                f"{', '.join(list_image_corruptions())}, mixed"
            )


@dataclass(frozen=True, kw_only=True)
class EvalSet(DataSource):
    """A named evaluation set: a data source, optionally corrupted, optionally in its own label
    space or unlabelled. Metrics of a set with a `label_map` are computed in the set's labels
    (probabilities of merged classes added); an unlabelled set is scored for OOD detection only.

    >>> EvalSet.from_dict({"name": "sst2_c3", "source": "sample:sst2/test",
    ...                    "corrupt": {"severity": 3}}).corrupt
    CorruptionSpec(corruption=<Corruption.MIXED: 'mixed'>, severity=3, seed=0)
    """

    _what: ClassVar[str] = "eval set"

    name: str = field(
        metadata={"help": "Name of the set in tables and files: lowercase letters, digits and '_'."}
    )
    corrupt: CorruptionSpec | None = field(
        default=None, metadata={"help": "A synthetic corruption of the texts (see below)."}
    )
    label_map: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "Model class -> the set's class, to score the set in its own (coarser) "
            "label space; an empty mapping matches the names only."
        },
    )
    labeled: bool = field(
        default=True,
        metadata={
            "help": "false: the set has no labels (a label column is ignored); only its OOD "
            "detection is scored. Not for data.test."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_name(self.name, "eval set")
        if self.label_map is not None and not self.labeled:
            raise ValueError(f"eval set {self.name!r}: an unlabelled set takes no label_map")


@dataclass(frozen=True, kw_only=True)
class Data(_Section):
    """The splits: training data, calibration data, the in-domain test set, the shifted sets."""

    _what: ClassVar[str] = "data"

    train: DataSource | None = field(
        default=None,
        metadata={
            "help": "The training data; its label names are the model's, unless `labels` or "
            "`task` name them. Required unless every method has `train: false`.",
            "type": "source or mapping",
        },
    )
    calibration: Calibration | None = field(
        default=None,
        metadata={
            "help": "The held-out data the post-hoc calibrators are fitted on; required when a "
            "method has one. Never one of the eval sets.",
            "type": "source or mapping",
        },
    )
    test: EvalSet = field(metadata={"help": "The in-domain test set (labelled)."})
    shifted: tuple[EvalSet, ...] = field(
        default=(),
        metadata={
            "help": "Shifted sets, each scored as the test set and for OOD detection against it."
        },
    )

    def __post_init__(self) -> None:
        if not self.test.labeled:
            raise ValueError("data.test, the in-domain test set, must be labelled")
        _check_unique([s.name for s in (self.test, *self.shifted)], "eval set")
        if self.calibration is not None and self.calibration.holdout is not None:
            if self.train is None:
                raise ValueError("data.calibration.holdout needs data.train to hold rows out of")
        elif self.calibration is not None:
            for spec in (self.test, *self.shifted):
                if spec.corrupt is None and _same_source(spec, self.calibration):
                    raise ValueError(
                        f"data.calibration is also the eval set {spec.name!r} "
                        f"({_source_label(spec.source)}): its calibrated metrics would be "
                        "measured on the calibrators' own fitting data"
                    )


@dataclass(frozen=True, kw_only=True)
class Explain(_Section):
    """Token heat maps in the report (:mod:`nlpcal.explain`): why each method is sure or unsure
    of the same few rows of every eval set, explained on each method's first seed."""

    _what: ClassVar[str] = "explain"

    examples: int = field(
        default=3,
        metadata={
            "help": "Rows of each eval set to explain: its first rows after slicing, the same "
            "for every method.",
            "min": 1,
        },
    )
    method: str = field(
        default="attention_gradient",
        metadata={"help": "An attribution method from nlpcal.explain.list_attributions()."},
    )
    method_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Its hyper-parameters (e.g. n_steps)."}
    )

    def __post_init__(self) -> None:
        from nlpcal.explain import create_attribution

        try:
            create_attribution(self.method, **self.method_kwargs)
        except TypeError as err:
            raise ValueError(
                f"explain.method_kwargs: bad arguments for {self.method!r}: {err}"
            ) from None
        except (KeyError, ValueError) as err:
            raise ValueError(f"explain: {err}") from None


@dataclass(frozen=True, kw_only=True)
class Slicing(_Section):
    """Random subsets of the data, drawn once with `seed`: every cell sees the same examples."""

    _what: ClassVar[str] = "slicing"

    max_train_samples: int | None = field(
        default=None, metadata={"help": "Most training rows (default: all).", "min": 1}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Most rows of the calibration data and of each eval set (default: all).",
            "min": 1,
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the subsets and of a holdout split.", "min": 0}
    )


@dataclass(frozen=True, kw_only=True)
class Robustness(_Section):
    """Accuracy under PGD on the input embeddings, a metric of every cell on each attacked eval
    set: `pgd_<norm>_accuracy@<budget>` per budget (:func:`~nlpcal.robustness.attack_accuracy`).
    The attack targets the model's own prediction (its argmax), so the metric is recorded under
    the uncalibrated variant `none` only; an eval set scored through a `label_map` is attacked
    when the map is one to one.

    >>> Robustness.from_dict({"norm": "linf", "budgets": [0, 0.01]}).metric_keys
    ('pgd_linf_accuracy@0', 'pgd_linf_accuracy@0.01')
    """

    _what: ClassVar[str] = "robustness"

    norm: AttackNorm = field(
        default=AttackNorm.L2,
        metadata={
            "help": "Norm of the budget: l2 (of the real tokens' embeddings, relative to their "
            "norm) or linf (of each entry, relative to their root-mean-square entry)."
        },
    )
    budgets: tuple[float, ...] = field(
        metadata={
            "help": "Relative budgets, strictly increasing, each >= 0; one metric per budget "
            "(0: the clean accuracy)."
        }
    )
    steps: int = field(
        default=10,
        metadata={"help": "PGD steps (each one forward and one backward pass).", "min": 1},
    )
    max_samples: int | None = field(
        default=None,
        metadata={
            "help": "Most rows of each attacked set, a random subset drawn with `slicing.seed` "
            "(default: all the set's rows).",
            "min": 1,
        },
    )
    sets: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "The eval sets attacked (default: every labelled set)."},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", AttackNorm(self.norm))
        budgets = [float(b) for b in self.budgets]
        if (
            not budgets
            or not all(b >= 0 for b in budgets)
            or any(b <= a for a, b in itertools.pairwise(budgets))
        ):
            raise ValueError(
                "robustness.budgets must be a non-empty, strictly increasing list of relative "
                f"budgets >= 0, got {list(self.budgets)}"
            )
        keys = [attack_metric(self.norm, b).key for b in budgets]
        _check_unique(keys, "robustness.budgets metric")
        object.__setattr__(self, "budgets", tuple(budgets))
        if self.sets is not None:
            if not self.sets:
                raise ValueError("robustness.sets must name at least one eval set, got []")
            _check_unique(list(self.sets), "robustness.sets")

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The metric of each budget, in the order of the budgets."""
        return tuple(attack_metric(self.norm, b).key for b in self.budgets)


@dataclass(frozen=True, kw_only=True)
class Method(_Section):
    """A calibration loss with its hyper-parameters and the post-hoc calibrators evaluated after
    it, as the trainer's `posthoc` and `posthoc_kwargs` (:func:`~nlpcal.args.posthoc_variants`).

    >>> Method.from_dict({"calibration_loss": "label_smoothing", "loss_kwargs": {"alpha": 0.1}})
    Method(name='label_smoothing', calibration_loss='label_smoothing', loss_kwargs={'alpha': 0.1}, posthoc=('temperature',), posthoc_kwargs={}, drift_posthoc=(), train=True, saved_posthoc=(), augmix=None)
    >>> Method.from_dict({"calibration_loss": "ova", "posthoc": ["auto", "t=temperature"]}).variants
    ('none', 'exponential', 't')
    """

    _what: ClassVar[str] = "method"

    name: str | None = field(
        default=None, metadata={"help": "Name in tables and files (default: the loss's name)."}
    )
    calibration_loss: str = field(metadata={"help": "Training loss, a name from `nlpcal list`."})
    loss_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "The loss's hyper-parameters."}
    )
    posthoc: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "Post-hoc calibrators: names from `nlpcal list`, `auto`, or VARIANT=NAME "
            "(one calibrator under several names); [] for none (default: the loss's own)."
        },
    )
    posthoc_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Constructor arguments: those of the calibrator when there is one; with "
            "several, variant name -> arguments."
        },
    )
    drift_posthoc: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Post-hoc calibrators fitted drift-aware, on the calibration data and its "
            "perturbed copies (`data.calibration.drift`); each is the variant `<name>_drift`."
        },
    )
    train: bool = field(
        default=True,
        metadata={
            "help": "false: take the recipe's model as it is (a classifier fine-tuned "
            "elsewhere, or the folder of an image model saved by nlpcal): no training, only "
            "post-hoc calibration and evaluation; `calibration_loss` then says how its outputs "
            "are read (cross_entropy: softmax)."
        },
    )
    saved_posthoc: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "With `train: false` and a model saved by nlpcal: its saved post-hoc "
            "variants to score as they are, without refitting; each is the variant "
            "`saved_<variant>`."
        },
    )

    augmix: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Image models: AugMix on the training images, drawn afresh for every batch "
            "(nlpcal.data.augmix.AugMix): its arguments (severity, width, depth, alpha, ops; "
            "the seed is the cell's unless given), `{}` for the paper's defaults."
        },
    )

    def __post_init__(self) -> None:
        loss_name = self.calibration_loss
        name = _check_name(self.name or loss_name, "method")
        if self.augmix is not None:
            if not self.train:
                raise ValueError(
                    f"method {name!r}: augmix augments the training images; it needs train: true"
                )
            try:
                AugMix(**self.augmix)
            except (TypeError, ValueError) as err:
                raise ValueError(f"method {name!r}: bad augmix arguments: {err}") from None
        try:
            loss = create_loss(loss_name, **self.loss_kwargs)
        except TypeError as err:
            raise ValueError(f"method {name!r}: bad loss_kwargs for {loss_name!r}: {err}") from None
        entries = (loss.default_calibrator,) if self.posthoc is None else self.posthoc
        try:
            drift = tuple(f"{c}{DRIFT_SUFFIX}={c}" for c in self.drift_posthoc)
            variants = posthoc_variants(
                (*entries, *drift), self.posthoc_kwargs, loss.default_calibrator
            )
            for variant, (calibrator, kwargs) in variants.items():
                try:
                    create_calibrator(calibrator, **kwargs)
                except TypeError as err:
                    raise ValueError(f"bad posthoc_kwargs for {variant!r}: {err}") from None
        except ValueError as err:
            raise ValueError(f"method {name!r}: {err}") from None
        drift_names = {f"{c}{DRIFT_SUFFIX}" for c in self.drift_posthoc}
        canonical = tuple(
            v if v == c else f"{v}={c}" for v, (c, _) in variants.items() if v not in drift_names
        )
        if self.saved_posthoc and self.train:
            raise ValueError(
                f"method {name!r}: saved_posthoc scores the calibrators saved with a model taken "
                "as it is; it needs train: false"
            )
        clash = sorted({f"{SAVED_PREFIX}{v}" for v in self.saved_posthoc} & set(variants))
        if clash:
            raise ValueError(
                f"method {name!r}: the post-hoc variants {clash} have the names of saved ones; "
                "rename them (VARIANT=NAME)"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "posthoc", canonical)

    @property
    def variants(self) -> tuple[str, ...]:
        """``"none"`` (uncalibrated), each post-hoc variant, each drift-aware one, then each
        saved one."""
        fitted = (entry.partition("=")[0] for entry in self.posthoc)
        saved = (f"{SAVED_PREFIX}{v}" for v in self.saved_posthoc)
        return (NONE, *fitted, *self.drift_variants, *saved)

    @property
    def drift_variants(self) -> tuple[str, ...]:
        """The names of the drift-aware variants: ``<calibrator>_drift``."""
        return tuple(f"{c}{DRIFT_SUFFIX}" for c in self.drift_posthoc)


@dataclass(frozen=True, kw_only=True)
class Recipe(_Section):
    """The model, the label set, the data, the training arguments shared by every run, the
    methods and the seeds. The label set is `labels`, else the built-in `task`'s, else the
    training data's; every other split is mapped onto it by name.

    Build it with :meth:`from_dict` or :func:`load_recipe`; it is validated when built.
    """

    _what: ClassVar[str] = "recipe"

    name: str = field(
        default="recipe", metadata={"help": "Name of the run (default: the recipe file's name)."}
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "A model folder or Hub id: a base encoder or a classifier."},
    )
    task: Task | None = field(
        default=None,
        metadata={
            "help": "A built-in task whose label names the data must have (default: the "
            "data's labels)."
        },
    )
    labels: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "The label names in id order (default: the training data's, in order of "
            "appearance)."
        },
    )
    max_length: int = field(default=128, metadata={"help": "Most tokens per example.", "min": 1})
    data_dir: str | None = field(
        default=None, metadata={"help": "The shared data folder, for `shared:` sources."}
    )
    data: Data = field(metadata={"help": "The splits (see below)."})
    slicing: Slicing = field(
        default=Slicing(), metadata={"help": "Random subsets of the data (see below)."}
    )
    training: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "TrainingArguments shared by every cell (no checkpoints and no logging "
            "services unless set); the runner sets the per-cell ones."
        },
    )
    methods: tuple[Method, ...] = field(metadata={"help": "The methods (see below)."})
    seeds: tuple[int, ...] = field(
        metadata={"help": "Training seeds; each method is trained once per seed.", "min": 0}
    )
    ood_score: PredictiveOOD = field(
        default=PredictiveOOD.CONFIDENCE,
        metadata={
            "help": "Score of the OOD detection: confidence (the top-label confidence), msp, "
            "entropy or energy."
        },
    )
    save_model: bool | None = field(
        default=None,
        metadata={
            "help": "Save each cell's calibrated model in cells/<method>/seed_<seed>/model "
            "(default: only `nlpcal train` and `nlpcal calibrate`)."
        },
    )
    label_map: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "For a model trained elsewhere (methods with `train: false`): model class "
            "-> data class, for the calibration data and every eval set without its own "
            "`label_map`; names match ignoring case without it."
        },
    )
    explain: Explain | None = field(
        default=None,
        metadata={"help": "Token heat maps of a few rows of each eval set in the report."},
    )
    robustness: Robustness | None = field(
        default=None,
        metadata={
            "help": "Also measure the accuracy under PGD on the input embeddings at given "
            "budgets, next to ECE (see below; default: not measured)."
        },
    )

    @classmethod
    def from_dict(cls, config: Any, name: str = "recipe") -> Recipe:
        """Validate a recipe mapping (as read from YAML, without ``base``); ``name`` is the
        recipe's name unless the mapping has one.

        Raises:
            ValueError: an unknown key, loss, calibrator or task, a missing section, no methods
                or seeds, duplicate names, or training arguments the runner sets per cell.
        """
        if isinstance(config, Mapping):
            config = {"name": name, **config}
        return super().from_dict(config)

    def __post_init__(self) -> None:
        _check_name(self.name, "recipe")
        if self.task is not None:
            object.__setattr__(self, "task", Task(self.task))
        object.__setattr__(self, "ood_score", PredictiveOOD(self.ood_score))
        if self.task is not None and self.labels is not None:
            raise ValueError("give the recipe a task or labels, not both")
        if self.labels is not None and len(self.labels) < 2:
            raise ValueError(f"labels must be a list of at least two names, got {self.labels!r}")
        if not self.methods:
            raise ValueError("the recipe needs at least one method under 'methods'")
        _check_unique([m.name for m in self.methods], "method")
        if not self.seeds:
            raise ValueError("seeds must be a non-empty list of non-negative integers, got []")
        _check_unique(self.seeds, "seed")
        trained = [m.name for m in self.methods if m.train]
        if trained and len(trained) < len(self.methods):
            raise ValueError(
                f"the methods {trained} train and the others have train: false; a recipe either "
                "trains its model or takes it as it is"
            )
        if trained and self.data.train is None:
            raise ValueError(f"the methods {trained} train: the recipe needs data.train")
        if trained and self.label_map is not None:
            raise ValueError(
                "label_map is for a model trained elsewhere (methods with train: false); a "
                "trained model takes the training data's labels"
            )
        calibrated = [m.name for m in self.methods if m.posthoc or m.drift_posthoc]
        if calibrated and self.data.calibration is None:
            raise ValueError(
                f"the methods {calibrated} have post-hoc calibrators: the recipe needs "
                "data.calibration (held-out data to fit them on)"
            )
        if self.robustness is not None:
            self._check_attacked_sets(self.robustness.sets or ())
        augmented = [m.name for m in self.methods if m.augmix is not None]
        if augmented and not self.model.startswith("timm:"):
            raise ValueError(
                f"the methods {augmented} set augmix, which augments images; {self.model} is a "
                "text model (image models are timm:NAME)"
            )
        if self.explain is not None and self.model.startswith("timm:"):
            raise ValueError(
                f"explain shows token heat maps of text models; {self.model} is an image model"
            )
        per_cell = sorted(set(self.training) & set(_PER_CELL))
        if per_cell:
            raise ValueError(f"training must not set {per_cell}: the runner sets them per cell")
        # Fails early on unknown or ill-typed training arguments.
        self.training_arguments(self.methods[0], self.seeds[0], "unused")

    def _check_attacked_sets(self, names: Sequence[str]) -> None:
        sets = {s.name: s for s in self.eval_sets}
        unknown = [n for n in names if n not in sets]
        if unknown:
            raise ValueError(
                f"robustness.sets names no eval set: {unknown}; eval sets: {list(sets)}"
            )
        unlabelled = [n for n in names if not sets[n].labeled]
        if unlabelled:
            raise ValueError(
                f"robustness.sets names unlabelled sets {unlabelled}: accuracy under attack "
                "needs labels"
            )

    @property
    def attacked_sets(self) -> tuple[str, ...]:
        """The eval sets whose accuracy under attack is measured (none without `robustness`)."""
        if self.robustness is None:
            return ()
        if self.robustness.sets is not None:
            return self.robustness.sets
        return tuple(s.name for s in self.eval_sets if s.labeled)

    @property
    def trains(self) -> bool:
        """Whether the recipe fine-tunes its model (else it takes it as it is)."""
        return self.methods[0].train

    @property
    def eval_sets(self) -> tuple[EvalSet, ...]:
        """The in-domain test set, then the shifted sets."""
        return (self.data.test, *self.data.shifted)

    def training_arguments(
        self, method: Method, seed: int, output_dir: str | os.PathLike[str]
    ) -> CalibrationArguments:
        """The ``CalibrationArguments`` of one cell: the shared training section plus the cell's
        loss, seed and post-hoc calibrators (the trainer fits them)."""
        config = {
            **_TRAINING_DEFAULTS,
            **self.training,
            "output_dir": str(output_dir),
            "seed": seed,
            "calibration_loss": method.calibration_loss,
            "loss_kwargs": method.loss_kwargs,
            "posthoc": [*method.posthoc, *(f"{c}{DRIFT_SUFFIX}={c}" for c in method.drift_posthoc)],
            "posthoc_kwargs": method.posthoc_kwargs,
            "drift_variants": list(method.drift_variants),
            **self._drift_perturbation(method),
            "in_domain_set": self.data.test.name,  # roles recorded with a saved model
            "ood_sets": [s.name for s in self.data.shifted],
            "ood_score": self.ood_score.value,
        }
        (args,) = parse_config(config, [CalibrationArguments])
        return args

    def _drift_perturbation(self, method: Method) -> dict[str, Any]:
        """The trainer's embedding perturbation for a method with drift-aware variants, when
        ``data.calibration.drift`` names an embedding family (none for text corruptions)."""
        drift = None if self.data.calibration is None else self.data.calibration.drift
        if not method.drift_posthoc or drift is None or drift.is_text:
            return {}
        return {
            "drift_perturbation": drift.family.value,
            "drift_perturbation_kwargs": drift.perturbation_kwargs(),
        }


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
        seeds=(recipe.seeds[0] if seed is None else _convert(int, seed, "seed", {"min": 0}),),
        save_model=recipe.save_model is not False,
    )


def some_methods(recipe: Recipe, names: Sequence[str]) -> Recipe:
    """The recipe reduced to the methods ``names``, in the recipe's order (``nlpcal bench
    --methods``: run or report part of a recipe; the rest can follow in the same folder).

    >>> [m.name for m in some_methods(demo_recipe(), ["label_smoothing"]).methods]
    ['label_smoothing']
    """
    unknown = [n for n in names if n not in {m.name for m in recipe.methods}]
    if unknown or not names:
        raise ValueError(
            f"recipe {recipe.name!r} has no methods {unknown}; it has "
            f"{[m.name for m in recipe.methods]}"
        )
    return replace(recipe, methods=tuple(m for m in recipe.methods if m.name in names))


def demo_recipe() -> Recipe:
    """The recipe ``nlpcal demo`` runs, shipped in the package (``nlpcal/recipes/demo.yaml``).

    >>> [m.name for m in demo_recipe().methods]
    ['cross_entropy', 'label_smoothing']
    """
    from importlib.resources import as_file, files

    with as_file(files("nlpcal") / "recipes" / "demo.yaml") as path:
        return load_recipe(path)


def read_recipe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recipe file as a mapping, its ``base`` merged in, not validated (a recipe whose
    sections are read one by one, as ``nlpcal evaluate --config`` reads its data)."""
    return _read_recipe(Path(path), ())


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


# -- the reference -------------------------------------------------------------------------------
def recipe_reference() -> str:
    """Every recipe key as markdown, one table per section, from the schema (``docs/recipes.md``).

    >>> "| `posthoc_kwargs` |" in recipe_reference()
    True
    """
    lines = [
        "# Recipe keys",
        "",
        "<!-- Generated from the schema in nlpcal/bench/recipe.py by "
        "nlpcal.bench.recipe_reference(); tests/test_bench.py rewrites it when stale. -->",
        "",
        "A recipe is a YAML file read by `nlpcal bench --recipe` and `nlpcal train --config`. It "
        "may start with `base: other.yaml` (relative to the recipe file): that recipe is read "
        "first and this one's keys are merged over it. A key given as `null` takes its default.",
    ]
    for section, paths in _sections():
        doc = " ".join((section.__doc__ or "").split("\n\n")[0].split())
        title = ", ".join(f"`{p}`" if p else "Top level" for p in paths)
        lines += ["", f"## {title}", "", re.sub(r":\w+:`~?([^`]+)`", r"`\1`", doc), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        hints = typing.get_type_hints(section)
        for f in fields(section):
            default = "required" if _required(f) else _show(_default(f))
            kind = f.metadata.get("type") or _type_name(hints[f.name])
            lines.append(f"| `{f.name}` | {kind} | {default} | {f.metadata['help']} |")
    return "\n".join(lines) + "\n"


def recipe_keys() -> str:
    """The recipe's keys, one line per section, as plain text (the commands' ``--help``)."""
    lines = ["recipe keys (docs/recipes.md describes each):"]
    for section, paths in _sections():
        where = ", ".join(p or "top level" for p in paths)
        lines.append(f"  {where}: {', '.join(f.name for f in fields(section))}")
    return "\n".join(lines)


def _sections() -> list[tuple[type[_Section], list[str]]]:
    """Each section class and the paths where it appears (``methods[]``: in a list; ``""``: the
    top level), top level first."""
    found: dict[type[_Section], list[str]] = {}

    def visit(section: type[_Section], path: str) -> None:
        found.setdefault(section, []).append(path)
        hints = typing.get_type_hints(section)
        for f in fields(section):
            parts = _parts(hints[f.name])
            inner = f"{path}.{f.name}" if path else f.name
            if any(typing.get_origin(p) is tuple for p in parts):
                inner += "[]"
            for part in parts:
                if isinstance(part, type) and issubclass(part, _Section):
                    visit(part, inner)

    visit(Recipe, "")
    return list(found.items())


def _parts(hint: Any) -> list[Any]:
    """``hint`` and, recursively, its arguments (``tuple[EvalSet, ...]``: tuple, EvalSet, ...)."""
    return [hint, *(p for arg in typing.get_args(hint) for p in _parts(arg))]


# -- types ---------------------------------------------------------------------------------------
def _convert(hint: Any, value: Any, what: str, meta: Mapping[str, Any]) -> Any:
    """``value`` checked against the type ``hint`` (and the key's ``meta``: ``min``, ``max``),
    converted: lists to tuples, mappings to sections, names to enum members."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _convert(option, value, what, meta)
            except ValueError:
                if len(options) == 1:
                    raise
        raise ValueError(f"{what} must be of type {_type_name(hint)}, got {value!r}")
    if isinstance(hint, type) and issubclass(hint, _Section):
        return value if isinstance(value, hint) else hint.from_dict(value, what)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{what} must be a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{what}[{i}]", meta) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{what} must be a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()} if args[1] is str else dict(value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(m.value for m in hint)
            raise ValueError(f"unknown {what} {value!r}; available: {choices}") from None
    if hint is int:
        low, high = meta.get("min"), meta.get("max")
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            bounds = (
                "" if low is None else f" >= {low}" if high is None else f" from {low} to {high}"
            )
            raise ValueError(f"{what} must be an integer{bounds}, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{what} must be a number, got {value!r}")
        return value
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is tuple:
        return f"list of {_type_name(args[0])}s"
    if origin is dict or (isinstance(hint, type) and issubclass(hint, _Section)):
        return "mapping"
    if isinstance(hint, type) and issubclass(hint, Enum):
        *first, last = [m.value for m in hint]
        return f"{', '.join(first)} or {last}"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(hint, "any")


def _required(key: Field) -> bool:
    return key.default is MISSING and key.default_factory is MISSING


def _default(key: Field) -> Any:
    return key.default_factory() if key.default_factory is not MISSING else key.default


def _plain(value: Any) -> Any:
    """``value`` as YAML/JSON holds it."""
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if _is_dataset(value):
        return f"<datasets.Dataset {value._fingerprint}>"
    return value


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, _Section):
        return "its defaults"
    plain = _plain(value)
    return f"`{plain}`" if isinstance(plain, str) else f"`{json.dumps(plain)}`"


def _is_dataset(value: Any) -> bool:
    from datasets import Dataset

    return isinstance(value, Dataset)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} name must be lowercase letters, digits and '_', got {name!r}")
    return name


def _check_unique(names: Sequence[Any], what: str) -> None:
    duplicates = sorted({str(n) for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate {what} names: {duplicates}")


def _same_source(a: DataSource, b: DataSource) -> bool:
    """Whether two sources name the same data (the same dataset object, or the same string)."""
    if _is_dataset(a.source) or _is_dataset(b.source):
        return a.source is b.source or (
            _is_dataset(a.source)
            and _is_dataset(b.source)
            and a.source._fingerprint == b.source._fingerprint
        )
    return a.source == b.source


def _source_label(source: Any) -> str:
    return f"an in-code dataset {source._fingerprint}" if _is_dataset(source) else str(source)
