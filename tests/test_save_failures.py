"""A failed save leaves the previous save as it was; a new save leaves nothing stale behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nlpcal.hub
from nlpcal import CalibratedModel, CalibratedTrainer, load_calibrated
from nlpcal.posthoc import Calibrator, create_calibrator
from tests.test_trainer import calibrated_trainer, signal_dataset, tiny_model


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return calibrated_trainer(tmp_path_factory.mktemp("train"))


@pytest.fixture
def batch():
    ds = signal_dataset(8, seed=5)
    return {k: torch.tensor(ds[k]) for k in ("input_ids", "attention_mask")}


@pytest.fixture
def previous(trainer, tmp_path, batch):
    """A save next to unrelated content; then the trainer's model and calibrator change.

    Yields the folder, its files' bytes, the parent folder's listing and the saved outputs.
    """
    out = tmp_path / "out"
    trainer.save_model(str(out))
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (out / "logs.txt").write_text("step 5\n")
    outputs = load_calibrated(out)(**batch)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    calibrator = trainer.calibrator
    with torch.no_grad():
        trainer.model.classifier.weight.add_(1.0)
    trainer.calibrator = create_calibrator("temperature").fit(
        3 * torch.randn(20, 3), torch.arange(20) % 3
    )
    yield out, files(out), listing(tmp_path), outputs
    trainer.model.load_state_dict(weights)
    trainer.calibrator = calibrator


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def current(trainer: CalibratedTrainer, batch) -> torch.Tensor:
    model = CalibratedModel(trainer.model.eval(), trainer.calibration_loss, trainer.calibrator)
    return model(**batch)


def write_half_then_fail(path: Path, data: bytes = b'{"half": ') -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    raise OSError(28, "No space left on device")


def fail_weights(monkeypatch, trainer):
    def save_pretrained(directory, **kwargs):
        write_half_then_fail(Path(directory) / "model.safetensors", b"\0" * 64)

    monkeypatch.setattr(trainer.model, "save_pretrained", save_pretrained)


def fail_training_args(monkeypatch, trainer):
    monkeypatch.setattr(torch, "save", lambda obj, path: write_half_then_fail(Path(path)))


def fail_calibrator(monkeypatch, trainer):
    def save(self, directory):
        write_half_then_fail(Path(directory) / "calibrator.safetensors", b"\0" * 8)

    monkeypatch.setattr(Calibrator, "save", save)


def fail_nlpcal_config(monkeypatch, trainer):
    monkeypatch.setattr(
        nlpcal.hub, "write_text_atomic", lambda path, text: write_half_then_fail(path)
    )


@pytest.mark.parametrize(
    "inject", [fail_weights, fail_training_args, fail_calibrator, fail_nlpcal_config]
)
def test_failed_trainer_save_leaves_the_previous_save_intact(
    trainer, previous, batch, monkeypatch, inject
):
    out, before, parent, outputs = previous
    inject(monkeypatch, trainer)
    with pytest.raises(OSError, match="No space left on device"):
        trainer.save_model(str(out))
    monkeypatch.undo()
    assert files(out) == before
    assert listing(out.parent) == parent  # no temporary folder left behind
    torch.testing.assert_close(load_calibrated(out)(**batch), outputs, rtol=0, atol=0)


def test_failed_save_pretrained_leaves_the_previous_save_intact(
    trainer, previous, batch, monkeypatch
):
    out, before, parent, outputs = previous
    fail_calibrator(monkeypatch, trainer)
    model = CalibratedModel(trainer.model, trainer.calibration_loss, trainer.calibrator)
    with pytest.raises(OSError, match="No space left on device"):
        model.save_pretrained(out)
    monkeypatch.undo()
    assert files(out) == before
    assert listing(out.parent) == parent
    torch.testing.assert_close(load_calibrated(out)(**batch), outputs, rtol=0, atol=0)


def test_save_replaces_the_previous_save_and_keeps_other_content(trainer, previous, batch):
    out, before, parent, _ = previous
    trainer.save_model(str(out))
    after = files(out)
    for name in ("checkpoint-5/trainer_state.json", "logs.txt"):
        assert after[name] == before[name]
    assert after["model.safetensors"] != before["model.safetensors"]
    assert listing(out.parent) == parent
    torch.testing.assert_close(load_calibrated(out)(**batch), current(trainer, batch))


def test_save_without_calibrator_removes_the_stale_one(trainer, previous, batch):
    out, _, _, _ = previous
    assert (out / "calibrators" / "temperature").is_dir()
    trainer.calibrator = None
    trainer.save_model(str(out))
    assert not (out / "calibrators").exists()
    loaded = load_calibrated(out)
    assert loaded.calibrator is None
    torch.testing.assert_close(loaded(**batch), current(trainer, batch))


def test_save_pretrained_without_calibrator_removes_the_stale_one(trainer, previous, batch):
    out, before, _, _ = previous
    model = CalibratedModel(trainer.model.eval(), trainer.calibration_loss)
    model.save_pretrained(out)
    assert not (out / "calibrators").exists()
    assert files(out)["logs.txt"] == before["logs.txt"]
    torch.testing.assert_close(load_calibrated(out)(**batch), model(**batch))


def test_save_removes_the_shards_of_an_older_larger_save(trainer, tmp_path, batch):
    out = tmp_path / "out"
    tiny_model("bert", seed=1).save_pretrained(out, max_shard_size="40KB")
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    trainer.save_model(str(out))
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]
    torch.testing.assert_close(load_calibrated(out)(**batch), current(trainer, batch))
