"""nlpcal.bench: recipes, a tiny end-to-end benchmark, ensembles, resume, reports."""

from __future__ import annotations

import html
import json
import re
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import yaml

import nlpcal.bench.run as bench_run
from nlpcal.bench import (
    Method,
    Recipe,
    demo_recipe,
    load_recipe,
    recipe_reference,
    run_bench,
    shift_metrics,
)
from nlpcal.bench.store import Outputs, load_predictions, save_predictions
from nlpcal.data.prepare import DEFAULT_MODEL
from tests.conftest import tiny_model

REPO = Path(__file__).resolve().parents[1]
METRICS = ("accuracy", "confidence", "ece_10", "ece", "brier", "nll", "aurc")


def save_tiny_classifier(folder: Path) -> Path:
    """A random 2-layer BERT sentiment classifier and a character-level WordPiece tokenizer."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = string.ascii_lowercase + string.digits
    tokens = [*specials, *chars, *(f"##{c}" for c in string.ascii_lowercase), *".,!?'-"]
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(folder)
    tiny_model("bert", num_labels=2).save_pretrained(folder)
    return folder


def tiny_recipe(model: Path, **changes) -> dict:
    """Two methods (one with two calibrators, one with none) x two seeds on small slices."""
    recipe = {
        "name": "tiny",
        "model": str(model),
        "task": "sentiment",
        "max_length": 32,
        "data": {
            "train": "sample:sst2/train",
            "calibration": "sample:sst2/dev",
            "test": {"name": "sst2", "source": "sample:sst2/test"},
            "shifted": [
                {"name": "imdb", "source": "sample:imdb"},
                {
                    "name": "sst2_c5",
                    "source": "sample:sst2/test",
                    "corrupt": {"corruption": "mixed", "severity": 5, "seed": 0},
                },
            ],
        },
        "slicing": {"max_train_samples": 48, "max_eval_samples": 40, "seed": 0},
        "training": {
            "num_train_epochs": 1,
            "per_device_train_batch_size": 16,
            "learning_rate": "1e-3",
            "use_cpu": True,
            "disable_tqdm": True,
        },
        "methods": [
            {
                "name": "ce",
                "calibration_loss": "cross_entropy",
                "posthoc": ["temperature", "vector"],
            },
            {
                "name": "ls",
                "calibration_loss": "label_smoothing",
                "loss_kwargs": {"alpha": 0.1},
                "posthoc": [],
            },
        ],
        "seeds": [0, 1],
    }
    recipe.update(changes)
    return recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    return out, run_bench(Recipe.from_dict(tiny_recipe(model_dir)), out)


@pytest.fixture
def count_training(monkeypatch) -> list[tuple[str, int]]:
    """Records (loss, seed) of every model the runner trains."""
    calls = []
    train = bench_run.train_calibrated

    def counted(model, args, *rest, **kwargs):
        calls.append((args.calibration_loss, args.seed))
        return train(model, args, *rest, **kwargs)

    monkeypatch.setattr(bench_run, "train_calibrated", counted)
    return calls


def _flat(metrics: dict) -> dict:
    """``metrics[set][variant][metric]`` as one flat dict, for ``pytest.approx``."""
    return {(s, v, m): x for s, d in metrics.items() for v, e in d.items() for m, x in e.items()}


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# -- an end-to-end run ---------------------------------------------------------------------------
def test_results_hold_every_cell_set_variant_and_metric(finished):
    out, results = finished
    assert json.loads((out / "results.json").read_text()) == results
    cells = {(c["method"], c["seed"]): c for c in results["cells"]}
    assert set(cells) == {(m, s) for m in ("ce", "ls") for s in (0, 1)}
    variants = {"ce": ["none", "temperature", "vector"], "ls": ["none"]}
    for (method, _), cell in cells.items():
        assert set(cell["metrics"]) == {"sst2", "imdb", "sst2_c5"}
        for name, per_variant in cell["metrics"].items():
            assert list(per_variant) == variants[method]
            for values in per_variant.values():
                expected = {*METRICS} | ({"ood_auroc"} if name != "sst2" else set())
                assert set(values) == expected
                assert all(np.isfinite(v) for v in values.values())
    rows = {(r["method"], r["variant"], r["set"]): r for r in results["rows"]}
    for method, names in variants.items():
        ensembles = ["ensemble" if v == "none" else f"ensemble+{v}" for v in names]
        for name in ("sst2", "imdb", "sst2_c5"):
            for variant in names:
                values = rows[(method, variant, name)]["values"]
                assert values["accuracy"]["std"] is not None and 0 <= values["ece_10"]["mean"] <= 1
            for variant in ensembles:
                values = rows[(method, variant, name)]["values"]
                assert isinstance(values["nll"], float)
                assert ("ood_auroc" in values) == (name != "sst2")
    assert len(rows) == len(results["rows"]) == 3 * 2 * (3 + 1)


def test_calibration_split_metrics_are_cross_fitted_for_choosing_methods(finished):
    _, results = finished
    cells = {(c["method"], c["seed"]): c for c in results["cells"]}
    assert list(cells[("ce", 0)]["calibration_split"]) == ["none", "temperature", "vector"]
    assert list(cells[("ls", 1)]["calibration_split"]) == ["none"]
    values = cells[("ce", 0)]["calibration_split"]["temperature"]
    assert set(values) == set(METRICS) and 0 <= values["ece"] <= 1
    # out-of-fold: temperature fitted on half the split, not on the examples it scores
    rows = {(r["method"], r["variant"]): r["values"] for r in results["selection"]}
    assert set(rows) == {("ce", "none"), ("ce", "temperature"), ("ce", "vector"), ("ls", "none")}
    assert rows[("ce", "vector")]["ece"]["std"] is not None
    assert "calibration split (held out from training" in (results_md := markdown_of(finished))
    assert "| ls | none |" in results_md.split("calibration split (held out")[1]


def markdown_of(finished) -> str:
    return (finished[0] / "results.md").read_text()


def test_report_files_mention_every_method_and_embed_the_figures(finished):
    out, _ = finished
    markdown, page = (out / "results.md").read_text(), (out / "report.html").read_text()
    for method, variants in {"ce": ("none", "temperature", "vector"), "ls": ("none",)}.items():
        assert f"| {method} | ensemble |" in markdown and f"<td>{method}</td>" in page
        for variant in variants:
            assert (out / f"reliability_{method}_{variant}.png").is_file()
    assert "## sst2_c5 (shifted, n = 40)" in markdown
    assert page.count("src='data:image/png;base64,") == 4 + 1  # reliability diagrams, a drift curve
    assert not re.search(r"(src|href)=['\"]?(https?:|/|\.)", page)


def test_ensemble_rows_score_the_averaged_member_probabilities(finished):
    out, results = finished
    members = [np.load(out / "cells" / "ce" / f"seed_{s}" / "predictions.npz") for s in (0, 1)]
    probs = {
        name: np.mean([m[f"probs/{name}/temperature"] for m in members], axis=0)
        for name in ("sst2", "imdb")
    }
    expected = shift_metrics(
        probs["imdb"],
        members[0]["labels/imdb"],
        ood=probs["imdb"].max(1),
        in_domain_ood=probs["sst2"].max(1),
    )
    row = next(
        r
        for r in results["rows"]
        if (r["method"], r["variant"], r["set"]) == ("ce", "ensemble+temperature", "imdb")
    )
    assert row["values"] == pytest.approx(expected)


def test_cell_metrics_are_those_of_its_saved_probabilities(finished):
    out, results = finished
    saved = np.load(out / "cells" / "ce" / "seed_1" / "predictions.npz")
    cell = next(c for c in results["cells"] if (c["method"], c["seed"]) == ("ce", 1))
    # The confidence score is the top probability: left out of the file, recomputed on loading.
    assert not [key for key in saved.files if key.startswith("ood/")]
    ood = load_predictions(out / "cells" / "ce" / "seed_1", "confidence").ood
    expected = shift_metrics(
        saved["probs/sst2_c5/vector"],
        saved["labels/sst2_c5"],
        ood=ood["sst2_c5"]["vector"],
        in_domain_ood=ood["sst2"]["vector"],
    )
    assert cell["metrics"]["sst2_c5"]["vector"] == pytest.approx(expected)
    # Post-hoc scaling never changes the argmax; vector scaling may.
    before, after = saved["probs/sst2/none"], saved["probs/sst2/temperature"]
    assert (before.argmax(1) == after.argmax(1)).all()
    np.testing.assert_allclose(after.sum(1), 1, atol=1e-5)


def test_predictions_keep_only_the_ood_scores_loading_cannot_recompute(tmp_path):
    probs = np.array([[0.9, 0.1], [0.3, 0.7]], dtype=np.float32)
    energy = np.array([-1.5, -0.5], dtype=np.float32)
    outputs = Outputs(
        probs={"a": {"none": probs, "temperature": probs}},
        ood={"a": {"none": probs.max(1), "temperature": energy}},
        labels={"a": np.array([0, 1])},
    )
    save_predictions(tmp_path, outputs)
    with np.load(tmp_path / "predictions.npz") as saved:
        assert "ood/a/temperature" in saved and "ood/a/none" not in saved.files
    loaded = load_predictions(tmp_path, "energy")
    np.testing.assert_array_equal(loaded.ood["a"]["none"], probs.max(1))
    np.testing.assert_array_equal(loaded.ood["a"]["temperature"], energy)
    # A file from before OOD scores were stored holds none: only the confidence score is known.
    np.savez_compressed(tmp_path / "predictions.npz", **{"labels/a": [0, 1], "probs/a/none": probs})
    assert load_predictions(tmp_path, "confidence").ood["a"]["none"].tolist() == pytest.approx(
        [0.9, 0.7]
    )
    with pytest.raises(ValueError, match=r"holds no OOD scores.*'energy'"):
        load_predictions(tmp_path, "energy")


def test_shift_metrics_ood_auroc_is_one_half_for_the_same_set_and_one_when_separated():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    conf = probs.max(1)
    assert shift_metrics(probs, labels, conf, conf)["ood_auroc"] == pytest.approx(0.5)
    uniform = np.full_like(probs, 0.5)
    assert shift_metrics(uniform, labels, uniform.max(1), conf)["ood_auroc"] == pytest.approx(1.0)
    assert "ood_auroc" not in shift_metrics(probs, labels)


# -- resume --------------------------------------------------------------------------------------
def test_resume_retrains_only_the_missing_cell(finished, model_dir, tmp_path, count_training):
    out = _copy(finished[0], tmp_path)
    kept = {p: p.read_text() for p in out.glob("cells/*/*/result.json")}
    missing = out / "cells" / "ls" / "seed_1" / "result.json"
    old = json.loads(missing.read_text())
    missing.unlink()
    results = run_bench(Recipe.from_dict(tiny_recipe(model_dir)), out)
    assert count_training == [("label_smoothing", 1)]
    for path, text in kept.items():
        if path != missing:
            assert path.read_text() == text
    assert [c for c in results["cells"] if c["method"] == "ce"] == [
        c for c in finished[1]["cells"] if c["method"] == "ce"
    ]
    # The same seed trains the same model again.
    assert _flat(json.loads(missing.read_text())["metrics"]) == pytest.approx(_flat(old["metrics"]))


def test_bench_methods_reports_part_of_a_recipe_then_the_rest_follows(
    finished, model_dir, tmp_path, count_training
):
    """`nlpcal bench --methods`: the finished cells of some methods reported without training;
    the whole recipe then resumes in the same folder."""
    from nlpcal.cli import main

    out = _copy(finished[0], tmp_path)
    shutil.rmtree(out / "cells" / "ce")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(model_dir)))
    assert main(["bench", "--recipe", str(path), "--output-dir", str(out), "--methods", "ls"]) == 0
    assert count_training == []
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["rows"]} == {"ls"}
    assert main(["bench", "--recipe", str(path), "--output-dir", str(out)]) == 0
    assert count_training == [("cross_entropy", 0), ("cross_entropy", 1)]
    with pytest.raises(SystemExit):
        main(["bench", "--recipe", str(path), "--output-dir", str(out), "--methods", "focal"])


def test_an_interrupted_run_resumes_where_it_stopped(
    model_dir, tmp_path, monkeypatch, count_training
):
    recipe = Recipe.from_dict(tiny_recipe(model_dir))
    run_cell = bench_run._run_cell

    def interrupted(recipe, method, seed, *args):
        if (method.name, seed) == ("ls", 0):
            raise KeyboardInterrupt
        run_cell(recipe, method, seed, *args)

    monkeypatch.setattr(bench_run, "_run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_bench(recipe, tmp_path)
    assert sorted(p.parent.name for p in tmp_path.glob("cells/*/*/result.json")) == [
        "seed_0",
        "seed_1",
    ]
    monkeypatch.setattr(bench_run, "_run_cell", run_cell)
    run_bench(recipe, tmp_path)
    assert count_training == [
        ("cross_entropy", 0),
        ("cross_entropy", 1),
        ("label_smoothing", 0),
        ("label_smoothing", 1),
    ]


def test_resume_may_add_seeds_and_methods(finished, model_dir, tmp_path, count_training):
    out = _copy(finished[0], tmp_path)
    methods = [*tiny_recipe(model_dir)["methods"], {"calibration_loss": "cross_entropy"}]
    results = run_bench(
        Recipe.from_dict(tiny_recipe(model_dir, seeds=[0, 1, 2], methods=methods)), out
    )
    assert sorted(count_training) == [
        ("cross_entropy", 0),
        ("cross_entropy", 1),
        ("cross_entropy", 2),
        ("cross_entropy", 2),
        ("label_smoothing", 2),
    ]
    assert len(results["cells"]) == 9


@pytest.mark.parametrize(
    "change",
    [
        {"training": {"num_train_epochs": 2, "use_cpu": True}},
        {"seeds": [0]},
        {"methods": [{"name": "ce", "calibration_loss": "cross_entropy"}]},
        {"max_length": 16},
    ],
    ids=["training", "removed-seed", "changed-method", "max-length"],
)
def test_resume_with_a_changed_recipe_raises(finished, model_dir, tmp_path, change, count_training):
    out = _copy(finished[0], tmp_path)
    with pytest.raises(ValueError, match="different recipe"):
        run_bench(Recipe.from_dict(tiny_recipe(model_dir, **change)), out)
    assert count_training == []


def test_no_resume_starts_over(finished, model_dir, tmp_path, count_training):
    out = _copy(finished[0], tmp_path)
    recipe = tiny_recipe(model_dir, methods=[{"name": "ls", "calibration_loss": "label_smoothing"}])
    run_bench(Recipe.from_dict({**recipe, "seeds": [3]}), out, resume=False)
    assert count_training == [("label_smoothing", 3)]
    assert [p.parent.parent.name for p in out.glob("cells/*/*/result.json")] == ["ls"]


def test_a_feature_calibrator_listed_after_another_gets_features(model_dir, tmp_path):
    methods = [
        {"name": "ce", "calibration_loss": "cross_entropy", "posthoc": ["temperature", "adats"]}
    ]
    recipe = tiny_recipe(model_dir, methods=methods, seeds=[0])
    run_bench(Recipe.from_dict(recipe), tmp_path / "run")
    result = json.loads((tmp_path / "run" / "cells" / "ce" / "seed_0" / "result.json").read_text())
    assert {"none", "temperature", "adats"} <= set(next(iter(result["metrics"].values())))


def test_unlabelled_sets_are_scored_for_ood_detection_only(model_dir, tmp_path):
    texts = tmp_path / "texts.csv"
    texts.write_text("text\n" + "".join(f"an unlabelled sentence number {i}\n" for i in range(30)))
    recipe = tiny_recipe(
        model_dir, seeds=[0, 1], methods=[{"name": "ce", "calibration_loss": "cross_entropy"}]
    )
    recipe["data"]["shifted"] = [
        {"name": "imdb", "source": "sample:imdb"},
        {"name": "imdb_unlabelled", "source": "sample:imdb", "labeled": False},
        {"name": "texts", "source": str(texts), "labeled": False},
    ]
    results = run_bench(Recipe.from_dict(recipe), tmp_path / "run")
    saved = np.load(tmp_path / "run" / "cells" / "ce" / "seed_0" / "predictions.npz")
    assert "labels/imdb" in saved and "probs/imdb_unlabelled/temperature" in saved
    assert not {"labels/imdb_unlabelled", "labels/texts"} & set(saved.files)
    metrics = results["cells"][0]["metrics"]
    for variant in ("none", "temperature"):
        # The same data with and without labels: the same OOD AUROC, and nothing else.
        assert metrics["imdb_unlabelled"][variant] == {
            "ood_auroc": pytest.approx(metrics["imdb"][variant]["ood_auroc"])
        }
        assert set(metrics["texts"][variant]) == {"ood_auroc"}
    rows = {(r["variant"], r["set"]): r["values"] for r in results["rows"]}
    assert set(rows[("ensemble", "texts")]) == {"ood_auroc"}
    assert rows[("none", "texts")]["accuracy"] is None
    # The report shows the shifted sets' columns, empty but for the OOD AUROC.
    markdown = (tmp_path / "run" / "results.md").read_text()
    tables = {t.split("\n")[0]: t.split("\n")[2:] for t in markdown.split("\n## ")[1:]}
    labelled = next(rows for title, rows in tables.items() if title.startswith("imdb (shifted,"))
    title = "texts (shifted, unlabelled: OOD detection only, n = 30)"
    unlabelled = next(rows for t, rows in tables.items() if t.startswith(title))
    assert unlabelled[0] == labelled[0]  # the header
    assert re.fullmatch(r"\| ce \| none \|(  \|){7} 0\.\d{4} ± 0\.\d{4} \|", unlabelled[2])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"test": {"name": "sst2", "source": "sample:sst2/test", "labeled": False}},
            "must be labelled",
        ),
        (
            {
                "shifted": [
                    {"name": "x", "source": "sample:imdb", "labeled": False, "label_map": {}}
                ]
            },
            "takes no label_map",
        ),
    ],
)
def test_unlabelled_sets_that_cannot_work_are_refused(model_dir, change, message):
    recipe = tiny_recipe(model_dir)
    recipe["data"] = {**recipe["data"], **change}
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(recipe)


# -- recipes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": []}, "at least one method"),
        ({"methods": [{"calibration_loss": "focal"}]}, "unknown calibration loss 'focal'"),
        (
            {"methods": [{"calibration_loss": "label_smoothing", "loss_kwargs": {"alpha": 2}}]},
            "alpha",
        ),
        (
            {"methods": [{"calibration_loss": "label_smoothing", "loss_kwargs": {"beta": 1}}]},
            "loss_kwargs",
        ),
        (
            {"methods": [{"calibration_loss": "cross_entropy", "posthoc": ["platt"]}]},
            "unknown calibrator",
        ),
        ({"methods": [{"calibration_loss": "cross_entropy"}] * 2}, "duplicate method"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, -1]}, r"seeds\[1\] must be an integer >= 0, got -1"),
        ({"task": "translation"}, "unknown task"),
        ({"modle": "x"}, r"unknown keys \['modle'\]"),
        ({"training": {"seed": 3}}, "runner sets them per cell"),
        ({"training": {"learning_rat": 1.0}}, "unknown configuration keys"),
        ({"slicing": {"max_train_samples": 0}}, "max_train_samples"),
        (
            {"data": {"train": "sample:sst2/train", "test": {"name": "t", "source": "x"}}},
            r"the methods \['ce'\] have post-hoc calibrators: the recipe needs data.calibration",
        ),
        (
            {"data": {"calibration": "sample:sst2/dev", "test": {"name": "t", "source": "x"}}},
            r"the methods \['ce', 'ls'\] train: the recipe needs data.train",
        ),
        (
            {
                "methods": [
                    {"name": "a", "calibration_loss": "cross_entropy", "train": False},
                    {"name": "b", "calibration_loss": "cross_entropy"},
                ]
            },
            r"the methods \['b'\] train and the others have train: false",
        ),
        ({"label_map": {"LABEL_0": "negative"}}, "label_map is for a model trained elsewhere"),
        (
            {
                "data": {
                    "train": "sample:sst2/train",
                    "calibration": "sample:sst2/test",
                    "test": {"name": "sst2", "source": "sample:sst2/test"},
                }
            },
            "data.calibration is also the eval set 'sst2'",
        ),
        ({"max_length": "64"}, "max_length must be an integer >= 1, got '64'"),
        ({"ood_score": "maxprob"}, "unknown ood_score 'maxprob'; available: confidence, msp"),
        ({"task": None, "labels": ["positive"]}, "at least two names"),
        (
            {"methods": [{"calibration_loss": "cross_entropy", "posthoc": "temperature"}]},
            r"methods\[0\]\.posthoc must be a list",
        ),
        (
            {
                "methods": [
                    {
                        "calibration_loss": "cross_entropy",
                        "posthoc": ["temperature", "vector"],
                        "posthoc_kwargs": {"max_iter": 3},
                    }
                ]
            },
            "posthoc_kwargs: with several calibrators its keys are variant names",
        ),
        (
            {
                "methods": [
                    {
                        "calibration_loss": "cross_entropy",
                        "posthoc": ["vector"],
                        "posthoc_kwargs": {"bins": 3},
                    }
                ]
            },
            "bad posthoc_kwargs for 'vector'",
        ),
    ],
)
def test_bad_recipes_raise_clear_errors(model_dir, change, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(tiny_recipe(model_dir, **change))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"shifted": [{"name": "x", "source": "sample:imdb", "corrupt": {"severity": 9}}]},
            r"data\.shifted\[0\]\.corrupt\.severity must be an integer from 1 to 5, got 9",
        ),
        (
            {"shifted": [{"name": "x", "source": "sample:imdb", "labeled": "no"}]},
            r"data\.shifted\[0\]\.labeled must be true or false",
        ),
        (
            {"calibration": {"source": "sample:sst2/dev", "holdout": 5}},
            "takes a source .* or a holdout",
        ),
        ({"test": "sample:sst2/test"}, r"data\.test needs the keys \['name'\]"),
    ],
)
def test_bad_data_sections_name_the_key_and_what_was_expected(model_dir, data, message):
    config = tiny_recipe(model_dir)
    config["data"] = {**config["data"], **data}
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(config)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"calibration": "sample:nope/dev"}, "unknown sample 'nope'"),
        ({"test": {"name": "sst2", "source": "shared:sst2/test"}}, "pass data_dir"),
        ({"calibration": "EMPTY"}, "no data rows"),
    ],
)
def test_bad_sources_raise_before_any_training(model_dir, tmp_path, count_training, data, message):
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    config = tiny_recipe(model_dir)
    config["data"] = {**config["data"], **data}
    if config["data"]["calibration"] == "EMPTY":
        config["data"]["calibration"] = str(empty)
    with pytest.raises(ValueError, match=message):
        run_bench(Recipe.from_dict(config), tmp_path / "run")
    assert count_training == []


def test_a_recipe_file_inherits_its_base(tmp_path, model_dir):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_recipe(model_dir)))
    (tmp_path / "small.yaml").write_text(
        "base: base.yaml\nname: small\ntraining: {num_train_epochs: 2}\nseeds: [7]\n"
    )
    recipe = load_recipe(tmp_path / "small.yaml")
    assert recipe.name == "small" and recipe.seeds == (7,)
    assert recipe.training["num_train_epochs"] == 2 and recipe.training["use_cpu"] is True
    assert [m.name for m in recipe.methods] == ["ce", "ls"]
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_recipe(tmp_path / "loop.yaml")
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "missing.yaml")


def test_holdout_calibration_is_split_off_the_training_source(model_dir):
    data = {**tiny_recipe(model_dir)["data"], "calibration": {"holdout": 100}}
    recipe = Recipe.from_dict(tiny_recipe(model_dir, data=data, slicing={"seed": 0}))
    loaded = bench_run._load_data(recipe)
    assert (loaded.train.num_rows, loaded.calibration.num_rows) == (1900, 100)
    with pytest.raises(ValueError, match="holdout"):
        Recipe.from_dict(tiny_recipe(model_dir, data={**data, "calibration": {"holdout": -1}}))


def test_a_method_may_fit_one_calibrator_twice_under_two_names(model_dir):
    method = {
        "name": "ce",
        "calibration_loss": "cross_entropy",
        "posthoc": ["temperature", "short=temperature"],
        "posthoc_kwargs": {"short": {"max_iter": 1}},
    }
    recipe = Recipe.from_dict(tiny_recipe(model_dir, methods=[method]))
    (parsed,) = recipe.methods
    assert parsed.variants == ("none", "temperature", "short")
    args = recipe.training_arguments(parsed, 0, "out")
    assert args.posthoc == ["temperature", "short=temperature"]
    assert args.posthoc_kwargs == {"short": {"max_iter": 1}}


def test_a_run_whose_recipe_json_lacks_newer_keys_resumes(
    finished, model_dir, tmp_path, count_training
):
    """Keys an older nlpcal did not write take their defaults when the stored recipe is read."""
    out = _copy(finished[0], tmp_path)
    stored = json.loads((out / "recipe.json").read_text())
    del stored["ood_score"]
    for method in stored["methods"]:
        del method["posthoc_kwargs"]
    stored["data"]["shifted"][1]["corrupt"] = {"severity": 5}  # the other keys at their defaults
    (out / "recipe.json").write_text(json.dumps(stored))
    run_bench(Recipe.from_dict(tiny_recipe(model_dir)), out)
    assert count_training == []


def test_the_recipe_reference_in_docs_is_up_to_date():
    """docs/recipes.md is generated from the schema: a stale copy is rewritten, and this fails."""
    path = REPO / "docs" / "recipes.md"
    expected = recipe_reference()
    if not path.is_file() or path.read_text() != expected:
        path.parent.mkdir(exist_ok=True)
        path.write_text(expected)
        pytest.fail(f"{path} was stale and has been regenerated: review and commit it")


def test_the_reference_documents_every_key_of_every_section(model_dir):
    reference = recipe_reference()
    config = tiny_recipe(model_dir)
    for key in (*config, *config["data"], *config["methods"][0], "holdout", "labeled"):
        assert f"| `{key}` |" in reference, key


def test_method_defaults_to_the_losses_own_calibrator():
    assert Method.from_dict({"calibration_loss": "ova"}).posthoc == ("exponential",)
    assert Method.from_dict({"calibration_loss": "cross_entropy", "posthoc": []}).variants == (
        "none",
    )


def test_the_packaged_demo_recipe_is_the_repository_copy():
    assert load_recipe(REPO / "recipes" / "demo.yaml").to_dict() == demo_recipe().to_dict()
    assert demo_recipe().to_dict()["data"]["train"].startswith("sample:")


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_repository_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    if path.stem.endswith("_cpu") or path.stem == "demo":  # offline: the bundled encoder or timm
        assert recipe.model == DEFAULT_MODEL or recipe.model.startswith("timm:")
        assert recipe.training.get("use_cpu") is True


@pytest.mark.parametrize(
    ("name", "n_test"),
    [
        ("sst2_shift_cpu", 872),
        ("snli_mnli_cpu", 1000),
        ("agnews_corrupt_cpu", 1000),
        ("snli_mnli_overconfident_cpu", 1000),
        ("agnews_corrupt_overconfident_cpu", 1000),
    ],
)
def test_cpu_recipes_load_their_shared_data(shared_data, monkeypatch, name, n_test):
    monkeypatch.chdir(REPO)  # data_dir is relative to the working directory
    monkeypatch.setattr(bench_run, "load_tokenizer", lambda model: None)
    monkeypatch.setattr(bench_run, "tokenize", lambda dataset, tokenizer, max_length: dataset)
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    data = bench_run._load_data(recipe)
    expected = (recipe.slicing.max_train_samples, 1000)
    assert (data.train.num_rows, data.calibration.num_rows) == expected
    clean = data.sets[recipe.data.test.name]
    assert clean.num_rows == n_test
    for spec in recipe.data.shifted:
        shifted = data.sets[spec.name]
        if spec.corrupt is not None:
            assert shifted["label"] == clean["label"] and shifted["text"] != clean["text"]


def test_the_headline_shows_ece_before_and_after_calibration(finished):
    from nlpcal.bench.report import headline

    _, results = finished
    text = headline(results)
    rows = {
        (r["method"], r["variant"], r["set"]): r["values"]
        for r in results["rows"]
        if not r["variant"].startswith("ensemble")
    }
    shifted = (
        rows[("ce", "vector", "imdb")]["ece"]["mean"]
        + rows[("ce", "vector", "sst2_c5")]["ece"]["mean"]
    ) / 2
    in_domain = rows[("ce", "vector", "sst2")]["ece"]["mean"]
    assert (
        f"| ce | vector | {rows[('ce', 'vector', 'sst2')]['accuracy']['mean']:.3f} | {in_domain:.3f} | {shifted:.3f} |"
        in text
    )
    assert "| ls | uncalibrated |" in text and "ensemble" not in text


def test_drift_aware_variants_are_fitted_on_perturbed_copies_of_the_calibration_rows(
    model_dir, tmp_path, monkeypatch
):
    corrupted = []
    corrupt = bench_run.corrupt_dataset

    def recorded(dataset, *args, **kwargs):
        out = corrupt(dataset, *args, **kwargs)
        corrupted.append((list(dataset["text"]), args, kwargs))
        return out

    monkeypatch.setattr(bench_run, "corrupt_dataset", recorded)
    method = {
        "name": "ce",
        "calibration_loss": "cross_entropy",
        "posthoc": ["temperature"],
        "drift_posthoc": ["temperature"],
    }
    data = tiny_recipe(model_dir)["data"]
    data["calibration"] = {"source": "sample:sst2/dev", "drift": {"severities": [2, 4]}}
    recipe = Recipe.from_dict(tiny_recipe(model_dir, methods=[method], seeds=[0], data=data))
    assert recipe.methods[0].variants == ("none", "temperature", "temperature_drift")
    results = run_bench(recipe, tmp_path)
    (cell,) = results["cells"]
    assert list(cell["metrics"]["imdb"]) == ["none", "temperature", "temperature_drift"]
    assert set(cell["calibration_split"]) == {"none", "temperature", "temperature_drift"}
    copies = [c for c in corrupted if c[1][1:] in ((2, 0), (4, 0))]  # (corruption, severity, seed)
    assert [c[1][1] for c in copies] == [2, 4]
    data = bench_run._load_data(recipe)
    assert all(len(texts) == 40 for texts, _, _ in copies)
    test_texts = set(load_source_texts("sample:sst2/test"))
    assert not any(set(texts) & test_texts for texts, _, _ in copies)
    assert copies[0][0] == copies[1][0]  # the same calibration rows, at two strengths
    assert data.drift[0]["input_ids"] == bench_run._load_data(recipe).drift[0]["input_ids"]


def test_drift_aware_variants_on_embedding_perturbations_through_the_runner(
    model_dir, tmp_path, monkeypatch
):
    """An embedding family: the trainer perturbs the calibration rows itself (no text copies);
    the cell records the schedule, and the drift-aware variant differs from the plain one."""
    corrupted = []
    corrupt = bench_run.corrupt_dataset

    def recorded(dataset, *args, **kwargs):
        corrupted.append(len(dataset))
        return corrupt(dataset, *args, **kwargs)

    monkeypatch.setattr(bench_run, "corrupt_dataset", recorded)
    method = {
        "name": "ce",
        "calibration_loss": "cross_entropy",
        "posthoc": ["temperature"],
        "drift_posthoc": ["temperature"],
    }
    data = tiny_recipe(model_dir)["data"]
    drift = {"family": "gaussian", "strengths": [0.5, 2.0], "seed": 1}
    data["calibration"] = {"source": "sample:sst2/dev", "drift": drift}
    recipe = Recipe.from_dict(tiny_recipe(model_dir, methods=[method], seeds=[0], data=data))
    args = recipe.training_arguments(recipe.methods[0], 0, tmp_path / "args")
    assert args.drift_perturbation == "gaussian"
    assert args.drift_perturbation_kwargs == {
        "levels": 10,
        "accuracy_drop": 0.9,
        "seed": 1,
        "strengths": [0.5, 2.0],
    }
    assert recipe.to_dict()["data"]["calibration"]["drift"] == drift
    results = run_bench(recipe, tmp_path)
    assert corrupted == [40]  # the corrupted shifted set only, never the calibration rows
    (cell,) = results["cells"]
    stored = json.loads((tmp_path / "cells" / "ce" / "seed_0" / "result.json").read_text())
    assert stored["drift_schedule"]["strengths"] == [0.5, 2.0]
    assert stored["drift_schedule"]["family"] == "gaussian"
    assert set(cell["calibration_split"]) == {"none", "temperature", "temperature_drift"}
    plain, aware = (cell["metrics"]["imdb"][v]["ece"] for v in ("temperature", "temperature_drift"))
    assert plain != aware


def load_source_texts(source: str) -> list[str]:
    from nlpcal.data import load_source

    return list(load_source(source, None)["text"])


@pytest.mark.parametrize(
    ("drift", "message"),
    [
        ({"severities": []}, "non-empty, strictly increasing"),
        ({"severities": [3, 2]}, "non-empty, strictly increasing"),
        ({"severities": [0]}, "from 1 to 5"),
        ({"corruption": "shout"}, "unknown data.calibration.drift.corruption"),
        ({"family": "blur"}, "unknown data.calibration.drift.family 'blur'"),
        (
            {"family": "gaussian", "strengths": []},
            r"data.calibration.drift.strengths must be a non-empty, strictly increasing .* \[\]",
        ),
        (
            {"family": "gradient", "strengths": [0.2, 0.1]},
            r"data.calibration.drift.strengths must be .* got \[0.2, 0.1\]",
        ),
        ({"family": "gaussian", "levels": 0}, "data.calibration.drift.levels must be an integer"),
        (
            {"family": "gaussian", "accuracy_drop": 2},
            r"data.calibration.drift.accuracy_drop must be a number in \(0, 1\], got 2",
        ),
        (
            {"family": "gaussian", "severities": [1, 2]},
            r"\['severities'\] do not apply to family 'gaussian'",
        ),
        ({"family": "gaussian", "steps": 3}, r"\['steps'\] do not apply to family 'gaussian'"),
        ({"levels": 4}, r"\['levels'\] do not apply to family 'corruption'"),
    ],
)
def test_a_bad_drift_schedule_is_refused(model_dir, drift, message):
    data = tiny_recipe(model_dir)["data"]
    data["calibration"] = {"source": "sample:sst2/dev", "drift": drift}
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(tiny_recipe(model_dir, data=data))


def test_drift_curves_follow_the_corrupted_copies_of_a_set(finished):
    out, results = finished
    (ladder,) = results["drift_curves"]
    assert ladder["sets"] == {"0": "sst2", "5": "sst2_c5"} and ladder["corruption"] == "mixed"
    rows = {(r["method"], r["variant"], r["set"]): r["values"] for r in results["rows"]}
    for severity, name in ladder["sets"].items():
        for metric in ("ece", "accuracy", "confidence"):
            expected = rows[("ce", "vector", name)][metric]["mean"]
            assert ladder["curves"]["ce vector"][metric][severity] == expected
    assert "ls ensemble" not in ladder["curves"]
    assert (out / "drift_sst2_mixed.png").is_file()
    assert "drift: mixed corruptions of sst2" in (out / "results.md").read_text()
    assert "drift: mixed corruptions of sst2" in (out / "report.html").read_text()


def test_drift_curves_are_averaged_over_corruptions_at_shared_severities(model_dir):
    from nlpcal.bench.collect import drift_ladders

    def corrupted(name, corruption, severity):
        return {
            "name": name,
            "source": "sample:sst2/test",
            "corrupt": {"corruption": corruption, "severity": severity},
        }

    data = tiny_recipe(model_dir)["data"]
    data["shifted"] = [
        corrupted("kb1", "keyboard", 1),
        corrupted("kb3", "keyboard", 3),
        corrupted("wd3", "word_drop", 3),
    ]
    recipe = Recipe.from_dict(tiny_recipe(model_dir, data=data))
    ece = {"sst2": 0.1, "kb1": 0.2, "kb3": 0.3, "wd3": 0.5}
    rows = [
        {
            "method": "ce",
            "variant": "none",
            "set": name,
            "values": {
                "ece": {"mean": value},
                "accuracy": {"mean": 0.8},
                "confidence": {"mean": 0.9},
            },
        }
        for name, value in ece.items()
    ]
    ladders = {ladder["name"]: ladder for ladder in drift_ladders(recipe, rows)}
    assert ladders["sst2_keyboard"]["curves"]["ce none"]["ece"] == {"0": 0.1, "1": 0.2, "3": 0.3}
    averaged = ladders["sst2_keyboard_averaged"]
    assert averaged["curves"]["ce none"]["ece"] == {"0": 0.1, "3": pytest.approx(0.4)}
    assert averaged["sets"]["3"] == ["kb3", "wd3"]


def test_the_report_explains_the_same_rows_for_every_method(model_dir, tmp_path):
    """`explain`: heat maps of each set's first rows, first seed of each method, in report.html."""
    recipe = Recipe.from_dict(
        tiny_recipe(model_dir, seeds=[0, 1], explain={"examples": 2, "method": "saliency"})
    )
    run_bench(recipe, tmp_path / "run")
    cells = tmp_path / "run" / "cells"
    ce, ls = (json.loads((cells / m / "seed_0" / "explain.json").read_text()) for m in ("ce", "ls"))
    assert not (cells / "ce" / "seed_1" / "explain.json").exists()
    assert ce["label_names"] == ["negative", "positive"] and set(ce["sets"]) == {
        "sst2",
        "imdb",
        "sst2_c5",
    }
    for name, rows in ce["sets"].items():
        assert len(rows) == 2
        assert [r["tokens"] for r in rows] == [r["tokens"] for r in ls["sets"][name]]
        for row in rows:
            assert sum(row["scores"]) == pytest.approx(1.0, abs=1e-4)
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Why is the model unsure?" in page and "ce (seed 0, saliency)" in page
    shown = [t.removeprefix("##") for t in ce["sets"]["imdb"][0]["tokens"]]
    assert all(f">{html.escape(t)}</span>" in page for t in shown)
    assert "http" not in page.split("Why is the model unsure?")[1]


@pytest.mark.parametrize(
    ("explain", "message"),
    [
        ({"method": "lime"}, "explain: unknown attribution method 'lime'; available: attention"),
        ({"method": "integrated_gradients", "method_kwargs": {"n_steps": 0}}, "n_steps must be"),
        ({"method": "saliency", "method_kwargs": {"n_steps": 4}}, "explain.method_kwargs: bad"),
        ({"examples": 0}, "explain.examples must be an integer >= 1"),
    ],
)
def test_bad_explain_sections_are_refused(model_dir, explain, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(tiny_recipe(model_dir, explain=explain))


def test_the_recorded_command_names_nlpcal_when_run_as_a_module(monkeypatch):
    from nlpcal.bench.store import environment

    main = str(REPO / "nlpcal" / "__main__.py")
    monkeypatch.setattr("sys.argv", [main, "bench", "--recipe", "r.yaml"])
    assert environment()["command"] == "nlpcal bench --recipe r.yaml"
    monkeypatch.setattr("sys.argv", ["/usr/bin/nlpcal", "demo"])
    assert environment()["command"] == "nlpcal demo"
