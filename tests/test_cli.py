"""The ``nlpcal`` command: train, bench, demo and list, called through ``nlpcal.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import nlpcal.bench as bench
import nlpcal.bench.run as bench_run
from nlpcal import load_calibrated
from nlpcal.cli import main
from tests.test_bench import save_tiny_classifier, tiny_recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Default output folders (outputs/...) land in the test's folder, not the repository."""
    monkeypatch.chdir(tmp_path)


def user_error(argv: list[str], capsys) -> str:
    """The error line of a command that must fail as argparse does: exit 2, one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nlpcal: error: ") and err.count("\n") == 1, err
    return err


def write_config(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def one_cell_recipe(model_dir: Path, **changes) -> dict:
    method = {"name": "ls", "calibration_loss": "label_smoothing", "loss_kwargs": {"alpha": 0.1}}
    recipe = tiny_recipe(model_dir, **{"seeds": [0], "methods": [method], **changes})
    recipe["data"]["shifted"] = recipe["data"]["shifted"][:1]
    return recipe


def test_train_runs_one_cell_of_a_recipe_and_saves_the_calibrated_model(
    model_dir, tmp_path, capsys
):
    path = write_config(tmp_path / "tiny.yaml", tiny_recipe(model_dir))
    out = tmp_path / "run"
    argv = ["train", "--config", path, "--method", "ls", "--seed", "1", "--output-dir", str(out)]
    assert main([*argv, "--num_train_epochs", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(c["method"], c["seed"]) for c in results["cells"]] == [("ls", 1)]
    assert results["recipe"]["training"]["num_train_epochs"] == "1"
    loaded = load_calibrated(out / "cells" / "ls" / "seed_1" / "model")
    assert loaded.loss.name == "label_smoothing"
    printed = capsys.readouterr().out
    assert f"{out / 'results.md'}" in printed and "| ls | none |" in printed


def test_train_and_a_one_cell_bench_give_identical_numbers(model_dir, tmp_path):
    path = write_config(tmp_path / "cell.yaml", one_cell_recipe(model_dir))
    main(["train", "--config", path, "--output-dir", str(tmp_path / "train")])
    main(["bench", "--recipe", path, "--output-dir", str(tmp_path / "bench")])
    trained, benched = (
        json.loads((tmp_path / name / "results.json").read_text()) for name in ("train", "bench")
    )
    assert trained["cells"][0]["metrics"] == benched["cells"][0]["metrics"]
    assert trained["rows"] == benched["rows"]
    assert (tmp_path / "train" / "cells" / "ls" / "seed_0" / "model").is_dir()
    assert not (tmp_path / "bench" / "cells" / "ls" / "seed_0" / "model").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "has the methods ['ce', 'ls']: choose one with --method"),
        (["--method", "ce"], "has the seeds [0, 1]: choose one with --seed"),
        (["--method", "focal", "--seed", "0"], "has no method 'focal'"),
        (["--method", "ce", "--seed", "0", "--epochs"], "expected --key value pairs"),
    ],
)
def test_train_names_what_to_choose(flags, expected, model_dir, tmp_path, capsys):
    path = write_config(tmp_path / "tiny.yaml", tiny_recipe(model_dir))
    assert expected in user_error(["train", "--config", path, *flags], capsys)


@pytest.mark.parametrize("command", ["train --config", "bench --recipe"])
def test_malformed_yaml_names_the_file_and_line(command, tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("task: sentiment\nseeds: [0, 1\nmethods: []\n")
    err = user_error([*command.split(), str(path)], capsys)
    assert f"{path}:3: invalid YAML" in err


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("broken.json", '{"seeds": [0],}', "broken.json:1: invalid JSON"),
        ("list.yaml", "- seeds\n", "list.yaml must hold a mapping"),
        ("keys.yaml", "seeds: [0]\nmethod: []\n", "unknown keys ['method']"),
    ],
)
def test_train_reports_a_bad_recipe(name, text, expected, tmp_path, capsys):
    (tmp_path / name).write_text(text)
    assert expected in user_error(["train", "--config", str(tmp_path / name)], capsys)


def test_train_reports_a_missing_config(tmp_path, capsys):
    path = tmp_path / "missing.yaml"
    assert f"recipe file not found: {path}" in user_error(["train", "--config", str(path)], capsys)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--learning_rate", "fast"], "--learning_rate"),
        (["--learning_rat", "0.1"], "unknown configuration keys"),
        (["--loss_kwargs", "{alpha: 0.1"], "training must not set ['loss_kwargs']"),
    ],
)
def test_train_reports_bad_training_flags(flags, expected, model_dir, tmp_path, capsys):
    path = write_config(tmp_path / "cell.yaml", one_cell_recipe(model_dir))
    assert expected in user_error(["train", "--config", path, *flags], capsys)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"calibration_loss": "focal"}, "unknown calibration loss 'focal'"),
        ({"calibration_loss": "cross_entropy", "loss_kwargs": {"alpha": 0.1}}, "bad loss_kwargs"),
        ({"calibration_loss": "cross_entropy", "posthoc": ["platt"]}, "unknown calibrator 'platt'"),
        ({"calibration_loss": "label_smoothing", "loss_kwargs": "{alpha: 0.1"}, "loss_kwargs"),
    ],
)
def test_train_checks_the_methods_before_loading_anything(
    method, expected, model_dir, tmp_path, capsys, monkeypatch
):
    def no_loading(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(bench_run, "_load_data", no_loading)
    path = write_config(tmp_path / "cell.yaml", one_cell_recipe(model_dir, methods=[method]))
    assert expected in user_error(["train", "--config", path], capsys)


def test_train_reports_bad_data_found_during_the_run(model_dir, tmp_path, capsys):
    data = tmp_path / "train.tsv"
    data.write_text("text\tlabel\ngood movie\tpositive\nbad movie\tawful\n")
    recipe = one_cell_recipe(model_dir)
    recipe["data"]["train"] = str(data)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", write_config(tmp_path / "cell.yaml", recipe)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # after the progress bars of the data loaded before
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"nlpcal: error: {data}:3: unknown label 'awful' in column 'label'")


def test_train_reports_a_model_folder_that_does_not_exist(model_dir, tmp_path, capsys):
    path = write_config(tmp_path / "cell.yaml", one_cell_recipe(tmp_path / "missing_model"))
    err = user_error(["train", "--config", path], capsys)
    assert f"model '{tmp_path / 'missing_model'}': no such folder" in err


def test_train_reports_a_hub_dataset_it_cannot_download(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    recipe = one_cell_recipe(model_dir)
    recipe["data"]["test"] = {"name": "sst2", "source": "hub:sst2/test"}
    path = write_config(tmp_path / "cell.yaml", recipe)
    assert "cannot download" in user_error(["train", "--config", path], capsys)


def test_a_value_error_inside_a_dependency_keeps_its_traceback(model_dir, tmp_path, monkeypatch):
    def broken_run(*args, **kwargs):
        return int("not a number")  # stands for a bug outside nlpcal's input checks

    monkeypatch.setattr(bench, "run_bench", broken_run)
    path = write_config(tmp_path / "cell.yaml", one_cell_recipe(model_dir))
    with pytest.raises(ValueError, match="invalid literal for int"):
        main(["train", "--config", path])


def test_bench_runs_and_resumes(model_dir, tmp_path, capsys, monkeypatch):
    recipe = tiny_recipe(model_dir, seeds=[0], methods=[{"calibration_loss": "cross_entropy"}])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["bench", "--recipe", str(path), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    # The headline comes first: one small table of ECE before and after calibration.
    head, _, full = printed.partition(f"Full report: {out / 'results.md'}")
    assert "| method | variant | accuracy | ECE in-domain | ECE shifted (mean) |" in head
    assert "| cross_entropy | uncalibrated |" in head and "| cross_entropy | temperature |" in head
    assert "# Benchmark `tiny`" in full
    assert "| cross_entropy | temperature |" in full

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(bench_run, "train_calibrated", no_training)
    assert main(["bench", "--recipe", str(path), "--output-dir", str(out)]) == 0
    assert "| cross_entropy | temperature |" in capsys.readouterr().out


def test_bench_reports_a_bad_recipe_without_a_traceback(tmp_path, capsys):
    recipe = {"task": "sentiment", "data": {}, "methods": [], "seeds": [0]}
    path = write_config(tmp_path / "bad.yaml", recipe)
    err = user_error(["bench", "--recipe", path], capsys)
    assert "data needs the keys ['test']" in err


def test_bench_reports_an_unknown_loss(model_dir, tmp_path, capsys):
    recipe = tiny_recipe(model_dir, methods=[{"calibration_loss": "focal"}])
    path = write_config(tmp_path / "tiny.yaml", recipe)
    assert "unknown calibration loss 'focal'" in user_error(["bench", "--recipe", path], capsys)


def test_bench_reports_a_missing_recipe(tmp_path, capsys):
    path = tmp_path / "missing.yaml"
    assert f"recipe file not found: {path}" in user_error(["bench", "--recipe", str(path)], capsys)


@pytest.fixture
def fake_run(monkeypatch) -> list:
    """Replaces the runner: records (recipe, output folder, resume), writes a results.md and
    returns results without rows."""
    calls = []

    def run(recipe, output_dir, resume=True, methods=None):
        calls.append((recipe, output_dir, resume))
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "results.md").write_text("| table |\n")
        return {"recipe": recipe.to_dict(), "rows": []}

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
    assert "unknown calibration loss 'focal'" in user_error(["demo", "--loss", "focal"], capsys)
    assert not fake_run


@pytest.mark.parametrize("command", ["train", "bench"])
def test_help_lists_the_recipe_keys(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "docs/recipes.md" in out
    assert "data.test, data.shifted[]: source, text_column" in out
    assert "methods[]: name, calibration_loss, loss_kwargs, posthoc, posthoc_kwargs" in out


def test_list_names_losses_and_calibrators(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "label_smoothing" in out and "temperature" in out and "integrated_gradients" in out


# -- nlpcal explain --------------------------------------------------------------------------------
def test_explain_prints_each_file_and_writes_a_self_contained_heat_map(model_dir, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a fine film\t1\nawful\tLABEL_0\n\nok then\t0\n")
    (tmp_path / "ood.txt").write_text("the pasta was cold\n")
    argv = ["explain", "--model", str(model_dir), "--texts", "in.txt", "ood.txt"]
    assert main([*argv, "--max-texts", "2", "--html", "map.html", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "== in.txt" in out and "== ood.txt" in out and "wrote map.html" in out
    assert out.count("strongest:") == 3  # two of the three in-domain texts, one OOD text
    assert "label LABEL_1" in out and "label LABEL_0" in out and "\x1b[" not in out
    page = (tmp_path / "map.html").read_text()
    assert "grid-template-columns: repeat(2, 1fr)" in page and "<script" not in page
    assert page.count('class="example"') == 3

    assert main([*argv, "--color", "--method", "saliency"]) == 0
    assert "\x1b[48;2;" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "lines", "message"),
    [
        (["--method", "lime"], "fine", "unknown attribution method 'lime'; available: attention_"),
        ([], "fine\tgreat", "in.txt, line 1: label 'great' is neither a class number below 2"),
        ([], "\n\n", "in.txt has no text"),
        (["--max-texts", "0"], "fine", "--max-texts must be >= 1, got 0"),
        (["./in.txt"], "fine", "their names must differ: ['in.txt', 'in.txt']"),
    ],
)
def test_explain_reports_bad_input_as_a_user_error(
    model_dir, tmp_path, capsys, extra, lines, message
):
    (tmp_path / "in.txt").write_text(lines)
    argv = ["explain", "--model", str(model_dir), "--texts", "in.txt", *extra]
    assert message in user_error(argv, capsys)
