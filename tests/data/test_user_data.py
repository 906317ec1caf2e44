"""A user's own labelled data: label names from the data, splits aligned by name, unlabelled sets."""

from __future__ import annotations

import csv
import re

import datasets
import pytest

from nlpcal.data import load_local, load_source, schema_features, to_schema

EMOTIONS = ["anger", "fear", "joy", "sadness", "surprise"]
TRAIN = [
    ("I can't believe they cancelled it", "anger"),
    ("what was that noise downstairs", "fear"),
    ("best day of my life", "joy"),
    ("I miss her so much", "sadness"),
    ("wait, you got married?", "surprise"),
    ("this queue is a joke", "anger"),
    ("so happy for you, truly", "joy"),
]
# No "fear", classes in another order of appearance.
TEST = [("we won!", "joy"), ("why would you say that", "anger"), ("no way, really?", "surprise")]


def _csv(path, rows, header=("text", "label")):
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    return path


def _names(dataset):
    return [dataset.features["label"].int2str(label) for label in dataset["label"]]


def test_string_labels_are_inferred_sorted(tmp_path):
    ds = load_local(_csv(tmp_path / "train.csv", TRAIN))
    assert ds.features == schema_features(EMOTIONS)
    assert ds["text"][:] == [text for text, _ in TRAIN]
    assert _names(ds) == [label for _, label in TRAIN]


def test_integer_labels_keep_their_ids(tmp_path):
    path = tmp_path / "ints.jsonl"
    path.write_text('{"text": "a", "label": 2}\n{"text": "b", "label": 0}\n', encoding="utf-8")
    ds = load_local(path)
    assert ds.features["label"].names == ["0", "1", "2"]
    assert ds["label"][:] == [2, 0]
    negative = tmp_path / "ints.tsv"
    negative.write_text("text\tlabel\na\t0\nb\t-1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ints\.tsv:3: negative label -1 in column 'label'"):
        load_local(negative)


def test_a_dataset_in_code_gives_the_same_result_as_the_file(tmp_path):
    from_file = load_local(_csv(tmp_path / "train.csv", TRAIN))
    texts, labels = zip(*TRAIN, strict=True)
    strings = datasets.Dataset.from_dict({"utterance": list(texts), "emotion": list(labels)})
    ds = to_schema(strings, text_column="utterance", label_column="emotion")
    assert ds.features == from_file.features
    assert ds[:] == from_file[:]
    class_label = datasets.Dataset.from_dict(
        {
            "text": list(texts),
            "label": [EMOTIONS.index(label) for label in labels],
            "id": list(range(7)),
        },
        features=datasets.Features(
            {
                "text": datasets.Value("large_string"),
                "label": datasets.ClassLabel(names=EMOTIONS),
                "id": datasets.Value("int32"),
            }
        ),
    )
    assert to_schema(class_label)[:] == from_file[:]


def test_a_class_label_keeps_its_order_and_unused_classes():
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["z", "a", "m"])}
    )
    ds = to_schema(datasets.Dataset.from_dict({"text": ["x"], "label": [1]}, features=features))
    assert ds.features["label"].names == ["z", "a", "m"]
    assert ds["label"][:] == [1]


def test_a_test_split_lacking_a_class_lines_up_with_training_by_name(tmp_path):
    train = load_local(_csv(tmp_path / "train.csv", TRAIN))
    names = train.features["label"].names
    test_path = _csv(tmp_path / "test.csv", TEST)
    assert load_local(test_path).features["label"].names == ["anger", "joy", "surprise"]
    test = load_local(test_path, labels=names)
    assert test.features == train.features
    assert test["label"][:] == [2, 0, 4]
    assert _names(test) == [label for _, label in TEST]
    assert load_source(str(test_path), labels=names)[:] == test[:]
    texts, labels = zip(*TEST, strict=True)
    in_code = datasets.Dataset.from_dict({"text": list(texts), "label": list(labels)})
    assert to_schema(in_code, labels=names)[:] == test[:]
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["surprise", "joy", "anger"]),
        }
    )
    class_label = datasets.Dataset.from_dict(
        {"text": list(texts), "label": [1, 2, 0]}, features=features
    )
    assert to_schema(class_label, labels=names)[:] == test[:]


def test_unknown_labels_name_file_column_labels_and_label_set(tmp_path):
    rows = [("ugh, gross", "disgust"), ("yay", "joy"), ("hmm", "boredom"), ("eww", "disgust")]
    path = _csv(tmp_path / "test.csv", rows, header=("text", "emotion"))
    message = (
        r"test\.csv:2: unknown label 'disgust' in column 'emotion' "
        r"\(all unknown labels: \['disgust', 'boredom'\]\); the label set is "
        + re.escape(str(EMOTIONS))
    )
    with pytest.raises(ValueError, match=message):
        load_local(path, label_column="emotion", labels=EMOTIONS)
    in_code = datasets.Dataset.from_dict({"text": ["ok", "eww"], "emotion": ["joy", "disgust"]})
    with pytest.raises(
        ValueError, match=r"my set row 1: unknown label 'disgust' in column 'emotion'"
    ):
        to_schema(in_code, label_column="emotion", labels=EMOTIONS, name="my set")


def test_integer_ids_are_read_only_when_no_label_name_is_an_integer(tmp_path):
    path = tmp_path / "ids.tsv"
    path.write_text("text\tlabel\nbad\t0\ngood\t1\nfine\tpositive\n", encoding="utf-8")
    assert load_local(path, labels=["negative", "positive"])["label"][:] == [0, 1, 1]
    path.write_text("text\tlabel\nbad\t1\ngood\t2\nodd\t0\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"ids\.tsv:4: unknown label '0'.*the label set is \['1', '2'\]$"
    ):
        load_local(path, labels=["1", "2"])


