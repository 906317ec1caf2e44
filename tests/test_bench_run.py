"""The runner's fine-tuning: the classifier ``train_calibrated`` loads."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.utils import logging as hf_logging

from nlpcal.bench.run import _load_classifier
from tests.conftest import tiny_model


@pytest.fixture
def encoder_dir(tmp_path) -> Path:
    """A tiny random base encoder (no classification head), as sentence encoders ship."""
    tiny_model("bert").bert.save_pretrained(tmp_path)
    return tmp_path


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def load_reports() -> list[logging.LogRecord]:
    """The load reports transformers logs (its logger does not propagate to the root logger)."""
    library, handler = logging.getLogger("transformers"), _Records()
    library.addHandler(handler)
    yield handler.records
    library.removeHandler(handler)


def test_a_new_head_on_a_base_encoder_loads_silently(encoder_dir, load_reports, capfd):
    model = _load_classifier(str(encoder_dir), ["negative", "positive"])
    assert capfd.readouterr() == ("", "")
    assert not [r for r in load_reports if "LOAD REPORT" in r.getMessage()]
    assert model.config.id2label == {0: "negative", 1: "positive"}
    saved = load_file(encoder_dir / "model.safetensors")
    weight = "encoder.layer.1.output.dense.weight"
    assert torch.equal(model.bert.state_dict()[weight], saved[weight])
    assert hf_logging.is_progress_bar_enabled()


def test_missing_encoder_weights_are_still_reported(encoder_dir, load_reports):
    weights = encoder_dir / "model.safetensors"
    kept = {k: v for k, v in load_file(weights).items() if "layer.1." not in k}
    save_file(kept, weights, metadata={"format": "pt"})
    _load_classifier(str(encoder_dir), ["negative", "positive"])
    (report,) = [r.getMessage() for r in load_reports if "LOAD REPORT" in r.getMessage()]
    assert "bert.encoder.layer.1.output.dense.weight" in report
