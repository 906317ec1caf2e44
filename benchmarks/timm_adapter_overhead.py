"""Step-time overhead of the timm adapter against the raw timm model in a plain training loop.

Usage::

    python benchmarks/timm_adapter_overhead.py [--model test_resnet] [--batch-size 128]
        [--image-size 28] [--rounds 10] [--steps 5] [--out adapter_overhead.json]

One model and one optimizer per side, the same batches; rounds alternate which side runs first
(interleaved), each round times ``--steps`` optimizer steps (forward, cross-entropy, backward,
SGD step) of each side after one untimed warm-up step. Prints a table (median step time per
side, and the ratio adapter / raw, with the median of the per-round ratios) and writes JSON.
The issue's target: a ratio of at most 1.05 with steps of at least 100 ms (raise
``--batch-size`` until the raw step takes that long, so noise does not decide it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def _step_fn(model: torch.nn.Module, adapter: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        logits = model(pixel_values=x).logits if adapter else model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(args: argparse.Namespace) -> dict:
    import timm

    from nlpcal.adapters.timm import create_timm_classifier

    torch.manual_seed(0)
    raw = timm.create_model(args.model, pretrained=False, num_classes=10, in_chans=1).train()
    torch.manual_seed(0)
    wrapped = timm.create_model(args.model, pretrained=False, num_classes=10, in_chans=1)
    adapter = create_timm_classifier(wrapped, 10).train()
    steps = {"raw": _step_fn(raw, False), "adapter": _step_fn(adapter, True)}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 1, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    for step in steps.values():
        step(x, y)  # warm-up
    times: dict[str, list[float]] = {"raw": [], "adapter": []}
    ratios = []
    for round_ in range(args.rounds):
        order = ("raw", "adapter") if round_ % 2 == 0 else ("adapter", "raw")
        per_round = {}
        for side in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[side](x, y)
            per_round[side] = (time.perf_counter() - start) / args.steps
            times[side].append(per_round[side])
        ratios.append(per_round["adapter"] / per_round["raw"])
    raw_ms = statistics.median(times["raw"]) * 1e3
    adapter_ms = statistics.median(times["adapter"]) * 1e3
    return {
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "raw_step_ms": round(raw_ms, 2),
        "adapter_step_ms": round(adapter_ms, 2),
        "ratio_of_medians": round(adapter_ms / raw_ms, 4),
        "median_round_ratio": round(statistics.median(ratios), 4),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="adapter_overhead.json")
    args = parser.parse_args(argv)
    result = measure(args)
    print("| side | median step (ms) |\n|---|---|")
    print(f"| raw timm | {result['raw_step_ms']} |\n| adapter | {result['adapter_step_ms']} |")
    print(
        f"\nratio adapter / raw: {result['ratio_of_medians']} (median of per-round ratios "
        f"{result['median_round_ratio']}); {result['machine']}"
    )
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
