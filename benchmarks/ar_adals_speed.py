"""AR-AdaLS training time against cross-entropy, on all-MiniLM-L6-v2 with an SST-2 slice.

Both losses train the same model from the same seed on the same slice in one process; the
configurations run in an ABBA order over ``--reps`` rounds so that machine noise hits them
alike. The time is ``train_runtime`` (training only: AR-AdaLS's refreshes included, the post-hoc
fit after training excluded); the ratio is against cross-entropy's median, and the refresh share
is the refreshes' wall time over AR-AdaLS's training time. On a shared machine the load varies
between runs, so the ratio within each AR-AdaLS run (its time over its time without refreshes,
the step being label smoothing's, as cheap as cross-entropy's) is reported too. Each run also reports
its quality on the SST-2 test set and on IMDb sentences (shifted): accuracy, ECE (15 bins) before
and after temperature scaling, NLL. ``--alternatives`` adds the other robustness modes and a full
refresh. Prints a table and writes JSON.

    python benchmarks/ar_adals_speed.py                     # cross-entropy vs the defaults
    python benchmarks/ar_adals_speed.py --alternatives --reps 1
    python benchmarks/ar_adals_speed.py --only ar_adals_noise,ar_adals_full_margin --reps 1

Run from the repository root with the package importable (``PYTHONPATH=.`` in a checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

TARGET = 1.3
DEFAULT = {}  # AR-AdaLS with its default refresh settings
ALTERNATIVES = {
    "ar_adals_full_margin": {"refresh_fraction": 1.0},
    "ar_adals_noise": {"mode": "noise"},
    "ar_adals_pgd": {
        "mode": "pgd",
        "refresh_fraction": 0.1,
        "robustness_kwargs": {"search_steps": 5, "pgd_steps": 3},
    },
}


def load_data(args: argparse.Namespace):
    from nlpcal.data.prepare import DEFAULT_MODEL, load_slice, load_tokenizer, tokenize

    tokenizer = load_tokenizer(DEFAULT_MODEL)

    def part(source: str, n: int, seed: int = 0):
        data = load_slice(source, "sentiment", args.data_dir, max_samples=n, seed=seed)
        return tokenize(data, tokenizer, args.max_length)

    train = part("shared:sst2/train", args.train)
    dev = part("shared:sst2/dev", args.dev, seed=1)
    test = part("shared:sst2/test", args.test)
    imdb = part("shared:imdb/test", args.test)
    return tokenizer, train, {"test": test, "dev": dev, "imdb": imdb}


def run(name: str, loss_kwargs: dict | None, data, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification

    from nlpcal import CalibratedTrainer, CalibrationArguments
    from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path

    tokenizer, train, evals = data
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(DEFAULT_MODEL), num_labels=2
    )
    training = CalibrationArguments(
        output_dir=f"/tmp/nlpcal-ar-adals-speed/{name}",
        calibration_loss="cross_entropy" if loss_kwargs is None else "ar_adals",
        loss_kwargs=loss_kwargs or {},
        calibration_set="dev",
        in_domain_set="test",
        posthoc=["temperature"],
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=2 * args.batch,
        learning_rate=args.lr,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = CalibratedTrainer(
        model, training, train_dataset=train, eval_dataset=evals, processing_class=tokenizer
    )
    seconds = trainer.train().metrics["train_runtime"]
    refresh = getattr(trainer.calibration_loss, "refresh_seconds", 0.0)
    metrics = trainer.evaluate({"test": evals["test"], "imdb": evals["imdb"]})
    quality = {
        f"{s}_{m}": metrics[f"eval_{s}_{m}"]
        for s in ("test", "imdb")
        for m in ("accuracy", "ece", "temperature_ece", "nll")
    }
    return {"train_seconds": seconds, "refresh_seconds": refresh, **quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--dev", type=int, default=256)
    parser.add_argument("--test", type=int, default=872)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--alternatives", action="store_true")
    parser.add_argument(
        "--only", default=None, help="comma-separated configurations to run (cross_entropy always)"
    )
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data")
    )
    parser.add_argument("--out", default="benchmarks/results/ar_adals_speed.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import nlpcal.losses
    import nlpcal.robustness  # noqa: F401  (loaded now: later runs import it lazily)

    configs = {"cross_entropy": None, "ar_adals": DEFAULT}
    if args.alternatives:
        configs.update(ALTERNATIVES)
    if args.only:
        keep = {"cross_entropy", *args.only.split(",")}
        configs = {k: v for k, v in {**configs, **ALTERNATIVES}.items() if k in keep}
    data = load_data(args)
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    names = list(configs)
    for rep in range(args.reps):
        # ABBA: the order reverses every round, so neither loss always runs first.
        for name in names if rep % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name].append(run(name, configs[name], data, args))
            print(
                f"rep {rep + 1}/{args.reps} {name}: {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )

    base = statistics.median(r["train_seconds"] for r in runs["cross_entropy"])
    rows = {}
    for name, results in runs.items():
        seconds = statistics.median(r["train_seconds"] for r in results)
        rows[name] = {
            "train_seconds": seconds,
            "ratio_vs_cross_entropy": seconds / base,
            "refresh_share": statistics.median(
                r["refresh_seconds"] / r["train_seconds"] for r in results
            ),
            # Robust to machine load: within each run, the time without refreshes stands for
            # cross-entropy (the AR-AdaLS step is label smoothing, the cost of cross-entropy).
            "ratio_within_run": statistics.median(
                r["train_seconds"] / (r["train_seconds"] - r["refresh_seconds"]) for r in results
            ),
            "loss_kwargs": configs[name],
            **{
                k: statistics.mean(r[k] for r in results)
                for k in results[0]
                if k not in ("train_seconds", "refresh_seconds")
            },
            "runs": results,
        }
    header = (
        f"{'config':22} {'train s':>8} {'x CE':>6} {'x in-run':>8} {'refresh':>8} {'acc':>6} {'ECE':>6} "
        f"{'ECE+TS':>7} {'NLL':>6} {'IMDb acc':>9} {'IMDb ECE':>9} {'IMDb ECE+TS':>12}"
    )
    print("\n" + header)
    for name, r in rows.items():
        flag = (
            ""
            if name != "ar_adals"
            else ("ok" if r["ratio_vs_cross_entropy"] <= TARGET else "MISS")
        )
        print(
            f"{name:22} {r['train_seconds']:8.1f} {r['ratio_vs_cross_entropy']:6.3f} "
            f"{r['ratio_within_run']:8.3f} "
            f"{100 * r['refresh_share']:7.1f}% {r['test_accuracy']:6.3f} {r['test_ece']:6.3f} "
            f"{r['test_temperature_ece']:7.3f} {r['test_nll']:6.3f} {r['imdb_accuracy']:9.3f} "
            f"{r['imdb_ece']:9.3f} {r['imdb_temperature_ece']:12.3f} {flag}"
        )
    import torch
    import transformers

    payload = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "data_dir")},
        "target_ratio": TARGET,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
