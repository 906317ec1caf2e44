"""CalibratedTrainer on tiny random models: training, evaluation, calibration, saving, resuming."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from transformers import TrainingArguments

from nlpcal import (
    CalibratedTrainer,
    CalibrationArguments,
    create_loss,
    list_losses,
    load_calibrated,
)
from nlpcal.losses import CrossEntropyLoss
from tests.conftest import NUM_LABELS, tiny_model

SEQ_LEN = 10


def signal_dataset(n: int = 64, seed: int = 0, shift: int = 0) -> Dataset:
    """Labels are written into the sequence as a marker token, so a model can learn them.

    ``shift`` moves the filler tokens to another part of the vocabulary (a covariate shift).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
    ids = torch.randint(10 + shift, 40 + shift, (n, SEQ_LEN), generator=g)
    ids[:, 1] = 1 + labels  # marker tokens 1..K
    lengths = torch.randint(SEQ_LEN - 3, SEQ_LEN + 1, (n,), generator=g)
    mask = (torch.arange(SEQ_LEN)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    features = Features(
        {
            "input_ids": Sequence(Value("int64")),
            "attention_mask": Sequence(Value("int64")),
            "label": ClassLabel(names=[f"c{k}" for k in range(NUM_LABELS)]),
        }
    )
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "label": labels.tolist()},
        features=features,
    )


def make_args(tmp_path, **overrides) -> CalibrationArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        max_steps=4,
        report_to="none",
        save_strategy="no",
        logging_steps=2,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return CalibrationArguments(**defaults)


def calibrated_trainer(
    tmp_path, n_train: int = 32, drift_datasets: list | str | None = "dev", **overrides
) -> CalibratedTrainer:
    """A tiny BERT trained for a few steps, its post-hoc calibrators fitted on a held-out set
    (drift-aware variants also on one copy of it, unless ``drift_datasets`` says otherwise)."""
    args = make_args(tmp_path, calibration_set="dev", **{"max_steps": 4, **overrides})
    dev = signal_dataset(48, seed=3)
    trainer = CalibratedTrainer(
        tiny_model("bert"),
        args,
        train_dataset=signal_dataset(n_train),
        eval_dataset={"dev": dev},
        drift_datasets=[dev] if drift_datasets == "dev" else drift_datasets,
    )
    trainer.train()
    return trainer


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("loss", list_losses())
def test_every_loss_trains_and_logs_its_diagnostics(tmp_path, loss):
    model = tiny_model("bert")
    # A held-out set, which AR-AdaLS adapts on; no calibrator is fitted on it.
    args = make_args(tmp_path, calibration_loss=loss, calibration_set="dev", posthoc="none")
    trainer = CalibratedTrainer(
        model,
        args,
        train_dataset=signal_dataset(),
        eval_dataset={"dev": signal_dataset(24, seed=3)},
    )
    before = params(model)
    trainer.train()
    after = params(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "classifier.weight" in changed
    assert len(changed) > len(before) // 2
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert any(k.startswith(f"{loss}/") for k in logged), logged


def test_evaluate_reports_every_set_with_ood_detection(tmp_path):
    args = make_args(tmp_path, ood_sets=["shifted"], in_domain_set="clean", posthoc="none")
    trainer = CalibratedTrainer(
        tiny_model("roberta"),
        args,
        train_dataset=signal_dataset(),
        eval_dataset={
            "clean": signal_dataset(40, seed=1),
            "shifted": signal_dataset(30, seed=2, shift=50),
        },
    )
    metrics = trainer.evaluate()
    for name in ("clean", "shifted"):
        for metric in ("accuracy", "ece", "mce", "brier", "nll", "aurc", "loss"):
            assert math.isfinite(metrics[f"eval_{name}_{metric}"]), (name, metric)
    for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        assert 0.0 <= metrics[f"eval_shifted_ood_{metric}"] <= 1.0
    assert "eval_clean_ood_auroc" not in metrics
    # The predictive NLL is the reported loss.
    assert metrics["eval_clean_loss"] == pytest.approx(metrics["eval_clean_nll"], rel=1e-4)


def test_single_eval_set_keeps_plain_prefix(tmp_path):
    trainer = CalibratedTrainer(
        tiny_model("distilbert"), make_args(tmp_path), eval_dataset=signal_dataset(20)
    )
    metrics = trainer.evaluate()
    assert {"eval_accuracy", "eval_ece", "eval_brier", "eval_nll"} <= set(metrics)


def test_posthoc_calibrator_fitted_after_training_and_survives_save_load(tmp_path):
    args = make_args(tmp_path, calibration_set="dev", max_steps=6)
    evals = {"test": signal_dataset(40, seed=1), "dev": signal_dataset(48, seed=3)}
    trainer = CalibratedTrainer(
        tiny_model("bert"), args, train_dataset=signal_dataset(), eval_dataset=evals
    )
    trainer.train()
    assert trainer.calibrator is not None and trainer.calibrator.name == "temperature"
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"calibration_nll_before", "calibration_temperature_nll_after"} <= logged
    metrics = trainer.evaluate()
    assert "eval_test_temperature_ece" in metrics
    # Fitting minimises NLL on the calibration split: it cannot get worse there.
    assert metrics["eval_dev_temperature_nll"] <= metrics["eval_dev_nll"] + 1e-6

    trainer.save_model(str(tmp_path / "saved"))
    loaded = load_calibrated(tmp_path / "saved")
    assert loaded.calibrator is not None
    assert torch.allclose(loaded.calibrator.temperature, trainer.calibrator.temperature)
    batch = evals["test"][:8]
    inputs = {k: torch.tensor(batch[k]) for k in ("input_ids", "attention_mask")}
    preds = trainer.predictions(evals["test"].select(range(8)))
    expected = trainer.calibrated_probs(preds)
    assert torch.allclose(loaded(**inputs).softmax(-1), expected, atol=1e-5)


