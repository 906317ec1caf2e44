"""Run under ``torchrun --nproc_per_node 2``: train a tiny model with each loss, evaluate, save.

Rank 0 writes ``<out>/<loss>/metrics.json`` and the trained model to ``<out>/<loss>/model``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nlpcal import CalibratedTrainer, list_losses
from tests.conftest import tiny_model
from tests.test_trainer import make_args, signal_dataset

# AR-AdaLS refreshes after every step on every example, so that its state is exercised.
LOSS_KWARGS = {"ar_adals": {"num_strata": 4, "refresh_steps": 1, "refresh_fraction": 1.0}}


def main(out: Path) -> None:
    for loss in list_losses():
        args = make_args(
            out,
            output_dir=str(out / loss),
            calibration_loss=loss,
            loss_kwargs=LOSS_KWARGS.get(loss),
            max_steps=3,
            ood_sets=["shifted"],
            in_domain_set="clean",
            calibration_set="clean",  # the held-out set AR-AdaLS adapts on
            posthoc="none",
        )
        evals = {
            "clean": signal_dataset(37, seed=1),
            "shifted": signal_dataset(29, seed=2, shift=50),
        }
        trainer = CalibratedTrainer(
            tiny_model("bert"), args, train_dataset=signal_dataset(), eval_dataset=evals
        )
        trainer.train()
        if loss == "ar_adals":
            # One more refresh on the final model; the test repeats it in one process.
            before = trainer.calibration_loss.state_dict()
            trainer.calibration_loss.refresh()
            states = {"before": before, "after": trainer.calibration_loss.state_dict()}
            rank = trainer.args.process_index
            (out / loss / f"state_rank{rank}.json").write_text(json.dumps(states))
        metrics = trainer.evaluate()
        trainer.save_model(str(out / loss / "model"))
        if trainer.args.process_index == 0:
            metrics["world_size"] = trainer.args.world_size
            (out / loss / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
