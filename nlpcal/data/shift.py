"""Synthetic text shift: character- and word-level corruptions at severities 1 to 5.

In the spirit of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019): each corruption type is a pure
function ``(text, severity, rng) -> text`` that edits each eligible character, word or gap
independently with a probability that grows with the severity, so a higher severity changes more
text in expectation. The rates are nlpcal's own choices, listed per type below. Severity 0 is not
a corruption: use the clean data (it raises ``ValueError``).

Corruptions are deterministic under a seed, across processes and batch sizes: the example at
position ``i`` of a dataset is corrupted with ``numpy.random.default_rng([seed, i])``, never with
Python's ``hash()``.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, TypeVar

import numpy as np
from datasets import Dataset

__all__ = [
    "SEVERITIES",
    "Corruption",
    "CorruptionFn",
    "corrupt_dataset",
    "corrupt_text",
    "get_corruption",
    "list_corruptions",
]

CorruptionFn = Callable[[str, int, np.random.Generator], str]
_T = TypeVar("_T")

SEVERITIES = (1, 2, 3, 4, 5)

# Probability that one eligible unit (character, word, gap) is edited, per severity 1..5.
_CHAR_RATES = (0.02, 0.05, 0.08, 0.12, 0.18)
_CASE_RATES = (0.05, 0.10, 0.20, 0.30, 0.50)
_WORD_RATES = (0.05, 0.10, 0.15, 0.25, 0.35)

_LETTER = re.compile(r"[^\W\d_]")
_LETTER_PAIR = re.compile(r"(?=[^\W\d_]{2})")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_SPACE = re.compile(r" ")
_LONG_WORD = re.compile(r"\S{2,}")
_WORD = re.compile(r"\S+")
_PUNCT = re.compile(r"[^\w\s]")
_PUNCTUATION = ".,;:!?-'\""
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Keys next to each letter on a staggered QWERTY keyboard (same row, row above, below)."""
    neighbours = {}
    for r, row in enumerate(_KEYBOARD_ROWS):
        for i, key in enumerate(row):
            near = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            if r > 0:
                above = _KEYBOARD_ROWS[r - 1]
                near += [above[j] for j in (i, i + 1) if j < len(above)]
            if r + 1 < len(_KEYBOARD_ROWS):
                below = _KEYBOARD_ROWS[r + 1]
                near += [below[j] for j in (i - 1, i) if 0 <= j < len(below)]
            neighbours[key] = "".join(near)
    return neighbours


_NEIGHBOURS = _keyboard_neighbours()


class Corruption(str, Enum):
    """Corruption types; ``mixed`` draws one of the others per example, uniformly."""

    KEYBOARD = "keyboard"
    CHAR_INSERT = "char_insert"
    CHAR_DELETE = "char_delete"
    CHAR_SWAP = "char_swap"
    RANDOM_CASE = "random_case"
    WORD_DROP = "word_drop"
    WORD_SWAP = "word_swap"
    WHITESPACE = "whitespace"
    PUNCTUATION = "punctuation"
    MIXED = "mixed"


_FUNCTIONS: dict[Corruption, CorruptionFn] = {}


def _register(corruption: Corruption) -> Callable[[CorruptionFn], CorruptionFn]:
    def decorator(function: CorruptionFn) -> CorruptionFn:
        if corruption in _FUNCTIONS:
            raise ValueError(f"corruption {corruption.value!r} is already registered")
        _FUNCTIONS[corruption] = function
        return function

    return decorator


def list_corruptions() -> list[str]:
    """Names of the single corruption types (``mixed`` draws from these).

    >>> list_corruptions()[:3]
    ['char_delete', 'char_insert', 'char_swap']
    """
    return sorted(corruption.value for corruption in _FUNCTIONS)


def get_corruption(name: Corruption | str) -> CorruptionFn:
    """The function ``(text, severity, rng) -> text`` of one corruption type.

    >>> import numpy as np
    >>> get_corruption("random_case")("hello world", 5, np.random.default_rng(0))
    'hELLo world'
    """
    corruption = _parse(name)
    if corruption is Corruption.MIXED:
        raise ValueError("'mixed' is not a single corruption; it draws one per example")
    return _FUNCTIONS[corruption]


def corrupt_text(
    text: str, corruption: Corruption | str = "mixed", severity: int = 3, seed: int = 0
) -> str:
    """Corrupt one text; the result equals ``corrupt_dataset`` on a dataset whose first text it is.

    Args:
        text: the clean text.
        corruption: a name from :func:`list_corruptions`, or ``"mixed"``.
        severity: 1 (mild) to 5 (strong).
        seed: non-negative integer.

    >>> corrupt_text("the film is a charming journey", "keyboard", severity=5, seed=1)
    'ths film is w charmimg journey'
    """
    corruption = _parse(corruption)
    _check_severity(severity)
    _check_seed(seed)
    rng = _example_rng(seed, 0)
    return _choose(corruption, rng)(text, severity, rng)


