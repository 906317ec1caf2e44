"""Regenerate the samples bundled in ``nlpcal/data/samples`` from the shared benchmark data.

Run from the project root::

    python scripts/make_samples.py --source ../shared/data

The output is a deterministic function of the source files (checked against their SHA-256) and
:data:`SEED`: SST-2 and AG News rows are chosen per label by the smallest
``sha256(f"{SEED}:{line}")``, which does not depend on the Python or NumPy version, and kept in
file order; the AG News rows are written as a CSV with class names as labels (the example of "your
own CSV"); the other files are copied byte for byte. The README, with counts and checksums, is
written too.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SAMPLES_DIR", "SEED", "SOURCES", "main", "make_samples"]

logger = logging.getLogger(__name__)

SEED = 0
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "nlpcal" / "data" / "samples"

SOURCES: dict[str, str] = {
    "text/sst2/train.tsv": "920e317b2c52e12cd22db1da2c6708312bd7dc4f3712b9bbf1b50ee6c2c792ba",
    "text/sst2/dev.tsv": "92353770071a2a889f75d000a38a9e541ea8f0a5499e50f040b17917a5cbf66f",
    "text/sst2/test.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "text/sst2/LICENSE.repo-alps": (
        "e05c2e791b7aba247aeae3e9d38e474e53fc686a1407576ccfe8bc60d6b65315"
    ),
    "text/agnews/dev.tsv": "7a0811e0006080bf4de17752c5466450ff3db778be71bc5bcf3c4e99b5f0803d",
    "text/sentiment_sentences/imdb_labelled.txt": (
        "aef2e49e3da25714d61175e3a6e68eeef74a20a2f914318dc3be9947ea86512d"
    ),
    "text/sentiment_sentences/yelp_labelled.txt": (
        "891088b9c7235e23fe2814285972f2df823fdc9ff37bf1e1904c7e8ae1001fbb"
    ),
    "text/sentiment_sentences/amazon_cells_labelled.txt": (
        "47003fc0a0d4840b00e96e715b6189bad09e7443a3da41c4cbe12ffc79f86ae3"
    ),
    "text/agnews/test.tsv": "e4217edd939f618f24a42b0988c56ec3cddf656d8dc279b9afa443dd1ab6a1c1",
}


@dataclass(frozen=True)
class _Sample:
    target: str
    source: str
    rows: int | None = None  # None: copy the whole file
    header: bool = False


_SAMPLES = (
    _Sample("sst2/train.tsv", "text/sst2/train.tsv", rows=2000, header=True),
    _Sample("sst2/dev.tsv", "text/sst2/dev.tsv", rows=500, header=True),
    _Sample("sst2/test.tsv", "text/sst2/test.tsv", header=True),
    _Sample("imdb.txt", "text/sentiment_sentences/imdb_labelled.txt"),
    _Sample("yelp.txt", "text/sentiment_sentences/yelp_labelled.txt"),
    _Sample("amazon.txt", "text/sentiment_sentences/amazon_cells_labelled.txt"),
)
_LICENSE = ("sst2/LICENSE.repo-alps", "text/sst2/LICENSE.repo-alps")
# The example of "your own CSV": AG News rows as `text,label` with the class names as labels,
# training rows from its dev split, test rows from its test split.
_EXAMPLES = (
    _Sample("examples/news_topics.csv", "text/agnews/test.tsv", rows=400),
    _Sample("examples/news_topics_train.csv", "text/agnews/dev.tsv", rows=800),
)


def make_samples(source: str | Path, out: str | Path = SAMPLES_DIR) -> list[Path]:
    """Write the bundled samples and their README into ``out``; returns the files written.

    Args:
        source: the shared data folder (the one holding ``text/sst2/train.tsv``).
        out: destination folder, by default the package's ``samples`` folder.

    Raises:
        FileNotFoundError: a source file is missing.
        ValueError: a source file's SHA-256 differs from :data:`SOURCES`.

    >>> make_samples("../shared/data", "/tmp/nlpcal_samples")  # doctest: +SKIP
    """
    source, out = Path(source), Path(out)
    raw = {name: _read_checked(source / name, digest) for name, digest in SOURCES.items()}
    outputs = {
        sample.target: _take(raw[sample.source], sample) if sample.rows else raw[sample.source]
        for sample in _SAMPLES
    }
    outputs[_LICENSE[0]] = raw[_LICENSE[1]]
    for example in _EXAMPLES:
        outputs[example.target] = _example_csv(raw[example.source], example)
    outputs["README.md"] = _readme(outputs, raw).encode("utf-8")
    written = []
    for target, content in outputs.items():
        path = out / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    logger.info(
        "wrote %d files (%d bytes) to %s", len(written), sum(map(len, outputs.values())), out
    )
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``python scripts/make_samples.py --source DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="destination folder")
    args = parser.parse_args(argv)
    make_samples(args.source, args.out)


def _read_checked(path: Path, digest: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"source file not found: {path}")
    content = path.read_bytes()
    actual = hashlib.sha256(content).hexdigest()
    if actual != digest:
        raise ValueError(
            f"{path} has SHA-256 {actual}, expected {digest}; the samples are defined for that "
            "exact file"
        )
    return content


def _rows(content: bytes, header: bool) -> tuple[bytes, list[bytes]]:
    """Split a file into its header (or b"") and its data lines, on b"\\n" only."""
    lines = content.removesuffix(b"\n").split(b"\n")
    return (lines[0] + b"\n", lines[1:]) if header else (b"", lines)


def _take(content: bytes, sample: _Sample) -> bytes:
    """A stratified sample of ``sample.rows`` lines, labels in proportion, in file order."""
    header, lines = _rows(content, sample.header)
    return header + b"".join(lines[index] + b"\n" for index in _choose(lines, sample.rows))


def _example_csv(content: bytes, sample: _Sample) -> bytes:
    """A stratified sample of a headerless ``text<TAB>label`` file as a ``text,label`` CSV."""
    lines = _rows(content, sample.header)[1]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    for index in _choose(lines, sample.rows):
        writer.writerow(lines[index].decode("utf-8").rsplit("\t", 1))
    return buffer.getvalue().encode("utf-8")


def _choose(lines: list[bytes], rows: int) -> list[int]:
    """Indices of a stratified sample of ``rows`` TSV lines, labels in proportion, sorted."""
    by_label: dict[bytes, list[int]] = {}
    for index, line in enumerate(lines):
        by_label.setdefault(line.rsplit(b"\t", 1)[1], []).append(index)
    chosen: list[int] = []
    for label, quota in _quotas(by_label, rows).items():
        chosen += sorted(by_label[label], key=_key)[:quota]
    return sorted(chosen)


def _quotas(by_label: dict[bytes, list[int]], rows: int) -> dict[bytes, int]:
    """Largest-remainder apportionment of ``rows`` over the labels, ties to the smaller label."""
    total = sum(map(len, by_label.values()))
    exact = {label: rows * len(indices) / total for label, indices in sorted(by_label.items())}
    quotas = {label: int(share) for label, share in exact.items()}
    by_remainder = sorted(exact, key=lambda label: quotas[label] - exact[label])
    for label in by_remainder[: rows - sum(quotas.values())]:
        quotas[label] += 1
    return quotas


def _key(index: int) -> bytes:
    return hashlib.sha256(f"{SEED}:{index}".encode()).digest()


def _readme(outputs: dict[str, bytes], raw: dict[str, bytes]) -> str:
    table = []
    for sample in _SAMPLES:
        content = outputs[sample.target]
        lines = _rows(content, sample.header)[1]
        labels = [line.rsplit(b"\t", 1)[1] for line in lines]
        taken = f"{sample.rows:,} of" if sample.rows else "all"
        source_rows = len(_rows(raw[sample.source], sample.header)[1])
        table.append(
            f"| `{sample.target}` | {len(lines):,} | {labels.count(b'0'):,} / "
            f"{labels.count(b'1'):,} | {taken} {source_rows:,} rows of `{sample.source}` | "
            f"{len(content):,} | `{hashlib.sha256(content).hexdigest()}` |"
        )
    example_rows = []
    for sample in _EXAMPLES:
        example = outputs[sample.target]
        rows = list(csv.reader(io.StringIO(example.decode("utf-8"), newline="")))[1:]
        counts = Counter(r[1] for r in rows)
        source_rows = len(_rows(raw[sample.source], sample.header)[1])
        example_rows.append(
            f"| `{sample.target}` | {len(rows):,} | "
            f"{', '.join(f'{label} {n:,}' for label, n in sorted(counts.items()))} | "
            f"{sample.rows:,} of {source_rows:,} rows of `{sample.source}` | {len(example):,} | "
            f"`{hashlib.sha256(example).hexdigest()}` |"
        )
    sources = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in SOURCES.items())
    data_bytes = sum(map(len, outputs.values()))
    return _README.format(
        table="\n".join(table),
        example="\n".join(example_rows),
        sources=sources,
        seed=SEED,
        data_bytes=f"{data_bytes:,}",
    )


_README = """\
# Bundled samples

