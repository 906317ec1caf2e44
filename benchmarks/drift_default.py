"""The default perturbation of drift-aware fitting, chosen on the calibration split alone.

Drift-aware temperature scaling (Tomani et al. 2021) is fitted on the calibration split plus
perturbed copies of it. Which perturbation should be the default: text corruptions, Gaussian noise
on the input embeddings, or signed-gradient (FGSM) steps, and how far should the embedding
schedule take the accuracy towards chance? The rule, fixed before any number was seen:

1. Only the calibration split is used (never a test or shifted set). Its rows are split into two
   seeded folds; every calibrator is fitted on one fold and scored on the other (cross-fitting),
   and the two folds' scores are pooled.
2. Leave one corruption out: for each of the nine text corruptions ``c``, the held-out score of a
   candidate is the ECE (15 bins) of its temperature on the scored fold's copies corrupted by
   ``c``, averaged over severities 1-5. The text candidate is fitted on copies corrupted by the
   *other* eight (one drawn per row, as ``mixed`` does, at severities 1-5); the embedding
   candidates never see text corruptions. A candidate's score is the mean over the nine ``c``.
3. The default is the candidate with the lowest score. Plain temperature scaling is scored the
   same way as the reference; each candidate's in-domain ECE (the clean scored fold) is
   reported, not used.

``--corruptions`` narrows the nine to a subset (the GPU script's smoke uses three); the fit-time
pass always corrupts with ``mixed`` (all nine), as the runner does.

Candidates: ``corruption`` (text, severities 1-5), and for each embedding family (``gaussian``,
``gradient``) and each ``accuracy_drop`` (default 0.5 and 0.9), ``levels`` (default 10) copies at
strengths searched on the fitting fold in ``--search-steps`` rounds (a candidate for which no
schedule exists on a fold, ``DriftScheduleError``, is listed under ``not_scored`` with the
reason). The fitting time of each, against plain temperature scaling, is measured in the same
run on the whole calibration split (``CalibratedTrainer.calibrate``; for the text family
including corrupting and tokenizing its copies).

The model is fine-tuned first when ``--train`` is given (the over-confident SST-2 scoreboard's
model by default: all-MiniLM-L6-v2, 1,000 SST-2 phrases, 8 epochs), else taken as it is (a
fine-tuned classifier folder). The real measurement (68 s on one H200, about two hours on 2
CPU cores)::

    python benchmarks/drift_default.py --train shared:sst2/train --calibration shared:sst2/dev

Writes ``benchmarks/results/drift_default.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SEVERITIES = (1, 2, 3, 4, 5)
BINS = 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--train", help="fine-tune --model on this source first (else: as it is)")
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--calibration", default="shared:sst2/dev")
    parser.add_argument("--n", type=int, default=1000, help="calibration rows")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--families", nargs="+", default=["gaussian", "gradient"])
    parser.add_argument("--drops", nargs="+", type=float, default=[0.5, 0.9])
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument(
        "--search-steps", type=int, default=8, help="rounds of each strength search"
    )
    parser.add_argument(
        "--corruptions", nargs="+", help="the corruptions left out in turn (default: all nine)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--use-cpu", action="store_true")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/drift_default.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # On a GPU, float32 matrix products in TF32: fine-tuning, predictions and the strength
    # searches alike (recorded as "tf32"; the model is not bit-identical to a CPU run's).
    tf32 = torch.cuda.is_available() and not args.use_cpu
    torch.backends.cuda.matmul.allow_tf32 = tf32
    began = time.perf_counter()

    import transformers

    import nlpcal
    from nlpcal.bench.run import calibrate_pretrained, train_calibrated
    from nlpcal.bench.store import device_name
    from nlpcal.data import corrupt_dataset, list_corruptions, load_source
    from nlpcal.data.prepare import load_tokenizer, subsample, tokenize
    from nlpcal.robustness import DriftScheduleError

    known = list_corruptions()
    corruptions = sorted(set(args.corruptions or known))
    if set(corruptions) - set(known) or len(corruptions) < 2:
        parser.error(f"--corruptions takes two or more of {known}, got {args.corruptions}")
    for name in ("levels", "search_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")

    with tempfile.TemporaryDirectory() as folder:
        plain = _arguments(folder, args, posthoc="none")
        calibration = load_source(args.calibration, args.task, args.data_dir)
        calibration = subsample(calibration, args.n, args.seed)
        tokenizer = load_tokenizer(args.model)

        def prepared(dataset: Any) -> Any:
            return tokenize(dataset, tokenizer, args.max_length)

        if args.train:
            train = load_source(args.train, args.task, args.data_dir)
            train = prepared(subsample(train, args.train_samples, args.seed))
            trainer = train_calibrated(args.model, plain, train, None, tokenizer)
        else:
            trainer = calibrate_pretrained(args.model, plain, None, tokenizer)
        model = trainer.model
        clean_set = prepared(calibration)
        clean = trainer.predictions(clean_set, "calibration")
        labels = clean.labels
        corrupted = {
            c: [
                trainer.predictions(
                    prepared(corrupt_dataset(calibration, c, s, args.seed)), c
                ).logits
                for s in SEVERITIES
            ]
            for c in corruptions
        }
        n = len(labels)
        fold_of = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed)) % 2
        folds = [torch.nonzero(fold_of == f).flatten() for f in (0, 1)]

        # Each candidate's fitting logits per fitting fold (the text one per held-out corruption).
        # A candidate for which no schedule exists on a fold (DriftScheduleError: e.g. the
        # strongest perturbation tried leaves the accuracy above a level's target) is reported
        # with the reason and not scored.
        embedding = {}
        schedules = {}
        failed = {}
        untimed = {}  # scored, but no schedule on the whole split for the fit-time pass
        settings = {}  # name -> (family, drop)
        for family in args.families:
            for drop in args.drops:
                name = f"{family}_drop{drop:g}"
                settings[name] = (family, drop)
                drift_args = _arguments(folder, args, family=family, drop=drop)
                fitter = nlpcal.CalibratedTrainer(model, drift_args, processing_class=tokenizer)
                fits, found = [], []
                try:
                    for rows in folds:
                        fitter.drift_schedule = None
                        copies = fitter.drift_predictions(
                            n=len(rows), dataset=clean_set.select(rows.tolist())
                        )
                        fits.append(torch.cat([clean.logits[rows], *(p.logits for p in copies)]))
                        found.append(fitter.drift_schedule.to_dict())
                except DriftScheduleError as error:
                    failed[name] = str(error)
                    print(f"{name}: not scored: {error}")
                    continue
                embedding[name], schedules[name] = fits, found

        def fitted(logits: torch.Tensor, rows: torch.Tensor) -> float:
            copies = len(logits) // len(rows)
            return float(
                nlpcal.create_calibrator("temperature")
                .fit(logits, labels[rows].repeat(copies))
                .temperature
            )

        def text_logits(held: str, rows: torch.Tensor) -> torch.Tensor:
            others = [c for c in corruptions if c != held]
            rng = np.random.default_rng([args.seed, known.index(held)])
            parts = [clean.logits[rows]]
            for s in range(len(SEVERITIES)):
                pick = torch.as_tensor(rng.integers(len(others), size=len(rows)))
                stacked = torch.stack([corrupted[c][s][rows] for c in others])
                parts.append(stacked[pick, torch.arange(len(rows))])
            return torch.cat(parts)

        names = ["plain", "corruption", *embedding]
        held_out = {name: {} for name in names}
        in_domain = {name: {} for name in names}
        temperatures = {name: {} for name in names}
        for held in corruptions:
            scored = {name: [[] for _ in SEVERITIES] for name in names}
            clean_probs = {name: [] for name in names}
            for f, rows in enumerate(folds):
                fit_rows, score_rows = folds[1 - f], rows
                fits = {
                    "plain": fitted(clean.logits[fit_rows], fit_rows),
                    "corruption": fitted(text_logits(held, fit_rows), fit_rows),
                    **{k: fitted(v[1 - f], fit_rows) for k, v in embedding.items()},
                }
                for name, t in fits.items():
                    temperatures[name].setdefault(held, []).append(round(t, 4))
                    clean_probs[name].append((clean.logits[score_rows] / t).softmax(-1))
                    for s in range(len(SEVERITIES)):
                        scored[name][s].append((corrupted[held][s][score_rows] / t).softmax(-1))
            order = torch.cat([folds[0], folds[1]])
            for name in names:
                held_out[name][held] = float(
                    np.mean([_ece(torch.cat(p), labels[order]) for p in scored[name]])
                )
                in_domain[name][held] = _ece(torch.cat(clean_probs[name]), labels[order])
        scores = {name: float(np.mean(list(held_out[name].values()))) for name in names}
        chosen = min((n for n in names if n != "plain"), key=scores.__getitem__)

        plain_fit = _arguments(folder, args)
        timing = {
            "plain": _timed(lambda: _calibrate(nlpcal, model, tokenizer, clean_set, plain_fit))
        }
        text_args = _arguments(folder, args, family="corruption")

        def text_fit() -> None:
            copies = [
                prepared(corrupt_dataset(calibration, "mixed", s, args.seed)) for s in SEVERITIES
            ]
            _calibrate(nlpcal, model, tokenizer, clean_set, text_args, copies)

        timing["corruption"] = _timed(text_fit)
        for name in embedding:
            family, drop = settings[name]
            drift_args = _arguments(folder, args, family=family, drop=drop)
            try:
                timing[name] = _timed(
                    lambda a=drift_args: _calibrate(nlpcal, model, tokenizer, clean_set, a)
                )
            except DriftScheduleError as error:  # on the whole split, unlike on each fold
                timing[name] = None
                untimed[name] = str(error)

    accuracy = float((clean.logits.argmax(-1) == labels).float().mean())
    result = {
        "rule": "lowest mean over held-out corruptions of the cross-fitted ECE(15) on their "
        "copies of the calibration split (severities 1-5); calibration split only",
        "chosen": chosen,
        "candidates": {
            name: {
                "held_out_ece": round(scores[name], 5),
                "held_out_ece_by_corruption": {k: round(v, 5) for k, v in held_out[name].items()},
                # The clean rows' ECE, averaged over the held-out corruptions (the text
                # candidate's temperature depends on which one is held out).
                "in_domain_ece": round(float(np.mean(list(in_domain[name].values()))), 5),
                "fit_seconds": None if timing[name] is None else round(timing[name], 3),
                "fit_time_vs_plain": None
                if timing[name] is None
                else round(timing[name] / timing["plain"], 2),
                "temperatures": temperatures[name],
                **({"schedules": schedules[name]} if name in schedules else {}),
            }
            for name in names
        },
        "compared": names,
        "not_scored": failed,
        "not_timed": untimed,
        "calibration": {"source": args.calibration, "rows": n, "accuracy": round(accuracy, 4)},
        "model": args.model,
        "train": None
        if not args.train
        else {"source": args.train, "rows": args.train_samples, "epochs": args.epochs},
        "levels": args.levels,
        "search_steps": args.search_steps,
        "corruptions": corruptions,
        "device": device_name(trainer.args.device),
        "threads": args.threads,
        "tf32": tf32,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "nlpcal": getattr(nlpcal, "__version__", "unknown"),
        },
        "command": shlex.join(["python", *sys.argv]),
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| candidate | held-out ECE | in-domain ECE | fit time (x plain) |\n|---|---|---|---|")
    for name in names:
        c = result["candidates"][name]
        mark = " (chosen)" if name == chosen else ""
        fit = (
            "-"
            if c["fit_seconds"] is None
            else f"{c['fit_seconds']:.2f} s ({c['fit_time_vs_plain']:.1f}x)"
        )
        print(f"| {name}{mark} | {c['held_out_ece']:.4f} | {c['in_domain_ece']:.4f} | {fit} |")
    for name, reason in failed.items():
        print(f"not scored: {name}: {reason}")
    for name, reason in untimed.items():
        print(f"not timed: {name}: {reason}")
    print(f"wrote {args.out}")


def _arguments(folder: str, args: argparse.Namespace, **drift: Any) -> Any:
    """The trainer arguments: no calibrator (``posthoc="none"``), plain temperature scaling, or
    one drift-aware candidate (``family``, ``drop``)."""
    from nlpcal import CalibrationArguments

    common = dict(
        output_dir=folder,
        seed=args.seed,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.1,
        save_strategy="no",
        report_to="none",
        logging_steps=50,
        disable_tqdm=True,
        use_cpu=args.use_cpu,
    )
    if drift.get("posthoc") == "none":
        return CalibrationArguments(**common, posthoc="none")
    family = drift.get("family")
    if family is None:
        return CalibrationArguments(**common, posthoc=["temperature"])
    extra = {}
    if family != "corruption":
        extra = {
            "drift_perturbation": family,
            "drift_perturbation_kwargs": {
                "levels": args.levels,
                "accuracy_drop": drift["drop"],
                "search_steps": args.search_steps,
                "seed": args.seed,
            },
        }
    return CalibrationArguments(**common, posthoc=["t=temperature"], drift_variants=["t"], **extra)


def _calibrate(nlpcal: Any, model: Any, tokenizer: Any, data: Any, args: Any, copies=None) -> None:
    trainer = nlpcal.CalibratedTrainer(
        model, args, processing_class=tokenizer, drift_datasets=copies
    )
    trainer.calibrate(data)


def _timed(run: Any) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _ece(probs: torch.Tensor, labels: torch.Tensor) -> float:
    from nlpcal.functional.metrics import expected_calibration_error

    return float(expected_calibration_error(probs, labels, n_bins=BINS))


if __name__ == "__main__":
    main()
