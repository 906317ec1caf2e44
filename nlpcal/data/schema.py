"""The one schema every nlpcal dataset follows: ``text``, optional ``text_pair``, ``label``.

``label`` is a :class:`datasets.ClassLabel` whose names depend only on the task, so datasets of the
same task (SST-2 and the IMDb sentences, SNLI and MNLI) share label ids and can be evaluated by
the same model.
"""

from __future__ import annotations

from enum import Enum

from datasets import ClassLabel, Features, Value

__all__ = ["LABEL_NAMES", "Task", "task_features"]


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


def task_features(task: Task | str) -> Features:
    """The :class:`datasets.Features` of a dataset of ``task``.

    NLI datasets have a ``text_pair`` column (the hypothesis; ``text`` is the premise); the other
    tasks have ``text`` and ``label`` only.

    >>> task_features("sentiment")["label"].names
    ['negative', 'positive']
    """
    task = Task(task)
    columns = {"text": Value("string")}
    if task is Task.NLI:
        columns["text_pair"] = Value("string")
    columns["label"] = ClassLabel(names=list(LABEL_NAMES[task]))
    return Features(columns)


def label_lookup(task: Task) -> dict[str, int]:
    """Raw label strings accepted in files of ``task``: class names and their integer ids."""
    names = LABEL_NAMES[task]
    lookup = {name: index for index, name in enumerate(names)}
    lookup.update({str(index): index for index in range(len(names))})
    return lookup
