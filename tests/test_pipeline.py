"""The experiment pipeline: configs, and the classifier ``train_calibrated`` fine-tunes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from nlpcal.pipeline import _load_classifier, parse_config


@pytest.mark.parametrize(("overrides", "expected"), [((), []), (("--ood_sets", "imdb"), ["imdb"])])
def test_an_empty_list_in_a_config_empties_the_field(overrides, expected):
    (args,) = parse_config(
        {"ood_sets": [], "output_dir": "out", "report_to": "none"}, overrides=overrides
    )
    assert args.ood_sets == expected


def test_an_empty_list_for_a_single_value_is_rejected():
    with pytest.raises(ValueError, match="--calibration_loss.*expected one argument"):
        parse_config({"calibration_loss": [], "output_dir": "out"})


@pytest.fixture
def encoder_dir(tmp_path) -> Path:
    """A tiny random base encoder (no classification head), as sentence encoders ship."""
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path)
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
