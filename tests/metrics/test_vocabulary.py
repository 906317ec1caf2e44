"""One metric vocabulary: the trainer's keys, the runner's tables and the model card use it."""

from __future__ import annotations

import re

import pytest

from nlpcal import CalibratedTrainer
from nlpcal.bench.collect import METRICS as RUNNER_METRICS
from nlpcal.bench.report import COLUMNS
from nlpcal.hub import CARD_METRICS
from nlpcal.metrics.vocabulary import METRICS, metric
from tests.conftest import tiny_model
from tests.test_trainer import make_args, signal_dataset

# The Trainer's own keys (timing, training progress), not metrics of the model.
TRAINER_KEYS = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch"}


def test_every_key_the_trainer_emits_is_in_the_vocabulary(tmp_path):
    args = make_args(tmp_path, calibration_set="dev", ood_sets=["far"], in_domain_set="near")
    sets = {
        "near": signal_dataset(24, seed=1),
        "far": signal_dataset(24, seed=2, shift=50),
        "dev": signal_dataset(32, seed=3),
    }
    trainer = CalibratedTrainer(
        tiny_model("bert"), args, train_dataset=signal_dataset(), eval_dataset=sets
    )
    trainer.train()
    pattern = re.compile(rf"eval_({'|'.join(sets)})_(temperature_)?(?P<metric>\w+)")
    emitted = set()
    for key in trainer.evaluate():
        if key in TRAINER_KEYS:
            continue
        match = pattern.fullmatch(key)
        assert match, key
        emitted.add(match["metric"])
    assert emitted <= set(METRICS), emitted - set(METRICS)
    assert {"ece", "ood_auroc", "aurc"} <= emitted


def test_reports_and_cards_only_show_vocabulary_keys_with_its_labels():
    assert set(RUNNER_METRICS) <= set(METRICS)
    assert set(COLUMNS) <= set(METRICS)
    assert all(COLUMNS[key] == METRICS[key].label for key in COLUMNS)
    assert set(CARD_METRICS) <= set(METRICS)


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown metric 'ece15'; known: accuracy, confidence, ece"
    ):
        metric("ece15")
