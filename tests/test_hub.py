"""Saving, pushing and loading calibrated models; the Hub is replaced by local folders."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)

from nlpcal import CalibratedTrainer, load_calibrated
from nlpcal.hub import HubError
from tests.test_trainer import calibrated_trainer, make_args, signal_dataset, tiny_model

CALIBRATOR = "calibrators/temperature"  # where the trained fixture's calibrator is saved


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
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
    assert "`temperature`" in card and "| test | ECE |" in card

    pulled = load_calibrated("me/calibrated")
    assert torch.allclose(pulled(**batch()), model(**batch()))


def test_failed_push_leaves_the_local_copy_intact(trained, tmp_path, monkeypatch):
    import huggingface_hub

    _, _, saved = trained
    before = {p.name: p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub(tmp_path / "hub", fail=True).api)
    with pytest.raises(HubError, match="me/calibrated failed: cannot reach the Hub"):
        load_calibrated(saved).push_to_hub("me/calibrated")
    assert {p.name: p.read_bytes() for p in saved.rglob("*") if p.is_file()} == before


def test_trainer_model_card_has_the_calibration_section(trained):
    trainer, _, _ = trained
    trainer.create_model_card(model_name="tiny")
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert "## Calibration (nlpcal)" in card
    assert "Fitted temperature" in card
    assert "| test | NLL |" in card


def test_load_without_nlpcal_config_says_so(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="not saved by nlpcal"):
        load_calibrated(tmp_path / "plain")


def test_predict_proba_needs_a_tokenizer(trained):
    _, _, saved = trained
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_calibrated(saved).predict_proba(["text"])


def http_error(cls, status: int):
    """A ``huggingface_hub`` HTTP error as raised for a response with ``status``."""
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} Client Error", response=response)


def connection_error(module: str, name: str):
    return lambda: getattr(pytest.importorskip(module), name)(
        "[Errno -2] Name or service not known"
    )


@pytest.mark.parametrize(
    "step, make_error, reason",
    [
        (
            "create_repo",
            lambda: LocalTokenNotFoundError("no token"),
            "no Hugging Face token",
        ),
        (
            "create_repo",
            lambda: OfflineModeIsEnabled("offline"),
            "offline mode: HF_HUB_OFFLINE is set",
        ),
        ("create_repo", connection_error("requests", "ConnectionError"), "cannot reach the Hub"),
        ("upload_folder", connection_error("httpx2", "ConnectError"), "cannot reach the Hub"),
        (
            "upload_folder",
            lambda: http_error(HfHubHTTPError, 401),
            r"the Hub refused the token \(HTTP 401\)",
        ),
    ],
    ids=["no-token", "offline", "requests-connection", "httpx2-connection", "http-401"],
)
def test_failed_push_names_the_hub_the_repo_and_the_reason(
    trained, monkeypatch, step, make_error, reason
):
    import huggingface_hub

    error = make_error()

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, step, fail)
    with pytest.raises(HubError, match=f"^pushing to the Hub repository me/model failed: {reason}"):
        load_calibrated(trained[2]).push_to_hub("me/model", token="hf_x")


@pytest.fixture
def no_hub(monkeypatch):
    """Replaces ``snapshot_download``; ``calls`` records the repository ids it was asked for."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append(repo_id)
        raise http_error(RepositoryNotFoundError, 404)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.mark.parametrize("path", ["./missing", "../missing", "~/nlpcal-missing", "runs/a/missing"])
def test_missing_local_path_is_never_sent_to_the_hub(tmp_path, monkeypatch, no_hub, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"^no folder {re.escape(path)}$"):
        load_calibrated(path)
    assert no_hub == []


def test_missing_absolute_path_is_never_sent_to_the_hub(tmp_path, no_hub):
    with pytest.raises(FileNotFoundError, match=f"^no folder {re.escape(str(tmp_path))}"):
        load_calibrated(tmp_path / "missing")
    assert no_hub == []


def test_missing_repo_id_is_tried_on_the_hub(no_hub):
    with pytest.raises(
        FileNotFoundError,
        match=r"^no folder me/missing and no Hub repository me/missing \(not found on the Hub",
    ):
        load_calibrated("me/missing")
    assert no_hub == ["me/missing"]


def test_missing_repo_id_offline_says_so(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        FileNotFoundError,
        match=r"^no folder missing and no Hub repository missing \(offline mode: HF_HUB_OFFLINE",
    ):
        load_calibrated("missing", cache_dir=tmp_path / "cache")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rewrite(text: str):
    return lambda path: path.write_text(text)


def drop_loss(path: Path) -> None:
    meta = json.loads(path.read_text())
    del meta["loss"]
    path.write_text(json.dumps(meta))


def name_another_calibrator(path: Path) -> None:
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "calibrators": {"temperature": "vector"}}))


