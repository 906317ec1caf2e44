"""The runner's robustness metric: accuracy under PGD on the input embeddings, from a recipe's
``robustness`` section, in cell results, rows, reports and the ``evaluate`` command."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from nlpcal.bench import Recipe, recipe_reference, run_bench
from nlpcal.bench.existing import evaluate_model
from nlpcal.cli import main
from nlpcal.data import load_source
from nlpcal.data.prepare import subsample
from nlpcal.metrics.vocabulary import metric
from nlpcal.robustness import accuracy_under_attack, attack_accuracy
from tests.conftest import tiny_model
from tests.test_bench import tiny_recipe
from tests.test_cli import user_error

TEST = {"name": "sst2", "source": "sample:sst2/test"}
DATA = {"test": TEST, "shifted": [{"name": "imdb", "source": "sample:imdb"}]}
SMALL = {"max_eval_samples": 24, "max_length": 32}
ATTACK = {"norm": "linf", "budgets": [0, 0.01, 0.03], "steps": 3}
KEYS = ("pgd_linf_accuracy@0", "pgd_linf_accuracy@0.01", "pgd_linf_accuracy@0.03")


def save_varied_classifier(folder: Path, id2label: dict[int, str]) -> Path:
    """A tiny random BERT classifier whose predictions vary from text to text (weights drawn
    large enough for attention to tell tokens apart), with a character tokenizer."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = string.ascii_lowercase + string.digits
    tokens = [*specials, *chars, *(f"##{c}" for c in string.ascii_lowercase), *".,!?'-"]
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(folder)
    model = tiny_model("bert", num_labels=len(id2label))
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.ndim == 2):
            weight.normal_(0.0, 0.5)
    model.config.id2label = dict(id2label)
    model.config.label2id = {v: k for k, v in id2label.items()}
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reversed_model(tmp_path_factory) -> Path:
    """Classes in another case and order than the data's (negative, positive)."""
    return save_varied_classifier(tmp_path_factory.mktemp("clf"), {0: "POSITIVE", 1: "Negative"})


