"""One string names any data nlpcal can load, for configs and the command line."""

from __future__ import annotations

import os

from datasets import Dataset

from nlpcal.data.bundled import load_sample
from nlpcal.data.loaders import load_dataset_by_name, load_local
from nlpcal.data.registry import get_dataset_spec
from nlpcal.data.schema import Task

__all__ = ["load_source"]

_SCHEMES = ("sample:", "shared:", "hub:")


def load_source(
    source: str, task: Task | str, data_dir: str | os.PathLike[str] | None = None
) -> Dataset:
    """Load the data a source string names, in the nlpcal schema of ``task``.

    Sources:

    * ``sample:NAME[/SPLIT]``: a sample bundled with nlpcal (:func:`~nlpcal.data.load_sample`).
    * ``shared:NAME/SPLIT``: a registered dataset read from ``data_dir``, laid out like the shared
      benchmark data (:func:`~nlpcal.data.load_dataset_by_name` with ``data_dir``).
    * ``hub:NAME/SPLIT``: a registered dataset downloaded from the Hugging Face Hub.
    * anything else: a path to a TSV, CSV or JSON-lines file (:func:`~nlpcal.data.load_local`).

    Raises:
        ValueError: a malformed source, ``shared:`` without ``data_dir``, or a dataset of
            another task than ``task``.

    >>> load_source("sample:sst2/dev", "sentiment").num_rows
    500
    """
    task = Task(task)
    scheme = next((s for s in _SCHEMES if source.startswith(s)), None)
    if scheme is None:
        return load_local(source, task)
    name, _, split = source.removeprefix(scheme).partition("/")
    if scheme == "sample:":
        _check_task(source, Task.SENTIMENT, task)
        return load_sample(name, split or None)
    if not split:
        raise ValueError(f"source {source!r} needs a split: {scheme}NAME/SPLIT")
    _check_task(source, get_dataset_spec(name).task, task)
    if scheme == "hub:":
        return load_dataset_by_name(name, split)
    if data_dir is None:
        raise ValueError(
            f"source {source!r} reads local files: pass data_dir (the shared data folder)"
        )
    return load_dataset_by_name(name, split, data_dir=data_dir)


def _check_task(source: str, actual: Task, expected: Task) -> None:
    if actual is not expected:
        raise ValueError(
            f"source {source!r} is {actual.value} data, but the task is {expected.value!r}"
        )