def test_two_variants_of_one_calibrator_are_fitted_with_their_own_kwargs_in_one_pass(
    tmp_path, monkeypatch
):
    small = {"encoder_hidden": [16], "temperature_hidden": [8], "epochs": 2, "batch_size": 16}
    args = make_args(
        tmp_path,
        calibration_set="dev",
        posthoc=["temperature", "adats", "adats_b=adats"],
        posthoc_kwargs={"adats": {**small, "seed": 0}, "adats_b": {**small, "seed": 1}},
        active_calibrator="adats_b",
    )
    evals = {"test": signal_dataset(40, seed=1), "dev": signal_dataset(48, seed=3)}
    trainer = CalibratedTrainer(
        tiny_model("bert"), args, train_dataset=signal_dataset(), eval_dataset=evals
    )
    passes = []
    predict = trainer._predict
    monkeypatch.setattr(
        trainer,
        "_predict",
        lambda ds, name, **kw: passes.append((name, kw)) or predict(ds, name, **kw),
    )
    trainer.train()
    assert passes == [("calibration", {"features": True})]
    assert list(trainer.calibrators) == ["temperature", "adats", "adats_b"]
    a, b = trainer.calibrators["adats"], trainer.calibrators["adats_b"]
    assert (a.name, a.seed, b.name, b.seed) == ("adats", 0, "adats", 1)
    assert trainer.active_calibrator == "adats_b" and trainer.calibrator is b
    preds = trainer.predictions(evals["test"])
    assert preds.features is not None
    with torch.no_grad():
        assert not torch.allclose(a(preds.logits, preds.features), b(preds.logits, preds.features))
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {f"calibration_{v}_ece_after" for v in trainer.calibrators} <= logged
    metrics = trainer.evaluate()
    for variant in ("", "temperature_", "adats_", "adats_b_"):
        assert math.isfinite(metrics[f"eval_test_{variant}ece"])


@pytest.mark.parametrize(
    ("posthoc", "kwargs", "message"),
    [
        (["temperature", "temperature"], {}, "lists the variant 'temperature' twice"),
        (["temperature", "none"], {}, "unknown calibrator 'none'"),
        (["Big=temperature"], {}, "variant name is lowercase"),
        (["temperature", "vector"], {"max_iter": 5}, r"its keys are variant names.*\['max_iter'\]"),
    ],
)
def test_bad_posthoc_lists_are_refused_when_the_trainer_is_built(
    tmp_path, posthoc, kwargs, message
):
    args = make_args(tmp_path, posthoc=posthoc, posthoc_kwargs=kwargs)
    with pytest.raises(ValueError, match=message):
        CalibratedTrainer(tiny_model("bert"), args)


def test_active_calibrator_must_be_a_variant(tmp_path):
    args = make_args(tmp_path, posthoc=["temperature"], active_calibrator="vector")
    with pytest.raises(ValueError, match=r"active_calibrator 'vector' is not a posthoc variant"):
        CalibratedTrainer(tiny_model("bert"), args)


