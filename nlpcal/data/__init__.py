"""Data for calibration under shift: loaders, a dataset registry, bundled samples, corruptions.

Every loader returns a :class:`datasets.Dataset` with ``text``, ``text_pair`` (sentence pairs
only) and a ``label`` :class:`datasets.ClassLabel` whose names come from the data, an explicit
list or a built-in task; sets loaded without labels have no ``label`` column. A model's classes
meet a dataset's through :class:`LabelMap`.

>>> from nlpcal.data import corrupt_dataset, load_sample
>>> clean = load_sample("sst2", "test")
>>> shifted = corrupt_dataset(clean, "keyboard", severity=3, seed=0)
>>> shifted.num_rows == clean.num_rows, shifted["label"] == clean["label"]
(True, True)
"""

from nlpcal.data.bundled import (
    SentimentShiftSample,
    example_path,
    list_samples,
    load_sample,
    sentiment_shift_sample,
)
from nlpcal.data.labels import LabelMap, align_labels, model_label_names
from nlpcal.data.loaders import FileFormat, load_dataset_by_name, load_hub, load_local, to_schema
from nlpcal.data.registry import DatasetSpec, get_dataset_spec, list_datasets, register_dataset
from nlpcal.data.schema import LABEL_NAMES, Task, schema_features, task_features
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
    "LabelMap",
    "SentimentShiftSample",
    "Task",
    "align_labels",
    "corrupt_dataset",
    "corrupt_text",
    "example_path",
    "get_corruption",
    "get_dataset_spec",
    "list_corruptions",
    "list_datasets",
    "list_samples",
    "load_dataset_by_name",
    "load_hub",
    "load_local",
    "load_sample",
    "load_source",
    "model_label_names",
    "register_dataset",
    "schema_features",
    "sentiment_shift_sample",
    "task_features",
    "to_schema",
]
