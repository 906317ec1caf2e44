"""Read classification data from local files or the Hugging Face Hub into the nlpcal schema.

Every loader returns a :class:`datasets.Dataset` with a ``text`` column, a ``text_pair`` column for
NLI (``text`` is the premise, ``text_pair`` the hypothesis) and a ``label``
:class:`datasets.ClassLabel` whose names depend only on the task (see :mod:`nlpcal.data.schema`).
Malformed rows are never dropped: they raise a ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import datasets

from nlpcal.data.registry import DatasetSpec, get_dataset_spec
from nlpcal.data.schema import Task, label_lookup, task_features

__all__ = ["FileFormat", "load_dataset_by_name", "load_local"]

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


def load_local(
    path: str | os.PathLike[str],
    task: Task | str,
    format: FileFormat | str | None = None,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
    header: bool | None = None,
) -> datasets.Dataset:
    """Load a labelled text file into the nlpcal schema.

    Lines are split on ``"\\n"`` only (a trailing ``"\\r"`` is removed), never on other Unicode
    line breaks: the IMDb sentence file has U+0085 (NEL) inside sentences. Texts are kept
    verbatim, including surrounding spaces.

    Args:
        path: the file to read, UTF-8 encoded (a byte-order mark is ignored).
        task: decides the label names; a label may be written as a class name (``"neutral"``,
            ``"Sci/Tech"``) or as its integer id (``"1"``).
        format: ``"tsv"``, ``"csv"`` or ``"jsonl"``; inferred from the suffix when ``None``
            (``.tsv`` and ``.txt`` are TSV, ``.json`` is JSON lines).
        text_column: column holding the text (the premise for NLI). By default the first of
            ``text``, ``sentence``, ``premise``, ``content``, ``review`` that the file has.
        text_pair_column: column holding the hypothesis; NLI only. By default ``text_pair`` or
            ``hypothesis``.
        label_column: column holding the label.
        header: whether the first TSV/CSV line names the columns. ``None`` means "yes if it
            contains ``label_column``". A headerless file has the fields ``text, label``, or
            ``text, text_pair, label`` for NLI.

    Returns:
        A dataset with the features of :func:`~nlpcal.data.schema.task_features`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, cannot be decoded, lacks a column, or has a malformed
            row (wrong field count, empty text, unknown label); the message gives ``file:line``.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.tsv"
    >>> _ = path.write_text("sentence\\tlabel\\ngreat film\\t1\\ndull\\t0\\n")
    >>> ds = load_local(path, "sentiment")
    >>> ds[0], ds.features["label"].names
    ({'text': 'great film', 'label': 1}, ['negative', 'positive'])
    """
    task = Task(task)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    file_format = _infer_format(path) if format is None else FileFormat(format)
    content = _read_text(path)
    if file_format is FileFormat.JSONL:
        records = _jsonl_records(path, content)
    else:
        records = _table_records(path, content, file_format, task, label_column, header)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{path} has a header but no data rows")
    sources = (*_resolve_columns(path, first[1], task, text_column, text_pair_column), label_column)
    targets = ("text", "text_pair", "label") if task is Task.NLI else ("text", "label")
    data: dict[str, list[Any]] = {target: [] for target in targets}
    labels = label_lookup(task)
    for line, record in _chain(*first, records):
        for target, source in zip(targets, sources, strict=True):
            if source not in record:
                raise ValueError(f"{path}:{line}: missing column {source!r}")
            value = record[source]
            if target == "label":
                value = _parse_label(path, line, value, labels, task)
            elif not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path}:{line}: empty or non-string {source!r}: {value!r}")
            data[target].append(value)
    return datasets.Dataset.from_dict(data, features=task_features(task))


def load_dataset_by_name(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> datasets.Dataset:
    """Load a registered dataset (see :func:`~nlpcal.data.registry.list_datasets`) in the nlpcal schema.

    With ``data_dir``, read the local file of ``split`` from a folder laid out like the shared
    benchmark data (``text/sst2/train.tsv``, ...). Without it, download from the Hugging Face Hub
    with :func:`datasets.load_dataset`; Hub examples without a gold label (label ``-1``, e.g. in
    SNLI) are removed and their number is logged as a warning.

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
    if _offline_requested() and not datasets.config.HF_HUB_OFFLINE:
        # `datasets` reads the offline variables once, at import; honour a later setting here
        # rather than let it retry the network.
        raise _hub_unreachable(spec, split, "offline mode is on")
    try:
        dataset = datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.hub_splits[split])
    except ConnectionError as error:
        raise _hub_unreachable(spec, split, str(error)) from error
    return _to_schema(dataset, spec, split)


