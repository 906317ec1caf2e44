"""Training step time and peak memory of CalibratedTrainer per loss vs the plain Trainer.

Every configuration (the plain ``transformers.Trainer`` with the model's own cross-entropy, and
``CalibratedTrainer`` with each registered loss) trains the same model on the same batches from
the same seed. Each run is a fresh subprocess, so its peak resident memory is its own; the
configurations are interleaved over ``--reps`` rounds, in an order that rotates every round, so
that machine noise hits them alike, and the step time is the median over all measured steps. Ratios are against the plain Trainer of the
same run. Prints a table and writes JSON.

    python benchmarks/trainer_overhead.py                      # tiny BERT and MiniLM
    python benchmarks/trainer_overhead.py --models tiny --reps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {
    "cross_entropy": 1.02,
    "label_smoothing": 1.05,
    "ova": 1.05,
    "double_head": 1.05,
    "ar_adals": 1.05,  # the step only: its epoch-end refreshes are measured by ar_adals_speed.py
    "regmixup": 2.1,
    "manifold_mixup": 2.1,
}
MODELS = {
    # name: (batch size, sequence length, warm-up steps, measured steps)
    "tiny": (16, 48, 5, 40),
    "minilm": (32, 48, 3, 12),
}


def worker(model_name: str, config: str) -> dict:
    """Train one configuration in this process; return its step times and peak memory."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        Trainer,
        TrainerCallback,
    )

    from nlpcal import CalibratedTrainer, CalibrationArguments
    from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path

    batch, seq_len, warmup, steps = MODELS[model_name]
    torch.manual_seed(0)
    if model_name == "tiny":
        cfg = BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            num_labels=2,
        )
        model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(DEFAULT_MODEL), num_labels=2
        )
    vocab = model.config.vocab_size
    n = batch * (warmup + steps)
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(5, vocab, (n, seq_len), generator=g).tolist(),
            "attention_mask": torch.ones(n, seq_len, dtype=torch.long).tolist(),
            "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
        }
    )

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    args = CalibrationArguments(
        output_dir="/tmp/nlpcal-overhead",
        per_device_train_batch_size=batch,
        max_steps=warmup + steps,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        posthoc="none",
        calibration_loss="cross_entropy" if config == "plain" else config,
        calibration_set="dev",  # the held-out set AR-AdaLS adapts on (never evaluated here)
    )
    if config == "plain":
        trainer = Trainer(model, args, train_dataset=data, callbacks=[StepTimer()])
    else:
        trainer = CalibratedTrainer(
            model,
            args,
            train_dataset=data,
            eval_dataset={"dev": data.select(range(2 * batch))},
            callbacks=[StepTimer()],
        )
    trainer.train()
    return {
        "step_times": times[warmup:],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,minilm")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/trainer_overhead.json")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return

    from nlpcal import list_losses

    configs = ["plain", *list_losses()]
    results: dict[str, dict] = {}
    for model_name in args.models.split(","):
        runs: dict[str, list[dict]] = {c: [] for c in configs}
        for rep in range(args.reps):
            # Rotate the order every round so no configuration always runs first or last.
            shift = rep % len(configs)
            for config in configs[shift:] + configs[:shift]:
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", model_name, config],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"[{model_name}] rep {rep + 1}/{args.reps} {config}", file=sys.stderr)
        base = statistics.median(t for r in runs["plain"] for t in r["step_times"])
        rows = {}
        for config in configs:
            step = statistics.median(t for r in runs[config] for t in r["step_times"])
            rows[config] = {
                "step_ms": 1000 * step,
                "steps_per_s": 1 / step,
                "ratio_vs_plain": step / base,
                "target": TARGETS.get(config),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs[config]),
                "rep_median_step_ms": [
                    1000 * statistics.median(r["step_times"]) for r in runs[config]
                ],
            }
        results[model_name] = rows

    print(
        f"\n{'model':8} {'config':16} {'step ms':>9} {'steps/s':>8} {'x plain':>8} {'target':>7} {'peak RSS MiB':>13}"
    )
    for model_name, rows in results.items():
        for config, r in rows.items():
            target = f"<={r['target']:.2f}" if r["target"] else ""
            ok = "" if not r["target"] else ("ok" if r["ratio_vs_plain"] <= r["target"] else "MISS")
            print(
                f"{model_name:8} {config:16} {r['step_ms']:9.1f} {r['steps_per_s']:8.2f} "
                f"{r['ratio_vs_plain']:8.3f} {target:>7} {r['peak_rss_mib']:13.0f} {ok}"
            )
    import torch
    import transformers

    payload = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
        },
        "reps": args.reps,
        "models": {
            m: dict(zip(("batch", "seq_len", "warmup", "steps"), MODELS[m], strict=True))
            for m in results
        },
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
