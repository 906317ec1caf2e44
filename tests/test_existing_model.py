"""Models users already have: `nlpcal evaluate` / `nlpcal calibrate` and their Python calls."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from nlpcal.bench.existing import calibrate_model, evaluate_model, existing_model_recipe
from nlpcal.cli import main
from nlpcal.data import load_source
from nlpcal.data.prepare import subsample
from nlpcal.functional.metrics import evaluation_metrics
from tests.conftest import tiny_model

DATA = {
    "calibration": "sample:sst2/dev",
    "test": {"name": "sst2", "source": "sample:sst2/test"},
    "shifted": [{"name": "imdb", "source": "sample:imdb"}],
}
SMALL = {"max_eval_samples": 40, "max_length": 32}


def save_classifier(folder: Path, id2label: dict[int, str], base: bool = False) -> Path:
    """A random tiny BERT classifier (labels named ``id2label``) with a character tokenizer."""
    from transformers import BertModel, BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = string.ascii_lowercase + string.digits
    tokens = [*specials, *chars, *(f"##{c}" for c in string.ascii_lowercase), *".,!?'-"]
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(folder)
    torch.manual_seed(0)
    model = tiny_model("bert", num_labels=len(id2label))
    model.config.id2label = dict(id2label)
    model.config.label2id = {v: k for k, v in id2label.items()}
    with torch.no_grad():  # a head confident enough to be worth calibrating
        model.classifier.weight.mul_(20)
    if base:
        model = BertModel(model.config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def upper_reversed(tmp_path_factory) -> Path:
    """Label names in another case and another order than the data's (negative, positive)."""
    return save_classifier(tmp_path_factory.mktemp("clf"), {0: "POSITIVE", 1: "Negative"})


def expected_probs(folder: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities on the run's rows, columns in the data's label order."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = subsample(load_source(source, None), 40, 0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tokenizer(
            list(data["text"]), truncation=True, max_length=32, padding=True, return_tensors="pt"
        )
        probs = model(**batch).logits.softmax(-1).numpy()
    return probs[:, [1, 0]], np.asarray(
        list(data["label"])
    )  # model (POSITIVE, Negative) -> data order


def rows(results: dict) -> dict:
    """Mean values by (method, variant, set); one seed, so the mean is the value."""
    return {
        (r["method"], r["variant"], r["set"]): {k: v and v["mean"] for k, v in r["values"].items()}
        for r in results["rows"]
        if not r["variant"].startswith("ensemble")
    }


def test_evaluate_scores_the_model_as_it_is_with_labels_matched_by_name(upper_reversed, tmp_path):
    results = evaluate_model(
        upper_reversed, {k: v for k, v in DATA.items() if k != "calibration"}, tmp_path, **SMALL
    )
    table = rows(results)
    assert {(m, v) for m, v, _ in table} == {("model", "none")}
    for name, source in (("sst2", "sample:sst2/test"), ("imdb", "sample:imdb")):
        probs, labels = expected_probs(upper_reversed, source)
        expected = evaluation_metrics(torch.as_tensor(probs), torch.as_tensor(labels), n_bins=15)
        values = table[("model", "none", name)]
        assert values["accuracy"] == pytest.approx(float(expected["accuracy"]))
        assert values["ece"] == pytest.approx(float(expected["ece"]), abs=1e-5)
    assert "ood_auroc" in table[("model", "none", "imdb")]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "results.md").is_file()
    assert not (tmp_path / "cells" / "model" / "seed_0" / "model").exists()


def test_calibrate_saves_a_model_that_reproduces_the_reported_metrics(upper_reversed, tmp_path):
    results, model = calibrate_model(
        upper_reversed, DATA, tmp_path, posthoc=["temperature", "vector"], **SMALL
    )
    table = rows(results)
    assert ("model", "temperature", "imdb") in table and ("model", "vector", "sst2") in table
    cell = json.loads((tmp_path / "cells/model/seed_0/result.json").read_text())
    assert set(cell["calibration_split"]) == {"none", "temperature", "vector"}
    data = subsample(load_source("sample:sst2/test", None), 40, 0)
    probs = model.predict_proba(list(data["text"]), max_length=32)[:, [1, 0]]
    expected = evaluation_metrics(probs, torch.as_tensor(list(data["label"])), n_bins=15)
    values = table[("model", "temperature", "sst2")]
    assert values["ece"] == pytest.approx(float(expected["ece"]), abs=1e-5)
    assert values["nll"] == pytest.approx(float(expected["nll"]), abs=1e-5)
    # calibration changes the confidence, not the ranking of the classes
    assert values["accuracy"] == table[("model", "none", "sst2")]["accuracy"]
    assert values["ece"] != table[("model", "none", "sst2")]["ece"]


