"""Local-file and Hub loading into the nlpcal schema."""

from __future__ import annotations

import logging
import time
from collections import Counter

import datasets
import pytest

from nlpcal.data import (
    Task,
    list_datasets,
    load_dataset_by_name,
    load_hub,
    load_local,
    load_source,
    schema_features,
    task_features,
)
from nlpcal.data.registry import get_dataset_spec

# (name, split) -> (rows, label counts by name), from ../shared/data/README.md and the files.
# The shared README gives AG News dev 10,000 rows; the headerless file has 10,001 data lines.
EXPECTED = {
    ("sst2", "train"): (60_614, {"negative": 26_786, "positive": 33_828}),
    ("sst2", "dev"): (6_735, {"negative": 2_994, "positive": 3_741}),
    ("sst2", "test"): (872, {"negative": 428, "positive": 444}),
    ("imdb", "test"): (1_000, {"negative": 500, "positive": 500}),
    ("yelp", "test"): (1_000, {"negative": 500, "positive": 500}),
    ("amazon", "test"): (1_000, {"negative": 500, "positive": 500}),
    ("snli", "validation"): (
        9_842,
        {"entailment": 3_329, "neutral": 3_235, "contradiction": 3_278},
    ),
    ("snli", "test"): (9_824, {"entailment": 3_368, "neutral": 3_219, "contradiction": 3_237}),
    ("mnli", "validation_matched"): (
        9_815,
        {"entailment": 3_479, "neutral": 3_123, "contradiction": 3_213},
    ),
    ("ag_news", "dev"): (
        10_001,
        {"World": 2_509, "Sports": 2_458, "Business": 2_496, "Sci/Tech": 2_538},
    ),
    ("ag_news", "test"): (
        7_600,
        {"World": 1_900, "Sports": 1_900, "Business": 1_900, "Sci/Tech": 1_900},
    ),
}


def test_every_registered_local_file_is_covered():
    registered = {
        (name, split) for name in list_datasets() for split in get_dataset_spec(name).local_files
    }
    assert registered == set(EXPECTED)


@pytest.mark.parametrize(("name", "split"), sorted(EXPECTED))
def test_shared_file_rows_labels_and_schema(shared_data, name, split):
    rows, counts = EXPECTED[(name, split)]
    ds = load_dataset_by_name(name, split, data_dir=shared_data)
    task = get_dataset_spec(name).task
    assert ds.features == task_features(task)
    assert ds.num_rows == rows
    names = ds.features["label"].names
    assert Counter(names[label] for label in ds["label"]) == counts
    assert all(text.strip() for text in ds["text"])


def _raw_lines(path):
    return path.read_bytes().decode("utf-8").split("\n")


@pytest.mark.parametrize(
    ("relative", "task", "row", "expected"),
    [
        ("text/sst2/train.tsv", "sentiment", 0, {"text": "when are bears bears and ", "label": 1}),
        (
            "text/snli/validation.tsv",
            "nli",
            1,
            {
                "text": "Two women are embracing while holding to go packages.",
                "text_pair": "Two woman are holding packages.",
                "label": 0,
            },
        ),
        (
            "text/mnli/dev_matched.jsonl",
            "nli",
            0,
            {
                "text": "The new rights are nice enough",
                "text_pair": "Everyone really likes the newest benefits ",
                "label": 1,
            },
        ),
        ("text/agnews/test.tsv", "topic", 0, {"label": 2}),
        ("text/agnews/dev.tsv", "topic", 0, {"label": 3}),
    ],
)
def test_label_maps_and_verbatim_text(shared_data, relative, task, row, expected):
    ds = load_local(shared_data / relative, task)
    example = ds[row]
    assert {key: example[key] for key in expected} == expected


def test_headerless_files_keep_their_first_row(shared_data):
    ds = load_local(shared_data / "text/agnews/dev.tsv", Task.TOPIC)
    first = _raw_lines(shared_data / "text/agnews/dev.tsv")[0]
    assert ds[0]["text"] == first.rsplit("\t", 1)[0]
    assert ds.features["label"].names == ["World", "Sports", "Business", "Sci/Tech"]


