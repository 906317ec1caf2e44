"""The samples bundled with the package and the script that makes them."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections import Counter

import pytest

from nlpcal.data import list_samples, load_dataset_by_name, load_sample, sentiment_shift_sample
from nlpcal.data.make_samples import SAMPLES_DIR, SOURCES, main, make_samples

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
    assert total < 600_000
    text = README.read_text(encoding="utf-8")
    for phrase in ("Kotzias", "CC BY 4.0", "MIT", "GLUE", "seed is **0**"):
        assert phrase in text
    assert (SAMPLES_DIR / "sst2" / "LICENSE.repo-alps").is_file()


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
