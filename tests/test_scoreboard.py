"""benchmarks/scoreboard.py: BENCHMARKS.md rebuilt from result files alone."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from tests.test_bench import REPO, finished, model_dir  # noqa: F401  (fixtures)

spec = importlib.util.spec_from_file_location("scoreboard", REPO / "benchmarks" / "scoreboard.py")
scoreboard = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scoreboard)


def test_the_scoreboard_has_every_method_and_variant_of_a_run(finished, tmp_path):  # noqa: F811
    out, results = finished
    text = scoreboard.scoreboard({"Tiny shift": out})
    assert "## Tiny shift" in text and results["environment"]["command"] in text
    for method, variants in {"ce": ("temperature", "vector"), "ls": ()}.items():
        for variant in ("none", "ensemble", *variants, *(f"ensemble+{v}" for v in variants)):
            assert f"| `{method}` | {variant} |" in text
    # ECE x 100, mean ± std over the two seeds, averaged over the shifted sets (imdb, sst2_c5).
    cells = [c for c in results["cells"] if c["method"] == "ce"]
    per_seed = [
        (c["metrics"]["imdb"]["none"]["ece_10"] + c["metrics"]["sst2_c5"]["none"]["ece_10"]) / 2
        for c in cells
    ]
    assert (
        f"| {scoreboard._fmt(per_seed, 100)} |" in text.split("| `ce` | none |")[1].split("\n")[0]
    )


def test_a_run_with_a_missing_cell_fails(finished, tmp_path):  # noqa: F811
    out, _ = finished
    copy = shutil.copytree(out, tmp_path / "run")
    results = json.loads((copy / "results.json").read_text())
    results["cells"] = results["cells"][1:]
    (copy / "results.json").write_text(json.dumps(results))
    with pytest.raises(ValueError, match=r"no result for the cells \['ce/seed 0'\]"):
        scoreboard.scoreboard({"Tiny": copy})


def test_an_unfinished_run_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not finished"):
        scoreboard.load_run(tmp_path)


def _selection(*rows):
    return {
        "selection": [
            {
                "method": m,
                "variant": v,
                "values": {
                    "accuracy": {"mean": a, "std": 0.0},
                    "ece": {"mean": e, "std": 0.0},
                    "nll": {"mean": n, "std": 0.0},
                },
            }
            for m, v, a, e, n in rows
        ]
    }


def test_the_recommended_recipe_is_chosen_on_the_calibration_split_at_equal_accuracy():
    results = _selection(
        ("cross_entropy", "none", 0.850, 0.120, 0.60),
        ("cross_entropy", "temperature", 0.850, 0.040, 0.40),
        ("regmixup", "adats", 0.840, 0.010, 0.30),  # best ECE, but 1 point less accurate
        ("label_smoothing", "temperature", 0.848, 0.030, 0.39),
        ("label_smoothing", "vector", 0.847, 0.030, 0.38),  # ECE tie: lower NLL wins
    )
    chosen = scoreboard.nominate(results)
    assert (chosen["method"], chosen["variant"]) == ("label_smoothing", "vector")
    assert scoreboard.nominate({"selection": []}) is None
    assert scoreboard.nominate({}) is None


def test_a_method_adapted_on_the_calibration_split_is_not_nominated():
    results = _selection(
        ("cross_entropy", "temperature", 0.850, 0.040, 0.40),
        ("ar_adals", "none", 0.850, 0.010, 0.30),  # adapted on these rows: not held out
        ("label_smoothing", "none", 0.850, 0.020, 0.30),
    )
    results["recipe"] = {
        "methods": [
            {"name": "cross_entropy", "calibration_loss": "cross_entropy"},
            {"name": "ar_adals", "calibration_loss": "ar_adals", "loss_kwargs": {}},
            {"name": "label_smoothing", "calibration_loss": "label_smoothing"},
        ]
    }
    assert scoreboard.trained_on_calibration(results) == ["ar_adals"]
    assert scoreboard.nominate(results)["method"] == "label_smoothing"


def test_the_scoreboard_names_the_recommended_recipe(finished):  # noqa: F811
    out, results = finished
    text = scoreboard.scoreboard({"Tiny shift": out})
    # the tiny run has no cross_entropy method, so no baseline and no nomination
    assert "Recommended recipe" not in text
    renamed = json.loads(json.dumps(results).replace('"ce"', '"cross_entropy"'))
    chosen = scoreboard.nominate(renamed)
    assert chosen is not None
    assert f"`{chosen['method']}` {chosen['variant']}" in scoreboard.section("T", out, renamed)


def test_a_partial_report_says_which_methods_are_still_running(finished, tmp_path):  # noqa: F811
    """`nlpcal bench --methods` reported part of the recipe: the section says what is pending."""
    out, _ = finished
    copy = shutil.copytree(out, tmp_path / "run")
    assert "In progress" not in scoreboard.scoreboard({"Whole": copy})
    results = json.loads((copy / "results.json").read_text())
    results["recipe"]["methods"] = [m for m in results["recipe"]["methods"] if m["name"] == "ce"]
    results["cells"] = [c for c in results["cells"] if c["method"] == "ce"]
    results["rows"] = [r for r in results["rows"] if r["method"] == "ce"]
    results["selection"] = [r for r in results["selection"] if r["method"] == "ce"]
    (copy / "results.json").write_text(json.dumps(results))
    text = scoreboard.scoreboard({"Part": copy})
    assert "**In progress**: the run's recipe also lists `ls`, not finished yet" in text
    assert "| `ls` |" not in text


def test_the_closest_method_is_the_lowest_shifted_ece_at_equal_accuracy():
    rows = [
        {"method": "cross_entropy", "variant": "temperature", "accuracy_in": [0.80, 0.80],
         "ece_10_out": [0.06, 0.07]},
        {"method": "a", "variant": "none", "accuracy_in": [0.79, 0.79], "ece_10_out": [0.01]},
        {"method": "b", "variant": "ensemble", "accuracy_in": [0.80], "ece_10_out": [0.02]},
        {"method": "c", "variant": "adats", "accuracy_in": [0.797, 0.797], "ece_10_out": [0.04]},
    ]  # fmt: skip
    closest = scoreboard._closest(rows, rows[0])
    assert (closest["method"], closest["variant"]) == ("c", "adats")  # a: 1 point less accurate
    assert scoreboard._closest(rows, {}) is None


def test_a_cpu_only_scoreboard_says_the_gpu_run_is_pending(finished, tmp_path):  # noqa: F811
    out, results = finished
    assert "GPU run: pending" in scoreboard.scoreboard({"Tiny shift": out})
    gpu = tmp_path / "gpu"
    shutil.copytree(out, gpu)
    results = json.loads(json.dumps(results))
    results["environment"]["devices"] = ["cuda: NVIDIA H200"]
    (gpu / "results.json").write_text(json.dumps(results))
    assert "GPU run: pending" not in scoreboard.scoreboard({"Tiny shift on a GPU": gpu})


def test_an_unlabelled_shifted_set_counts_for_ood_detection_only(finished):  # noqa: F811
    _, results = finished
    results = json.loads(json.dumps(results))
    results["recipe"]["data"]["shifted"][0]["labeled"] = False  # imdb: OOD detection only
    for cell in results["cells"]:
        for values in cell["metrics"]["imdb"].values():
            for metric in [m for m in values if m != "ood_auroc"]:
                del values[metric]
    row = scoreboard.summarise(results)[0]
    cell = next(c for c in results["cells"] if c["method"] == row["method"])
    assert row["ece_out"][0] == cell["metrics"]["sst2_c5"]["none"]["ece"]  # the labelled set
    both = [cell["metrics"][s]["none"]["ood_auroc"] for s in ("imdb", "sst2_c5")]
    assert row["ood_auroc"][0] == pytest.approx(sum(both) / 2)


def test_the_regime_line_says_when_plain_fine_tuning_is_short_of_over_confident():
    def cell(seed, accuracy, confidence):
        values = {"accuracy": accuracy, "confidence": confidence, "ece": confidence - accuracy}
        return {"method": "cross_entropy", "seed": seed, "calibration_split": {"none": values}}

    lines = scoreboard._regime({"cells": [cell(0, 0.80, 0.87), cell(1, 0.946, 0.965)]})
    assert len(lines) == 2
    assert "(+0.070)" in lines[0] and "short" not in lines[0]
    assert "(+0.019)" in lines[1] and "short of the +0.03 margin" in lines[1]


def test_the_drift_default_section_marks_the_chosen_candidate(tmp_path):
    def candidate(held_out, seconds):
        return {
            "held_out_ece": held_out,
            "held_out_ece_by_corruption": {"typo": held_out, "word_swap": held_out},
            "in_domain_ece": 0.05,
            "fit_seconds": seconds,
            "fit_time_vs_plain": seconds / 0.1,
        }

    result = {
        "rule": "lowest held-out ECE",
        "chosen": "corruption",
        "candidates": {"plain": candidate(0.08, 0.1), "corruption": candidate(0.05, 1.0)},
        "not_scored": {"gradient_drop0.9": "the strongest perturbation tried ..."},
        "calibration": {"source": "shared:sst2/dev", "rows": 1000, "accuracy": 0.84},
        "model": "m",
        "train": {"source": "shared:sst2/train", "rows": 1000, "epochs": 8},
        "device": "cpu",
        "versions": {"python": "3.12", "torch": "2", "transformers": "5"},
        "command": "python benchmarks/drift_default.py",
        "wall_seconds": 60.0,
    }
    path = tmp_path / "drift_default.json"
    path.write_text(json.dumps(result))
    text = scoreboard.drift_section(path)
    assert "| `corruption` **(chosen)** | 5.00 | 5.00 | 1.00 s | 10.0 |" in text
    assert "| `plain` | 8.00 |" in text
    assert "`gradient_drop0.9` | not scored" in text
    assert "fine-tuned on 1,000 rows" in text
    assert "its fit with `word_swap` held out (the last" in text  # written before the average

    # A result of the current script: in-domain ECE averaged, a fit that failed on the whole
    # split, a model taken as it is.
    result["compared"] = ["plain", "corruption", "gaussian_drop0.5"]
    result["candidates"]["gaussian_drop0.5"] = {**candidate(0.06, 1.0), "fit_seconds": None}
    result["train"] = None
    path.write_text(json.dumps(result))
    text = scoreboard.drift_section(path)
    assert "| `gaussian_drop0.5` | 6.00 | 5.00 | – | – |" in text
    assert "`m`, as given" in text and "held out (the last" not in text
