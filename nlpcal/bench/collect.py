"""Tables over seeds and ensembles: a cell's metrics, the seed ensembles, ``results.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlpcal.bench.recipe import NONE, Recipe
from nlpcal.bench.report import COLUMNS, html_report, markdown_report
from nlpcal.bench.store import (
    EXPLAIN_NAME,
    Outputs,
    cell_folder,
    environment,
    load_predictions,
    read_result,
    write_json,
)
from nlpcal.functional.ensemble import ensemble_ood_score, ensemble_probabilities
from nlpcal.functional.metrics import evaluation_metrics, expected_calibration_error
from nlpcal.functional.ood import ood_detection_metrics
from nlpcal.functional.predictive import split_confidence

__all__ = ["METRICS", "set_metrics", "shift_metrics", "write_results"]

ENSEMBLE = "ensemble"
METRICS = tuple(COLUMNS)  # keys of the metric vocabulary (nlpcal.metrics.vocabulary)


def shift_metrics(
    class_probs: Any, labels: Any | None, ood: Any | None = None, in_domain_ood: Any | None = None
) -> dict[str, float]:
    """The benchmark's metrics of one set: accuracy, mean top-label confidence, ECE (10 and, as
    ``ece``, 15 bins), Brier, NLL, AURC and, when the OOD scores of this set and of the in-domain set are given, the OOD
    AUROC of this set against the in-domain set (in-domain as positive). An unlabelled set
    (``labels=None``) has only the OOD AUROC.

    ``class_probs`` rows sum to one, or hold SLOVA's unnormalised confidences: ECE and AURC read the
    top-label confidence ``max_k class_probs``, Brier and NLL the renormalised rows (see
    :mod:`nlpcal.functional.predictive`).

    >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> conf = probs.max(dim=1).values
    >>> values = shift_metrics(probs, torch.tensor([0, 1, 1]), ood=conf, in_domain_ood=conf[:2])
    >>> round(values["accuracy"], 4), round(values["ood_auroc"], 4)
    (0.6667, 0.6667)
    """
    result = {}
    if labels is not None:
        probs, confidence = split_confidence(torch.as_tensor(class_probs))
        labels = torch.as_tensor(labels)
        values = evaluation_metrics(probs, labels, n_bins=15, confidence=confidence)
        result = {
            "accuracy": values["accuracy"],
            "confidence": confidence.float().mean(),
            "ece_10": expected_calibration_error(probs, labels, n_bins=10, confidence=confidence),
            "ece": values["ece"],
            "brier": values["brier"],
            "nll": values["nll"],
            "aurc": values["aurc"],
        }
    if in_domain_ood is not None:
        result["ood_auroc"] = ood_detection_metrics(in_domain_ood, ood)["auroc"]
    return {key: float(value) for key, value in result.items()}


def set_metrics(outputs: Outputs, test: str) -> dict[str, dict[str, dict[str, float]]]:
    """``metrics[set][variant]``; shifted sets are scored for OOD against the same variant in-domain."""
    return {
        name: {
            variant: shift_metrics(
                p,
                outputs.labels.get(name),
                outputs.ood[name][variant],
                None if name == test else outputs.ood[test][variant],
            )
            for variant, p in variants.items()
        }
        for name, variants in outputs.probs.items()
    }


def write_results(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Aggregate the finished cells over seeds, score the seed ensembles, and write
    ``results.json``, ``results.md``, ``report.html`` and the reliability diagrams.

    The accuracy under attack (a recipe's ``robustness``) is a cell's own measurement on its
    model: it is aggregated over seeds under the variant ``none`` and has no ensemble value."""
    from nlpcal.metrics.plots import drift_curves, reliability_diagram

    cells, rows, selection, figures = [], [], [], {}
    test = recipe.data.test.name
    kinds = {s.name: "in-domain" if s.name == test else "shifted" for s in recipe.eval_sets}
    seeds = list(recipe.seeds)
    keys = (*METRICS, *(recipe.robustness.metric_keys if recipe.robustness else ()))
    for method in recipe.methods:
        folders = [cell_folder(out, method, seed) for seed in seeds]
        results = [read_result(f) for f in folders]
        cells += results
        members = [load_predictions(f, recipe.ood_score.value) for f in folders]
        table = {
            name: {
                variant: {
                    m: _mean_std([r["metrics"][name][variant].get(m) for r in results])
                    for m in keys
                }
                for variant in method.variants
            }
            for name in kinds
        }
        if all("calibration_split" in r for r in results):  # cells of older runs lack it
            selection += [
                {
                    "method": method.name,
                    "variant": variant,
                    "seeds": seeds,
                    "values": {
                        m: _mean_std([r["calibration_split"][variant].get(m) for r in results])
                        for m in METRICS
                        if m != "ood_auroc"
                    },
                }
                for variant in method.variants
            ]
        if len(members) > 1:
            ensemble = _ensemble(members, method.variants, recipe.ood_score.value)
            for name, variants in set_metrics(ensemble, test).items():
                table[name].update(variants)
        for name, kind in kinds.items():
            n = len(members[0].probs[name][NONE])
            rows += [
                {
                    "method": method.name,
                    "set": name,
                    "kind": kind,
                    "n": n,
                    "variant": variant,
                    "seeds": seeds,
                    "values": values,
                }
                for variant, values in table[name].items()
            ]
        for variant in method.variants:
            path = out / f"reliability_{method.name}_{variant}.png"
            curves = {}
            for name in (n for n in kinds if n in members[0].labels):  # labelled sets
                probs, confidence = split_confidence(
                    torch.as_tensor(np.concatenate([m.probs[name][variant] for m in members]))
                )
                labels = np.concatenate([m.labels[name] for m in members])
                curves[f"{name} ({kinds[name]})"] = (probs, labels, confidence)
            label = "uncalibrated" if variant == NONE else variant
            title = f"{method.name}, {label} ({len(members)} seeds pooled)"
            reliability_diagram(curves, n_bins=15, path=path, title=title)
            figures[f"{method.name}: {label}"] = path
    ladders = drift_ladders(recipe, rows)
    for ladder in ladders:
        path = out / f"drift_{ladder['name']}.png"
        ece = {
            name: {int(s): v for s, v in points["ece"].items() if v is not None}
            for name, points in ladder["curves"].items()
        }
        drift_curves(ece, "ECE (15 bins)", f"{ladder['title']} (mean over seeds)", path)
        figures[f"drift: {ladder['title']}"] = path
    results = {
        "recipe": recipe.to_dict(),
        "label_maps": {k: v for c in cells for k, v in c.get("label_maps", {}).items()},
        "environment": environment(sorted({c["device"] for c in cells})),
        "cells": cells,
        "rows": rows,
        "selection": selection,
        "drift_curves": ladders,
    }
    write_json(out / "results.json", results)
    explanations = {
        method.name: json.loads(file.read_text())
        for method in recipe.methods
        if (file := cell_folder(out, method, seeds[0]) / EXPLAIN_NAME).is_file()
    }
    (out / "results.md").write_text(markdown_report(results))
    (out / "report.html").write_text(html_report(results, figures, explanations))
    return results


