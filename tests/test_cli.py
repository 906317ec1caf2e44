"""The ``nlpcal`` command: train, bench, demo and list, called through ``nlpcal.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import nlpcal.bench as bench
from nlpcal.cli import main
from tests.test_bench import REPO, save_tiny_classifier, tiny_recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny_model"))


def test_train_runs_a_single_run_config(model_dir, tmp_path, capsys):
    config = {
        "model_name_or_path": str(model_dir),
        "train": "sample:sst2/train",
        "calibration": "sample:sst2/dev",
        "test": "sst2=sample:sst2/test",
        "ood": ["imdb=sample:imdb"],
        "max_length": 32,
        "max_train_samples": 32,
        "max_eval_samples": 32,
        "output_dir": str(tmp_path / "run"),
        "calibration_loss": "label_smoothing",
        "loss_kwargs": {"alpha": 0.1},
        "learning_rate": "1e-3",
        "per_device_train_batch_size": 16,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--num_train_epochs", "1"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["loss"] == "label_smoothing" and metrics["calibrator"] == "temperature"
    assert {row["set"] for row in metrics["table"]} == {"sst2", "imdb"}
    out = capsys.readouterr().out
    assert "report.md" in out and "| imdb (OOD) | 32 |" in out


def test_train_rejects_a_benchmark_recipe(capsys):
    recipe = str(REPO / "recipes" / "demo.yaml")
    with pytest.raises(SystemExit):
        main(["train", "--config", recipe])
    assert f"nlpcal bench --recipe {recipe}" in capsys.readouterr().err


def test_bench_runs_and_resumes(model_dir, tmp_path, capsys, monkeypatch):
    recipe = tiny_recipe(model_dir, seeds=[0], methods=[{"calibration_loss": "cross_entropy"}])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["bench", "--recipe", str(path), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'results.md'}\n# Benchmark `tiny`" in printed
    assert "| cross_entropy | temperature |" in printed

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(bench, "train_calibrated", no_training)
    assert main(["bench", "--recipe", str(path), "--output-dir", str(out)]) == 0
    assert "| cross_entropy | temperature |" in capsys.readouterr().out


def test_bench_reports_a_bad_recipe_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"task": "sentiment", "data": {}, "methods": [], "seeds": [0]}))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--recipe", str(path)])
    assert exit_info.value.code == 2
    assert "needs the keys ['train', 'calibration', 'test']" in capsys.readouterr().err


@pytest.fixture
def fake_run(monkeypatch) -> list:
    """Replaces the runner: records (recipe, output folder, resume) and writes a results.md."""
    calls = []

    def run(recipe, output_dir, resume=True):
        calls.append((recipe, output_dir, resume))
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "results.md").write_text("| table |\n")

    monkeypatch.setattr(bench, "run_bench", run)
    return calls


def test_demo_runs_the_packaged_recipe(fake_run, tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path)]) == 0
    ((recipe, output_dir, resume),) = fake_run
    assert recipe == bench.demo_recipe() and output_dir == str(tmp_path) and resume
    assert "| table |" in capsys.readouterr().out


def test_demo_loss_replaces_the_methods(fake_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--loss", "ova", "--no-resume"]) == 0
    ((recipe, output_dir, resume),) = fake_run
    assert [(m.calibration_loss, m.posthoc) for m in recipe.methods] == [("ova", ("exponential",))]
    assert recipe.seeds == bench.demo_recipe().seeds
    assert output_dir == "outputs/demo_ova" and not resume


def test_demo_rejects_an_unknown_loss(fake_run, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--loss", "focal"])
    assert "unknown calibration loss 'focal'" in capsys.readouterr().err and not fake_run


def test_list_names_losses_and_calibrators(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "label_smoothing" in out and "temperature" in out
