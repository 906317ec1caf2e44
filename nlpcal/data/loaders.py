"""Read classification data from local files, the Hugging Face Hub or memory into the nlpcal schema.

Every loader returns a :class:`datasets.Dataset` with a ``text`` column, a ``text_pair`` column for
sentence pairs (``text`` is the premise, ``text_pair`` the hypothesis) and a ``label``
:class:`datasets.ClassLabel` (see :mod:`nlpcal.data.schema`). The label names are a built-in
task's, an explicit ``labels`` list, or those found in the data. A set loaded with
``require_labels=False`` from data without a label column has no ``label`` column. Malformed rows
are never dropped: they raise a ``ValueError`` naming the file and line (or the dataset and row).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from nlpcal.data.labels import align_labels
from nlpcal.data.registry import DatasetSpec, get_dataset_spec
from nlpcal.data.schema import (
    LABEL_NAMES,
    Task,
    check_label_names,
    is_integer_label,
    label_lookup,
    schema_features,
)

__all__ = ["FileFormat", "load_dataset_by_name", "load_hub", "load_local", "to_schema"]

logger = logging.getLogger(__name__)


class FileFormat(str, Enum):
    """Local file formats :func:`load_local` reads.

    ``tsv`` is split on tabs with no quoting (SST-2, SNLI, AG News and the sentence sets are
    written that way), ``csv`` follows RFC 4180 quoting, ``jsonl`` is one JSON object per line.
    """

    TSV = "tsv"
    CSV = "csv"
    JSONL = "jsonl"


_SUFFIX_FORMATS = {
    ".tsv": FileFormat.TSV,
    ".txt": FileFormat.TSV,
    ".csv": FileFormat.CSV,
    ".jsonl": FileFormat.JSONL,
    ".json": FileFormat.JSONL,
}
# Column names tried, in order, when ``text_column`` / ``text_pair_column`` are not given.
_TEXT_COLUMNS = ("text", "sentence", "premise", "content", "review")
_PAIR_COLUMNS = ("text_pair", "hypothesis")
_STRING_DTYPES = ("string", "large_string")


def load_local(
    path: str | os.PathLike[str],
    task: Task | str | None = None,
    format: FileFormat | str | None = None,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    require_labels: bool = True,
    header: bool | None = None,
) -> datasets.Dataset:
    """Load a text-classification file into the nlpcal schema.

    Lines are split on ``"\\n"`` only (a trailing ``"\\r"`` is removed), never on other Unicode
    line breaks: the IMDb sentence file has U+0085 (NEL) inside sentences. Texts are kept
    verbatim, including surrounding spaces.

    The label names are, in this order of precedence:

    * ``task``'s names; a label may be written as a class name (``"neutral"``) or as its id.
    * ``labels``, e.g. the training split's names when loading its test split, so that both
      share ids even when the test file lacks a class. A label is written as a class name, or
      as its id when no name is itself an integer.
    * inferred from the file: the sorted distinct labels, or, when every label is an integer,
      ``"0"``, ``"1"``, ... up to the largest, so that an integer keeps its meaning as a class id.

    Args:
        path: the file to read, UTF-8 encoded (a byte-order mark is ignored).
        task: a built-in task, which fixes the label names and whether there is a text pair.
        format: ``"tsv"``, ``"csv"`` or ``"jsonl"``; inferred from the suffix when ``None``
            (``.tsv`` and ``.txt`` are TSV, ``.json`` is JSON lines).
        text_column: column holding the text (the premise for pairs). By default the first of
            ``text``, ``sentence``, ``premise``, ``content``, ``review`` that the file has.
        text_pair_column: column holding the second text. By default ``text_pair`` or
            ``hypothesis``, required for the NLI task, optional without a task (no such column
            means no ``text_pair``) and refused for the other tasks.
        label_column: column holding the label.
        labels: the label names, in id order, when there is no ``task``.
        require_labels: if ``False``, a file without ``label_column`` loads as a set without
            labels (for out-of-distribution detection), with no ``label`` column.
        header: whether the first TSV/CSV line names the columns. ``None`` means "yes if it
            contains ``label_column`` or a text column". A headerless file has the fields
            ``text, label``, or ``text, text_pair, label`` (NLI, or three fields without a task);
            without its label field when labels are not required.

    Returns:
        A dataset with the features of :func:`~nlpcal.data.schema.schema_features`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: both ``task`` and ``labels`` given; the file is empty, cannot be decoded,
            lacks a column, or has a malformed row (wrong field count, empty text or label, a
            label outside the label set); the message gives ``file:line``.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.csv"
    >>> _ = path.write_text("text,label\\nI am thrilled,joy\\nso unfair,anger\\n")
    >>> ds = load_local(path)
    >>> ds[0], ds.features["label"].names
    ({'text': 'I am thrilled', 'label': 1}, ['anger', 'joy'])
    >>> load_local(path, labels=["joy", "anger", "fear"])["label"][:]
    [0, 1]
    """
    task = None if task is None else Task(task)
    names = _label_names(task, labels)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    file_format = _infer_format(path) if format is None else FileFormat(format)
    content = _read_text(path)
    if file_format is FileFormat.JSONL:
        records = _jsonl_records(path, content)
    else:
        text_columns = (text_column,) if text_column else _TEXT_COLUMNS
        records = _table_records(
            path, content, file_format, task, (label_column, *text_columns), header
        )
    first = next(records, None)
    if first is None:
        raise ValueError(f"{path} has a header but no data rows")
    columns = _resolve_columns(
        str(path), list(first[1]), task, text_column, text_pair_column, label_column, require_labels
    )
    data: dict[str, list[Any]] = {target: [] for target in columns}
    lines = []
    for line, record in _chain(*first, records):
        for target, source in columns.items():
            if source not in record:
                raise ValueError(f"{path}:{line}: missing column {source!r}")
            value = record[source]
            if target != "label" and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{path}:{line}: empty or non-string {source!r}: {value!r}")
            data[target].append(value)
        lines.append(line)
    if "label" in columns:
        names, data["label"] = _encode_labels(
            data["label"], names, label_column, lambda row: f"{path}:{lines[row]}"
        )
    features = schema_features(
        names if "label" in columns else None, text_pair="text_pair" in columns
    )
    return datasets.Dataset.from_dict(data, features=features)


def to_schema(
    dataset: datasets.Dataset,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    require_labels: bool = True,
    name: str = "dataset",
) -> datasets.Dataset:
    """Bring a :class:`datasets.Dataset` with any column names into the nlpcal schema.

    Other columns are dropped. The label column may be a :class:`datasets.ClassLabel` (its names
    are kept, in its order, and matched by name onto ``labels``), strings, or integers (read
    like the labels of a file, see :func:`load_local`).

    Args:
        dataset: the data, e.g. built in code or returned by :func:`datasets.load_dataset`.
        text_column: column holding the text; by default the first of ``text``, ``sentence``,
            ``premise``, ``content``, ``review`` that the dataset has.
        text_pair_column: column holding the second text; by default ``text_pair`` or
            ``hypothesis`` if present, else there is no ``text_pair``.
        label_column: column holding the label.
        labels: the label names, in id order; by default the data's.
        require_labels: if ``False``, a dataset without ``label_column`` is returned without a
            ``label`` column (a set for out-of-distribution detection).
        name: what to call the dataset in error messages.

    Raises:
        ValueError: the dataset has no rows; a column is missing or holds the wrong type; a text
            is missing; a label is missing, negative, or not in ``labels``.

    >>> from datasets import Dataset
    >>> tickets = Dataset.from_dict({"body": ["refund please", "app crashes"], "team": ["billing", "tech"]})
    >>> ds = to_schema(tickets, text_column="body", label_column="team", labels=["tech", "billing"])
    >>> ds[:], ds.features["label"].names
    ({'text': ['refund please', 'app crashes'], 'label': [1, 0]}, ['tech', 'billing'])
    """
    if dataset.num_rows == 0:
        raise ValueError(f"{name} has no rows; expected a non-empty split")
    names = None if labels is None else check_label_names(labels)
    columns = _resolve_columns(
        name,
        dataset.column_names,
        None,
        text_column,
        text_pair_column,
        label_column,
        require_labels,
    )
    for target, source in columns.items():
        if target != "label":
            _check_texts(dataset, source, name)
    if "label" in columns:
        feature = dataset.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            names = feature.names if names is None else names
            dataset = align_labels(dataset, names, label_column=label_column, name=name)
        elif isinstance(feature, datasets.Value) and (
            feature.dtype in _STRING_DTYPES or feature.dtype.startswith(("int", "uint"))
        ):
            names, ids = _encode_labels(
                dataset.with_format(None)[label_column][:],
                names,
                label_column,
                lambda row: f"{name} row {row}",
            )
            dataset = dataset.remove_columns(label_column).add_column(label_column, ids)
        else:
            raise ValueError(
                f"{name}: label column {label_column!r} holds {feature}; expected a ClassLabel, "
                "strings or integers"
            )
    dataset = dataset.select_columns(list(columns.values()))
    dataset = dataset.rename_columns({s: t for t, s in columns.items() if s != t})
    features = schema_features(
        names if "label" in columns else None, text_pair="text_pair" in columns
    )
    return dataset.select_columns(list(features)).cast(features)


def load_hub(
    dataset_id: str,
    split: str,
    *,
    config: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    require_labels: bool = True,
) -> datasets.Dataset:
    """Download any Hugging Face Hub dataset with :func:`datasets.load_dataset` into the nlpcal schema.

    Examples whose label is ``-1`` (the Hub's "no gold label", as in SNLI) are removed and their
    number logged as a warning. A split where every label is ``-1`` (a GLUE test split) loads
    without a ``label`` column when ``require_labels=False``, and is refused otherwise.

    Args:
        dataset_id: the Hub id, e.g. ``"dair-ai/emotion"``.
        split: the Hub split, e.g. ``"test"`` or ``"train[:1000]"``.
        config: the Hub configuration, if the dataset has several.
        text_column, text_pair_column, label_column, labels, require_labels: as for
            :func:`to_schema`.

    Raises:
        ValueError: as :func:`to_schema`, or every label is ``-1`` and labels are required.
        ConnectionError: the Hub cannot be reached, or offline mode is on
            (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) and the dataset is not cached.

    >>> load_hub("dair-ai/emotion", "test", config="split").features["label"].names  # doctest: +SKIP
    ['sadness', 'joy', 'love', 'anger', 'fear', 'surprise']
    """
    name = f"{dataset_id} ({split})"
    hint = "load a local copy with load_local(), or pass a dataset in memory to to_schema()"
    dataset = _download(dataset_id, config, split, hint)
    if label_column in dataset.column_names:
        dataset = _drop_unlabelled(dataset, label_column, name, require_labels)
    return to_schema(
        dataset,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        labels=labels,
        require_labels=require_labels,
        name=name,
    )


def load_dataset_by_name(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> datasets.Dataset:
    """Load a registered dataset (see :func:`~nlpcal.data.registry.list_datasets`) in the nlpcal schema.

    With ``data_dir``, read the local file of ``split`` from a folder laid out like the shared
    benchmark data (``text/sst2/train.tsv``, ...). Without it, download from the Hugging Face Hub
    with :func:`datasets.load_dataset`; Hub examples without a gold label (label ``-1``, e.g. in
    SNLI) are removed and their number is logged as a warning. The label names are the task's
    (:func:`~nlpcal.data.schema.task_features`); the Hub's class ids are taken as the task's
    ids, so ``yelp_polarity``'s classes ``"1"`` and ``"2"`` become negative and positive.

    Args:
        name: a registered dataset name, e.g. ``"sst2"``, ``"imdb"``, ``"snli"``.
        split: a split of that dataset; local and Hub splits are listed in its
            :class:`~nlpcal.data.registry.DatasetSpec`.
        data_dir: root of a local copy; ``None`` means the Hub.

    Raises:
        ValueError: unknown name or split, or the dataset has no Hub copy.
        ConnectionError: the Hub cannot be reached, or offline mode is on
            (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) and the dataset is not cached; the
            message says how to load local files instead.

    >>> load_dataset_by_name("sst2", "test", data_dir="../shared/data").num_rows  # doctest: +SKIP
    872
    """
    spec = get_dataset_spec(name)
    if data_dir is not None:
        if split not in spec.local_files:
            raise ValueError(
                f"dataset {name!r} has no local split {split!r}; local splits: "
                f"{', '.join(spec.local_files) or 'none'}"
            )
        return load_local(Path(data_dir) / spec.local_files[split], spec.task)
    return _load_from_hub(spec, split)


def _load_from_hub(spec: DatasetSpec, split: str) -> datasets.Dataset:
    if spec.hub_id is None:
        raise ValueError(
            f"dataset {spec.name!r} has no Hub copy; pass data_dir= (a folder with "
            f"{', '.join(spec.local_files.values())}) or read the file with load_local()"
        )
    if split not in spec.hub_splits:
        raise ValueError(
            f"dataset {spec.name!r} has no Hub split {split!r}; Hub splits: "
            f"{', '.join(spec.hub_splits)}"
        )
    hint = f"load_dataset_by_name({spec.name!r}, {split!r}, data_dir=...) or load_local()"
    dataset = _download(spec.hub_id, spec.hub_config, spec.hub_splits[split], hint)
    name = f"{spec.hub_id} ({split})"
    missing = sorted(set(spec.hub_columns) - set(dataset.column_names))
    if missing:
        raise ValueError(f"{name} lacks the columns {missing}; it has {dataset.column_names}")
    dataset = dataset.select_columns(list(spec.hub_columns)).rename_columns(dict(spec.hub_columns))
    names = list(LABEL_NAMES[spec.task])
    hub_label = dataset.features["label"]
    if isinstance(hub_label, datasets.ClassLabel):
        if hub_label.num_classes != len(names):
            raise ValueError(
                f"{name} has {hub_label.num_classes} classes {hub_label.names}, "
                f"expected {len(names)} for task {spec.task.value!r}"
            )
        dataset = dataset.cast_column("label", datasets.ClassLabel(names=names))
    dataset = _drop_unlabelled(dataset, "label", name, require_labels=True)
    return to_schema(dataset, labels=names, name=name)


def _download(dataset_id: str, config: str | None, split: str, hint: str) -> datasets.Dataset:
    if _offline_requested() and not datasets.config.HF_HUB_OFFLINE:
        # `datasets` reads the offline variables once, at import; honour a later setting here
        # rather than let it retry the network.
        raise _hub_unreachable(dataset_id, "offline mode is on", hint)
    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except ConnectionError as error:
        raise _hub_unreachable(dataset_id, str(error), hint) from error


def _hub_unreachable(dataset_id: str, reason: str, hint: str) -> ConnectionError:
    return ConnectionError(
        f"cannot download {dataset_id!r} from the Hugging Face Hub ({reason}). Load local files "
        f"instead: {hint}"
    )


def _offline_requested() -> bool:
    value = os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))
    return value.upper() in datasets.config.ENV_VARS_TRUE_VALUES


def _drop_unlabelled(
    dataset: datasets.Dataset, column: str, name: str, require_labels: bool
) -> datasets.Dataset:
    """Remove the Hub's label ``-1`` rows, or the label column when every row has ``-1``."""
    feature = dataset.features[column]
    if not (
        isinstance(feature, datasets.ClassLabel)
        or (isinstance(feature, datasets.Value) and feature.dtype.startswith("int"))
    ):
        return dataset
    gold = np.asarray(dataset[column]) >= 0
    if gold.all():
        return dataset
    if not gold.any():
        if require_labels:
            raise ValueError(
                f"{name}: every label in column {column!r} is -1 (no gold label); pass "
                "require_labels=False to load it as a set without labels"
            )
        return dataset.remove_columns(column)
    logger.warning(
        "%s: removed %d of %d examples without a gold label (label -1)",
        name,
        gold.size - gold.sum(),
        gold.size,
    )
    return dataset.select(np.flatnonzero(gold))


def _label_names(task: Task | None, labels: Sequence[str] | None) -> list[str] | None:
    if task is not None and labels is not None:
        raise ValueError(
            f"pass a task or labels, not both: task {task.value!r} fixes the labels "
            f"{list(LABEL_NAMES[task])}"
        )
    if task is not None:
        return list(LABEL_NAMES[task])
    return None if labels is None else check_label_names(labels)


def _encode_labels(
    values: Sequence[Any],
    names: list[str] | None,
    column: str,
    where: Callable[[int], str],
) -> tuple[list[str], list[int]]:
    """Class ids of raw labels (strings or integers) and the label names, inferred if ``None``."""
    keys = []
    for row, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(
                f"{where(row)}: unknown label {value!r} in column {column!r}; labels are class "
                "names or integer ids"
            )
        if value == "":
            raise ValueError(f"{where(row)}: empty label in column {column!r}")
        keys.append(str(value))
    if names is None:
        names = _infer_names(keys, column, where)
    lookup = label_lookup(names)
    unknown: dict[str, int] = {}
    for row, key in enumerate(keys):
        if key not in lookup:
            unknown.setdefault(key, row)
    if unknown:
        first = next(iter(unknown.values()))
        also = f" (all unknown labels: {list(unknown)})" if len(unknown) > 1 else ""
        ids = f", or their ids 0-{len(names) - 1}" if len(lookup) > len(names) else ""
        raise ValueError(
            f"{where(first)}: unknown label {values[first]!r} in column {column!r}{also}; "
            f"the label set is {names}{ids}"
        )
    return names, [lookup[key] for key in keys]


def _infer_names(keys: list[str], column: str, where: Callable[[int], str]) -> list[str]:
    distinct = set(keys)
    if not all(is_integer_label(key) for key in distinct):
        return sorted(distinct)
    ids = [int(key) for key in keys]
    if min(ids) < 0:
        raise ValueError(
            f"{where(ids.index(min(ids)))}: negative label {min(ids)} in column {column!r}; "
            "integer labels are class ids 0, 1, ..."
        )
    return [str(index) for index in range(max(ids) + 1)]


def _check_texts(dataset: datasets.Dataset, column: str, name: str) -> None:
    feature = dataset.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in _STRING_DTYPES):
        raise ValueError(f"{name}: column {column!r} holds {feature}; expected strings")
    missing = np.flatnonzero(dataset.with_format("arrow")[column].is_null())
    if missing.size:
        raise ValueError(f"{name} row {missing[0]}: no text in column {column!r}")


