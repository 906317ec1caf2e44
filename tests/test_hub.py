"""Saving, pushing and loading calibrated models; the Hub is replaced by local folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nlpcal import CalibratedTrainer, load_calibrated
from tests.test_trainer import make_args, signal_dataset, tiny_model


@pytest.fixture
def trained(tmp_path):
    args = make_args(tmp_path, calibration_set="dev", max_steps=6)
    evals = {"test": signal_dataset(40, seed=1), "dev": signal_dataset(48, seed=3)}
    trainer = CalibratedTrainer(
        tiny_model("bert"), args, train_dataset=signal_dataset(), eval_dataset=evals
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))
    return trainer, metrics, tmp_path / "saved"


def batch(n=8):
    ds = signal_dataset(n, seed=5)
    return {k: torch.tensor(ds[k]) for k in ("input_ids", "attention_mask")}


class FakeHub:
    """Stands in for ``huggingface_hub.HfApi`` and ``snapshot_download`` with a local folder."""

    def __init__(self, root: Path, fail: bool = False) -> None:
        self.root, self.fail, self.created = root, fail, []

    def api(self, token=None):
        return self

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.created.append(repo_id)

    def upload_folder(self, repo_id, folder_path, commit_message):
        if self.fail:
            raise ConnectionError("network down")
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"commit to {repo_id}"

    def snapshot_download(self, repo_id, **kwargs):
        return str(self.root / repo_id)


def test_push_then_load_by_repo_id_round_trips(trained, tmp_path, monkeypatch):
    import huggingface_hub

    _, metrics, saved = trained
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)

    model = load_calibrated(saved)
    assert model.push_to_hub("me/calibrated", metrics=metrics) == "commit to me/calibrated"
    assert hub.created == ["me/calibrated"]
    card = (tmp_path / "hub" / "me/calibrated" / "README.md").read_text()
    assert "`temperature`" in card and "| test | ece |" in card

    pulled = load_calibrated("me/calibrated")
    assert torch.allclose(pulled(**batch()), model(**batch()))


def test_failed_push_leaves_the_local_copy_intact(trained, tmp_path, monkeypatch):
    import huggingface_hub

    _, _, saved = trained
    before = {p.name: p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub(tmp_path / "hub", fail=True).api)
    with pytest.raises(ConnectionError, match="network down"):
        load_calibrated(saved).push_to_hub("me/calibrated")
    assert {p.name: p.read_bytes() for p in saved.rglob("*") if p.is_file()} == before


def test_trainer_model_card_has_the_calibration_section(trained):
    trainer, _, _ = trained
    trainer.create_model_card(model_name="tiny")
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert "## Calibration (nlpcal)" in card
    assert "Fitted temperature" in card
    assert "| test | nll |" in card


def test_load_without_nlpcal_config_says_so(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="not saved by nlpcal"):
        load_calibrated(tmp_path / "plain")


def test_predict_proba_needs_a_tokenizer(trained):
    _, _, saved = trained
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_calibrated(saved).predict_proba(["text"])