def test_double_head_is_saved_and_restored(tmp_path):
    args = make_args(tmp_path, calibration_loss="double_head", posthoc="none")
    trainer = CalibratedTrainer(tiny_model("bert"), args, train_dataset=signal_dataset())
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    loaded = load_calibrated(tmp_path / "saved")
    head = trainer.model.nlpcal_calibration_head.state_dict()
    restored = loaded.model.nlpcal_calibration_head.state_dict()
    assert head.keys() == restored.keys()
    for key in head:
        assert torch.equal(head[key].cpu(), restored[key])


def test_resume_from_checkpoint_continues_identically(tmp_path):
    def run(output_dir, resume=None):
        args = make_args(
            tmp_path,
            output_dir=str(output_dir),
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            calibration_loss="label_smoothing",
        )
        trainer = CalibratedTrainer(tiny_model("bert"), args, train_dataset=signal_dataset())
        trainer.train(resume_from_checkpoint=resume)
        return params(trainer.model)

    straight = run(tmp_path / "a")
    resumed = run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-3"))
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6), key


@pytest.mark.parametrize(
    "loss",
    [n for n in list_losses() if create_loss(n).matches_large_batch],
)
def test_gradient_accumulation_matches_large_batch(tmp_path, loss):
    def run(batch, accumulation):
        args = make_args(
            tmp_path,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            calibration_loss=loss,
            warmup_steps=0,
            calibration_set="dev",
            posthoc="none",
        )
        # The one step sees the same first 8 shuffled examples either way; 40 are enough for
        # AR-AdaLS's strata, and the held-out set is the one it adapts on.
        trainer = CalibratedTrainer(
            tiny_model("bert"),
            args,
            train_dataset=signal_dataset(40),
            eval_dataset={"dev": signal_dataset(24, seed=3)},
        )
        trainer.train()
        return params(trainer.model)

    large, accumulated = run(8, 1), run(4, 2)
    for key in large:
        assert torch.allclose(large[key], accumulated[key], atol=1e-5), key


def test_plain_training_arguments_are_accepted(tmp_path):
    args = TrainingArguments(str(tmp_path / "o"), max_steps=2, report_to="none", use_cpu=True)
    trainer = CalibratedTrainer(tiny_model("bert"), args, train_dataset=signal_dataset(16))
    assert trainer.calibration_loss.name == "cross_entropy"
    trainer.train()


def test_loss_instance_and_name_override_args(tmp_path):
    from nlpcal.losses import create_loss

    trainer = CalibratedTrainer(tiny_model("bert"), make_args(tmp_path), loss="label_smoothing")
    assert trainer.calibration_loss.name == "label_smoothing"
    loss = create_loss("label_smoothing", alpha=0.2)
    trainer = CalibratedTrainer(tiny_model("bert"), make_args(tmp_path), loss=loss)
    assert trainer.calibration_loss is loss


def test_unknown_loss_lists_available(tmp_path):
    with pytest.raises(ValueError, match=r"available: .*cross_entropy"):
        CalibratedTrainer(tiny_model("bert"), make_args(tmp_path, calibration_loss="nope"))


def test_label_count_mismatch_is_reported(tmp_path):
    trainer = CalibratedTrainer(
        tiny_model("bert", num_labels=2), make_args(tmp_path), train_dataset=signal_dataset()
    )
    with pytest.raises(ValueError, match=r"3 classes .* num_labels=2"):
        trainer.train()


def test_labels_out_of_range_are_reported(tmp_path):
    ds = (
        signal_dataset()
        .cast_column("label", Value("int64"))
        .map(lambda r: {"label": r["label"] + 5})
    )
    trainer = CalibratedTrainer(tiny_model("bert"), make_args(tmp_path), train_dataset=ds)
    with pytest.raises(ValueError, match=r"labels lie in \[5, 7\] but the model has num_labels=3"):
        trainer.train()


def test_missing_labels_are_reported(tmp_path):
    ds = signal_dataset().remove_columns("label")
    trainer = CalibratedTrainer(tiny_model("bert"), make_args(tmp_path), train_dataset=ds)
    with pytest.raises(ValueError, match="no 'label' or 'labels' column"):
        trainer.train()


