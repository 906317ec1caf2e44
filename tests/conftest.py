"""Shared fixtures: tiny random transformer classifiers and batches, built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOCAB_SIZE = 100
NUM_LABELS = 3


def tiny_model(arch: str = "bert", num_labels: int = NUM_LABELS, seed: int = 0):
    """A randomly initialised 2-layer sequence classifier of the given architecture."""
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        DistilBertConfig,
        RobertaConfig,
    )

    common = dict(vocab_size=VOCAB_SIZE, num_labels=num_labels)
    if arch == "bert":
        config = BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
            **common,
        )
    elif arch == "roberta":
        config = RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=66,
            pad_token_id=1,
            **common,
        )
    elif arch == "distilbert":
        config = DistilBertConfig(
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=37,
            max_position_embeddings=64,
            **common,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    # Dropout off so that a forward pass is a deterministic function of the weights.
    for key in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "dropout",
        "attention_dropout",
        "seq_classif_dropout",
        "classifier_dropout",
    ):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def tiny_batch(batch_size: int = 8, seq_len: int = 12, num_labels: int = NUM_LABELS, seed: int = 0):
    """Token ids with ragged right padding, an attention mask and labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB_SIZE, (batch_size, seq_len), generator=g)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=g)
    attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = torch.randint(0, num_labels, (batch_size,), generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture(params=["bert", "roberta", "distilbert"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