DRIFT_METRICS = ("ece", "accuracy", "confidence")


def drift_ladders(recipe: Recipe, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drift curves: for each source with corrupted copies among the eval sets, each method and
    variant's ECE, accuracy and mean confidence (means over seeds) against the severity, per
    corruption and, with several corruptions of one source, averaged over them at the
    severities they share. Severity 0 is the uncorrupted set of the same source, if evaluated.
    Single models only (no ensembles)."""
    clean: dict[str, str] = {}
    ladders: dict[tuple[str, str], dict[int, str]] = {}
    for spec in recipe.eval_sets:
        columns = (spec.source, spec.text_column, spec.text_pair_column, spec.label_column)
        source = json.dumps(columns, default=str)
        if spec.corrupt is None:
            clean.setdefault(source, spec.name)
        elif spec.labeled:
            ladders.setdefault(
                (source, getattr(spec.corrupt.corruption, "value", spec.corrupt.corruption)), {}
            )[spec.corrupt.severity] = spec.name
    values = {
        (r["method"], r["variant"], r["set"]): r["values"]
        for r in rows
        if not r["variant"].startswith(ENSEMBLE)
    }
    models = list(dict.fromkeys((m, v) for m, v, _ in values))
    result, by_source = [], {}
    for (source, corruption), sets in ladders.items():
        if source in clean:
            sets = {0: clean[source], **sets}
        sets = dict(sorted(sets.items()))
        sets = {str(severity): name for severity, name in sets.items()}  # JSON keys
        curves = {
            f"{method} {variant}": {
                metric: {
                    severity: _mean_value(values.get((method, variant, name), {}).get(metric))
                    for severity, name in sets.items()
                }
                for metric in DRIFT_METRICS
            }
            for method, variant in models
        }
        base = next(iter(sets.values()))
        ladder = {"name": f"{base}_{corruption}", "corruption": corruption, "sets": sets}
        ladder["curves"] = curves
        ladder["title"] = f"{corruption} corruptions of {base}"
        result.append(ladder)
        by_source.setdefault(source, []).append(ladder)
    for group in by_source.values():
        if len(group) < 2:
            continue
        shared = sorted(set.intersection(*(set(lad["sets"]) for lad in group)), key=int)
        curves = {
            model: {
                metric: {
                    s: float(np.mean([lad["curves"][model][metric][s] for lad in group]))
                    for s in shared
                }
                for metric in DRIFT_METRICS
            }
            for model in group[0]["curves"]
        }
        first = group[0]
        result.append(
            {
                "name": f"{first['name']}_averaged",
                "corruption": "averaged",
                "sets": {s: [lad["sets"][s] for lad in group] for s in shared},
                "curves": curves,
                "title": f"{first['title'].split(' corruptions of ')[1]}, averaged over "
                f"{', '.join(lad['corruption'] for lad in group)}",
            }
        )
    return result


def _mean_value(value: Any) -> float | None:
    return value["mean"] if isinstance(value, Mapping) else value


def _ensemble(members: Sequence[Outputs], variants: Sequence[str], method: str) -> Outputs:
    """The seed ensemble: class probabilities averaged over members and the ensemble's OOD score
    (:mod:`nlpcal.functional.ensemble`, shared with :class:`~nlpcal.ensemble.DeepEnsemble`)."""
    first = members[0]
    probs: dict[str, dict[str, np.ndarray]] = {}
    ood: dict[str, dict[str, np.ndarray]] = {}
    for name in first.probs:
        probs[name], ood[name] = {}, {}
        for variant in variants:
            mean = ensemble_probabilities([m.probs[name][variant] for m in members])
            key = ENSEMBLE if variant == NONE else f"{ENSEMBLE}+{variant}"
            probs[name][key] = mean.numpy()
            scores = [m.ood[name][variant] for m in members]
            ood[name][key] = ensemble_ood_score(mean, method, scores).numpy()
    return Outputs(probs, ood, first.labels)


def _mean_std(values: Sequence[float | None]) -> dict[str, float | None] | None:
    """Mean and sample standard deviation (ddof=1; ``None`` for one seed) over seeds; ``None``
    when a seed lacks the value (a cell written before the metric existed)."""
    if any(v is None for v in values):
        return None
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return {"mean": float(array.mean()), "std": std}