def test_embedding_loss_needs_input_embeddings(tmp_path):
    model = tiny_model("bert")
    model.get_input_embeddings = lambda: None
    with pytest.raises(ValueError, match="no input embeddings"):
        CalibratedTrainer(model, make_args(tmp_path, calibration_loss="regmixup"))


def test_calibrate_without_data_says_what_to_pass(tmp_path):
    trainer = CalibratedTrainer(tiny_model("bert"), make_args(tmp_path))
    with pytest.raises(ValueError, match="calibration_dataset"):
        trainer.calibrate()


@pytest.mark.parametrize(
    ("argument", "value"),
    [("calibration_set", "validation"), ("ood_sets", ["imdb"]), ("in_domain_set", "sst2")],
)
def test_unknown_eval_set_names_are_refused_when_the_trainer_is_built(tmp_path, argument, value):
    args = make_args(tmp_path, **{argument: value})
    with pytest.raises(ValueError, match=rf"{argument} names .* not eval sets.*\['test'\]"):
        CalibratedTrainer(
            tiny_model("bert"),
            args,
            train_dataset=signal_dataset(),
            eval_dataset={"test": signal_dataset(8)},
        )


def test_eval_sets_set_after_construction_are_checked_before_the_first_step(tmp_path):
    args = make_args(tmp_path, calibration_set="dev", ood_sets=["imdb"])
    trainer = CalibratedTrainer(tiny_model("bert"), args, train_dataset=signal_dataset())
    trainer.eval_dataset = {"dev": signal_dataset(8)}
    with pytest.raises(ValueError, match=r"ood_sets names \['imdb'\]"):
        trainer.train()
    assert trainer.state.global_step == 0
    trainer.eval_dataset = None
    with pytest.raises(ValueError, match="calibration_set names"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_unknown_posthoc_calibrator_is_refused_when_the_trainer_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"posthoc: unknown calibrator 'platt'.*temperature"):
        CalibratedTrainer(tiny_model("bert"), make_args(tmp_path, posthoc="platt"))


