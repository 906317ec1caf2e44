"""Two CPU processes (gloo): training runs with every loss and evaluation equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlpcal import CalibratedTrainer, list_losses, load_calibrated
from tests.test_trainer import make_args, signal_dataset

SCRIPT = Path(__file__).with_name("ddp_train.py")


@pytest.mark.slow
def test_distributed_training_and_evaluation_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(SCRIPT),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    evals = {"clean": signal_dataset(37, seed=1), "shifted": signal_dataset(29, seed=2, shift=50)}
    ar_states = [
        json.loads((tmp_path / "ar_adals" / f"state_rank{r}.json").read_text()) for r in (0, 1)
    ]
    assert ar_states[0] == ar_states[1]  # the AR-AdaLS state is the same on every process
    assert ar_states[0]["before"]["refreshes"] == 2  # after steps 1 and 2, not after the last

    for loss in list_losses():
        distributed = json.loads((tmp_path / loss / "metrics.json").read_text())
        assert distributed["world_size"] == 2
        model = load_calibrated(tmp_path / loss / "model").model
        args = make_args(
            tmp_path,
            output_dir=str(tmp_path / "single"),
            calibration_loss=loss,
            ood_sets=["shifted"],
            in_domain_set="clean",
            posthoc="none",
        )
        single = CalibratedTrainer(model, args, eval_dataset=evals).evaluate()
        compared = [
            k
            for k in single
            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))
        ]
        assert len(compared) == 20  # 8 per set, 4 OOD-detection metrics
        for key in compared:
            value = single[key]
            assert distributed[key] == pytest.approx(value, abs=1e-5), (loss, key)

    # One process repeating the last refresh on the saved model reaches the same state.
    args = make_args(
        tmp_path,
        output_dir=str(tmp_path / "single_ar"),
        calibration_loss="ar_adals",
        loss_kwargs={"num_strata": 4, "refresh_fraction": 1.0},
        calibration_set="clean",
        posthoc="none",
    )
    trainer = CalibratedTrainer(
        load_calibrated(tmp_path / "ar_adals" / "model").model,
        args,
        train_dataset=signal_dataset(),
        eval_dataset=evals,
    )
    trainer.calibration_loss.load_state_dict(ar_states[0]["before"])
    trainer.calibration_loss.refresh()
    single_state = trainer.calibration_loss.state_dict()
    for key, value in ar_states[0]["after"].items():
        if key in ("robustness", "edges", "epsilon"):
            assert single_state[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        else:
            assert single_state[key] == value, key