Small real datasets shipped inside nlpcal, so that the README demo and the tests run without
downloads. **Generated by `python scripts/make_samples.py --source ../shared/data`; do not
edit by hand**: a test checks that the script reproduces every file here byte for byte.

Load them with `nlpcal.data.load_sample(name, split)`, or all at once with
`nlpcal.data.sentiment_shift_sample()`: train on `sst2` train, fit post-hoc calibration on `sst2`
dev, test in-domain on `sst2` test and out-of-domain on `imdb`, `yelp` and `amazon`.

| file | rows | negative / positive | taken | bytes | SHA-256 |
|---|---|---|---|---|---|
{table}

The data files and the licence notice total {data_bytes} bytes. Labels: 0 negative, 1 positive.
The SST-2 files have a `sentence<TAB>label` header; the sentence files have none. `imdb.txt`
contains U+0085 (NEL) inside two sentences: split its lines on `\\n` only.

## An example of your own data

`examples/news_topics_train.csv` and `examples/news_topics.csv` are files of the kind a user
brings: CSVs with a `text,label` header and class names as labels (training rows and test rows).
`nlpcal.data.load_local` reads them without a task, and infers the label set from them (the
sorted names `Business`, `Sci/Tech`, `Sports`, `World`); `recipes/news_topics_csv.yaml` runs
the whole benchmark on them:

```python
from nlpcal.data import example_path, load_local

news = load_local(example_path("news_topics.csv"))
```

| file | rows | rows per label | taken | bytes | SHA-256 |
|---|---|---|---|---|---|
{example}

## How the files were made

- `sst2/train.tsv`, `sst2/dev.tsv`: stratified random samples. Each label gets a share of the rows
  proportional to its frequency in the source (largest remainder); within a label, the rows with
  the smallest `sha256(f"{{seed}}:{{i}}")` are taken, where `i` is the 0-based data row index
  (header excluded) and the seed is **{seed}**. Rows keep their source order and bytes.
  SST-2 train is phrase-level (the GLUE training set holds labelled phrases of the training
  sentences besides the sentences), so the train sample is mostly sentence fragments: the median
  row of the full train file has 7 words, of the test file 19. No filtering towards full sentences
  was done.
- `sst2/test.tsv`: the whole source file, which is the GLUE SST-2 validation set.
- `imdb.txt`, `yelp.txt`, `amazon.txt`: the UCI sentence files, renamed, contents unchanged.
- `sst2/LICENSE.repo-alps`: the licence of the repository the SST-2 and AG News files come from.
- `examples/news_topics.csv`, `examples/news_topics_train.csv`: stratified samples of the AG
  News test and dev files, taken like the SST-2 samples (seed **{seed}**), rows in source order. Each `text<TAB>label` line became one CSV row
  (RFC 4180 quoting, `\\n` line ends); the texts are unchanged, AG News's own artefacts included
  (stray backslashes, HTML remnants such as `#36;` for `$`).

## Sources

The shared benchmark data of the project (`../shared/data`), whose files are verbatim copies of
`data/SST-2/` and `data/agnews/` in forest-snow/alps @3c7ef2c9 and of `sentiment labelled
sentences/` in nthuandrew/DM2023-Lab1-Master @f4e4fcd1. The script refuses sources with other
checksums.

| source file | SHA-256 |
|---|---|
{sources}

## Licences and attribution

- **SST-2**: the Stanford Sentiment Treebank (Socher, Perelygin, Wu, Chuang, Manning, Ng and
  Potts, "Recursive Deep Models for Semantic Compositionality Over a Sentiment Treebank", EMNLP
  2013) in the binary sentence/phrase form distributed with GLUE (Wang et al., ICLR 2019). The
  files come from the forest-snow/alps repository, MIT licence; its notice is kept in
  `sst2/LICENSE.repo-alps`.
- **Sentiment Labelled Sentences** (`imdb.txt`, `yelp.txt`, `amazon.txt`): Dimitrios Kotzias,
  Misha Denil, Nando de Freitas and Padhraic Smyth, "From Group to Individual Labels using Deep
  Features", KDD 2015; UCI Machine Learning Repository, licensed under CC BY 4.0
  (https://creativecommons.org/licenses/by/4.0/). Changes: the files `imdb_labelled.txt`,
  `yelp_labelled.txt` and `amazon_cells_labelled.txt` were renamed; their contents are unchanged.
- **AG News** (`examples/news_topics*.csv`): Xiang Zhang, Junbo Zhao and Yann LeCun,
  "Character-level Convolutional Networks for Text Classification", NeurIPS 2015, built from
  Antonio Gulli's AG corpus of news articles
  (http://groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html), which is offered for research
  and other non-commercial use; nlpcal's Apache-2.0 licence does not extend to it. The AG News
  files come from the forest-snow/alps repository (MIT licence, notice in
  `sst2/LICENSE.repo-alps`). Changes: a sample of the rows, written as CSV (see above).
"""


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
