"""Perturbed copies of held-out data in embedding space: the schedule search, determinism, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from nlpcal import CalibratedTrainer
from nlpcal.robustness import DriftScheduleError, EmbeddingDrift, perturbed_outputs
from tests.conftest import tiny_batch, tiny_model
from tests.test_trainer import make_args, signal_dataset


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A tiny BERT that learned the marker token (accuracy well above chance on held-out data)."""
    args = make_args(
        tmp_path_factory.mktemp("out"),
        max_steps=40,
        learning_rate=5e-3,
        logging_steps=1000,
        posthoc="none",
    )
    trained = CalibratedTrainer(tiny_model("bert"), args, train_dataset=signal_dataset(64))
    trained.train()
    return trained


@pytest.fixture(scope="module")
def held_out():
    return signal_dataset(96, seed=3)


@pytest.mark.parametrize("family", ["gaussian", "gradient"])
def test_searched_strengths_rise_and_accuracy_falls_towards_chance(trainer, held_out, family):
    drift = EmbeddingDrift(family, levels=3, accuracy_drop=0.9)
    schedule, copies = drift(trainer, held_out)
    strengths, accuracies = schedule.strengths, schedule.accuracies
    assert len(strengths) == 3 and all(a < b for a, b in itertools.pairwise(strengths))
    assert schedule.clean_accuracy > 0.5  # the fixture learned (chance is 1/3)
    assert schedule.clean_accuracy > accuracies[0] >= accuracies[1] >= accuracies[2]
    assert accuracies[0] > accuracies[2]
    # Each copy is at or below its target, the targets falling in equal steps.
    assert all(a <= t + 1e-6 for a, t in zip(accuracies, schedule.targets, strict=True))
    steps = torch.diff(torch.tensor([schedule.clean_accuracy, *schedule.targets]))
    assert torch.allclose(steps, steps[0].expand(3), atol=1e-5) and steps[0] < 0
    assert copies.logits.shape == (3, len(held_out), 3)
    assert torch.equal(copies.labels, torch.tensor(held_out["label"]))


def test_perturbed_copies_are_deterministic_under_a_seed(trainer, held_out):
    def run(seed: int, family: str = "gaussian") -> torch.Tensor:
        drift = EmbeddingDrift(family, strengths=[0.5, 2.0], seed=seed)
        return drift(trainer, held_out)[1].logits

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    assert torch.equal(run(0, "gradient"), run(1, "gradient"))  # no randomness in FGSM


def test_given_strengths_skip_the_search(trainer, held_out):
    schedule, copies = EmbeddingDrift("gradient", strengths=[0.1, 0.3], steps=2)(trainer, held_out)
    assert schedule.strengths == (0.1, 0.3) and schedule.targets is None
    assert len(schedule.accuracies) == 2 and copies.logits.shape[0] == 2


def test_gaussian_copies_share_one_noise_direction_across_strengths():
    """One draw per example, scaled by each strength: the outputs change smoothly with it."""
    model = tiny_model("bert")
    batch = tiny_batch(4)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    g = torch.Generator().manual_seed(0)
    _, together, _ = perturbed_outputs(model, inputs, "gaussian", [0.01, 1.0], g)
    g = torch.Generator().manual_seed(0)
    _, alone, _ = perturbed_outputs(model, inputs, "gaussian", [1.0], g)
    assert torch.allclose(together[1], alone[0], atol=1e-5)
    clean, tiny, _ = perturbed_outputs(model, inputs, "gaussian", [1e-6])
    assert torch.allclose(tiny[0], clean, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "blur"}, r"family must be one of \['gaussian', 'gradient'\], got 'blur'"),
        ({"strengths": []}, r"strengths must be a non-empty, strictly increasing .* got \[\]"),
        ({"strengths": [0.5, 0.5]}, r"strictly increasing .* got \[0.5, 0.5\]"),
        ({"strengths": [0.0, 1.0]}, r"numbers > 0, got \[0.0, 1.0\]"),
        ({"levels": 0}, "levels must be an integer >= 1, got 0"),
        ({"accuracy_drop": 1.5}, r"accuracy_drop must be a number in \(0, 1\], got 1.5"),
        ({"steps": 3}, "steps and norm apply to the gradient family only"),
        ({"min_strength": 2.0, "max_strength": 1.0}, "min_strength must be below max_strength"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    kwargs = {"family": "gaussian", **kwargs}
    with pytest.raises(ValueError, match=message):
        EmbeddingDrift(**kwargs)


def test_a_calibration_split_too_small_for_the_ladder_is_refused(trainer):
    with pytest.raises(DriftScheduleError, match=r"\(6 rows, .* too small for levels=10"):
        EmbeddingDrift("gradient", levels=10)(trainer, signal_dataset(6, seed=3))


def test_a_search_that_cannot_reach_a_level_is_a_schedule_error(trainer):
    # One bisection round cannot bring the last level (all the way to the floor) below max.
    short = EmbeddingDrift("gaussian", levels=2, accuracy_drop=1.0, search_steps=1)
    with pytest.raises(DriftScheduleError, match="strongest gaussian perturbation tried"):
        short(trainer, signal_dataset(60, seed=3))


def test_a_model_at_chance_has_no_ladder(tmp_path):
    args = make_args(tmp_path, max_steps=1, learning_rate=1e-9, posthoc="none")
    untrained = CalibratedTrainer(tiny_model("bert", seed=1), args)
    data = signal_dataset(30, seed=3)
    accuracy = untrained.predictions(data).logits.argmax(-1).eq(torch.tensor(data["label"]))
    if float(accuracy.float().mean()) > 0.5:
        pytest.skip("this random model happens to be above chance")
    with pytest.raises(DriftScheduleError, match="no accuracy ladder to descend"):
        EmbeddingDrift("gaussian", levels=2, search_steps=1)(untrained, data)