def test_imdb_nel_characters_stay_inside_sentences(shared_data):
    path = shared_data / "text/sentiment_sentences/imdb_labelled.txt"
    text = path.read_bytes().decode("utf-8")
    assert len(text.splitlines()) == 1_002  # what a universal-newline reader would see
    ds = load_local(path, "sentiment")
    assert ds.num_rows == 1_000
    with_nel = [t for t in ds["text"] if "\x85" in t]
    assert len(with_nel) == 2
    assert with_nel[0] == "The script is\x85was there a script?  "


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "task", "message"),
    [
        (
            "bad.tsv",
            "sentence\tlabel\ngood\t1\ntoo\tmany\t1\n",
            "sentiment",
            r"bad\.tsv:3: expected 2",
        ),
        (
            "bad.tsv",
            "sentence\tlabel\ngood\t1\nfine\tpositive!\n",
            "sentiment",
            r"bad\.tsv:3: unknown label 'positive!'",
        ),
        ("bad.tsv", "sentence\tlabel\ngood\t1\n  \t0\n", "sentiment", r"bad\.tsv:3: empty"),
        ("bad.tsv", "sentence\tlabel\ngood\t1\n\nbad\t0\n", "sentiment", r"bad\.tsv:3: expected 2"),
        (
            "bad.txt",
            "good\t1\nno label here\n",
            "sentiment",
            r"bad\.txt:2: expected 2 TSV fields \(text, label\)",
        ),
        ("bad.txt", "a premise\ta hypothesis\t0\nonly\t1\n", "nli", r"bad\.txt:2: expected 3"),
        (
            "bad.tsv",
            "premise\thypothesis\tlabel\np\th\t-\n",
            "nli",
            r"bad\.tsv:2: unknown label '-'",
        ),
        (
            "bad.tsv",
            "text\tlabel\nnews\tSports\nmore news\tsports\n",
            "topic",
            r"bad\.tsv:3: unknown label 'sports'",
        ),
        (
            "bad.jsonl",
            '{"premise": "p", "hypothesis": "h", "label": "neutral"}\n{"premise": \n',
            "nli",
            r"bad\.jsonl:2: invalid JSON",
        ),
        (
            "bad.jsonl",
            '{"premise": "p", "hypothesis": "h", "label": "neutral"}\n{"premise": "p", "label": 0}\n',
            "nli",
            r"bad\.jsonl:2: missing column 'hypothesis'",
        ),
        (
            "bad.jsonl",
            '{"premise": "p", "hypothesis": "h", "label": 3}\n',
            "nli",
            r"bad\.jsonl:1: unknown label 3",
        ),
        (
            "bad.jsonl",
            '{"text": "t", "label": true}\n',
            "sentiment",
            r"bad\.jsonl:1: unknown label True",
        ),
        ("bad.jsonl", '["t", 1]\n', "sentiment", r"bad\.jsonl:1: expected a JSON object"),
        (
            "bad.csv",
            'text,label\n"two\nlines",1\nthree,fields,1\n',
            "sentiment",
            r"bad\.csv:4: expected 2 CSV fields",
        ),
        (
            "bad.tsv",
            b"sentence\tlabel\nok\t1\n\xff\t0\n",
            "sentiment",
            r"bad\.tsv:3: not valid UTF-8",
        ),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, name, content, task, message):
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError, match=message):
        load_local(path, task)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "train.tsv"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_local(missing, "sentiment")


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("\n \n", "is empty"), ("sentence\tlabel\n", "no data rows")],
)
def test_empty_files_are_rejected(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        load_local(_write(tmp_path, "empty.tsv", content), "sentiment")


def test_unknown_suffix_and_missing_columns(tmp_path):
    with pytest.raises(ValueError, match=r"cannot infer the format .* format="):
        load_local(_write(tmp_path, "data.parquet", "x"), "sentiment")
    path = _write(tmp_path, "cols.tsv", "body\tlabel\nhello\t1\n")
    with pytest.raises(
        ValueError,
        match=r"cols\.tsv: no text column \(none of text, sentence.*\); the columns are \['body', 'label'\]",
    ):
        load_local(path, "sentiment")
    assert load_local(path, "sentiment", text_column="body")["text"] == ["hello"]
    with pytest.raises(ValueError, match=r"no text column \('sentence'\)"):
        load_local(path, "sentiment", text_column="sentence")
    with pytest.raises(ValueError, match="only used for NLI"):
        load_local(path, "sentiment", text_column="body", text_pair_column="body")


def test_csv_quoting_crlf_bom_and_explicit_format(tmp_path):
    path = _write(
        tmp_path, "data.csv", '\ufefftext,label\r\n"a, quoted\nfield",positive\r\nplain,0\r\n'
    )
    ds = load_local(path, "sentiment")
    assert ds["text"] == ["a, quoted\nfield", "plain"]
    assert ds["label"] == [1, 0]
    crlf = _write(tmp_path, "crlf.data", "great\t1\r\nbad\t0\r\n")
    assert load_local(crlf, "sentiment", format="tsv")["text"] == ["great", "bad"]


def test_jsonl_accepts_integer_and_named_labels(tmp_path):
    path = _write(
        tmp_path,
        "pairs.jsonl",
        '{"premise": "p1", "hypothesis": "h1", "label": 2}\n'
        '{"premise": "p2", "hypothesis": "h2", "label": "entailment"}\n',
    )
    ds = load_local(path, "nli")
    assert ds[:] == {"text": ["p1", "p2"], "text_pair": ["h1", "h2"], "label": [2, 0]}


def test_header_can_be_forced(tmp_path):
    path = _write(tmp_path, "odd.tsv", "label\t1\nfine\t0\n")
    assert load_local(path, "sentiment", header=False)["text"] == ["label", "fine"]


# -- Hub path, tested offline ----------------------------------------------------------------


def test_offline_hub_fails_fast_with_a_local_files_hint(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"data_dir=.*load_local"):
        load_dataset_by_name("sst2", "train")
    assert time.perf_counter() - start < 5


def test_offline_set_after_import_does_not_touch_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("datasets.load_dataset must not be called in offline mode")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(ConnectionError, match=r"offline mode is on.*data_dir="):
        load_dataset_by_name("snli", "test")


def test_hub_connection_errors_get_the_hint(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'stanfordnlp/snli' on the Hub (ConnectError)")

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ConnectionError, match=r"ConnectError.*data_dir="):
        load_dataset_by_name("snli", "test")


def test_local_only_names_and_unknown_splits():
    with pytest.raises(ValueError, match=r"'imdb' has no Hub copy; pass data_dir=.*load_local"):
        load_dataset_by_name("imdb", "test")
    with pytest.raises(ValueError, match=r"no Hub split 'dev'; Hub splits: train, test"):
        load_dataset_by_name("sst2", "dev")
    with pytest.raises(ValueError, match=r"no local split 'train'; local splits: validation, test"):
        load_dataset_by_name("snli", "train", data_dir="anywhere")
    with pytest.raises(ValueError, match=r"unknown dataset 'sst5'; available: ag_news"):
        load_dataset_by_name("sst5", "train")


def _fake_hub(monkeypatch, dataset):
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return dataset

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_nli_is_mapped_and_unlabelled_pairs_are_counted(monkeypatch, caplog):
    hub = datasets.Dataset.from_dict(
        {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [2, -1, 0]},
        features=datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            }
        ),
    )
    calls = _fake_hub(monkeypatch, hub)
    with caplog.at_level(logging.WARNING, logger="nlpcal.data.loaders"):
        ds = load_dataset_by_name("snli", "validation")
    assert calls == [("stanfordnlp/snli", None, "validation")]
    assert ds.features == task_features("nli")
    assert ds[:] == {"text": ["p0", "p2"], "text_pair": ["h0", "h2"], "label": [2, 0]}
    assert "removed 1 of 3 examples without a gold label" in caplog.text