def corrupt_dataset(
    dataset: Dataset,
    corruption: Corruption | str = "mixed",
    severity: int = 3,
    seed: int = 0,
) -> Dataset:
    """Corrupt the ``text`` (and, if present, ``text_pair``) column of every example.

    Labels and other columns are unchanged. With ``"mixed"`` each example gets one corruption
    type, drawn uniformly, applied to both of its texts. The result depends only on the clean
    data, the arguments and each example's position, so it is the same in every process.

    Args:
        dataset: a dataset with a ``text`` column (as the :mod:`nlpcal.data` loaders return).
        corruption: a name from :func:`list_corruptions`, or ``"mixed"``.
        severity: 1 (mild) to 5 (strong); 0 is rejected, use the clean dataset instead.
        seed: non-negative integer.

    Raises:
        ValueError: bad corruption name, severity or seed, or no ``text`` column.

    A dataset of images (a ``pixel_values`` column) gets the image corruptions of
    :func:`~nlpcal.data.image_shift.corrupt_images` instead.

    >>> ds = Dataset.from_dict({"text": ["a truly wonderful film"], "label": [1]})
    >>> corrupt_dataset(ds, "word_drop", severity=3, seed=1)[0]
    {'text': 'a truly film', 'label': 1}
    """
    if "pixel_values" in dataset.column_names:
        from nlpcal.data.image_shift import corrupt_images

        return corrupt_images(dataset, getattr(corruption, "value", corruption), severity, seed)
    corruption = _parse(corruption)
    _check_severity(severity)
    _check_seed(seed)
    if "text" not in dataset.column_names:
        raise ValueError(f"the dataset has no 'text' column; its columns: {dataset.column_names}")
    columns = [name for name in ("text", "text_pair") if name in dataset.column_names]
    return dataset.map(
        _corrupt_batch,
        batched=True,
        with_indices=True,
        input_columns=columns,
        fn_kwargs={
            "corruption": corruption.value,
            "severity": severity,
            "seed": seed,
            "columns": columns,
        },
        desc=f"corrupting ({corruption.value}, severity {severity})",
    )


def _corrupt_batch(
    *args: Any, corruption: str, severity: int, seed: int, columns: Sequence[str]
) -> dict[str, list[str]]:
    """``Dataset.map`` callback: ``args`` are the batch's ``columns`` and then its indices."""
    *texts, indices = args
    out: dict[str, list[str]] = {name: [] for name in columns}
    kind = Corruption(corruption)
    for row, index in enumerate(indices):
        rng = _example_rng(seed, index)
        function = _choose(kind, rng)
        for name, values in zip(columns, texts, strict=True):
            out[name].append(function(values[row], severity, rng))
    return out


def _example_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _choose(corruption: Corruption, rng: np.random.Generator) -> CorruptionFn:
    if corruption is Corruption.MIXED:
        names = list_corruptions()
        corruption = Corruption(names[rng.integers(len(names))])
    return _FUNCTIONS[corruption]


def _parse(name: Corruption | str) -> Corruption:
    try:
        return Corruption(name)
    except ValueError:
        raise ValueError(
            f"unknown corruption {name!r}; available: {', '.join(list_corruptions())}, mixed"
        ) from None


def _check_severity(severity: int) -> None:
    if not _is_int(severity) or severity not in SEVERITIES:
        raise ValueError(
            f"severity must be an integer from 1 to 5 (0 would be the clean data); got {severity!r}"
        )


def _check_seed(seed: int) -> None:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _rate(rates: Sequence[float], severity: int) -> float:
    _check_severity(severity)
    return rates[severity - 1]


def _pick(rng: np.random.Generator, candidates: Sequence[_T], rate: float) -> list[_T]:
    """Each candidate independently with probability ``rate``, in order."""
    mask = rng.random(len(candidates)) < rate
    return [candidate for candidate, hit in zip(candidates, mask, strict=True) if hit]


def _apply(text: str, edits: Mapping[int, str]) -> str:
    """Replace the character at each position in ``edits`` by its string ("" deletes)."""
    if not edits:
        return text
    chars = list(text)
    for position, replacement in edits.items():
        chars[position] = replacement
    return "".join(chars)


def _starts(pattern: re.Pattern[str], text: str) -> list[int]:
    return [match.start() for match in pattern.finditer(text)]


