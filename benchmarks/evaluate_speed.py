"""Evaluation throughput of ``nlpcal evaluate`` against a plain inference loop, in one run.

10,000 SST-2 training phrases (the shared data), all-MiniLM-L6-v2 with a classification head, on
CPU. The baseline tokenizes the texts, sorts them by length and calls ``model(**batch)`` on
batches of the same size; nlpcal's run (``evaluate_model``: data loading, tokenizing, length-sorted
prediction through the Trainer, metrics, reliability diagrams, reports) is timed as a whole and in
its prediction part. Target: at most 1.1x the baseline's time.

    python benchmarks/evaluate_speed.py [--n 10000] [--threads 2]

Writes ``benchmarks/results/evaluate_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="sentences to score")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/evaluate_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nlpcal.bench.existing import evaluate_model
    from nlpcal.data import load_source
    from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path

    data = load_source("shared:sst2/train", None, args.data_dir).select(range(args.n))
    path = resolve_model_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    names = data.features["label"].names
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=2,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    ).eval()

    start = time.perf_counter()
    encoded = tokenizer(list(data["text"]), truncation=True, max_length=128)
    order = sorted(range(args.n), key=lambda i: -len(encoded["input_ids"][i]))
    with torch.inference_mode():
        for begin in range(0, args.n, args.batch_size):
            rows = [
                {k: encoded[k][i] for k in encoded} for i in order[begin : begin + args.batch_size]
            ]
            model(**tokenizer.pad(rows, return_tensors="pt"))
    baseline = time.perf_counter() - start

    from nlpcal.trainer import CalibratedTrainer

    predicting = []
    predictions = CalibratedTrainer.predictions

    def timed(self, *a, **k):
        began = time.perf_counter()
        try:
            return predictions(self, *a, **k)
        finally:
            predicting.append(time.perf_counter() - began)

    CalibratedTrainer.predictions = timed
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        start = time.perf_counter()
        evaluate_model(
            folder,
            {"test": {"name": "sst2", "source": data}},
            Path(folder) / "run",
            batch_size=args.batch_size,
            max_length=128,
        )
        total = time.perf_counter() - start
    CalibratedTrainer.predictions = predictions
    result = {
        "n": args.n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "baseline_s": round(baseline, 2),
        "nlpcal_total_s": round(total, 2),
        "nlpcal_predict_s": round(sum(predicting), 2),
        "ratio_total": round(total / baseline, 3),
        "ratio_predict": round(sum(predicting) / baseline, 3),
        "share_outside_prediction": round(1 - sum(predicting) / total, 3),
        "device": f"cpu: {platform.machine()}, {args.threads} threads",
        "command": "python benchmarks/evaluate_speed.py",
        "torch": torch.__version__,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
