"""Synthetic text corruptions: determinism, severity ordering, what each type does."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from datasets import Dataset

from nlpcal.data import (
    SEVERITIES,
    Corruption,
    corrupt_dataset,
    corrupt_text,
    get_corruption,
    list_corruptions,
    load_sample,
    task_features,
)

TYPES = list_corruptions()


def levenshtein(a: str, b: str) -> int:
    """Character edit distance, bit-parallel (Myers 1999 / Hyyrö 2001) on Python ints."""
    if not a or not b:
        return len(a) + len(b)
    mask = (1 << len(a)) - 1
    high = 1 << (len(a) - 1)
    peq: dict[str, int] = {}
    for i, char in enumerate(a):
        peq[char] = peq.get(char, 0) | (1 << i)
    pv, mv, score = mask, 0, len(a)
    for char in b:
        eq = peq.get(char, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & mask) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        score += bool(ph & high) - bool(mh & high)
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
    return score


def slow_levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def test_levenshtein_matches_the_obvious_loop():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 70)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 70)))
        assert levenshtein(a, b) == slow_levenshtein(a, b)


@pytest.fixture(scope="module")
def sst_test() -> Dataset:
    return load_sample("sst2", "test").select(range(200))


def test_registry_and_enum_agree():
    assert len(TYPES) >= 5
    assert sorted([*TYPES, "mixed"]) == sorted(c.value for c in Corruption)
    assert get_corruption(Corruption.KEYBOARD) is get_corruption("keyboard")


@pytest.mark.parametrize("corruption", [*TYPES, "mixed"])
def test_mean_edit_distance_grows_with_severity(sst_test, corruption):
    means = []
    for severity in SEVERITIES:
        shifted = corrupt_dataset(sst_test, corruption, severity, seed=0)["text"]
        distances = [levenshtein(a, b) for a, b in zip(sst_test["text"], shifted, strict=True)]
        means.append(float(np.mean(distances)))
    assert all(low < high for low, high in itertools.pairwise(means)), means


@pytest.mark.parametrize("corruption", TYPES)
def test_every_type_changes_text_at_severity_5(sst_test, corruption):
    shifted = corrupt_dataset(sst_test, corruption, 5, seed=0)["text"]
    changed = np.mean([a != b for a, b in zip(sst_test["text"], shifted, strict=True)])
    assert changed > 0.95


def test_same_seed_same_output_other_seed_other_output(sst_test):
    first = corrupt_dataset(sst_test, "mixed", 3, seed=7)["text"]
    assert corrupt_dataset(sst_test, "mixed", 3, seed=7)["text"] == first
    assert corrupt_dataset(sst_test, "mixed", 3, seed=8)["text"] != first


def test_output_depends_on_position_not_on_batching(sst_test):
    full = corrupt_dataset(sst_test, "keyboard", 4, seed=3)["text"]
    head = corrupt_dataset(sst_test.select(range(37)), "keyboard", 4, seed=3)["text"]
    assert head == full[:37]
    assert corrupt_text(sst_test[0]["text"], "keyboard", 4, seed=3) == full[0]


_SCRIPT = """
import hashlib, json
from nlpcal.data import corrupt_dataset, load_sample
ds = load_sample("sst2", "test").select(range(200))
texts = list(corrupt_dataset(ds, "mixed", 4, seed=11)["text"])
print(hashlib.sha256(json.dumps(texts).encode()).hexdigest())
"""


def test_deterministic_across_processes(sst_test):
    texts = list(corrupt_dataset(sst_test, "mixed", 4, seed=11)["text"])
    expected = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == expected


def test_labels_and_other_columns_are_unchanged_and_pairs_are_corrupted():
    pairs = Dataset.from_dict(
        {
            "text": ["A man is playing a guitar on a stage tonight."] * 20,
            "text_pair": ["Somebody performs music in front of a crowd."] * 20,
            "label": [0, 1, 2, 1] * 5,
        },
        features=task_features("nli"),
    ).add_column("id", list(range(20)))
    shifted = corrupt_dataset(pairs, "char_delete", 5, seed=0)
    assert shifted.features == pairs.features
    assert shifted["label"] == pairs["label"]
    assert shifted["id"] == pairs["id"]
    assert all(a != b for a, b in zip(shifted["text"], pairs["text"], strict=True))
    assert all(a != b for a, b in zip(shifted["text_pair"], pairs["text_pair"], strict=True))
    assert len(set(shifted["text"])) > 10  # examples are corrupted independently


def test_mixed_draws_one_type_per_example_from_its_own_generator(sst_test):
    """The documented contract: example i uses default_rng([seed, i]); mixed draws its type first."""
    shifted = corrupt_dataset(sst_test, "mixed", 5, seed=4)["text"]
    used = Counter()
    for index, (clean, dirty) in enumerate(zip(sst_test["text"], shifted, strict=True)):
        rng = np.random.default_rng([4, index])
        name = TYPES[rng.integers(len(TYPES))]
        assert get_corruption(name)(clean, 5, rng) == dirty
        used[name] += 1
    assert set(used) == set(TYPES)


SENTENCE = "It's a charming and often affecting journey, isn't it? Yes!"
WORDS = SENTENCE.split()


def _without(pattern: str, text: str) -> str:
    return re.sub(pattern, "", text)


# Key centres on a staggered QWERTY keyboard: row r is shifted right by r / 2 keys.
KEY_AT = {
    key: (row, col + row / 2)
    for row, keys in enumerate(("qwertyuiop", "asdfghjkl", "zxcvbnm"))
    for col, key in enumerate(keys)
}


def _adjacent(a: str, b: str) -> bool:
    (row_a, x_a), (row_b, x_b) = KEY_AT[a.lower()], KEY_AT[b.lower()]
    return a != b and abs(row_a - row_b) <= 1 and abs(x_a - x_b) <= 1


@pytest.mark.parametrize("seed", range(20))
def test_what_each_type_does(seed):
    def apply(name: str) -> str:
        return get_corruption(name)(SENTENCE, 5, np.random.default_rng(seed))

    typo = apply("keyboard")
    assert len(typo) == len(SENTENCE)
    for clean, dirty in zip(SENTENCE, typo, strict=True):
        if clean != dirty:
            assert _adjacent(clean, dirty) and clean.isupper() == dirty.isupper()
    inserted = apply("char_insert")
    assert len(inserted) > len(SENTENCE) and _without(r"[a-z]", inserted) == _without(
        r"[a-z]", SENTENCE
    )
    deleted = apply("char_delete")
    assert _without(r"[A-Za-z]", deleted) == _without(r"[A-Za-z]", SENTENCE)
    assert sorted(apply("char_swap")) == sorted(SENTENCE)
    assert apply("random_case").lower() == SENTENCE.lower()
    dropped = apply("word_drop").split()
    assert 1 <= len(dropped) <= len(WORDS) and not Counter(dropped) - Counter(WORDS)
    assert sorted(apply("word_swap").split()) == sorted(WORDS)
    assert apply("whitespace").replace(" ", "") == SENTENCE.replace(" ", "")
    assert _without(r"[^\w\s]", apply("punctuation")) == _without(r"[^\w\s]", SENTENCE)


@pytest.mark.parametrize("corruption", TYPES)
def test_texts_without_targets_are_left_alone(corruption):
    assert corrupt_text("", corruption, 5) == ""
    if corruption not in ("word_swap", "word_drop", "whitespace", "punctuation"):
        assert corrupt_text("1234 5678", corruption, 5) == "1234 5678"


def test_bad_arguments_are_rejected(sst_test):
    for severity in (0, 6, -1, 2.0, True):
        with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
            corrupt_text("text", "keyboard", severity)
    with pytest.raises(ValueError, match="severity must be"):
        corrupt_dataset(sst_test, "keyboard", 0)
    assert corrupt_text("text", "keyboard", np.int64(2), seed=np.int64(1)) == corrupt_text(
        "text", "keyboard", 2, seed=1
    )
    for seed in (-1, 1.0, None):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            corrupt_text("text", "keyboard", 1, seed=seed)
    with pytest.raises(ValueError, match="unknown corruption 'blur'; available: char_delete"):
        corrupt_dataset(sst_test, "blur")
    with pytest.raises(ValueError, match="'mixed' is not a single corruption"):
        get_corruption("mixed")
    with pytest.raises(ValueError, match=r"no 'text' column; its columns: \['sentence'\]"):
        corrupt_dataset(Dataset.from_dict({"sentence": ["x"]}), "keyboard")