@pytest.fixture(scope="module")
def evaluated(reversed_model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("evaluate")
    data = {**DATA, "calibration": "sample:sst2/dev"}
    results = evaluate_model(
        reversed_model, data, out, posthoc=["temperature"], robustness=ATTACK, **SMALL
    )
    return out, results


def values(results: dict) -> dict:
    """Mean values by (method, variant, set)."""
    return {
        (r["method"], r["variant"], r["set"]): {k: v and v["mean"] for k, v in r["values"].items()}
        for r in results["rows"]
    }


# -- the recipe section --------------------------------------------------------------------------
def test_the_section_names_one_metric_per_budget_and_round_trips():
    recipe = Recipe.from_dict(tiny_recipe("model", robustness={"budgets": [0, 0.05, 0.5]}))
    assert recipe.robustness.metric_keys == (
        "pgd_l2_accuracy@0",
        "pgd_l2_accuracy@0.05",
        "pgd_l2_accuracy@0.5",
    )
    assert recipe.robustness.steps == 10 and recipe.robustness.max_samples is None
    assert recipe.attacked_sets == ("sst2", "imdb", "sst2_c5")
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert metric(recipe.robustness.metric_keys[1]).label == "accuracy, PGD L2 ≤ 0.05"
    assert Recipe.from_dict(tiny_recipe("model")).attacked_sets == ()


def test_the_reference_documents_the_section():
    reference = recipe_reference()
    assert "## `robustness`" in reference
    for key in ("robustness", "norm", "budgets", "steps", "max_samples", "sets"):
        assert f"| `{key}` |" in reference, key


@pytest.mark.parametrize(
    ("robustness", "message"),
    [
        ({"budgets": []}, r"robustness\.budgets must be a non-empty, strictly increasing list"),
        ({"budgets": [0.1, -0.01]}, r"robustness\.budgets must be .* >= 0, got \[0\.1, -0\.01\]"),
        ({"budgets": [0.1, 0.01]}, r"robustness\.budgets must be .*strictly increasing"),
        ({"budgets": ["0.1"]}, r"robustness\.budgets\[0\] must be a number, got '0\.1'"),
        ({"budgets": [0.1], "norm": "l3"}, "unknown robustness.norm 'l3'; available: l2, linf"),
        ({"norm": "l2"}, r"robustness needs the keys \['budgets'\]"),
        ({"budgets": [0.1], "steps": 0}, r"robustness\.steps must be an integer >= 1, got 0"),
        ({"budgets": [0.1], "max_samples": 0}, r"robustness\.max_samples must be an integer >= 1"),
        ({"budgets": [0.1], "radius": 1}, r"robustness: unknown keys \['radius'\]"),
        ({"budgets": [0.1], "sets": ["sst"]}, r"robustness\.sets names no eval set: \['sst'\]"),
        ({"budgets": [0.1], "sets": []}, r"robustness\.sets must name at least one eval set"),
        ([0.1], r"robustness must be a mapping, got \[0\.1\]"),
    ],
)
def test_bad_sections_name_the_key(robustness, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(tiny_recipe("model", robustness=robustness))


def test_an_unlabelled_set_cannot_be_attacked():
    recipe = tiny_recipe("model", robustness={"budgets": [0.1], "sets": ["tweets"]})
    recipe["data"]["shifted"].append({"name": "tweets", "source": "t.csv", "labeled": False})
    with pytest.raises(ValueError, match=r"unlabelled sets \['tweets'\]: accuracy under attack"):
        Recipe.from_dict(recipe)
    del recipe["robustness"]["sets"]
    assert "tweets" not in Recipe.from_dict(recipe).attacked_sets


def test_the_dataset_measure_refuses_bad_budgets():
    for budgets in ([], [0.1, -1.0], [float("nan")]):
        with pytest.raises(ValueError, match="budgets must be a non-empty list of numbers >= 0"):
            accuracy_under_attack(None, None, budgets)


# -- a model evaluated as it is ------------------------------------------------------------------
def test_the_metric_is_attack_accuracy_on_the_same_rows(evaluated, reversed_model):
    """The runner's value is :func:`attack_accuracy` on the set's rows, labels mapped to the
    model's ids (its classes are the data's in reverse order)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, results = evaluated
    table = values(results)
    model = AutoModelForSequenceClassification.from_pretrained(reversed_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(reversed_model)
    for name, source in (("sst2", "sample:sst2/test"), ("imdb", "sample:imdb")):
        data = subsample(load_source(source, None), 24, 0)
        batch = tokenizer(
            list(data["text"]), truncation=True, max_length=32, padding=True, return_tensors="pt"
        )
        labels = 1 - torch.tensor(list(data["label"]))  # data (negative, positive) -> model ids
        row = table[("model", "none", name)]
        for budget, key in zip(ATTACK["budgets"][1:], KEYS[1:], strict=True):
            right = attack_accuracy(model, dict(batch), labels, budget, "linf", steps=3)
            assert row[key] == pytest.approx(right.float().mean().item()), (name, key)
        assert row[KEYS[0]] == pytest.approx(row["accuracy"])  # budget 0: the clean accuracy
        assert row[KEYS[2]] < row[KEYS[0]]  # the attack flips some right predictions


def test_the_metric_is_recorded_once_per_model_under_the_uncalibrated_variant(evaluated):
    out, results = evaluated
    cell = json.loads((out / "cells/model/seed_0/result.json").read_text())
    assert cell["attacked_rows"] == {"sst2": 24, "imdb": 24}
    for name in ("sst2", "imdb"):
        assert set(KEYS) <= set(cell["metrics"][name]["none"])
        assert not set(KEYS) & set(cell["metrics"][name]["temperature"])
        row = values(results)[("model", "temperature", name)]
        assert all(row[key] is None for key in KEYS)
    assert not any(k.startswith("pgd") for s in cell["calibration_split"].values() for k in s)


def test_the_report_tables_show_the_metric_with_its_note(evaluated):
    out, _ = evaluated
    markdown = (out / "results.md").read_text()
    page = (out / "report.html").read_text()
    for budget in ("0", "0.01", "0.03"):
        assert f" accuracy, PGD L∞ ≤ {budget} |" in markdown
        assert f"<th>accuracy, PGD L∞ ≤ {budget}</th>" in page
    assert "`pgd_linf_accuracy@<budget>` is the accuracy under PGD" in markdown
    assert "3 steps" in markdown and "on every labelled set" in markdown
    selection = markdown.split("## calibration split")[1].split("Notes:")[0]
    assert "| AURC |" in selection and "PGD" not in selection


def test_a_set_that_merges_the_models_classes_is_refused(tmp_path):
    model = save_varied_classifier(tmp_path / "clf", {0: "negative", 1: "neutral", 2: "positive"})
    options = {**SMALL, "label_map": {"neutral": "negative"}, "robustness": {"budgets": [0.1]}}
    with pytest.raises(ValueError, match=r"'sst2' merges the model's classes .* robustness\.sets"):
        evaluate_model(model, {"test": TEST}, tmp_path / "run", **options)


# -- a benchmark over seeds ----------------------------------------------------------------------
def test_a_benchmark_aggregates_the_metric_over_seeds_on_the_chosen_sets(tmp_path):
    model = save_varied_classifier(tmp_path / "clf", {0: "negative", 1: "positive"})
    config = tiny_recipe(
        model,
        methods=[{"name": "ce", "calibration_loss": "cross_entropy", "posthoc": ["temperature"]}],
        robustness={"budgets": [0.01], "steps": 2, "max_samples": 16, "sets": ["sst2_c5"]},
    )
    config["data"]["shifted"] = config["data"]["shifted"][1:]  # the corrupted copy only
    config["slicing"]["max_train_samples"] = 32
    results = run_bench(Recipe.from_dict(config), tmp_path / "run")
    key = "pgd_l2_accuracy@0.01"
    cells = [c["metrics"]["sst2_c5"]["none"][key] for c in results["cells"]]
    assert [c["attacked_rows"] for c in results["cells"]] == [{"sst2_c5": 16}] * 2
    rows = {(r["variant"], r["set"]): r["values"] for r in results["rows"]}
    assert rows[("none", "sst2_c5")][key] == pytest.approx(
        {"mean": np.mean(cells), "std": np.std(cells, ddof=1)}
    )
    for variant, name in rows:
        if (variant, name) != ("none", "sst2_c5"):
            assert rows[(variant, name)].get(key) is None, (variant, name)
    assert "| accuracy, PGD L2 ≤ 0.01 |" in (tmp_path / "run/results.md").read_text()


# -- the command line ----------------------------------------------------------------------------
def test_evaluate_measures_the_metric_from_its_flags(reversed_model, tmp_path, capsys):
    flags = ["--test", "sst2=sample:sst2/test", "--max-eval-samples", "16", "--max-length", "32"]
    flags += ["--pgd-budgets", "0", "0.01", "--pgd-norm", "linf", "--pgd-steps", "2"]
    assert main(["evaluate", str(reversed_model), *flags, "--output-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    cell = json.loads((tmp_path / "cells/model/seed_0/result.json").read_text())
    metrics = cell["metrics"]["sst2"]["none"]
    assert metrics["pgd_linf_accuracy@0"] == pytest.approx(metrics["accuracy"])
    assert "pgd_linf_accuracy@0.01" in metrics
    assert "| accuracy, PGD L∞ ≤ 0.01 |" in (tmp_path / "results.md").read_text()


def test_evaluate_reads_the_section_of_a_recipe_and_flags_override_it(
    reversed_model, tmp_path, capsys
):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data:\n  test: {name: sst2, source: 'sample:sst2/test'}\n"
        "  shifted: [{name: imdb, source: 'sample:imdb'}]\n"
        "slicing: {max_eval_samples: 16}\nmax_length: 32\n"
        "robustness: {budgets: [0], sets: [imdb]}\n"
    )
    out = tmp_path / "run"
    argv = ["evaluate", str(reversed_model), "--config", str(recipe), "--pgd-norm", "linf"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    capsys.readouterr()
    metrics = json.loads((out / "cells/model/seed_0/result.json").read_text())["metrics"]
    assert metrics["imdb"]["none"]["pgd_linf_accuracy@0"] == metrics["imdb"]["none"]["accuracy"]
    assert not any(k.startswith("pgd") for k in metrics["sst2"]["none"])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--pgd-budgets", "-0.1"], r"robustness.budgets must be a non-empty, strictly"),
        (["--pgd-budgets", "0.1", "0.01"], "strictly increasing list of relative budgets"),
        (["--pgd-budgets", "0.1", "--pgd-norm", "l3"], "unknown robustness.norm 'l3'"),
        (["--pgd-budgets", "0.1", "--pgd-steps", "0"], "robustness.steps must be an integer >= 1"),
        (["--pgd-steps", "3"], "need the budgets: give them with --pgd-budgets"),
    ],
)
def test_evaluate_reports_bad_attack_flags_on_one_line(
    flags, expected, reversed_model, tmp_path, capsys
):
    argv = ["evaluate", str(reversed_model), "--test", "sample:sst2/test", *flags]
    assert expected in user_error([*argv, "--output-dir", str(tmp_path)], capsys)