def test_missing_columns_name_the_file_and_the_columns(tmp_path):
    path = _csv(tmp_path / "tickets.csv", [("refund", "billing")], header=("body", "team"))
    with pytest.raises(
        ValueError,
        match=r"tickets\.csv: no text column \('message'\); the columns are \['body', 'team'\]",
    ):
        load_local(path, text_column="message", label_column="team")
    with pytest.raises(
        ValueError,
        match=r"tickets\.csv: no label column 'label'; the columns are \['body', 'team'\].*require_labels=False",
    ):
        load_local(path, text_column="body")
    in_code = datasets.Dataset.from_dict({"body": ["x"], "team": ["t"]})
    with pytest.raises(
        ValueError, match=r"tickets: no text column \(none of text, sentence.*\['body', 'team'\]"
    ):
        to_schema(in_code, label_column="team", name="tickets")
    with pytest.raises(ValueError, match=r"no text_pair column \('context'\)"):
        to_schema(in_code, text_column="body", text_pair_column="context", label_column="team")
    with pytest.raises(ValueError, match="a column cannot play two roles"):
        to_schema(in_code, text_column="body", label_column="body")


def test_wrong_column_types_and_missing_texts_are_refused():
    floats = datasets.Dataset.from_dict({"text": ["a"], "label": [0.5]})
    with pytest.raises(ValueError, match=r"label column 'label' holds Value\('float64'\)"):
        to_schema(floats)
    numbers = datasets.Dataset.from_dict({"text": [1], "label": ["a"]})
    with pytest.raises(ValueError, match=r"column 'text' holds Value\('int64'\); expected strings"):
        to_schema(numbers)
    gaps = datasets.Dataset.from_dict({"text": ["a", None], "label": ["x", "y"]})
    with pytest.raises(ValueError, match=r"dataset row 1: no text in column 'text'"):
        to_schema(gaps)
    missing_label = datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", None]})
    with pytest.raises(ValueError, match=r"dataset row 1: unknown label None"):
        to_schema(missing_label)


def test_empty_splits_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"test\.csv has a header but no data rows"):
        load_local(_csv(tmp_path / "test.csv", []))
    empty = datasets.Dataset.from_dict({"text": [], "label": []})
    with pytest.raises(ValueError, match="validation has no rows; expected a non-empty split"):
        to_schema(empty, name="validation")


def test_sets_without_labels_load_only_when_allowed(tmp_path):
    path = _csv(tmp_path / "ood.csv", [("a tweet",), ("another",)], header=("text",))
    ds = load_local(path, require_labels=False)
    assert ds.features == schema_features(None)
    assert ds[:] == {"text": ["a tweet", "another"]}
    with pytest.raises(ValueError, match=r"ood\.csv: no label column 'label'"):
        load_local(path)
    headerless = tmp_path / "ood.txt"
    headerless.write_text("one line\nanother line\n", encoding="utf-8")
    assert load_local(headerless, "sentiment", require_labels=False).column_names == ["text"]
    pairs = datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"]})
    unlabelled = to_schema(pairs, require_labels=False)
    assert unlabelled.features == schema_features(None, text_pair=True)
    assert unlabelled[:] == {"text": ["p"], "text_pair": ["h"]}
    labelled = _csv(tmp_path / "labelled.csv", TRAIN)
    assert load_local(labelled, require_labels=False).features == schema_features(EMOTIONS)


def test_text_pairs_are_optional_without_a_task(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"premise": "p1", "hypothesis": "h1", "label": "entailment"}\n'
        '{"premise": "p2", "hypothesis": "h2", "label": "not_entailment"}\n',
        encoding="utf-8",
    )
    ds = load_local(path)
    assert ds.features == schema_features(["entailment", "not_entailment"], text_pair=True)
    assert ds[:] == {"text": ["p1", "p2"], "text_pair": ["h1", "h2"], "label": [0, 1]}
    headerless = tmp_path / "pairs.txt"
    headerless.write_text("p\th\tyes\n", encoding="utf-8")
    assert load_local(headerless)[:] == {"text": ["p"], "text_pair": ["h"], "label": [0]}


def test_task_and_labels_are_exclusive(tmp_path):
    path = _csv(tmp_path / "train.csv", TRAIN)
    with pytest.raises(ValueError, match=r"pass a task or labels, not both: task 'sentiment'"):
        load_local(path, "sentiment", labels=EMOTIONS)
    with pytest.raises(ValueError, match="not both"):
        load_source(str(path), "sentiment", labels=EMOTIONS)
    with pytest.raises(ValueError, match=r"label names must be unique, got \['joy'\]"):
        load_local(path, labels=["joy", "joy"])


def test_registered_sources_align_onto_given_labels():
    ds = load_source("sample:imdb", labels=["positive", "negative"])
    original = load_source("sample:imdb")
    assert ds.features["label"].names == ["positive", "negative"]
    assert ds["label"][:] == [1 - label for label in original["label"]]
    with pytest.raises(ValueError, match="has labels not in the label set: \\['negative'\\]"):
        load_source("sample:imdb", labels=["positive"])
    with pytest.raises(
        ValueError, match="'sample:imdb' is registered; its columns cannot be changed"
    ):
        load_source("sample:imdb", text_column="review")
