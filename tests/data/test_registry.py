"""The dataset registry and the shared label schema."""

from __future__ import annotations

import pytest

from nlpcal.data import (
    LABEL_NAMES,
    DatasetSpec,
    Task,
    get_dataset_spec,
    list_datasets,
    register_dataset,
    task_features,
)


def test_builtin_datasets_and_their_tasks():
    assert list_datasets() == [
        "ag_news",
        "amazon",
        "amazon_polarity",
        "imdb",
        "imdb_reviews",
        "mnli",
        "snli",
        "sst2",
        "yelp",
        "yelp_polarity",
    ]
    tasks = {name: get_dataset_spec(name).task for name in list_datasets()}
    assert tasks["sst2"] is tasks["imdb"] is tasks["amazon_polarity"] is Task.SENTIMENT
    assert tasks["snli"] is tasks["mnli"] is Task.NLI
    assert tasks["ag_news"] is Task.TOPIC


def test_sentence_sets_are_local_only_and_review_sets_hub_only():
    for name in ("imdb", "yelp", "amazon"):
        spec = get_dataset_spec(name)
        assert spec.hub_id is None
        assert "Sentiment Labelled Sentences" in spec.description
    for name in ("imdb_reviews", "yelp_polarity", "amazon_polarity"):
        spec = get_dataset_spec(name)
        assert spec.hub_id is not None
        assert not spec.local_files
        assert set(spec.hub_columns.values()) == {"text", "label"}


def test_nli_specs_map_premise_and_hypothesis():
    for name in ("snli", "mnli"):
        assert dict(get_dataset_spec(name).hub_columns) == {
            "premise": "text",
            "hypothesis": "text_pair",
            "label": "label",
        }


def test_label_names_are_shared_per_task():
    assert task_features("sentiment")["label"].names == ["negative", "positive"]
    assert task_features(Task.NLI)["label"].names == ["entailment", "neutral", "contradiction"]
    assert list(task_features("nli")) == ["text", "text_pair", "label"]
    assert task_features("topic")["label"].names == list(LABEL_NAMES[Task.TOPIC])
    with pytest.raises(ValueError, match="'sst'"):
        task_features("sst")


def test_registration_is_checked():
    with pytest.raises(ValueError, match="'sst2' is already registered"):
        register_dataset(get_dataset_spec("sst2"))
    with pytest.raises(ValueError, match="lowercase snake_case, got 'My-Data'"):
        DatasetSpec("My-Data", Task.SENTIMENT, "x", local_files={"test": "x.tsv"})
    with pytest.raises(ValueError, match="needs local_files or a hub_id"):
        DatasetSpec("nothing", Task.SENTIMENT, "x")
    with pytest.raises(ValueError, match="no hub_splits/hub_columns"):
        DatasetSpec("half", Task.SENTIMENT, "x", hub_id="someone/data")
    with pytest.raises(TypeError):
        get_dataset_spec("sst2").local_files["extra"] = "x.tsv"
