"""AR-AdaLS through CalibratedTrainer: example indices, refreshes, state, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from nlpcal import CalibratedTrainer
from nlpcal.losses import EXAMPLE_INDEX, LossContext, create_loss
from tests.conftest import tiny_model
from tests.test_trainer import make_args, signal_dataset

N_TRAIN = 48


def ar_trainer(tmp_path, loss_kwargs=None, n_train=N_TRAIN, n_dev=24, **overrides):
    args = make_args(
        tmp_path,
        calibration_loss="ar_adals",
        loss_kwargs={"num_strata": 4, **(loss_kwargs or {})},
        calibration_set="dev",
        posthoc="none",
        **{"max_steps": -1, "num_train_epochs": 3, **overrides},
    )
    return CalibratedTrainer(
        tiny_model("bert"),
        args,
        train_dataset=signal_dataset(n_train),
        eval_dataset={"dev": signal_dataset(n_dev, seed=3), "other": signal_dataset(6, seed=4)},
    )


def test_each_batch_carries_the_index_of_its_examples_through_the_trainer(tmp_path):
    trainer = ar_trainer(tmp_path, num_train_epochs=1)
    seen = []
    compute = trainer.calibration_loss.compute

    def spy(model, inputs, ctx):
        seen.append((inputs[EXAMPLE_INDEX].clone(), inputs["labels"].clone()))
        return compute(model, inputs, ctx)

    trainer.calibration_loss.compute = spy
    assert trainer.args.remove_unused_columns
    trainer.train()
    index = torch.cat([i for i, _ in seen])
    labels = torch.cat([y for _, y in seen])
    assert sorted(index.tolist()) == list(range(N_TRAIN))  # shuffled, each example once
    expected = torch.tensor(signal_dataset(N_TRAIN)["label"])
    assert torch.equal(labels, expected[index])  # the index names the example in the batch


def test_first_epoch_is_cross_entropy_and_each_later_epoch_starts_with_a_refresh(tmp_path):
    trainer = ar_trainer(tmp_path)
    trainer.train()
    loss = trainer.calibration_loss
    history = trainer.state.log_history
    # Refreshes at the ends of epochs 1 and 2; none after the last step.
    refreshes = [e for e in history if "ar_adals/epsilon_0" in e]
    assert loss.refreshes == 2 and [e["epoch"] for e in refreshes] == [1.0, 2.0]
    first_epoch = [e for e in history if "ar_adals/smoothing" in e and e["epoch"] <= 1.0]
    assert first_epoch and all(e["ar_adals/smoothing"] == 0 for e in first_epoch)
    logged_eps = [refreshes[-1][f"ar_adals/epsilon_{b}"] for b in range(4)]
    assert logged_eps == pytest.approx(loss.epsilon.tolist(), abs=1e-6)
    # With refresh_fraction 0.25, two draws of 12: at most 24 measured, unmeasured marked -1.
    measured = ~torch.isnan(loss.robustness)
    assert 12 <= int(measured.sum()) <= 24
    assert torch.equal(measured, loss.strata >= 0)
    counts = torch.bincount(loss.strata[measured], minlength=4)
    assert int(counts.max() - counts.min()) <= 1


def test_refresh_every_n_steps_on_the_whole_set(tmp_path):
    trainer = ar_trainer(
        tmp_path, {"refresh_steps": 2, "refresh_fraction": 1.0}, max_steps=7, num_train_epochs=1
    )
    trainer.train()
    loss = trainer.calibration_loss
    assert loss.refreshes == 3  # after steps 2, 4 and 6
    assert not torch.isnan(loss.robustness).any()
    assert torch.bincount(loss.strata).tolist() == [12, 12, 12, 12]


@pytest.mark.parametrize("mode", ["noise", "pgd"])
def test_other_robustness_modes_train(tmp_path, mode):
    options = {"copies": 4} if mode == "noise" else {"search_steps": 3, "pgd_steps": 2}
    trainer = ar_trainer(
        tmp_path,
        {"mode": mode, "refresh_fraction": 1.0, "robustness_kwargs": options},
        num_train_epochs=2,
    )
    trainer.train()
    r = trainer.calibration_loss.robustness
    assert trainer.calibration_loss.refreshes == 1 and bool(torch.isfinite(r).all())
    if mode == "noise":
        assert bool(((r >= 0) & (r <= 1)).all())


def test_over_confident_strata_smooth_more_and_under_confident_less(tmp_path):
    trainer = ar_trainer(tmp_path, {"refresh_fraction": 1.0})
    loss = trainer.calibration_loss
    loss.check_data()
    loss.epsilon = torch.full((4,), 0.2)
    train_r = torch.arange(N_TRAIN, dtype=torch.float32)
    # Adaptation set: six examples per stratum; the least robust stratum is over-confident,
    # the most robust one under-confident, the middle two calibrated.
    val_r = torch.tensor([5.0, 17.0, 29.0, 41.0]).repeat_interleave(6)
    conf = torch.tensor([0.9, 0.7, 0.5, 0.6]).repeat_interleave(6)
    correct = torch.tensor([0.5, 0.7, 0.5, 1.0]).repeat_interleave(6)
    calls = iter([(train_r, None, None), (val_r, conf, correct)])
    loss._measure = lambda dataset, clean=False: next(calls)
    loss.refresh()
    assert loss.strata.tolist() == torch.arange(N_TRAIN).div(12, rounding_mode="floor").tolist()
    torch.testing.assert_close(loss.epsilon, torch.tensor([0.4, 0.2, 0.2, 0.0]))
    # Each training example is smoothed by its stratum's ε.
    index = torch.tensor([0, 13, 47])
    torch.testing.assert_close(loss.example_smoothing(index), torch.tensor([0.4, 0.2, 0.0]))


def test_state_is_saved_in_checkpoints_and_resume_reproduces_it_exactly(tmp_path):
    overrides = dict(save_strategy="epoch", output_dir=str(tmp_path / "a"))
    straight = ar_trainer(tmp_path, **overrides)
    straight.train()
    saved = json.loads((tmp_path / "a" / "checkpoint-6" / "nlpcal_loss_state.json").read_text())
    assert saved["refreshes"] == 1 and saved["num_strata"] == 4

    resumed = ar_trainer(tmp_path, **{**overrides, "output_dir": str(tmp_path / "b")})
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-6"))
    assert resumed.calibration_loss.refreshes == 2
    assert resumed.calibration_loss.state_dict() == straight.calibration_loss.state_dict()

    other = ar_trainer(tmp_path, {"num_strata": 3}, output_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="num_strata=4, but this loss has num_strata=3"):
        other.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-6"))


def test_state_round_trips_through_json_exactly():
    loss = create_loss("ar_adals", num_strata=3)
    loss._reset(5)
    loss.robustness[[0, 2, 4]] = torch.tensor([0.1234567, 0.0, 3.3])
    loss.strata[[0, 2, 4]] = torch.tensor([1, 0, 2])
    loss.edges = torch.tensor([0.05, 1.7])
    loss.epsilon = torch.tensor([0.1, 0.0, 0.4999])
    loss.refreshes = 3
    again = create_loss("ar_adals", num_strata=3)
    again.load_state_dict(json.loads(json.dumps(loss.state_dict())))
    assert again.state_dict() == loss.state_dict()
    assert torch.equal(again.robustness.isnan(), loss.robustness.isnan())
    broken = {**loss.state_dict(), "strata": [0, 1]}
    with pytest.raises(ValueError, match="inconsistent: 5 robustness values, 2 strata"):
        again.load_state_dict(broken)
    with pytest.raises(ValueError, match=r"epsilon must hold 3 values in \[0, max_smoothing=0.5\]"):
        again.load_state_dict({**loss.state_dict(), "epsilon": [0.1, 0.2, 0.7]})
    # Unmeasured examples (1 and 3) get the mean ε.
    mean = float(loss.epsilon.mean())
    assert again.example_smoothing(torch.tensor([1, 3, 4])).tolist() == pytest.approx(
        [mean, mean, 0.4999]
    )


def test_default_strength_differs_from_cross_entropy_once_refreshed():
    from tests.losses.test_battery import primed_ar_adals

    loss, ce = create_loss("ar_adals"), create_loss("cross_entropy")
    loss.load_state_dict(primed_ar_adals(loss))
    model = tiny_model("roberta")
    from tests.conftest import tiny_batch

    batch = tiny_batch()
    ours = loss(model, {**batch, EXAMPLE_INDEX: torch.arange(8) * 2}, LossContext())
    assert not torch.allclose(ours.loss, ce(model, batch, LossContext()).loss)
    assert ours.logs["smoothing"] > 0


@pytest.mark.parametrize(
    ("kwargs", "overrides", "message"),
    [
        ({"num_strata": 10, "refresh_fraction": 0.1}, {}, "cannot split 5 training examples"),
        ({"num_strata": 30}, {"n_dev": 24}, "24 examples, fewer than num_strata=30"),
        ({"adaptation_set": "missing"}, {}, "adaptation_set='missing' is not an eval set"),
        ({"adaptation_set": "other", "num_strata": 8}, {}, "6 examples, fewer than num_strata=8"),
    ],
)
def test_bad_data_fails_before_training(tmp_path, kwargs, overrides, message):
    trainer = ar_trainer(tmp_path, {"refresh_fraction": 1.0, **kwargs}, **overrides)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        trainer.train()
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.named_parameters())


def test_no_adaptation_data_is_an_error(tmp_path):
    args = make_args(tmp_path, calibration_loss="ar_adals", posthoc="none")
    trainer = CalibratedTrainer(tiny_model("bert"), args, train_dataset=signal_dataset(64))
    with pytest.raises(ValueError, match="adapts its smoothing on held-out data"):
        trainer.train()


def test_a_batch_without_indices_and_a_model_without_embeddings_are_refused():
    from tests.conftest import tiny_batch

    with pytest.raises(ValueError, match="'example_index'"):
        create_loss("ar_adals")(tiny_model("bert"), tiny_batch(), LossContext())
    model = tiny_model("distilbert")
    model.get_input_embeddings = lambda: None
    with pytest.raises(ValueError, match="has no input embeddings"):
        create_loss("ar_adals").prepare_model(model)


def test_a_training_set_that_cannot_carry_indices_is_refused(tmp_path):
    rows = [{k: torch.tensor(v) for k, v in row.items()} for row in signal_dataset(16)]
    args = make_args(tmp_path, calibration_loss="ar_adals", calibration_set="dev", posthoc="none")
    trainer = CalibratedTrainer(
        tiny_model("bert"),
        args,
        train_dataset=rows,
        eval_dataset={"dev": signal_dataset(24, seed=3)},
    )
    with pytest.raises(ValueError, match="must yield each example's index under 'example_index'"):
        trainer.train()


def test_adaptation_samples_caps_the_measured_adaptation_set_with_the_same_examples(tmp_path):
    trainer = ar_trainer(tmp_path, {"adaptation_samples": 8, "refresh_fraction": 1.0})
    loss = trainer.calibration_loss
    measured = []
    measure = loss._measure

    def spy(dataset, clean=False):
        if clean:
            measured.append(sorted(dataset["input_ids"]))
        return measure(dataset, clean)

    loss._measure = spy
    trainer.train()
    assert len(measured) == 2 and len(measured[0]) == 8 and measured[0] == measured[1]