def _hub_unreachable(spec: DatasetSpec, split: str, reason: str) -> ConnectionError:
    return ConnectionError(
        f"cannot download {spec.hub_id!r} from the Hugging Face Hub ({reason}). Load local files "
        f"instead: load_dataset_by_name({spec.name!r}, {split!r}, data_dir=...) or load_local()"
    )


def _offline_requested() -> bool:
    value = os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))
    return value.upper() in datasets.config.ENV_VARS_TRUE_VALUES


def _to_schema(dataset: datasets.Dataset, spec: DatasetSpec, split: str) -> datasets.Dataset:
    missing = sorted(set(spec.hub_columns) - set(dataset.column_names))
    if missing:
        raise ValueError(
            f"{spec.hub_id} ({split}) lacks the columns {missing}; it has {dataset.column_names}"
        )
    dataset = dataset.select_columns(list(spec.hub_columns)).rename_columns(dict(spec.hub_columns))
    features = task_features(spec.task)
    hub_label = dataset.features["label"]
    expected = features["label"].num_classes
    if isinstance(hub_label, datasets.ClassLabel) and hub_label.num_classes != expected:
        raise ValueError(
            f"{spec.hub_id} ({split}) has {hub_label.num_classes} classes {hub_label.names}, "
            f"expected {expected} for task {spec.task.value!r}"
        )
    total = dataset.num_rows
    dataset = dataset.filter(
        lambda labels: [label >= 0 for label in labels], input_columns="label", batched=True
    )
    if dataset.num_rows < total:
        logger.warning(
            "%s (%s): removed %d of %d examples without a gold label (label -1)",
            spec.hub_id,
            split,
            total - dataset.num_rows,
            total,
        )
    return dataset.cast(features)


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
    task: Task,
    label_column: str,
    header: bool | None,
) -> Iterator[tuple[int, dict[str, str]]]:
    rows = _tsv_rows(content) if file_format is FileFormat.TSV else _csv_rows(content)
    first_line, first = next(rows)
    if header is None:
        header = label_column in first
    if header:
        names = first
        if len(set(names)) != len(names):
            raise ValueError(f"{path}:{first_line}: duplicate column names in header {names}")
    else:
        names = ["text", "text_pair", "label"] if task is Task.NLI else ["text", "label"]
        rows = _chain(first_line, first, rows)
    for line, fields in rows:
        if len(fields) != len(names):
            raise ValueError(
                f"{path}:{line}: expected {len(names)} {file_format.value.upper()} fields "
                f"({', '.join(names)}), got {len(fields)}"
            )
        yield line, dict(zip(names, fields, strict=True))


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
    path: Path,
    record: dict[str, Any],
    task: Task,
    text_column: str | None,
    text_pair_column: str | None,
) -> tuple[str, ...]:
    if task is not Task.NLI and text_pair_column is not None:
        raise ValueError(
            f"text_pair_column={text_pair_column!r} is only used for NLI, not task {task.value!r}"
        )
    roles = {"text": (text_column, _TEXT_COLUMNS)}
    if task is Task.NLI:
        roles["text_pair"] = (text_pair_column, _PAIR_COLUMNS)
    columns = []
    for role, (given, candidates) in roles.items():
        column = given or _first_present(record, candidates)
        if column not in record:
            wanted = repr(given) if given else f"none of {', '.join(candidates)}"
            raise ValueError(
                f"{path}: no {role} column ({wanted}); the columns are {list(record)}. "
                f"Pass {role}_column=..."
            )
        columns.append(column)
    return tuple(columns)


def _first_present(record: dict[str, Any], candidates: Sequence[str]) -> str | None:
    return next((name for name in candidates if name in record), None)


def _parse_label(path: Path, line: int, value: Any, labels: dict[str, int], task: Task) -> int:
    key = value if isinstance(value, str) else json.dumps(value)
    if key not in labels:
        raise ValueError(
            f"{path}:{line}: unknown label {value!r} for task {task.value!r}; expected one of "
            f"{', '.join(repr(name) for name in labels)}"
        )
    return labels[key]


def _chain(line: int, first: Any, rest: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    yield line, first
    yield from rest
