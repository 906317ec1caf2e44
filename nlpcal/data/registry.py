"""Known datasets: where each lives on the Hugging Face Hub and in the shared local layout.

Two families of sentiment data are registered under different names, because they are different
datasets:

* ``imdb``, ``yelp``, ``amazon``: the UCI "Sentiment Labelled Sentences" (Kotzias et al., KDD
  2015), 1,000 single sentences per site, balanced 500/500. Local files only; these are the
  out-of-domain sets nlpcal uses with SST-2 and the ones bundled with the package.
* ``imdb_reviews``, ``yelp_polarity``, ``amazon_polarity``: the large review-level Hub datasets
  (Maas et al. 2011; Zhang et al. 2015). Hub only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from nlpcal.data.schema import Task

__all__ = ["DatasetSpec", "get_dataset_spec", "list_datasets", "register_dataset"]

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how its columns map onto the nlpcal schema.

    Attributes:
        name: registry key, lowercase snake_case.
        task: decides the label names.
        description: what the data is, and how its splits relate to the Hub's.
        local_files: split name -> file path relative to a data folder in the shared layout.
        hub_id: Hugging Face Hub dataset id, or ``None`` when there is no Hub copy.
        hub_config: Hub configuration name, if the dataset has several.
        hub_splits: split name -> Hub split name.
        hub_columns: Hub column -> nlpcal column (``text``, ``text_pair``, ``label``); other Hub
            columns are dropped.

    >>> get_dataset_spec("snli").local_files["test"]
    'text/snli/test.tsv'
    """

    name: str
    task: Task
    description: str
    local_files: Mapping[str, str] = field(default_factory=dict)
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: Mapping[str, str] = field(default_factory=dict)
    hub_columns: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"dataset name must be lowercase snake_case, got {self.name!r}")
        if not self.local_files and self.hub_id is None:
            raise ValueError(f"dataset {self.name!r} needs local_files or a hub_id")
        if self.hub_id is not None and not (self.hub_splits and self.hub_columns):
            raise ValueError(f"dataset {self.name!r} has a hub_id but no hub_splits/hub_columns")
        object.__setattr__(self, "task", Task(self.task))
        for name in ("local_files", "hub_splits", "hub_columns"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry under ``spec.name``; a name can be registered once.

    >>> register_dataset(get_dataset_spec("sst2"))
    Traceback (most recent call last):
    ...
    ValueError: dataset 'sst2' is already registered
    """
    if spec.name in _DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _DATASETS[spec.name] = spec
    return spec


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name``; unknown names list the available ones.

    >>> get_dataset_spec("sst2").hub_id
    'stanfordnlp/sst2'
    """
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(list_datasets())}"
        ) from None


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted.

    >>> list_datasets()[:3]
    ['ag_news', 'amazon', 'amazon_polarity']
    """
    return sorted(_DATASETS)


_SENTENCES = "text/sentiment_sentences"
_UCI = (
    "UCI Sentiment Labelled Sentences (Kotzias et al., KDD 2015; CC BY 4.0), {site} part: "
    "1,000 sentences, 500 negative / 500 positive, one 'test' split. Not the review-level "
    "{hub} dataset. No Hub copy is registered."
)
_TEXT_LABEL = {"text": "text", "label": "label"}
_NLI_COLUMNS = {"premise": "text", "hypothesis": "text_pair", "label": "label"}

_BUILTIN = (
    DatasetSpec(
        "sst2",
        Task.SENTIMENT,
        "SST-2 (Socher et al. 2013) as distributed in GLUE. Local: 'train' (60,614, phrase-level) "
        "and 'dev' (6,735) partition GLUE train; 'test' (872) is GLUE validation. Hub: 'train' "
        "is all of GLUE train (local train + dev), 'test' is GLUE validation; the GLUE test "
        "split is unlabelled and not offered.",
        local_files={
            "train": "text/sst2/train.tsv",
            "dev": "text/sst2/dev.tsv",
            "test": "text/sst2/test.tsv",
        },
        hub_id="stanfordnlp/sst2",
        hub_splits={"train": "train", "test": "validation"},
        hub_columns={"sentence": "text", "label": "label"},
    ),
    DatasetSpec(
        "imdb",
        Task.SENTIMENT,
        _UCI.format(site="IMDb", hub="imdb_reviews"),
        local_files={"test": f"{_SENTENCES}/imdb_labelled.txt"},
    ),
    DatasetSpec(
        "yelp",
        Task.SENTIMENT,
        _UCI.format(site="Yelp", hub="yelp_polarity"),
        local_files={"test": f"{_SENTENCES}/yelp_labelled.txt"},
    ),
    DatasetSpec(
        "amazon",
        Task.SENTIMENT,
        _UCI.format(site="Amazon (cell phones)", hub="amazon_polarity"),
        local_files={"test": f"{_SENTENCES}/amazon_cells_labelled.txt"},
    ),
    DatasetSpec(
        "imdb_reviews",
        Task.SENTIMENT,
        "Large Movie Review Dataset (Maas et al. 2011): 25,000 + 25,000 full IMDb reviews.",
        hub_id="stanfordnlp/imdb",
        hub_splits={"train": "train", "test": "test"},
        hub_columns=_TEXT_LABEL,
    ),
    DatasetSpec(
        "yelp_polarity",
        Task.SENTIMENT,
        "Yelp review polarity (Zhang et al. 2015): 560,000 / 38,000 full reviews; the Hub's "
        "classes '1' and '2' are negative and positive.",
        hub_id="fancyzhx/yelp_polarity",
        hub_splits={"train": "train", "test": "test"},
        hub_columns=_TEXT_LABEL,
    ),
    DatasetSpec(
        "amazon_polarity",
        Task.SENTIMENT,
        "Amazon review polarity (Zhang et al. 2015): 3.6M / 400,000 reviews; 'text' is the "
        "review body ('content'), the title is dropped.",
        hub_id="fancyzhx/amazon_polarity",
        hub_splits={"train": "train", "test": "test"},
        hub_columns={"content": "text", "label": "label"},
    ),
    DatasetSpec(
        "snli",
        Task.NLI,
        "SNLI (Bowman et al. 2015; CC BY-SA 4.0). Local 'validation' (9,842) and 'test' "
        "(9,824) are the Hub splits without their label -1 (no gold label) pairs.",
        local_files={"validation": "text/snli/validation.tsv", "test": "text/snli/test.tsv"},
        hub_id="stanfordnlp/snli",
        hub_splits={"train": "train", "validation": "validation", "test": "test"},
        hub_columns=_NLI_COLUMNS,
    ),
    DatasetSpec(
        "mnli",
        Task.NLI,
        "MultiNLI (Williams et al. 2018). Local 'validation_matched' (9,815) is the Hub split of "
        "the same name; its labels are written as strings.",
        local_files={"validation_matched": "text/mnli/dev_matched.jsonl"},
        hub_id="nyu-mll/multi_nli",
        hub_splits={
            "train": "train",
            "validation_matched": "validation_matched",
            "validation_mismatched": "validation_mismatched",
        },
        hub_columns=_NLI_COLUMNS,
    ),
    DatasetSpec(
        "ag_news",
        Task.TOPIC,
        "AG News (Zhang et al. 2015), four topics. Local 'test' (7,600) is the Hub test split; "
        "local 'dev' (10,001 rows in the shared copy) is a sample taken by the forest-snow/alps "
        "repository, with no Hub counterpart. Local files are headerless with class names as labels.",
        local_files={"dev": "text/agnews/dev.tsv", "test": "text/agnews/test.tsv"},
        hub_id="fancyzhx/ag_news",
        hub_splits={"train": "train", "test": "test"},
        hub_columns=_TEXT_LABEL,
    ),
)
for _spec in _BUILTIN:
    register_dataset(_spec)
