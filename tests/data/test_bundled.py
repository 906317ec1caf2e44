"""The samples bundled with the package and the script that makes them."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from nlpcal.data import (
    example_path,
    list_samples,
    load_dataset_by_name,
    load_local,
    load_sample,
    sentiment_shift_sample,
)


def _import_script(name):
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


make_samples_script = _import_script("make_samples")
SAMPLES_DIR, SOURCES = make_samples_script.SAMPLES_DIR, make_samples_script.SOURCES
main, make_samples = make_samples_script.main, make_samples_script.make_samples
README = SAMPLES_DIR / "README.md"
# | `sst2/train.tsv` | 2,000 | 884 / 1,116 | ... | bytes | `sha256` |
ROW = re.compile(
    r"^\| `([^`]+)` \| ([\d,]+) \| ([\d,]+) / ([\d,]+) \| [^|]+ \| ([\d,]+) \| `(\w+)` \|$"
)
FILES = {
    "sst2/train.tsv": ("sst2", "train"),
    "sst2/dev.tsv": ("sst2", "dev"),
    "sst2/test.tsv": ("sst2", "test"),
    "imdb.txt": ("imdb", None),
    "yelp.txt": ("yelp", None),
    "amazon.txt": ("amazon", None),
}


def _readme_rows():
    rows = {}
    for line in README.read_text(encoding="utf-8").split("\n"):
        match = ROW.match(line)
        if match:
            name, *numbers, digest = match.groups()
            rows[name] = (*(int(n.replace(",", "")) for n in numbers), digest)
    return rows


def test_samples_match_their_readme():
    rows = _readme_rows()
    assert set(rows) == set(FILES)
    for relative, (name, split) in FILES.items():
        count, negative, positive, size, digest = rows[relative]
        content = (SAMPLES_DIR / relative).read_bytes()
        assert (len(content), hashlib.sha256(content).hexdigest()) == (size, digest)
        ds = load_sample(name, split)
        assert ds.num_rows == count
        assert Counter(ds["label"]) == {0: negative, 1: positive}
    assert (rows["sst2/train.tsv"][0], rows["sst2/dev.tsv"][0]) == (2_000, 500)
    assert rows["sst2/test.tsv"][0] == 872


def test_samples_are_small_and_attributed():
    total = sum(path.stat().st_size for path in SAMPLES_DIR.rglob("*") if path.is_file())
    assert total < 750_000  # the sentiment samples and the two example CSVs of your own data
    text = README.read_text(encoding="utf-8")
    for phrase in ("Kotzias", "CC BY 4.0", "MIT", "GLUE", "seed is **0**", "AG News", "Zhang"):
        assert phrase in text
    assert (SAMPLES_DIR / "sst2" / "LICENSE.repo-alps").is_file()


def test_example_csv_has_string_labels_and_matches_its_readme():
    path = example_path("news_topics.csv")
    assert path == SAMPLES_DIR / "examples" / "news_topics.csv"
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["text", "label"]
    counts = Counter(label for _, label in rows[1:])
    assert counts == {"World": 100, "Sports": 100, "Business": 100, "Sci/Tech": 100}
    content = path.read_bytes()
    row = (
        "| `examples/news_topics.csv` | 400 | Business 100, Sci/Tech 100, Sports 100, World 100 | "
        f"400 of 7,600 rows of `text/agnews/test.tsv` | {len(content):,} | "
        f"`{hashlib.sha256(content).hexdigest()}` |"
    )
    assert row in README.read_text(encoding="utf-8").split("\n")
    ds = load_local(path)
    assert ds.features["label"].names == ["Business", "Sci/Tech", "Sports", "World"]
    assert [ds.features["label"].int2str(label) for label in ds["label"]] == [
        label for _, label in rows[1:]
    ]
    with pytest.raises(ValueError, match=r"unknown example 'emotion\.csv'; available: news_topics"):
        example_path("emotion.csv")


def test_example_csv_rows_are_verbatim_ag_news_rows(shared_data):
    full = load_dataset_by_name("ag_news", "test", data_dir=shared_data)
    names = full.features["label"].names
    source = {(text, names[label]) for text, label in zip(full["text"], full["label"], strict=True)}
    example = load_local(example_path())
    names = example.features["label"].names
    pairs = {(t, names[label]) for t, label in zip(example["text"], example["label"], strict=True)}
    assert len(pairs) == 400
    assert pairs <= source


def test_sentiment_shift_sample_layout():
    data = sentiment_shift_sample()
    assert set(data) == {"train", "dev", "test", "ood"}
    assert set(data["ood"]) == {"imdb", "yelp", "amazon"}
    sizes = {key: data[key].num_rows for key in ("train", "dev", "test")}
    assert sizes == {"train": 2_000, "dev": 500, "test": 872}
    for ood in data["ood"].values():
        assert ood.num_rows == 1_000
        assert ood.features == data["train"].features
    imdb = data["ood"]["imdb"]["text"]
    assert sum("\x85" in text for text in imdb) == 2


def test_load_sample_rejects_bad_names_and_splits():
    assert list_samples() == {
        "sst2": ["train", "dev", "test"],
        "imdb": ["test"],
        "yelp": ["test"],
        "amazon": ["test"],
    }
    with pytest.raises(ValueError, match="unknown sample 'sst5'"):
        load_sample("sst5")
    with pytest.raises(ValueError, match="splits train, dev, test; got split=None"):
        load_sample("sst2")
    with pytest.raises(ValueError, match="got split='train'"):
        load_sample("imdb", "train")


def test_samples_are_subsets_of_the_shared_files(shared_data):
    for split in ("train", "dev", "test"):
        full = load_dataset_by_name("sst2", split, data_dir=shared_data)
        pairs = set(zip(full["text"], full["label"], strict=True))
        sample = load_sample("sst2", split)
        assert set(zip(sample["text"], sample["label"], strict=True)) <= pairs
    assert load_sample("yelp")[:] == load_dataset_by_name("yelp", "test", shared_data)[:]


def test_make_samples_reproduces_the_bundled_files(shared_data, tmp_path):
    written = make_samples(shared_data, tmp_path)
    produced = {path.relative_to(tmp_path).as_posix() for path in written}
    bundled = {
        path.relative_to(SAMPLES_DIR).as_posix()
        for path in SAMPLES_DIR.rglob("*")
        if path.is_file()
    }
    assert produced == bundled
    for relative in bundled:
        assert (tmp_path / relative).read_bytes() == (SAMPLES_DIR / relative).read_bytes(), relative


def test_make_samples_command_line(shared_data, tmp_path):
    main(["--source", str(shared_data), "--out", str(tmp_path)])
    assert (tmp_path / "sst2" / "train.tsv").read_bytes() == (
        SAMPLES_DIR / "sst2/train.tsv"
    ).read_bytes()


def test_make_samples_refuses_other_sources(shared_data, tmp_path):
    source = tmp_path / "source"
    for relative in SOURCES:
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / relative, source / relative)
    changed = source / "text/sst2/dev.tsv"
    changed.write_bytes(changed.read_bytes() + b"extra row\t1\n")
    with pytest.raises(ValueError, match=r"dev\.tsv has SHA-256 .* expected 9235377"):
        make_samples(source, tmp_path / "out")
    changed.unlink()
    with pytest.raises(FileNotFoundError, match=r"source file not found: .*dev\.tsv"):
        make_samples(source, tmp_path / "out")
