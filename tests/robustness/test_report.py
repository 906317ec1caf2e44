"""Robustness of whole data sets through a trainer, and the per-stratum report."""

from __future__ import annotations

import math

import pytest
import torch

from nlpcal import CalibratedTrainer
from nlpcal.functional.strata import stratum_metrics
from nlpcal.robustness import (
    measure_robustness,
    robustness_strata,
    strata_figure,
    strata_markdown,
)
from tests.conftest import tiny_model
from tests.test_trainer import make_args, signal_dataset


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    args = make_args(tmp_path_factory.mktemp("out"), max_steps=6, posthoc="none")
    trained = CalibratedTrainer(tiny_model("roberta"), args, train_dataset=signal_dataset(48))
    trained.train()
    return trained


def test_measure_matches_the_model_example_by_example(trainer):
    data = signal_dataset(21, seed=5)  # not a multiple of the batch size
    measured = measure_robustness(trainer, data, "margin")
    assert measured.robustness.shape == (21,) and measured.probs.shape == (21, 3)
    assert measured.labels.tolist() == data["label"]
    model = trainer.model
    batch = {
        "input_ids": torch.tensor(data["input_ids"]),
        "attention_mask": torch.tensor(data["attention_mask"]),
    }
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    torch.testing.assert_close(measured.probs, probs, atol=1e-5, rtol=1e-4)
    wrong = probs.argmax(-1) != torch.tensor(data["label"])
    assert bool((measured.robustness[wrong] == 0).all())
    assert bool((measured.robustness[~wrong] > 0).all())


def test_strata_report_on_a_reference_and_a_shifted_set(trainer, tmp_path):
    sets = {"clean": signal_dataset(40, seed=1), "shifted": signal_dataset(30, seed=2, shift=50)}
    report = robustness_strata(trainer, sets, num_strata=4)
    assert report["reference"] == "clean" and len(report["edges"]) == 3
    clean = report["sets"]["clean"]
    assert clean["count"] == [10.0, 10.0, 10.0, 10.0]
    assert sum(report["sets"]["shifted"]["count"]) == 30
    # The table is the per-stratum metrics of the measured examples.
    measured = measure_robustness(trainer, sets["clean"], "margin")
    order = torch.sort(measured.robustness, stable=True).indices
    strata = torch.empty(40, dtype=torch.long)
    strata[order] = torch.arange(40) // 10
    expected = stratum_metrics(measured.probs, measured.labels, strata, 4)
    assert clean["accuracy"] == pytest.approx(expected["accuracy"].tolist())
    assert clean["ece"] == pytest.approx(expected["ece"].tolist())
    table = strata_markdown(report)
    assert table.count("\n| clean |") == 4 and table.count("| shifted |") == 4
    strata_figure(report, tmp_path / "strata.png")
    assert (tmp_path / "strata.png").stat().st_size > 0
    with pytest.raises(ValueError, match="reference 'test' is not among the sets"):
        robustness_strata(trainer, sets, reference="test")


def test_empty_strata_have_nan_metrics():
    m = stratum_metrics(
        torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]), torch.tensor([0, 2]), 3
    )
    assert m["count"].tolist() == [1.0, 0.0, 1.0]
    assert math.isnan(m["ece"][1]) and m["accuracy"][2] == 0
    assert m["ece"][0].item() == pytest.approx(0.1) and m["ece"][2].item() == pytest.approx(0.6)
