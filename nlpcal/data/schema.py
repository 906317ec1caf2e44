"""The one schema every nlpcal dataset follows: ``text``, optional ``text_pair``, optional ``label``.

``label`` is a :class:`datasets.ClassLabel`. Its names come from the data: a file's labels, a Hub
dataset's own ``ClassLabel``, or an explicit list. The built-in tasks fix them instead, so that
datasets of the same task (SST-2 and the IMDb sentences, SNLI and MNLI) share label ids and can be
evaluated by the same model. A set loaded without labels (for out-of-distribution detection only)
has no ``label`` column at all, never a placeholder value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum

from datasets import ClassLabel, Features, Value

__all__ = ["LABEL_NAMES", "Task", "schema_features", "task_features"]

_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


class Task(str, Enum):
    """The classification tasks nlpcal ships loaders for."""

    SENTIMENT = "sentiment"
    NLI = "nli"
    TOPIC = "topic"


LABEL_NAMES: dict[Task, tuple[str, ...]] = {
    Task.SENTIMENT: ("negative", "positive"),
    Task.NLI: ("entailment", "neutral", "contradiction"),
    Task.TOPIC: ("World", "Sports", "Business", "Sci/Tech"),
}


def schema_features(label_names: Sequence[str] | None, *, text_pair: bool = False) -> Features:
    """The :class:`datasets.Features` of a dataset with these label names.

    Args:
        label_names: the class names, in id order; ``None`` for a set without labels, which then
            has no ``label`` column.
        text_pair: whether there is a second text (an NLI hypothesis; ``text`` is the premise).

    Raises:
        ValueError: the label names are empty, not strings, or repeated.

    >>> schema_features(["joy", "anger"], text_pair=True)["label"].names
    ['joy', 'anger']
    >>> list(schema_features(None))
    ['text']
    """
    columns = {"text": Value("string")}
    if text_pair:
        columns["text_pair"] = Value("string")
    if label_names is not None:
        columns["label"] = ClassLabel(names=check_label_names(label_names))
    return Features(columns)


def task_features(task: Task | str) -> Features:
    """The :class:`datasets.Features` of a dataset of ``task``.

    NLI datasets have a ``text_pair`` column (the hypothesis; ``text`` is the premise); the other
    tasks have ``text`` and ``label`` only.

    >>> task_features("sentiment")["label"].names
    ['negative', 'positive']
    """
    task = Task(task)
    return schema_features(LABEL_NAMES[task], text_pair=task is Task.NLI)


def check_label_names(names: Sequence[str]) -> list[str]:
    """``names`` as a list, refusing an empty list, non-strings, empty strings and repeats."""
    names = list(names)
    if not names:
        raise ValueError("the label set is empty; expected at least one label name")
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(f"label names must be non-empty strings, got {bad} in {names}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"label names must be unique, got {repeated} more than once in {names}")
    return names


def is_integer_label(key: str) -> bool:
    """Whether a raw label, as a string, is an integer written plainly (``"2"``, ``"-1"``)."""
    return _INTEGER.fullmatch(key) is not None


def label_lookup(names: Sequence[str]) -> dict[str, int]:
    """Raw label strings that denote each class: its name and, unless a name is itself an
    integer (``"1"``, ``"2"``), its integer id."""
    lookup = {name: index for index, name in enumerate(names)}
    if not any(is_integer_label(name) for name in names):
        lookup.update({str(index): index for index in range(len(names))})
    return lookup