def _infer_format(path: Path) -> FileFormat:
    try:
        return _SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot infer the format of {path} from its suffix {path.suffix!r}; pass "
            f"format= one of {', '.join(f.value for f in FileFormat)}"
        ) from None


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 ({error.reason})") from None
    if not content.strip():
        raise ValueError(f"{path} is empty")
    return content


def _lines(content: str) -> Iterator[tuple[int, str]]:
    """Numbered lines split on "\\n" only; the empty string after a final newline is not a line."""
    lines = content.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        yield number, line.removesuffix("\r")


def _jsonl_records(path: Path, content: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, raw in _lines(content):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line}: invalid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        yield line, record


def _table_records(
    path: Path,
    content: str,
    file_format: FileFormat,
    task: Task | None,
    header_names: Sequence[str],
    header: bool | None,
) -> Iterator[tuple[int, dict[str, str]]]:
    rows = _tsv_rows(content) if file_format is FileFormat.TSV else _csv_rows(content)
    first_line, first = next(rows)
    if header is None:
        header = any(name in first for name in header_names)
    if header:
        names = first
        if len(set(names)) != len(names):
            raise ValueError(f"{path}:{first_line}: duplicate column names in header {names}")
    else:
        names = _headerless_names(task, len(first))
        rows = _chain(first_line, first, rows)
    for line, fields in rows:
        if len(fields) != len(names):
            raise ValueError(
                f"{path}:{line}: expected {len(names)} {file_format.value.upper()} fields "
                f"({', '.join(names)}), got {len(fields)}"
            )
        yield line, dict(zip(names, fields, strict=True))