@pytest.mark.parametrize(
    "name, damage, problem",
    [
        ("model.safetensors", truncate, "is corrupted or truncated"),
        (f"{CALIBRATOR}/calibrator.safetensors", truncate, "is corrupted or truncated"),
        (f"{CALIBRATOR}/calibrator.safetensors", rewrite("garbage"), "is corrupted or truncated"),
        (f"{CALIBRATOR}/calibrator.json", truncate, "is corrupted: not valid JSON"),
        (f"{CALIBRATOR}/calibrator.json", rewrite('{"config": {}}'), r"lacks the keys \['name'\]"),
        ("nlpcal_config.json", truncate, "is corrupted: not valid JSON"),
        ("nlpcal_config.json", rewrite("[]"), "holds a JSON list"),
        ("nlpcal_config.json", drop_loss, r"lacks the keys \['loss'\]"),
        ("nlpcal_config.json", name_another_calibrator, "names the calibrator 'vector' but"),
        ("nlpcal_config.json", rewrite('{"loss": "nope", "calibrator": null}'), "available"),
    ],
    ids=[
        "truncated-weights",
        "truncated-calibrator-weights",
        "garbage-calibrator-weights",
        "truncated-calibrator-config",
        "calibrator-config-without-name",
        "truncated-nlpcal-config",
        "nlpcal-config-not-an-object",
        "nlpcal-config-without-loss",
        "nlpcal-config-other-calibrator",
        "nlpcal-config-unknown-loss",
    ],
)
def test_damaged_file_is_named_in_one_clear_error(trained, tmp_path, name, damage, problem):
    folder = shutil.copytree(trained[2], tmp_path / "copy")
    damage(folder / name)
    with pytest.raises(ValueError, match=f"^{re.escape(str(folder / name))} .*{problem}"):
        load_calibrated(folder)


def test_calibrator_weights_of_another_calibrator_are_named(trained, tmp_path):
    from nlpcal.posthoc import create_calibrator

    folder = shutil.copytree(trained[2], tmp_path / "copy")
    create_calibrator("vector").fit(torch.randn(12, 3), torch.arange(12) % 3).save(tmp_path / "v")
    shutil.copy(tmp_path / "v" / "calibrator.safetensors", folder / CALIBRATOR)
    weights = folder / CALIBRATOR / "calibrator.safetensors"
    with pytest.raises(ValueError, match=f"^{re.escape(str(weights))} does not hold the weights"):
        load_calibrated(folder)


@pytest.mark.parametrize(
    "loss, posthoc, calibrator",
    [
        ("ova", "auto", "exponential"),
        ("double_head", "auto", "temperature"),
        ("cross_entropy", "adats", "adats"),
    ],
)
def test_trained_model_round_trips_through_load_calibrated(tmp_path, loss, posthoc, calibrator):
    trainer = calibrated_trainer(
        tmp_path,
        calibration_loss=loss,
        posthoc=posthoc,
        posthoc_kwargs={"encoder_hidden": [64, 32, 32]} if posthoc == "adats" else None,
    )
    assert trainer.calibrator.name == calibrator
    trainer.save_model(str(tmp_path / "saved"))
    test = signal_dataset(8, seed=5)
    preds = trainer.predictions(test)
    with torch.no_grad():
        expected = trainer.calibrator(preds.logits, preds.features)
    loaded = load_calibrated(tmp_path / "saved")
    assert loaded.loss.name == loss and loaded.calibrator.name == calibrator
    torch.testing.assert_close(loaded(**batch(8)), expected, rtol=0, atol=1e-5)


def test_several_calibrators_round_trip_with_the_active_one_loaded_by_default(tmp_path):
    trainer = calibrated_trainer(
        tmp_path, posthoc=["temperature", "vector"], active_calibrator="vector"
    )
    trainer.evaluate()
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| eval set | metric | uncalibrated | temperature | vector |" in card
    assert re.search(r"`vector` \{.*\} — applied when loaded", card)
    trainer.save_model(str(tmp_path / "saved"))
    meta = json.loads((tmp_path / "saved" / "nlpcal_config.json").read_text())
    assert meta["calibrators"] == {"temperature": "temperature", "vector": "vector"}
    assert meta["active_calibrator"] == "vector"
    preds = trainer.predictions(signal_dataset(8, seed=5))
    uncalibrated = trainer.variant_outputs(preds, {})["none"].class_probs
    for variant in (None, "temperature", "vector", "none"):
        loaded = load_calibrated(tmp_path / "saved", calibrator=variant)
        name = variant or "vector"
        expected = uncalibrated
        if name != "none":
            expected = trainer.variant_outputs(preds, {name: trainer.calibrators[name]})[name]
            expected = expected.class_probs
            assert loaded.calibrator.name == loaded.variant == name
        torch.testing.assert_close(loaded(**batch(8)).softmax(-1), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"has no calibrator 'adats'; saved variants: \['temp"):
        load_calibrated(tmp_path / "saved", calibrator="adats")


def test_a_folder_saved_with_one_calibrator_folder_still_loads(trained, tmp_path):
    """Saves from before several calibrators: ``calibrator/`` and ``"calibrator": name``."""
    folder = shutil.copytree(trained[2], tmp_path / "old")
    (folder / CALIBRATOR).rename(folder / "calibrator")
    (folder / "calibrators").rmdir()
    meta = json.loads((folder / "nlpcal_config.json").read_text())
    del meta["calibrators"], meta["active_calibrator"]
    (folder / "nlpcal_config.json").write_text(json.dumps({**meta, "calibrator": "temperature"}))
    expected = load_calibrated(trained[2])(**batch())
    old = load_calibrated(folder)
    assert old.calibrator.name == "temperature"
    torch.testing.assert_close(old(**batch()), expected, rtol=0, atol=0)
    old.save_pretrained(folder)  # a new save replaces the old layout
    assert not (folder / "calibrator").exists() and (folder / CALIBRATOR).is_dir()
    torch.testing.assert_close(load_calibrated(folder)(**batch()), expected, rtol=0, atol=0)