@_register(Corruption.KEYBOARD)
def _keyboard(text: str, severity: int, rng: np.random.Generator) -> str:
    """Replace ASCII letters by a neighbouring QWERTY key (rates 2-18% of letters), keeping case."""
    chosen = _pick(rng, _starts(_ASCII_LETTER, text), _rate(_CHAR_RATES, severity))
    draws = rng.random(len(chosen))
    edits = {}
    for position, u in zip(chosen, draws, strict=True):
        char = text[position]
        near = _NEIGHBOURS[char.lower()]
        key = near[int(u * len(near))]
        edits[position] = key.upper() if char.isupper() else key
    return _apply(text, edits)


@_register(Corruption.CHAR_INSERT)
def _char_insert(text: str, severity: int, rng: np.random.Generator) -> str:
    """Insert a random lowercase letter after letters (rates 2-18% of letters)."""
    chosen = _pick(rng, _starts(_LETTER, text), _rate(_CHAR_RATES, severity))
    draws = rng.integers(len(_ALPHABET), size=len(chosen))
    return _apply(
        text,
        {p: text[p] + _ALPHABET[d] for p, d in zip(chosen, draws, strict=True)},
    )


@_register(Corruption.CHAR_DELETE)
def _char_delete(text: str, severity: int, rng: np.random.Generator) -> str:
    """Delete letters (rates 2-18% of letters)."""
    chosen = _pick(rng, _starts(_LETTER, text), _rate(_CHAR_RATES, severity))
    return _apply(text, dict.fromkeys(chosen, ""))


@_register(Corruption.CHAR_SWAP)
def _char_swap(text: str, severity: int, rng: np.random.Generator) -> str:
    """Swap adjacent, different letters inside words (rates 2-18% of such pairs, no overlaps)."""
    pairs = [p for p in _starts(_LETTER_PAIR, text) if text[p] != text[p + 1]]
    edits: dict[int, str] = {}
    for position in _pick(rng, pairs, _rate(_CHAR_RATES, severity)):
        if position - 1 not in edits:
            edits[position], edits[position + 1] = text[position + 1], text[position]
    return _apply(text, edits)


@_register(Corruption.RANDOM_CASE)
def _random_case(text: str, severity: int, rng: np.random.Generator) -> str:
    """Flip the case of letters (rates 5-50% of cased letters)."""
    cased = [p for p in _starts(_LETTER, text) if text[p].swapcase() != text[p]]
    chosen = _pick(rng, cased, _rate(_CASE_RATES, severity))
    return _apply(text, {p: text[p].swapcase() for p in chosen})


@_register(Corruption.WORD_DROP)
def _word_drop(text: str, severity: int, rng: np.random.Generator) -> str:
    """Drop whitespace-separated words (rates 5-35%), keeping at least one; rejoins with spaces."""
    words = text.split()
    chosen = _pick(rng, range(len(words)), _rate(_WORD_RATES, severity))
    if words and len(chosen) == len(words):
        chosen.pop(int(rng.integers(len(chosen))))
    if not chosen:
        return text
    dropped = set(chosen)
    return " ".join(word for i, word in enumerate(words) if i not in dropped)


@_register(Corruption.WORD_SWAP)
def _word_swap(text: str, severity: int, rng: np.random.Generator) -> str:
    """Swap adjacent, different words (rates 5-35% of such pairs, no overlaps); rejoins with spaces."""
    words = text.split()
    pairs = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
    swapped = -2
    for i in _pick(rng, pairs, _rate(_WORD_RATES, severity)):
        if i > swapped + 1:
            words[i], words[i + 1] = words[i + 1], words[i]
            swapped = i
    return text if swapped < 0 else " ".join(words)


@_register(Corruption.WHITESPACE)
def _whitespace(text: str, severity: int, rng: np.random.Generator) -> str:
    """Delete spaces (merging words) and split words with a space (rates 5-35% of each)."""
    rate = _rate(_WORD_RATES, severity)
    edits = dict.fromkeys(_pick(rng, _starts(_SPACE, text), rate), "")
    words = _pick(rng, list(_LONG_WORD.finditer(text)), rate)
    for match, u in zip(words, rng.random(len(words)), strict=True):
        cut = match.start() + 1 + int(u * (len(match.group()) - 1))
        edits[cut] = " " + text[cut]
    return _apply(text, edits)


@_register(Corruption.PUNCTUATION)
def _punctuation(text: str, severity: int, rng: np.random.Generator) -> str:
    """Delete punctuation marks and insert one after words (rates 5-35% of each)."""
    rate = _rate(_WORD_RATES, severity)
    edits = dict.fromkeys(_pick(rng, _starts(_PUNCT, text), rate), "")
    ends = _pick(rng, [match.end() - 1 for match in _WORD.finditer(text)], rate)
    for position, d in zip(ends, rng.integers(len(_PUNCTUATION), size=len(ends)), strict=True):
        edits[position] = edits.get(position, text[position]) + _PUNCTUATION[d]
    return _apply(text, edits)