def test_the_cli_evaluates_and_calibrates(upper_reversed, tmp_path, capsys):
    flags = ["--test", "sst2=sample:sst2/test", "--shifted", "imdb=sample:imdb"]
    flags += ["--max-eval-samples", "40", "--max-length", "32"]
    assert main(["evaluate", str(upper_reversed), *flags, "--output-dir", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "| model | uncalibrated |" in out and "Full report" in out
    calibrate = ["calibrate", str(upper_reversed), *flags, "--calibration", "sample:sst2/dev"]
    assert main([*calibrate, "--output-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "| model | temperature |" in out
    assert (tmp_path / "c/cells/model/seed_0/model/config.json").is_file()


def test_the_cli_reads_the_data_of_a_recipe(upper_reversed, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data:\n  test: {name: sst2, source: 'sample:sst2/test'}\n"
        "slicing: {max_eval_samples: 30}\nmax_length: 32\n"
    )
    out = tmp_path / "run"
    assert (
        main(["evaluate", str(upper_reversed), "--config", str(recipe), "--output-dir", str(out)])
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert [r["n"] for r in results["rows"]] == [30]


def test_generic_label_names_need_a_label_map(tmp_path, capsys):
    folder = save_classifier(tmp_path / "clf", {0: "LABEL_0", 1: "LABEL_1"})
    flags = ["--test", "sample:sst2/test", "--max-eval-samples", "20", "--max-length", "32"]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(folder), *flags, "--output-dir", str(tmp_path / "a")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Model labels: ['LABEL_0', 'LABEL_1']; set labels: ['negative', 'positive']" in err
    mapping = ["--label-map", "LABEL_0=negative", "--label-map", "LABEL_1=positive"]
    assert (
        main(["evaluate", str(folder), *flags, *mapping, "--output-dir", str(tmp_path / "b")]) == 0
    )


def test_a_calibration_split_that_maps_many_to_one_is_refused(tmp_path):
    folder = save_classifier(tmp_path / "clf", {0: "negative", 1: "positive", 2: "neutral"})
    data = {**DATA, "shifted": []}
    with pytest.raises(ValueError, match="one to one"):
        calibrate_model(folder, data, tmp_path / "run", label_map={"neutral": "negative"}, **SMALL)


def test_a_model_that_is_not_a_classifier_is_refused(tmp_path, capsys):
    folder = save_classifier(tmp_path / "base", {0: "negative", 1: "positive"}, base=True)
    with pytest.raises(SystemExit):
        main(["evaluate", str(folder), "--test", "sample:sst2/test", "--output-dir", str(tmp_path)])
    assert "is not a sequence classifier: its config names the architectures ['BertModel']" in (
        capsys.readouterr().err
    )


def test_a_calibration_set_that_is_also_evaluated_is_refused(upper_reversed, tmp_path):
    data = {**DATA, "calibration": "sample:sst2/test"}
    with pytest.raises(ValueError, match=r"data\.calibration is also the eval set 'sst2'"):
        calibrate_model(upper_reversed, data, tmp_path, **SMALL)


def test_a_hub_id_loads_through_the_hub_and_offline_says_so(upper_reversed, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def stand_in(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("allow_patterns")))
        return str(upper_reversed)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", stand_in)
    data = {"test": DATA["test"]}
    results = evaluate_model("someone/tiny-sentiment", data, tmp_path / "hub", **SMALL)
    assert results["recipe"]["model"] == "someone/tiny-sentiment" and calls
    assert all(patterns and "*.safetensors" in patterns for _, patterns in calls)
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="no folder someone/absent-model and no Hub"):
        evaluate_model("someone/absent-model", data, tmp_path / "offline", **SMALL)


def test_the_recipe_of_an_existing_model_checks_its_arguments(upper_reversed):
    with pytest.raises(ValueError, match=r"needs data\.calibration"):
        existing_model_recipe(upper_reversed, {"test": DATA["test"]}, posthoc=["temperature"])
    with pytest.raises(ValueError, match="unknown calibrator"):
        existing_model_recipe(upper_reversed, DATA, posthoc=["platt"])


def test_a_model_saved_by_nlpcal_is_evaluated_as_trained_and_recalibrated_once(tmp_path):
    """A folded save reads calibrated through plain transformers; evaluate takes the fold out
    ("before" is the model as trained) and calibrate replaces the calibration."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nlpcal import CalibratedTrainer, CalibrationArguments, load_calibrated
    from nlpcal.bench.run import _load_data
    from nlpcal.posthoc import TemperatureScaler

    folder = save_classifier(tmp_path / "clf", {0: "negative", 1: "positive"})
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    args = CalibrationArguments(str(tmp_path / "t"), posthoc=[], report_to="none", use_cpu=True)
    trainer = CalibratedTrainer(
        model,
        args,
        calibrator=TemperatureScaler(),
        processing_class=AutoTokenizer.from_pretrained(folder),
    )
    trainer.calibrator.log_value.fill_(math.log(3.0))
    trainer.calibrator.fitted.fill_(True)
    saved = tmp_path / "saved"
    trainer.save_model(str(saved))
    recipe = existing_model_recipe(saved, {"test": DATA["test"]}, **SMALL)
    texts = list(_load_data(recipe).sets["sst2"]["input_ids"])
    batch = {"input_ids": torch.tensor([t + [0] * (32 - len(t)) for t in texts])}
    batch["attention_mask"] = (batch["input_ids"] != 0).long()
    with torch.no_grad():
        raw = model.eval()(**batch).logits
        folded = AutoModelForSequenceClassification.from_pretrained(saved).eval()(**batch).logits
    assert torch.allclose(folded, raw / 3.0, atol=1e-5)  # plain transformers: calibrated
    results = evaluate_model(recipe, output_dir=tmp_path / "e")
    probs = raw.softmax(-1)
    labels = torch.as_tensor(list(subsample(load_source("sample:sst2/test", None), 40, 0)["label"]))
    expected = evaluation_metrics(probs, labels, n_bins=15)
    assert rows(results)[("model", "none", "sst2")]["nll"] == pytest.approx(
        float(expected["nll"]), abs=1e-5
    )  # "before" is the model as trained, not the folded one
    calibrated = evaluation_metrics((raw / 3.0).softmax(-1), labels, n_bins=15)
    assert recipe.methods[0].variants == ("none", "saved_temperature")
    assert rows(results)[("model", "saved_temperature", "sst2")]["nll"] == pytest.approx(
        float(calibrated["nll"]), abs=1e-5
    )  # and its saved calibration, scored as it is
    plain = existing_model_recipe(saved, {"test": DATA["test"]}, saved_calibration=False, **SMALL)
    assert plain.methods[0].variants == ("none",)
    results, recalibrated = calibrate_model(saved, DATA, tmp_path / "c", **SMALL)
    assert ("model", "saved_temperature", "imdb") in rows(results)  # the old one, for comparison
    assert "saved_temperature" in {r["variant"] for r in results["selection"]}
    again = model_folder_of(tmp_path / "c")
    temperature = float(recalibrated.calibrator.temperature)
    with torch.no_grad():
        plain = AutoModelForSequenceClassification.from_pretrained(again).eval()(**batch).logits
    assert torch.allclose(plain, raw / temperature, atol=1e-4)  # one calibration, not two
    assert load_calibrated(again, calibrator="none").model is not None
    record = load_calibrated(again).record
    assert list(record["calibrators"]) == ["temperature"]  # not the old one
    assert set(record["metrics"]["imdb"]) == {"none", "temperature"}  # nor its metrics


def model_folder_of(run: Path) -> Path:
    return run / "cells" / "model" / "seed_0" / "model"


def test_calibrate_records_the_metrics_on_the_card_and_pushes_from_the_cli(
    upper_reversed, tmp_path, monkeypatch, capsys
):
    from tests.test_hub_fold import CommitRecorder

    hub = CommitRecorder(tmp_path / "hub", monkeypatch)
    flags = ["--test", "sst2=sample:sst2/test", "--shifted", "imdb=sample:imdb"]
    flags += ["--calibration", "sample:sst2/dev", "--max-eval-samples", "40"]
    flags += ["--max-length", "32", "--output-dir", str(tmp_path / "run")]
    assert main(["calibrate", str(upper_reversed), *flags, "--push-to-hub", "me/calibrated"]) == 0
    assert "Pushed to" in capsys.readouterr().out
    sent = set(hub.sent["me/calibrated"])
    assert {"config.json", "model.safetensors", "nlpcal_config.json", "README.md"} <= sent
    record = json.loads((tmp_path / "hub/me/calibrated/nlpcal_config.json").read_text())
    assert record["eval_sets"]["in_domain"] == "sst2" and record["eval_sets"]["shifted"] == ["imdb"]
    results = json.loads((tmp_path / "run/results.json").read_text())
    reported = rows(results)[("model", "temperature", "imdb")]["ece"]
    assert record["metrics"]["imdb"]["temperature"]["ece"] == pytest.approx(reported)
    assert "imdb" in (tmp_path / "hub/me/calibrated/README.md").read_text()


def test_a_push_without_network_is_one_line_and_keeps_the_local_model(
    upper_reversed, tmp_path, monkeypatch, capsys
):
    import requests

    from tests.test_hub_fold import CommitRecorder

    CommitRecorder(tmp_path / "hub", monkeypatch, fail=requests.ConnectionError("no route"))
    flags = ["--test", "sst2=sample:sst2/test", "--calibration", "sample:sst2/dev"]
    flags += ["--max-eval-samples", "40", "--max-length", "32", "--output-dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", str(upper_reversed), *flags, "--push-to-hub", "me/calibrated"])
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("nlpcal: error")]
    assert line.startswith("nlpcal: error: pushing to the Hub repository me/calibrated failed")
    assert "cannot reach the Hub" in line
    assert (model_folder_of(tmp_path / "r") / "nlpcal_config.json").is_file()


def test_a_hub_model_with_only_pytorch_weights_is_downloaded_with_them(tmp_path, monkeypatch):
    """A repository without safetensors (an older upload): its pickled weights are fetched."""
    import fnmatch
    import shutil

    import huggingface_hub
    from safetensors.torch import load_file

    repo = save_classifier(tmp_path / "repo", {0: "negative", 1: "positive"})
    torch.save(load_file(repo / "model.safetensors"), repo / "pytorch_model.bin")
    (repo / "model.safetensors").unlink()
    (repo / "tf_model.h5").write_bytes(b"other framework")
    calls = []

    def stand_in(repo_id, allow_patterns=None, **kwargs):  # copies what the patterns allow
        calls.append(allow_patterns)
        cache = tmp_path / "cache" / str(len(calls))
        cache.mkdir(parents=True)
        for file in repo.iterdir():
            if any(fnmatch.fnmatch(file.name, p) for p in allow_patterns):
                shutil.copy(file, cache / file.name)
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", stand_in)
    results = evaluate_model(
        "someone/old-sentiment", {"test": DATA["test"]}, tmp_path / "r", **SMALL
    )
    probs, labels = expected_probs(repo, "sample:sst2/test")  # columns swapped for upper_reversed
    accuracy = float((probs[:, ::-1].argmax(1) == labels).mean())
    assert rows(results)[("model", "none", "sst2")]["accuracy"] == pytest.approx(accuracy)
    assert not any(fnmatch.fnmatch("tf_model.h5", p) for patterns in calls for p in patterns)


def test_saved_posthoc_is_checked(upper_reversed, tmp_path):
    from nlpcal.bench.recipe import Method

    with pytest.raises(ValueError, match=r"saved_posthoc .* needs train: false"):
        Method.from_dict({"calibration_loss": "cross_entropy", "saved_posthoc": ["temperature"]})
    with pytest.raises(ValueError, match=r"variants \['saved_temperature'\] have the names"):
        Method.from_dict(
            {
                "calibration_loss": "cross_entropy",
                "train": False,
                "posthoc": ["saved_temperature=temperature"],
                "saved_posthoc": ["temperature"],
            }
        )
    recipe = existing_model_recipe(upper_reversed, {"test": DATA["test"]}, **SMALL)
    method = {**recipe.to_dict()["methods"][0], "saved_posthoc": ["temperature"]}
    recipe = recipe.from_dict({**recipe.to_dict(), "methods": [method]})
    with pytest.raises(ValueError, match="needs a model saved by nlpcal"):
        evaluate_model(recipe, output_dir=tmp_path / "e")


def test_an_unfitted_calibrator_is_not_saved(tmp_path):
    from nlpcal.hub import save_calibration
    from nlpcal.losses import create_loss
    from nlpcal.posthoc import TemperatureScaler

    with pytest.raises(ValueError, match=r"calibrators \['temperature'\] are not fitted"):
        save_calibration(
            tmp_path, create_loss("cross_entropy"), {"temperature": TemperatureScaler()}
        )
    assert not any(tmp_path.iterdir())


def test_calibrate_fits_drift_aware_from_the_cli(upper_reversed, tmp_path, capsys):
    """`--drift-posthoc` alone fits only the drift-aware variant, which the saved model applies;
    `--drift-family` chooses the perturbation over the recipe's (whose other keys then go);
    the saved record and the model card say how the variant was fitted."""
    from nlpcal import load_calibrated
    from nlpcal.hub import calibration_card

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data:\n  test: {name: sst2, source: 'sample:sst2/test'}\n  calibration:\n"
        "    source: 'sample:sst2/dev'\n    drift: {family: gaussian, strengths: [0.5, 1.0, 2.0]}\n"
        "slicing: {max_eval_samples: 40}\nmax_length: 32\n"
    )
    flags = ["--config", str(recipe), "--drift-posthoc", "temperature"]
    run = tmp_path / "text"
    assert main(["calibrate", str(upper_reversed), *flags, "--drift-family", "corruption",
                 "--output-dir", str(run)]) == 0  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    assert {v for _, v, _ in rows(results)} == {"none", "temperature_drift"}
    record = load_calibrated(model_folder_of(run)).record
    assert record["calibrators"].keys() == {"temperature_drift"}
    described = "mixed text corruptions at severities 1, 2, 3, 4, 5, seed 0"
    assert record["drift"] == {
        "variants": ["temperature_drift"], "perturbation": "given", "description": described,
        "copies": 5, "schedule": None,
    }  # fmt: skip
    assert f"5 copies: {described}" in calibration_card(record)
    run = tmp_path / "gaussian"
    assert main(["calibrate", str(upper_reversed), *flags, "--posthoc", "temperature",
                 "--drift-family", "gaussian", "--output-dir", str(run)]) == 0  # fmt: skip
    cell = json.loads((run / "cells/model/seed_0/result.json").read_text())
    assert cell["drift_schedule"]["family"] == "gaussian"
    assert cell["drift_schedule"]["strengths"] == [0.5, 1.0, 2.0]
    table = rows(json.loads((run / "results.json").read_text()))
    drift = table[("model", "temperature_drift", "sst2")]
    plain = table[("model", "temperature", "sst2")]
    assert drift["nll"] != plain["nll"] and drift["accuracy"] == plain["accuracy"]
    saved = load_calibrated(model_folder_of(run))
    assert saved.variant == "temperature"  # the first
    assert saved.record["drift"]["schedule"] == cell["drift_schedule"]
    card = calibration_card(saved.record)
    assert "Drift-aware fitting (Tomani et al. 2021) of `temperature_drift`" in card
    assert "gaussian perturbations of the input embeddings at relative strengths 0.5, 1, 2" in card
    drifted = load_calibrated(model_folder_of(run), calibrator="temperature_drift")
    drifted.save_pretrained(tmp_path / "again")  # the record's drift entry travels with it
    assert load_calibrated(tmp_path / "again").record["drift"] == {
        **saved.record["drift"], "variants": ["temperature_drift"]
    }  # fmt: skip
    saved.save_pretrained(tmp_path / "plain")  # ... and goes with a variant it does not cover
    assert load_calibrated(tmp_path / "plain").record["drift"] is None
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--drift-family", "gaussian"], "--drift-family is the perturbation of --drift-posthoc"),
        (
            ["--drift-posthoc", "temperature", "--drift-family", "blur"],
            "argument --drift-family: invalid choice: 'blur' (choose from 'corruption', ",
        ),
    ],
)
def test_bad_drift_flags_are_one_line(upper_reversed, tmp_path, capsys, extra, message):
    flags = ["--test", "sample:sst2/test", "--calibration", "sample:sst2/dev"]
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", str(upper_reversed), *flags, *extra, "--output-dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "".join(err)  # argparse: usage, then error


def test_calibrate_model_with_drift_alone_saves_the_drift_aware_calibration(
    upper_reversed, tmp_path
):
    results, model = calibrate_model(
        upper_reversed, DATA, tmp_path, drift_posthoc=["temperature"], **SMALL
    )
    assert {v for _, v, _ in rows(results)} == {"none", "temperature_drift"}
    assert model.variant == "temperature_drift"
    assert model.record["drift"]["variants"] == ["temperature_drift"]
