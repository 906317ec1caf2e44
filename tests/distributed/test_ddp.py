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
