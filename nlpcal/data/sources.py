"""One string names any data nlpcal can load, for configs and the command line."""

from __future__ import annotations

import os
from collections.abc import Sequence

from datasets import Dataset

from nlpcal.data.bundled import load_sample
from nlpcal.data.images import IMAGE_PREFIX, load_image_source
from nlpcal.data.labels import align_labels
from nlpcal.data.loaders import load_dataset_by_name, load_hub, load_local
from nlpcal.data.registry import get_dataset_spec
from nlpcal.data.schema import LABEL_NAMES, Task

__all__ = ["load_source"]

_SCHEMES = ("sample:", "shared:", "hub:")


def load_source(
    source: str,
    task: Task | str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    require_labels: bool = True,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
) -> Dataset:
    """Load the data a source string names, in the nlpcal schema.

    Sources:

    * ``sample:NAME[/SPLIT]``: a sample bundled with nlpcal (:func:`~nlpcal.data.load_sample`).
    * ``shared:NAME/SPLIT``: a registered dataset read from ``data_dir``, laid out like the shared
      benchmark data (:func:`~nlpcal.data.load_dataset_by_name` with ``data_dir``).
    * ``hub:NAME/SPLIT``: a registered dataset downloaded from the Hugging Face Hub.
    * ``hub:OWNER/DATASET[:CONFIG]/SPLIT``: any Hub dataset (:func:`~nlpcal.data.load_hub`),
      e.g. ``hub:nyu-mll/glue:mnli/validation_matched``.
    * ``image:mnist/sample``, ``image:mnist/t10k``: images (:mod:`nlpcal.data.images`).
    * anything else: a path to a TSV, CSV or JSON-lines file (:func:`~nlpcal.data.load_local`).

    The registered sources have the label names of their task; with ``labels`` they are
    re-encoded onto that label set by name (:func:`~nlpcal.data.align_labels`). The column options
    apply to files and unregistered Hub datasets only.

    Args:
        source: the source string.
        task: a built-in task; a registered source must be of that task, a file or Hub dataset
            takes its label names. ``None`` accepts any data.
        data_dir: the shared data folder, for ``shared:`` sources.
        labels: the label names, in id order, e.g. the training split's; by default the data's.
        require_labels, text_column, text_pair_column, label_column: as for
            :func:`~nlpcal.data.load_local`.

    Raises:
        ValueError: a malformed source, ``shared:`` without ``data_dir``, a dataset of another
            task than ``task``, both ``task`` and ``labels``, or column options for a registered
            source.

    >>> load_source("sample:sst2/dev", "sentiment").num_rows
    500
    >>> load_source("sample:imdb", labels=["positive", "negative"])["label"][:3]
    [1, 1, 1]
    """
    task = None if task is None else Task(task)
    if task is not None and labels is not None:
        raise ValueError(f"source {source!r}: pass a task or labels, not both")
    columns = {
        "text_column": text_column,
        "text_pair_column": text_pair_column,
        "label_column": label_column,
    }
    if source.startswith(IMAGE_PREFIX):
        if task is not None:
            raise ValueError(f"source {source!r} holds images; it has no text task ({task.value})")
        return load_image_source(source, data_dir, labels)
    scheme = next((s for s in _SCHEMES if source.startswith(s)), None)
    if scheme is None:
        return load_local(source, task, labels=labels, require_labels=require_labels, **columns)
    body = source.removeprefix(scheme)
    if scheme == "hub:" and body.count("/") == 2:
        dataset_id, _, split = body.rpartition("/")
        dataset_id, _, config = dataset_id.partition(":")
        return load_hub(
            dataset_id,
            split,
            config=config or None,
            labels=list(LABEL_NAMES[task]) if task is not None else labels,
            require_labels=require_labels,
            **columns,
        )
    if columns != {"text_column": None, "text_pair_column": None, "label_column": "label"}:
        raise ValueError(f"source {source!r} is registered; its columns cannot be changed")
    dataset = _load_registered(source, scheme, body, task, data_dir)
    return dataset if labels is None else align_labels(dataset, labels, name=source)


def _load_registered(
    source: str,
    scheme: str,
    body: str,
    task: Task | None,
    data_dir: str | os.PathLike[str] | None,
) -> Dataset:
    name, _, split = body.partition("/")
    if scheme == "sample:":
        _check_task(source, Task.SENTIMENT, task)
        return load_sample(name, split or None)
    if not split:
        forms = "hub:NAME/SPLIT or hub:OWNER/DATASET[:CONFIG]/SPLIT" if scheme == "hub:" else ""
        raise ValueError(f"source {source!r} needs a split: {forms or scheme + 'NAME/SPLIT'}")
    _check_task(source, get_dataset_spec(name).task, task)
    if scheme == "hub:":
        return load_dataset_by_name(name, split)
    if data_dir is None:
        raise ValueError(
            f"source {source!r} reads local files: pass data_dir (the shared data folder)"
        )
    return load_dataset_by_name(name, split, data_dir=data_dir)


def _check_task(source: str, actual: Task, expected: Task | None) -> None:
    if expected is not None and actual is not expected:
        raise ValueError(
            f"source {source!r} is {actual.value} data, but the task is {expected.value!r}"
        )