def test_eval_set_with_the_model_labels_in_another_order_is_refused(tmp_path):
    model = tiny_model("bert")
    model.config.id2label = {0: "C2", 1: "C0", 2: "C1"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    trainer = CalibratedTrainer(model, make_args(tmp_path), eval_dataset=signal_dataset(20))
    with pytest.raises(ValueError, match=r"\['c0', 'c1', 'c2'\].*\['C2', 'C0', 'C1'\]"):
        trainer.evaluate()
    # The same names in the same order, in another case, are the same labels.
    model.config.id2label = {0: "C0", 1: "C1", 2: "C2"}
    assert "eval_ece" in trainer.evaluate()


class CountingLoss(CrossEntropyLoss):
    """Cross-entropy that counts its training calls: per-run state kept by the loss."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def compute(self, model, inputs, ctx):
        if model.training:
            self.calls += 1
        return super().compute(model, inputs, ctx)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_loss_state_is_checkpointed_and_restored_on_resume(tmp_path):
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    first = CalibratedTrainer(
        tiny_model("bert"), args, loss=CountingLoss(), train_dataset=signal_dataset()
    )
    first.train()
    assert first.calibration_loss.calls == 6
    saved = json.loads((tmp_path / "out" / "checkpoint-3" / "nlpcal_loss_state.json").read_text())
    assert saved == {"calls": 3}

    resumed = CalibratedTrainer(
        tiny_model("bert"), args, loss=CountingLoss(), train_dataset=signal_dataset()
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert resumed.calibration_loss.calls == 6


def test_cross_fitted_outputs_score_each_fold_with_calibrators_fitted_on_the_other(tmp_path):
    from nlpcal.trainer import Predictions

    trainer = calibrated_trainer(tmp_path, posthoc=["temperature", "vector"])
    fitted = dict(trainer.calibrators)
    torch.manual_seed(0)
    logits = 4 * torch.randn(40, 2)
    labels = torch.randint(0, 2, (40,))
    preds = Predictions(logits, labels)
    outputs = trainer.cross_fitted_outputs(preds, folds=2, seed=3)
    assert list(outputs) == ["none", "temperature", "vector"]
    assert torch.allclose(outputs["none"].class_probs, logits.softmax(-1))
    fold_of = torch.randperm(40, generator=torch.Generator().manual_seed(3)) % 2
    held, fit = fold_of == 0, fold_of == 1
    from nlpcal.posthoc import create_calibrator

    expected = create_calibrator("temperature").fit(logits[fit], labels[fit])(logits[held])
    assert torch.allclose(outputs["temperature"].class_probs[held], expected.softmax(-1), atol=1e-6)
    in_sample = create_calibrator("temperature").fit(logits, labels)(logits[held])
    assert not torch.allclose(outputs["temperature"].class_probs[held], in_sample.softmax(-1))
    assert trainer.calibrators == fitted  # the trainer's own calibrators are left alone
    with pytest.raises(ValueError, match="folds=1"):
        trainer.cross_fitted_outputs(preds, folds=1)
    with pytest.raises(ValueError, match="labelled"):
        trainer.cross_fitted_outputs(Predictions(logits, None))


def test_drift_aware_fitting_on_unperturbed_copies_equals_plain_fitting(tmp_path):
    trainer = calibrated_trainer(
        tmp_path,
        posthoc=["temperature", "t_drift=temperature"],
        drift_variants=["t_drift"],
    )
    dev = trainer.eval_dataset["dev"]
    fitted = trainer.calibrate(dev, drift_datasets=[dev, dev])
    assert torch.allclose(
        fitted["t_drift"].temperature, fitted["temperature"].temperature, rtol=1e-4
    )


def test_drift_aware_temperature_rises_with_the_perturbation_strength(tmp_path):
    """Copies on which the model is ever more often wrong (stand-ins for stronger drift: their
    labels moved off the predicted class) call for a higher temperature; the plain variant is
    fitted on the clean data alone."""
    trainer = calibrated_trainer(
        tmp_path,
        max_steps=60,
        learning_rate=1e-3,
        posthoc=["temperature", "t_drift=temperature"],
        drift_variants=["t_drift"],
    )
    dev = trainer.eval_dataset["dev"]
    predicted = trainer.predictions(dev).logits.argmax(-1).numpy()
    wrong = (predicted + 1) % NUM_LABELS
    temperatures, plain = [], set()
    for share in (0.0, 0.3, 0.6):
        moved = np.random.default_rng(0).random(len(dev)) < share
        labels = np.where(moved, wrong, predicted)
        copy = dev.remove_columns("label").add_column("label", labels.tolist())
        fitted = trainer.calibrate(
            dev.remove_columns("label").add_column("label", predicted.tolist()),
            drift_datasets=[copy],
        )
        temperatures.append(float(fitted["t_drift"].temperature))
        plain.add(round(float(fitted["temperature"].temperature), 6))
    assert temperatures[0] < temperatures[1] < temperatures[2]
    assert len(plain) == 1  # fitted on the same clean data each time


def test_drift_variants_need_perturbed_copies_and_must_be_variants(tmp_path):
    with pytest.raises(ValueError, match=r"drift_variants \['t'\] are not posthoc variants"):
        calibrated_trainer(tmp_path, posthoc=["temperature"], drift_variants=["t"])
    trainer = calibrated_trainer(tmp_path, posthoc=["temperature"])
    trainer.calibration["drift_variants"] = ["temperature"]
    trainer.drift_datasets = []
    with pytest.raises(ValueError, match="need perturbed copies of the calibration data"):
        trainer.calibrate(trainer.eval_dataset["dev"])
    dev = trainer.eval_dataset["dev"]
    with pytest.raises(ValueError, match="must be labelled and have its 48 rows"):
        trainer.calibrate(dev, drift_datasets=[dev.select(range(10))])


def test_a_feature_calibrator_beside_a_drift_aware_temperature(tmp_path):
    """AdaTS needs features of the clean rows; the perturbed copies of a drift-aware temperature
    need none: fitting (and cross-fitting) both works."""
    trainer = calibrated_trainer(
        tmp_path,
        posthoc=["adats", "t_drift=temperature"],
        posthoc_kwargs={"adats": {"epochs": 2}},
        drift_variants=["t_drift"],
    )
    assert set(trainer.calibrators) == {"adats", "t_drift"}
    dev = trainer.eval_dataset["dev"]
    preds = trainer.predictions(dev, features=True)
    drift = trainer.drift_predictions(n=len(dev))
    assert drift[0].features is None
    outputs = trainer.cross_fitted_outputs(preds, drift=drift)
    assert set(outputs) == {"none", "adats", "t_drift"}


def test_drift_aware_fitting_on_embedding_perturbations(tmp_path):
    """args.drift_perturbation: the trainer perturbs the calibration data's embeddings itself, at
    strengths searched on it; the drift-aware variant differs from the plain one, and the copies
    are rebuilt from the kept schedule."""
    trainer = calibrated_trainer(
        tmp_path,
        max_steps=40,
        learning_rate=5e-3,
        logging_steps=1000,
        posthoc=["temperature", "t_drift=temperature"],
        drift_variants=["t_drift"],
        drift_perturbation="gradient",
        drift_perturbation_kwargs={"levels": 3},
        drift_datasets=None,
    )
    schedule = trainer.drift_schedule
    assert len(schedule.strengths) == 3 and schedule.family == "gradient"
    assert schedule.accuracies[-1] < schedule.clean_accuracy
    fitted = trainer.calibrators
    assert not torch.allclose(fitted["t_drift"].temperature, fitted["temperature"].temperature)
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"calibration_drift_3_strength", "calibration_drift_3_accuracy"} <= logged
    dev = trainer.eval_dataset["dev"]
    again = trainer.drift_predictions(n=len(dev))
    assert trainer.drift_schedule is schedule  # the kept schedule, not a new search
    assert [round(float((p.logits.argmax(-1) == p.labels).float().mean()), 6) for p in again] == [
        round(a, 6) for a in schedule.accuracies
    ]
    mixture = torch.cat([trainer.predictions(dev).logits, *(p.logits for p in again)])
    labels = torch.tensor(dev["label"]).repeat(4)
    from nlpcal.posthoc import create_calibrator

    expected = create_calibrator("temperature").fit(mixture, labels).temperature
    assert torch.allclose(fitted["t_drift"].temperature, expected, rtol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"drift_perturbation": "blur"}, r"drift_perturbation='blur': family must be one of"),
        (
            {"drift_perturbation": "gaussian", "drift_perturbation_kwargs": {"strengths": [2, 1]}},
            r"strictly increasing list of numbers > 0, got \[2, 1\]",
        ),
        (
            {"drift_perturbation": "gaussian", "drift_perturbation_kwargs": {"sigma": 1}},
            "bad drift_perturbation_kwargs",
        ),
        ({"drift_perturbation_kwargs": {"levels": 3}}, "given without drift_perturbation"),
    ],
)
def test_a_bad_embedding_perturbation_is_refused(tmp_path, overrides, message):
    args = make_args(tmp_path, posthoc=["t=temperature"], drift_variants=["t"], **overrides)
    with pytest.raises(ValueError, match=message):
        CalibratedTrainer(tiny_model("bert"), args)


def test_embedding_perturbation_and_drift_datasets_exclude_each_other(tmp_path):
    args = make_args(
        tmp_path, posthoc=["t=temperature"], drift_variants=["t"], drift_perturbation="gaussian"
    )
    dev = signal_dataset(20, seed=3)
    with pytest.raises(ValueError, match="pass no drift_datasets with it"):
        CalibratedTrainer(tiny_model("bert"), args, drift_datasets=[dev])
    trainer = CalibratedTrainer(tiny_model("bert"), args)
    with pytest.raises(ValueError, match="give one or the other"):
        trainer.calibrate(dev, drift_datasets=[dev])


def test_prediction_out_of_memory_halves_the_eval_batch_until_it_fits(tmp_path, monkeypatch):
    """Out of memory, predictions are retried with half the eval batch (kept for later sets)."""
    trainer = CalibratedTrainer(
        tiny_model("bert"), make_args(tmp_path, posthoc="none", per_device_eval_batch_size=16)
    )
    data = signal_dataset(40, seed=1)
    expected = trainer.predictions(data)
    loop = trainer.evaluation_loop
    sizes = []

    def small_memory(dataloader, *args, **kwargs):
        sizes.append(len(next(iter(dataloader))["labels"]))
        if sizes[-1] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loop(dataloader, *args, **kwargs)

    monkeypatch.setattr(trainer, "evaluation_loop", small_memory)
    preds = trainer.predictions(data)
    assert sizes == [16, 8, 4] and trainer.args.per_device_eval_batch_size == 4
    assert torch.allclose(preds.logits, expected.logits, atol=1e-5)
    assert torch.equal(preds.labels, expected.labels)

    def broken(dataloader, *args, **kwargs):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(trainer, "evaluation_loop", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        trainer.predictions(data)
    assert trainer.args.per_device_eval_batch_size == 4