def test_hub_sentiment_columns_and_label_names_are_unified(monkeypatch):
    yelp = datasets.Dataset.from_dict(
        {"label": [0, 1], "text": ["awful", "lovely"]},
        features=datasets.Features(
            {"label": datasets.ClassLabel(names=["1", "2"]), "text": datasets.Value("string")}
        ),
    )
    _fake_hub(monkeypatch, yelp)
    ds = load_dataset_by_name("yelp_polarity", "test")
    assert ds.features["label"].names == ["negative", "positive"]
    assert ds[:] == {"text": ["awful", "lovely"], "label": [0, 1]}

    sst = datasets.Dataset.from_dict({"idx": [0], "sentence": ["fine"], "label": [1]})
    calls = _fake_hub(monkeypatch, sst)
    assert load_dataset_by_name("sst2", "test")[:] == {"text": ["fine"], "label": [1]}
    assert calls == [("stanfordnlp/sst2", None, "validation")]


def test_hub_with_unexpected_classes_or_columns_is_rejected(monkeypatch):
    three = datasets.Dataset.from_dict(
        {"text": ["x"], "label": [0]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b", "c"])}
        ),
    )
    _fake_hub(monkeypatch, three)
    with pytest.raises(ValueError, match=r"has 3 classes .* expected 2 for task 'sentiment'"):
        load_dataset_by_name("imdb_reviews", "test")
    _fake_hub(monkeypatch, datasets.Dataset.from_dict({"title": ["x"], "label": [0]}))
    with pytest.raises(ValueError, match=r"lacks the columns \['content'\]"):
        load_dataset_by_name("amazon_polarity", "test")


