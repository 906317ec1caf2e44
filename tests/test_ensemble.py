"""Deep ensembles: the average of members by hand, save/load, refusing mismatched members."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertTokenizerFast

from nlpcal.ensemble import ENSEMBLE_CONFIG, DeepEnsemble
from nlpcal.hub import CalibratedModel
from nlpcal.losses import create_loss
from nlpcal.posthoc import create_calibrator
from tests.conftest import tiny_model

WORDS = ["good", "bad", "film", "plot", "dull", "fine", "great", "awful", "a", "the", "was"]
TEXTS = ["a good film", "the plot was dull", "awful", "great great film", "fine"]


def tokenizer(words=WORDS):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})


def member(tmp_path, seed: int, temperature: float | None, words=WORDS, labels=None):
    model = tiny_model("bert", seed=seed)
    if labels is not None:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
    calibrator = None
    if temperature is not None:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(2000, 3, generator=g)
        y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
        calibrator = create_calibrator("temperature").fit(temperature * z, y)
    return CalibratedModel(model, create_loss("cross_entropy"), calibrator, tokenizer(words))


def by_hand(members, texts, calibrated=True):
    """Softmax of each member's logits, divided by its temperature, averaged over members."""
    probs = []
    for m in members:
        batch = m.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            z = m.model(**batch).logits
        t = m.calibrator.temperature if (calibrated and m.calibrator is not None) else 1.0
        probs.append((z / t).softmax(-1))
    return sum(probs) / len(probs)


def test_the_average_of_members_equals_a_hand_computation(tmp_path):
    assert 1 not in tokenizer()(TEXTS[1])["input_ids"]  # real words, not [UNK]
    members = [member(tmp_path, 0, 3.0), member(tmp_path, 1, 0.5), member(tmp_path, 2, None)]
    assert members[0].calibrator.temperature > 2 and members[1].calibrator.temperature < 1
    ensemble = DeepEnsemble(members)
    expected = by_hand(members, TEXTS)
    torch.testing.assert_close(ensemble.predict_proba(TEXTS), expected)
    labels, confidence = ensemble.predict(TEXTS)
    assert torch.equal(labels, expected.argmax(-1))
    torch.testing.assert_close(confidence, expected.max(-1).values)
    raw = DeepEnsemble(members, calibrated=False).predict_proba(TEXTS)
    torch.testing.assert_close(raw, by_hand(members, TEXTS, calibrated=False))
    assert not torch.allclose(raw, expected)


@pytest.mark.parametrize("calibrated", [True, False])
def test_save_and_load_round_trip(tmp_path, calibrated):
    members = [member(tmp_path, 0, 3.0), member(tmp_path, 1, 0.5)]
    ensemble = DeepEnsemble(members, names=["first", "second"], calibrated=calibrated)
    ensemble.save_pretrained(tmp_path / "ens")
    meta = json.loads((tmp_path / "ens" / ENSEMBLE_CONFIG).read_text())
    assert meta["calibrated"] is calibrated
    assert [m["name"] for m in meta["members"]] == ["first", "second"]
    loaded = DeepEnsemble.from_pretrained(tmp_path / "ens")
    assert len(loaded) == 2 and loaded.names == ["first", "second"]
    torch.testing.assert_close(loaded.predict_proba(TEXTS), ensemble.predict_proba(TEXTS))


def test_members_from_folders(tmp_path):
    members = [member(tmp_path, 0, 3.0), member(tmp_path, 1, None)]
    for i, m in enumerate(members):
        m.save_pretrained(tmp_path / f"m{i}")
    folders = [tmp_path / "m0", tmp_path / "m1"]
    ensemble = DeepEnsemble.from_pretrained(folders)
    torch.testing.assert_close(ensemble.predict_proba(TEXTS), by_hand(members, TEXTS))
    uncalibrated = DeepEnsemble.from_pretrained(folders, calibrated=False)
    torch.testing.assert_close(
        uncalibrated.predict_proba(TEXTS), by_hand(members, TEXTS, calibrated=False)
    )


def test_members_with_other_labels_or_tokenizers_are_refused(tmp_path):
    ok = member(tmp_path, 0, None, labels=["neg", "neu", "pos"])
    other_labels = member(tmp_path, 1, None, labels=["neg", "pos", "neu"])
    with pytest.raises(ValueError, match=r"different labels: a has \['neg', 'neu', 'pos'\].*b has"):
        DeepEnsemble([ok, other_labels], names=["a", "b"])
    other_vocab = member(tmp_path, 2, None, words=[*WORDS, "extra"], labels=["neg", "neu", "pos"])
    with pytest.raises(ValueError, match=r"members \['c'\] use a different tokenizer than a"):
        DeepEnsemble([ok, other_vocab], names=["a", "c"])
    with pytest.raises(ValueError, match="at least one member"):
        DeepEnsemble([])