def _headerless_names(task: Task | None, fields: int) -> list[str]:
    """The columns of a headerless file whose first row has ``fields`` fields."""
    pair = fields == 3 if task is None else task is Task.NLI
    names = ["text", "text_pair", "label"] if pair else ["text", "label"]
    return names[:-1] if fields == len(names) - 1 else names


def _tsv_rows(content: str) -> Iterator[tuple[int, list[str]]]:
    for line, raw in _lines(content):
        yield line, raw.split("\t")


def _csv_rows(content: str) -> Iterator[tuple[int, list[str]]]:
    # io only breaks lines at \r and \n, unlike str.splitlines; quoted fields may span lines.
    reader = csv.reader(io.StringIO(content, newline=""))
    start = 1
    for fields in reader:
        yield start, fields
        start = reader.line_num + 1


def _resolve_columns(
    where: str,
    available: Sequence[str],
    task: Task | None,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str,
    require_labels: bool,
) -> dict[str, str]:
    """Schema column -> source column, checked against the ``available`` columns."""
    if task not in (None, Task.NLI) and text_pair_column is not None:
        raise ValueError(
            f"text_pair_column={text_pair_column!r} is only used for NLI, not task {task.value!r}"
        )
    roles = {"text": (text_column, _TEXT_COLUMNS, True)}
    if task in (None, Task.NLI):
        required = task is Task.NLI or text_pair_column is not None
        roles["text_pair"] = (text_pair_column, _PAIR_COLUMNS, required)
    columns = {}
    for role, (given, candidates, required) in roles.items():
        column = given or _first_present(available, candidates)
        if column in available:
            columns[role] = column
        elif required:
            wanted = repr(given) if given else f"none of {', '.join(candidates)}"
            raise ValueError(
                f"{where}: no {role} column ({wanted}); the columns are {list(available)}. "
                f"Pass {role}_column=..."
            )
    if label_column in available:
        columns["label"] = label_column
    elif require_labels:
        raise ValueError(
            f"{where}: no label column {label_column!r}; the columns are {list(available)}. Pass "
            "label_column=..., or require_labels=False to load a set without labels"
        )
    if len(set(columns.values())) < len(columns):
        raise ValueError(f"{where}: a column cannot play two roles: {columns}")
    return columns


def _first_present(available: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((name for name in candidates if name in available), None)


def _chain(line: int, first: Any, rest: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    yield line, first
    yield from rest
