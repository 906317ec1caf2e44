"""Speed of nlpcal's calibration metrics against torchmetrics, and of temperature fitting.

ECE (15 equal-width bins) + Brier + NLL over ``n`` random probability vectors of ``K`` classes on
CPU: ``nlpcal.functional.metrics.calibration_metrics`` (which also returns accuracy, MCE and the RMS
calibration error) against ``torchmetrics.classification.MulticlassCalibrationError`` plus a Brier
score and an NLL written the way torchmetrics writes its metrics (one-hot targets). Both run in the
same process on the same tensors; the median of several repeats is reported after a warm-up.

Both are checked against a float64 reference computed here with numpy (per-example float64 Brier
and NLL, per-bin float64 sums): nlpcal must agree with it to 1e-5 (it does to ~1e-8). torchmetrics
accumulates its per-bin sums in float32 with ``scatter_add_``, which at 10 million examples moves
its ECE by a few 1e-5; its difference to the reference is reported and bounded by 1e-4, while its
Brier and NLL must agree to 1e-5. Temperature scaling is timed with
``TemperatureScaler().fit(logits, labels)`` on 100k x 10 over-confident logits.

Usage::

    python benchmarks/metrics_speed.py                          # 10,000,000 x 10, as quoted
    python benchmarks/metrics_speed.py --n 100000 --repeats 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nlpcal.functional.metrics import calibration_metrics

TOLERANCE = 1e-5
TORCHMETRICS_ECE_TOLERANCE = 1e-4  # its float32 scatter_add_ over millions of examples
EPS = 1e-12
KEYS = ("ece", "brier", "nll")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "metrics_speed.json"


def make_probs(n: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(n, n_classes, generator=g), dim=1)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    return probs, labels


def torchmetrics_metrics(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> dict[str, float]:
    from torchmetrics.classification import MulticlassCalibrationError

    n_classes = probs.shape[1]
    ece = MulticlassCalibrationError(num_classes=n_classes, n_bins=n_bins, norm="l1")
    ece.update(probs, labels)
    one_hot = F.one_hot(labels, n_classes).to(probs.dtype)
    brier = (probs - one_hot).square().sum(dim=1).mean()
    nll = F.nll_loss(probs.clamp(min=EPS).log(), labels)
    return {"ece": float(ece.compute()), "brier": float(brier), "nll": float(nll)}


def nlpcal_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict[str, float]:
    metrics = calibration_metrics(probs, labels, n_bins=n_bins, eps=EPS)
    return {key: float(value) for key, value in metrics.items()}


def float64_reference(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int, rows: int = 1_000_000
) -> dict[str, float]:
    """ECE, Brier and NLL in float64 with numpy, chunk by chunk: a slow, independent check."""
    n = probs.shape[0]
    edges = np.array([j / n_bins for j in range(1, n_bins)], dtype=np.float32)
    count, hits, confidence_sum = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
    brier = nll = 0.0
    for start in range(0, n, rows):
        p32 = probs[start : start + rows].numpy()
        p = p32.astype(np.float64)
        y = labels[start : start + rows].numpy()
        rows_index = np.arange(len(y))
        bins = np.searchsorted(edges, p32.max(axis=1), side="right")
        count += np.bincount(bins, minlength=n_bins)
        hits += np.bincount(bins, weights=p.argmax(axis=1) == y, minlength=n_bins)
        confidence_sum += np.bincount(bins, weights=p.max(axis=1), minlength=n_bins)
        target = np.zeros_like(p)
        target[rows_index, y] = 1
        brier += float(((p - target) ** 2).sum())
        nll += float(-np.log(np.maximum(p[rows_index, y], EPS)).sum())
    ece = float(np.abs(hits - confidence_sum).sum() / n)
    return {"ece": ece, "brier": brier / n, "nll": nll / n}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def time_temperature(n: int, n_classes: int, repeats: int, seed: int) -> dict[str, Any]:
    try:
        from nlpcal.posthoc.temperature import TemperatureScaler
    except ImportError as err:
        return {"available": False, "reason": f"{type(err).__name__}: {err}"}
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, n_classes, generator=g)
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=g).squeeze(1)
    scaler, times = timed(lambda: TemperatureScaler().fit(3 * logits, labels), repeats)
    return {
        "available": True,
        "n": n,
        "classes": n_classes,
        "true_temperature": 3.0,
        "fitted_temperature": float(scaler.temperature),
        "times_s": times,
        "median_s": statistics.median(times),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="number of examples")
    parser.add_argument("--classes", type=int, default=10, help="number of classes")
    parser.add_argument("--n-bins", type=int, default=15, help="equal-width bins of the ECE")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--temperature-n", type=int, default=100_000, help="examples of the fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    probs, labels = make_probs(args.n, args.classes, args.seed)
    ours, ours_times = timed(lambda: nlpcal_metrics(probs, labels, args.n_bins), args.repeats)
    theirs, their_times = timed(
        lambda: torchmetrics_metrics(probs, labels, args.n_bins), args.repeats
    )
    reference = float64_reference(probs, labels, args.n_bins)
    ours_error = {key: abs(ours[key] - reference[key]) for key in KEYS}
    their_error = {key: abs(theirs[key] - reference[key]) for key in KEYS}
    ours_median, their_median = statistics.median(ours_times), statistics.median(their_times)
    speedup = their_median / ours_median
    temperature = time_temperature(args.temperature_n, args.classes, args.repeats, args.seed)

    print(
        f"ECE ({args.n_bins} bins) + Brier + NLL, {args.n:,} x {args.classes} float32 on CPU, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats}"
    )
    print(f"{'':14s}{'median s':>10s}{'ece':>12s}{'brier':>12s}{'nll':>12s}")
    rows = (
        ("nlpcal", f"{ours_median:10.3f}", ours),
        ("torchmetrics", f"{their_median:10.3f}", theirs),
        ("float64 ref", f"{'':10s}", reference),
    )
    for name, median, values in rows:
        print(f"{name:14s}{median}" + "".join(f"{values[key]:12.7f}" for key in KEYS))
    print(
        f"max |nlpcal - float64 reference|: {max(ours_error.values()):.1e} "
        f"(tolerance {TOLERANCE:g})"
    )
    print(
        f"|torchmetrics - float64 reference|: ece {their_error['ece']:.1e} (float32 accumulation, "
        f"tolerance {TORCHMETRICS_ECE_TOLERANCE:g}), brier {their_error['brier']:.1e}, "
        f"nll {their_error['nll']:.1e} (tolerance {TOLERANCE:g})"
    )
    print(f"speedup vs torchmetrics: {speedup:.1f}x (target >= 3x)")
    label = f"temperature fit {args.temperature_n // 1000}k x {args.classes}"
    if temperature["available"]:
        print(
            f"{label}: {temperature['median_s']:.3f} s (target < 0.2 s), "
            f"T = {temperature['fitted_temperature']:.3f} (true 3)"
        )
    else:
        print(f"{label}: unavailable ({temperature['reason']})")

    result = {
        "command": " ".join(["python benchmarks/metrics_speed.py", *argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "n": args.n,
        "classes": args.classes,
        "n_bins": args.n_bins,
        "repeats": args.repeats,
        "nlpcal": {"times_s": ours_times, "median_s": ours_median, "values": ours},
        "torchmetrics": {"times_s": their_times, "median_s": their_median, "values": theirs},
        "float64_reference": reference,
        "abs_error_nlpcal": ours_error,
        "abs_error_torchmetrics": their_error,
        "speedup": speedup,
        "temperature": temperature,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")

    failures = [f"nlpcal {k} off by {e:.2e}" for k, e in ours_error.items() if e > TOLERANCE]
    failures += [
        f"torchmetrics {k} off by {e:.2e}"
        for k, e in their_error.items()
        if e > (TORCHMETRICS_ECE_TOLERANCE if k == "ece" else TOLERANCE)
    ]
    if failures:
        raise SystemExit("values disagree: " + "; ".join(failures))
    return result


if __name__ == "__main__":
    main()
