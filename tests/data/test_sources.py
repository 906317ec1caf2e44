"""Source strings (``sample:``, ``shared:``, ``hub:``, paths) as used by configs and the CLI."""

from __future__ import annotations

import datasets
import pytest

from nlpcal.data import load_dataset_by_name, load_sample, load_source


def test_sample_sources():
    assert load_source("sample:sst2/train", "sentiment")[:5] == load_sample("sst2", "train")[:5]
    assert load_source("sample:amazon", "sentiment").num_rows == 1_000
    with pytest.raises(ValueError, match="is sentiment data, but the task is 'nli'"):
        load_source("sample:imdb", "nli")


def test_shared_sources(shared_data):
    ds = load_source("shared:snli/test", "nli", data_dir=shared_data)
    assert ds[:3] == load_dataset_by_name("snli", "test", shared_data)[:3]
    with pytest.raises(ValueError, match="pass data_dir"):
        load_source("shared:snli/test", "nli")
    with pytest.raises(ValueError, match="is nli data, but the task is 'sentiment'"):
        load_source("shared:mnli/validation_matched", "sentiment", data_dir=shared_data)
    with pytest.raises(ValueError, match="needs a split: shared:NAME/SPLIT"):
        load_source("shared:sst2", "sentiment", data_dir=shared_data)


def test_file_and_hub_sources(tmp_path, monkeypatch):
    path = tmp_path / "mine.tsv"
    path.write_text("text\tlabel\nlovely\tpositive\n", encoding="utf-8")
    assert load_source(str(path), "sentiment")[:] == {"text": ["lovely"], "label": [1]}
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="data_dir="):
        load_source("hub:ag_news/test", "topic")


def test_sources_without_a_task(tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_text("body,team\nrefund please,billing\napp crashes,tech\n", encoding="utf-8")
    ds = load_source(str(path), text_column="body", label_column="team")
    assert ds.features["label"].names == ["billing", "tech"]
    assert ds[:] == {"text": ["refund please", "app crashes"], "label": [0, 1]}
    assert load_source("sample:yelp")[:5] == load_sample("yelp")[:5]
    with pytest.raises(ValueError, match=r"needs a split: hub:NAME/SPLIT or hub:OWNER/DATASET"):
        load_source("hub:sst2")
