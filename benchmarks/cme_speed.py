"""Step time of the ``cme`` loss for each attribution backend against plain cross-entropy.

One process, one model (all-MiniLM-L6-v2 with a fresh 2-class head, its default attention
implementation), the same real SST-2 sentences (the bundled sample, padded to the longest in each
batch): every round runs one training step (loss, backward, AdamW step) of every configuration, in
an order that rotates each round so that machine noise hits them alike, after one warm-up step
each. The step time of a configuration is the median over rounds. Its ratio to cross-entropy is
the median over rounds of the ratio of the two steps on the same batch (batches differ in length,
and the machine's load drifts, far more than the configurations differ). Prints a table and
writes JSON.

    python benchmarks/cme_speed.py                      # MiniLM, batch 16, 12 rounds
    python benchmarks/cme_speed.py --rounds 3 --model tiny   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

TARGETS = {"cme-attention_gradient": 2.2}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cme_speed.json"
SAMPLE = Path(__file__).resolve().parents[1] / "nlpcal" / "data" / "samples" / "sst2" / "train.tsv"


def configurations(ig_steps: int) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "cross_entropy": ("cross_entropy", {}),
        "cme-attention_gradient": ("cme", {"method": "attention_gradient"}),
        "cme-saliency": ("cme", {"method": "saliency"}),
        "cme-input_x_gradient": ("cme", {"method": "input_x_gradient"}),
        f"cme-integrated_gradients({ig_steps})": (
            "cme",
            {"method": "integrated_gradients", "method_kwargs": {"n_steps": ig_steps}},
        ),
    }


def load_model(name: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path

    path = resolve_model_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    if name == "tiny":
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            num_labels=2,
        )
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return model.train(), tokenizer


def batches(tokenizer, batch_size: int, max_length: int, count: int) -> list[dict[str, Any]]:
    with SAMPLE.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for b in range(count):
        chunk = rows[b * batch_size : (b + 1) * batch_size]
        enc = tokenizer(
            [r["sentence"] for r in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        enc["labels"] = torch.tensor([int(r["label"]) for r in chunk])
        out.append(dict(enc))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12, help="timed steps per configuration")
    parser.add_argument("--ig-steps", type=int, default=4, help="integrated-gradients nodes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from nlpcal.losses import LossContext, create_loss

    model, tokenizer = load_model(args.model)
    default_attention = model.config._attn_implementation
    configs = configurations(args.ig_steps)
    losses = {key: create_loss(name, **kwargs) for key, (name, kwargs) in configs.items()}
    for loss in losses.values():
        loss.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    data = batches(tokenizer, args.batch_size, args.max_length, args.rounds + 1)

    def step(key: str, batch: dict[str, Any]) -> float:
        start = time.perf_counter()
        out = losses[key](model, batch, LossContext())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    keys = list(configs)
    for key in keys:  # warm-up
        step(key, data[0])
    times: dict[str, list[float]] = {key: [] for key in keys}
    for r in range(args.rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            times[key].append(step(key, data[1 + r]))
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)

    rows = {}
    for key in keys:
        ratios = [t / ce for t, ce in zip(times[key], times["cross_entropy"], strict=True)]
        rows[key] = {
            "step_ms": 1000 * statistics.median(times[key]),
            "ratio_vs_cross_entropy": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "target": TARGETS.get(key),
            "step_ms_all": [1000 * t for t in times[key]],
        }
    lengths = [int(b["input_ids"].shape[1]) for b in data[1:]]
    print(
        f"{args.model}, batch {args.batch_size}, padded length {min(lengths)}-{max(lengths)}, "
        f"{torch.get_num_threads()} thread(s), default attention {default_attention!r}, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'configuration':34s}{'step ms':>10s}{'x CE':>8s}{'x CE range':>14s}{'target':>9s}")
    for key, row in rows.items():
        target = f"<={row['target']:.1f}" if row["target"] else ""
        verdict = ""
        if row["target"]:
            verdict = " ok" if row["ratio_vs_cross_entropy"] <= row["target"] else " MISS"
        print(
            f"{key:34s}{row['step_ms']:10.1f}{row['ratio_vs_cross_entropy']:8.2f}"
            f"{row['ratio_range'][0]:8.2f}-{row['ratio_range'][1]:<5.2f}{target:>9s}{verdict}"
        )

    import transformers

    result = {
        "command": " ".join(["python benchmarks/cme_speed.py", *argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
        },
        "model": args.model,
        "default_attention": default_attention,
        "batch_size": args.batch_size,
        "padded_lengths": lengths,
        "rounds": args.rounds,
        "ig_steps": args.ig_steps,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
