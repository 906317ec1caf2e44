"""Small real datasets shipped with nlpcal (``nlpcal/data/samples``), for demos and tests.

What they are, how they were sampled and their licences: ``nlpcal/data/samples/README.md``.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path
from typing import TypedDict

from datasets import Dataset

from nlpcal.data.loaders import load_local
from nlpcal.data.schema import Task

__all__ = [
    "SentimentShiftSample",
    "example_path",
    "list_samples",
    "load_sample",
    "sentiment_shift_sample",
]

# name -> split -> file under nlpcal/data/samples; every bundled sample is sentiment data.
_SAMPLES: dict[str, dict[str, str]] = {
    "sst2": {"train": "sst2/train.tsv", "dev": "sst2/dev.tsv", "test": "sst2/test.tsv"},
    "imdb": {"test": "imdb.txt"},
    "yelp": {"test": "yelp.txt"},
    "amazon": {"test": "amazon.txt"},
}
_OOD = ("imdb", "yelp", "amazon")
# Files under nlpcal/data/samples/examples that show the data a user brings, for load_local.
_EXAMPLES = ("news_topics.csv",)


class SentimentShiftSample(TypedDict):
    """In-domain SST-2 splits and out-of-domain test sets, as returned by
    :func:`sentiment_shift_sample`."""

    train: Dataset
    dev: Dataset
    test: Dataset
    ood: dict[str, Dataset]


def list_samples() -> dict[str, list[str]]:
    """The bundled samples and their splits.

    >>> list_samples()["sst2"]
    ['train', 'dev', 'test']
    """
    return {name: list(splits) for name, splits in _SAMPLES.items()}


def load_sample(name: str, split: str | None = None) -> Dataset:
    """Load a bundled sample in the nlpcal schema (sentiment: negative / positive).

    Args:
        name: ``"sst2"`` (2,000 train / 500 dev / 872 test rows) or one of the UCI sentence sets
            ``"imdb"``, ``"yelp"``, ``"amazon"`` (1,000 rows each).
        split: ``"train"``, ``"dev"`` or ``"test"`` for ``sst2``; the sentence sets have only
            ``"test"``, which is also what ``None`` selects for them.

    Raises:
        ValueError: unknown name or split, or no split given for ``sst2``.

    >>> ds = load_sample("imdb")
    >>> ds.num_rows, ds.features["label"].names
    (1000, ['negative', 'positive'])
    """
    if name not in _SAMPLES:
        raise ValueError(f"unknown sample {name!r}; available: {', '.join(_SAMPLES)}")
    splits = _SAMPLES[name]
    if split is None and len(splits) == 1:
        split = next(iter(splits))
    if split not in splits:
        raise ValueError(f"sample {name!r} has the splits {', '.join(splits)}; got split={split!r}")
    with as_file(files("nlpcal.data") / "samples" / splits[split]) as path:
        return load_local(path, Task.SENTIMENT)


def example_path(name: str = "news_topics.csv") -> Path:
    """The path of a bundled example file, to try the loaders on data like your own.

    ``news_topics.csv`` holds 400 AG News texts with a ``text,label`` header and the class names
    (``Business``, ``Sci/Tech``, ``Sports``, ``World``) as labels.

    Raises:
        ValueError: unknown name.

    >>> from nlpcal.data import load_local
    >>> news = load_local(example_path("news_topics.csv"))
    >>> news.num_rows, news.features["label"].names
    (400, ['Business', 'Sci/Tech', 'Sports', 'World'])
    """
    if name not in _EXAMPLES:
        raise ValueError(f"unknown example {name!r}; available: {', '.join(_EXAMPLES)}")
    return Path(str(files("nlpcal.data") / "samples" / "examples" / name))


def sentiment_shift_sample() -> SentimentShiftSample:
    """The demo's data: SST-2 in-domain splits and three out-of-domain sentence sets.

    Train on ``train``, fit post-hoc calibration on ``dev``, evaluate on ``test`` (in-domain)
    and on each of ``ood["imdb"]``, ``ood["yelp"]``, ``ood["amazon"]`` (out-of-domain).

    >>> data = sentiment_shift_sample()
    >>> data["train"].num_rows, sorted(data["ood"])
    (2000, ['amazon', 'imdb', 'yelp'])
    """
    return SentimentShiftSample(
        train=load_sample("sst2", "train"),
        dev=load_sample("sst2", "dev"),
        test=load_sample("sst2", "test"),
        ood={name: load_sample(name) for name in _OOD},
    )
