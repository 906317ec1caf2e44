"""Where labels meet a model: match a model's classes to a dataset's by name.

A model's classes are the names of its ``config.id2label``, in id order; a dataset's are the names
of its ``label`` :class:`datasets.ClassLabel`. :class:`LabelMap` assigns every model class to one
class of the set (by name ignoring case, or by explicit renames, several model classes possibly to
the same set class) and maps predicted probabilities into the set's label space, so that metrics
are computed on the set's own labels. :func:`align_labels` covers the simpler case of one label
set written in another order, or with classes missing: it re-encodes a dataset's label ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from datasets import ClassLabel, Dataset

from nlpcal.data.schema import check_label_names

__all__ = ["LabelMap", "align_labels", "model_label_names"]

Probs = TypeVar("Probs")


class LabelMap:
    """How a model's classes map onto a dataset's classes.

    Every model class goes to exactly one set class, and every set class receives at least one
    model class: through ``renames`` where given, else to the set class of the same name,
    ignoring case. Several model classes going to one set class is a merge: :meth:`apply_probs`
    adds their probabilities. Anything else is refused rather than guessed.

    Args:
        model_labels: the model's class names in id order (:meth:`from_model` reads them).
        set_labels: the dataset's class names in id order.
        renames: model class name -> set class name, both matched ignoring case: a different
            spelling (``{"LABEL_0": "negative", "LABEL_1": "positive"}``) or a merge into a
            coarser label space (``{"neutral": "not_entailment", "contradiction":
            "not_entailment"}``).

    Raises:
        ValueError: a label list is empty or names a class twice (also ignoring case, which
            would make matching ambiguous); a rename names a label that does not exist; a model
            class is left without a set class; a set class receives no model class. Each
            message shows both label lists.

    >>> label_map = LabelMap(
    ...     ["entailment", "neutral", "contradiction"],
    ...     ["entailment", "not_entailment"],
    ...     renames={"neutral": "not_entailment", "contradiction": "not_entailment"},
    ... )
    >>> label_map.model_to_set
    (0, 1, 1)
    >>> label_map.apply_probs(np.array([[0.5, 0.3, 0.2]]))
    array([[0.5, 0.5]])
    >>> print(label_map.describe())
    metrics computed in the set's label space: entailment ← entailment; not_entailment ← neutral + contradiction
    """

    def __init__(
        self,
        model_labels: Sequence[str],
        set_labels: Sequence[str],
        renames: Mapping[str, str] | None = None,
    ) -> None:
        self.model_labels = tuple(model_labels)
        self.set_labels = tuple(set_labels)
        for what, names in (("model", self.model_labels), ("set", self.set_labels)):
            try:
                check_label_names(names)
            except ValueError as error:
                raise self._refuse(f"bad {what} labels: {error}") from None
            self._check_distinct(names, f"{what} labels")
        renames = dict(renames or {})
        self._check_distinct(renames, "renames")
        model_index = {name.casefold(): index for index, name in enumerate(self.model_labels)}
        set_index = {name.casefold(): index for index, name in enumerate(self.set_labels)}
        assigned: dict[int, int] = {}
        for source, target in renames.items():
            for name, index, what in ((source, model_index, "model"), (target, set_index, "set")):
                if name.casefold() not in index:
                    raise self._refuse(
                        f"the rename {source!r} -> {target!r} names {name!r}, which is not a "
                        f"{what} label"
                    )
            assigned[model_index[source.casefold()]] = set_index[target.casefold()]
        for index, name in enumerate(self.model_labels):
            if index not in assigned and name.casefold() in set_index:
                assigned[index] = set_index[name.casefold()]
        unmapped = [name for index, name in enumerate(self.model_labels) if index not in assigned]
        if unmapped:
            raise self._refuse(
                f"the model classes {unmapped} have no class in the set; map each with "
                "renames={model label: set label}"
            )
        empty = [
            name for index, name in enumerate(self.set_labels) if index not in assigned.values()
        ]
        if empty:
            raise self._refuse(
                f"the set classes {empty} receive no model class; the model cannot predict them"
            )
        self.model_to_set = tuple(assigned[index] for index in range(len(self.model_labels)))

    @classmethod
    def from_model(
        cls, model: Any, set_labels: Sequence[str], renames: Mapping[str, str] | None = None
    ) -> LabelMap:
        """The map from a model's (or its config's) ``id2label`` to ``set_labels``.

        >>> from transformers import BertConfig
        >>> config = BertConfig(id2label={0: "NEGATIVE", 1: "POSITIVE"})
        >>> LabelMap.from_model(config, ["positive", "negative"]).model_to_set
        (1, 0)
        """
        return cls(model_label_names(model), set_labels, renames)

    @property
    def is_identity(self) -> bool:
        """Whether model class ``i`` is set class ``i`` for every ``i`` (names may differ in case)."""
        return self.model_to_set == tuple(range(len(self.set_labels)))

    @property
    def matrix(self) -> np.ndarray:
        """The one-hot assignment matrix, shape ``(len(model_labels), len(set_labels))``."""
        matrix = np.zeros((len(self.model_labels), len(self.set_labels)))
        matrix[np.arange(len(self.model_labels)), self.model_to_set] = 1.0
        return matrix

    def apply_probs(self, probs: Probs) -> Probs:
        """Probabilities over the model's classes -> over the set's: merged classes are summed.

        Args:
            probs: a floating-point :class:`numpy.ndarray` or :class:`torch.Tensor` whose last
                dimension runs over the model's classes.

        Returns:
            The same type, dtype and device, the last dimension over the set's classes.

        Raises:
            ValueError: the last dimension is not the number of model classes, or the values
                are not floating point.
            TypeError: ``probs`` is neither a NumPy array nor a tensor.
        """
        if isinstance(probs, np.ndarray):
            self._check_probs(probs.shape, np.issubdtype(probs.dtype, np.floating))
            return probs @ self.matrix.astype(probs.dtype)
        import torch

        if not isinstance(probs, torch.Tensor):
            raise TypeError(f"probs must be a numpy array or a torch tensor, got {type(probs)}")
        self._check_probs(tuple(probs.shape), probs.is_floating_point())
        return probs @ torch.as_tensor(self.matrix, dtype=probs.dtype, device=probs.device)

    def describe(self) -> str:
        """One line for reports saying how the model's classes were counted.

        >>> print(LabelMap(["neg", "pos"], ["neg", "pos"]).describe())
        model and set share the labels: neg, pos
        """
        if self.is_identity and self.model_labels == self.set_labels:
            return f"model and set share the labels: {', '.join(self.set_labels)}"
        sources: list[list[str]] = [[] for _ in self.set_labels]
        for name, target in zip(self.model_labels, self.model_to_set, strict=True):
            sources[target].append(name)
        parts = [
            f"{name} ← {' + '.join(merged)}"
            for name, merged in zip(self.set_labels, sources, strict=True)
        ]
        return f"metrics computed in the set's label space: {'; '.join(parts)}"

    def __repr__(self) -> str:
        pairs = ", ".join(
            f"{name!r}: {self.set_labels[target]!r}"
            for name, target in zip(self.model_labels, self.model_to_set, strict=True)
        )
        return f"LabelMap({{{pairs}}})"

    def _check_probs(self, shape: tuple[int, ...], floating: bool) -> None:
        if not shape or shape[-1] != len(self.model_labels):
            raise ValueError(
                f"probs has shape {tuple(shape)}; expected a last dimension of "
                f"{len(self.model_labels)}, the model classes {list(self.model_labels)}"
            )
        if not floating:
            raise ValueError("probs must be floating point")

    def _check_distinct(self, names: Sequence[str] | Mapping[str, str], what: str) -> None:
        folded: dict[str, str] = {}
        for name in names:
            if name.casefold() in folded:
                raise self._refuse(
                    f"the {what} {folded[name.casefold()]!r} and {name!r} are equal ignoring "
                    "case, so matching by name is ambiguous"
                )
            folded[name.casefold()] = name

    def _refuse(self, problem: str) -> ValueError:
        return ValueError(
            f"cannot map the model's labels onto the set's: {problem}. Model labels: "
            f"{list(self.model_labels)}; set labels: {list(self.set_labels)}"
        )


def model_label_names(model: Any) -> list[str]:
    """A model's class names in id order, from its config's ``id2label``.

    Args:
        model: a model with a ``config``, or a config.

    Raises:
        ValueError: ``id2label`` is missing or its ids are not ``0 .. n-1``.

    >>> from transformers import BertConfig
    >>> model_label_names(BertConfig(num_labels=2))
    ['LABEL_0', 'LABEL_1']
    """
    config = getattr(model, "config", model)
    id2label = getattr(config, "id2label", None)
    if not id2label:
        raise ValueError(f"{type(model).__name__} has no id2label to read the class names from")
    by_id = {int(index): name for index, name in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"id2label ids must be 0 .. {len(by_id) - 1}, got {sorted(by_id)}")
    return [by_id[index] for index in range(len(by_id))]


def align_labels(
    dataset: Dataset, names: Sequence[str], *, label_column: str = "label", name: str = "dataset"
) -> Dataset:
    """Re-encode a dataset's label ids onto the label set ``names``, matching classes by name.

    Use it to give every split of an experiment the training split's ids (a test split may lack
    a class), or to put an evaluation set in a model's label order
    (``model_label_names(model)``) when both have the same names. Names must match exactly;
    use :class:`LabelMap` for different spellings or merged classes.

    Args:
        dataset: a dataset whose ``label_column`` is a :class:`datasets.ClassLabel`.
        names: the target label names, in id order.
        label_column: the column to re-encode.
        name: what to call the dataset in error messages.

    Returns:
        ``dataset`` itself when its label names already are ``names``, else a copy whose
        ``label_column`` is a ``ClassLabel`` with ``names``.

    Raises:
        ValueError: no such ClassLabel column, a label ``-1``, or a class that occurs in the
            dataset but is not in ``names``.

    >>> from datasets import ClassLabel, Dataset, Features, Value
    >>> features = Features({"text": Value("string"), "label": ClassLabel(names=["pos", "neg"])})
    >>> test = Dataset.from_dict({"text": ["fine", "bad"], "label": [0, 1]}, features=features)
    >>> aligned = align_labels(test, ["neg", "neutral", "pos"])
    >>> aligned["label"][:], aligned.features["label"].names
    ([2, 0], ['neg', 'neutral', 'pos'])
    """
    names = check_label_names(names)
    feature = dataset.features.get(label_column)
    if not isinstance(feature, ClassLabel):
        raise ValueError(
            f"{name}: expected a ClassLabel column {label_column!r} to align; the features are "
            f"{dataset.features}"
        )
    if feature.names == names:
        return dataset
    ids = np.asarray(dataset[label_column][:], dtype=np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} row {int(np.argmin(ids))}: label -1 in column {label_column!r}")
    index = {label: position for position, label in enumerate(names)}
    used = np.unique(ids)
    unknown = [feature.names[i] for i in used if feature.names[i] not in index]
    if unknown:
        raise ValueError(
            f"{name}: column {label_column!r} has labels not in the label set: {unknown}; the "
            f"label set is {names} (the dataset's labels are {feature.names})"
        )
    remap = np.array([index.get(label, -1) for label in feature.names], dtype=np.int64)
    features = dataset.features.copy()
    features[label_column] = ClassLabel(names=names)
    return dataset.map(
        lambda batch: {label_column: remap[np.asarray(batch, dtype=np.int64)]},
        input_columns=label_column,
        batched=True,
        features=features,
        desc="Aligning labels",
    )
