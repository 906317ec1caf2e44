"""Data for calibration under shift: loaders, a dataset registry, bundled samples, corruptions.

Every loader returns a :class:`datasets.Dataset` with ``text``, ``text_pair`` (NLI only) and a
``label`` :class:`datasets.ClassLabel` whose names depend only on the task.

>>> from nlpcal.data import corrupt_dataset, load_sample
>>> clean = load_sample("sst2", "test")
>>> shifted = corrupt_dataset(clean, "keyboard", severity=3, seed=0)
>>> shifted.num_rows == clean.num_rows, shifted["label"] == clean["label"]
(True, True)
"""

from nlpcal.data.bundled import (
    SentimentShiftSample,
    list_samples,
    load_sample,
    sentiment_shift_sample,
)
from nlpcal.data.loaders import FileFormat, load_dataset_by_name, load_local
from nlpcal.data.registry import DatasetSpec, get_dataset_spec, list_datasets, register_dataset
from nlpcal.data.schema import LABEL_NAMES, Task, task_features
from nlpcal.data.shift import (
    SEVERITIES,
    Corruption,
    CorruptionFn,
    corrupt_dataset,
    corrupt_text,
    get_corruption,
    list_corruptions,
)
from nlpcal.data.sources import load_source

__all__ = [
    "LABEL_NAMES",
    "SEVERITIES",
    "Corruption",
    "CorruptionFn",
    "DatasetSpec",
    "FileFormat",
    "SentimentShiftSample",
    "Task",
    "corrupt_dataset",
    "corrupt_text",
    "get_corruption",
    "get_dataset_spec",
    "list_corruptions",
    "list_datasets",
    "list_samples",
    "load_dataset_by_name",
    "load_local",
    "load_sample",
    "load_source",
    "register_dataset",
    "sentiment_shift_sample",
    "task_features",
]
