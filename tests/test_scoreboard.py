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