EMOTIONS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def _emotion_hub():
    return datasets.Dataset.from_dict(
        {"id": [10, 11, 12, 13], "sentence": ["s0", "s1", "s2", "s3"], "coarse": [0, 5, -1, 2]},
        features=datasets.Features(
            {
                "id": datasets.Value("int32"),
                "sentence": datasets.Value("string"),
                "coarse": datasets.ClassLabel(names=EMOTIONS),
            }
        ),
    )


def test_any_hub_dataset_with_config_split_and_column_mapping(monkeypatch, caplog):
    calls = _fake_hub(monkeypatch, _emotion_hub())
    columns = {"text_column": "sentence", "label_column": "coarse"}
    with caplog.at_level(logging.WARNING, logger="nlpcal.data.loaders"):
        ds = load_hub("dair-ai/emotion", "test", config="split", **columns)
    assert calls == [("dair-ai/emotion", "split", "test")]
    assert ds.features == schema_features(EMOTIONS)
    assert ds[:] == {"text": ["s0", "s1", "s3"], "label": [0, 5, 2]}
    assert "dair-ai/emotion (test): removed 1 of 4 examples without a gold label" in caplog.text
    by_name = load_hub("dair-ai/emotion", "test", labels=sorted(EMOTIONS), **columns)
    assert by_name.features["label"].names == sorted(EMOTIONS)
    assert [by_name.features["label"].int2str(i) for i in by_name["label"]] == [
        "sadness",
        "surprise",
        "love",
    ]
    assert load_source("hub:dair-ai/emotion:split/test", **columns)[:] == ds[:]
    assert calls[-1] == ("dair-ai/emotion", "split", "test")
    assert load_source("hub:dair-ai/emotion/validation", **columns).num_rows == 3
    assert calls[-1] == ("dair-ai/emotion", None, "validation")


def test_hub_dataset_with_string_labels_takes_the_task_names(monkeypatch):
    reviews = datasets.Dataset.from_dict(
        {"review": ["meh", "wow"], "label": ["negative", "positive"]}
    )
    _fake_hub(monkeypatch, reviews)
    ds = load_source("hub:someone/reviews/test", "sentiment")
    assert ds.features == task_features("sentiment")
    assert ds[:] == {"text": ["meh", "wow"], "label": [0, 1]}


def test_hub_split_without_gold_labels_loads_only_as_an_unlabelled_set(monkeypatch):
    glue_test = datasets.Dataset.from_dict(
        {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [-1, -1]},
        features=datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            }
        ),
    )
    _fake_hub(monkeypatch, glue_test)
    ds = load_hub("nyu-mll/glue", "test_matched", config="mnli", require_labels=False)
    assert ds.features == schema_features(None, text_pair=True)
    assert ds[:] == {"text": ["p0", "p1"], "text_pair": ["h0", "h1"]}
    with pytest.raises(
        ValueError, match=r"nyu-mll/glue \(test_matched\): every label in column 'label' is -1"
    ):
        load_hub("nyu-mll/glue", "test_matched", config="mnli")


def test_any_hub_dataset_offline_gets_a_local_files_hint(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"'dair-ai/emotion'.*offline mode is on.*load_local"):
        load_hub("dair-ai/emotion", "test")
