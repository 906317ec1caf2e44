"""Reports of a benchmark run: markdown tables and a self-contained HTML page.

Both render the same tables, one per evaluation set, from the ``results.json`` content; the HTML page
embeds the reliability diagrams as base64 PNGs, so it is a single file with no external assets.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nlpcal.metrics.vocabulary import METRICS, metric

__all__ = ["COLUMNS", "NOTES", "headline", "html_report", "markdown_report"]

COLUMNS = {  # the runner's metrics, by their keys in the vocabulary, and their labels
    key: METRICS[key].label
    for key in ("accuracy", "confidence", "ece_10", "ece", "brier", "nll", "aurc", "ood_auroc")
}

NOTES = (
    "Values are the mean ± sample standard deviation (ddof=1) over the seeds. `ensemble` rows are "
    "single values: the ensemble of all seeds (their probabilities averaged); "
    "`ensemble+<calibrator>` averages the calibrated members.",
    "Variant `none` is the uncalibrated model; a calibrator name is that post-hoc calibrator, "
    "fitted on the calibration split (never on test data).",
    "ECE is the top-label ECE with equal-width bins (15 unless the header says 10). Lower is "
    "better for ECE, Brier, NLL and AURC; higher for accuracy and OOD AUROC.",
    "ECE, AURC and the reliability diagrams read the top-label confidence of the row's own "
    "outputs; for SLOVA (`ova`) outputs that is its own q_ŷ (q_ŷ^a after the `exponential` "
    "calibrator), not the maximum of the renormalised distribution. Brier and NLL read the "
    "distribution renormalised over the classes.",
    "OOD AUROC separates the shifted set from the in-domain test set, in-domain as positive, by "
    "the recipe's `ood_score` (default `confidence`: the top-label confidence above) of the "
    "row's own outputs.",
)

SELECTION = (
    "held out from training; each calibrator fitted on one half and scored on the other: "
    "what methods are chosen by, never a test or shifted set"
)

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}"
    "th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}"
    "tr:nth-child(even){background:#f6f6f6}"
    ".figures{display:flex;flex-wrap:wrap;gap:1em}.figures img{max-width:34em}"
)


def headline(results: Mapping[str, Any]) -> str:
    """The run in one small table: ECE in-domain and averaged over the shifted sets, for each
    method before and after each post-hoc calibrator (mean over seeds), with accuracy.

    Args:
        results: the content of a run's ``results.json``.
    """
    data = results["recipe"]["data"]
    test = data["test"]["name"]
    shifted = [s["name"] for s in data["shifted"]]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in results["rows"]:
        if row["variant"].startswith("ensemble"):
            continue
        rows.setdefault((row["method"], row["variant"]), {})[row["set"]] = row["values"]
    head = ["method", "variant", "accuracy", "ECE in-domain", "ECE shifted (mean)"]
    lines = [_md_row(head), "|" + "---|" * len(head)]
    for (method, variant), sets in rows.items():
        shifted_ece = [_mean(sets[name].get("ece")) for name in shifted if name in sets]
        shifted_ece = [v for v in shifted_ece if v is not None]
        cells = [
            method,
            "uncalibrated" if variant == "none" else variant,
            _number(_mean(sets[test].get("accuracy"))),
            _number(_mean(sets[test].get("ece"))),
            _number(sum(shifted_ece) / len(shifted_ece) if shifted_ece else None),
        ]
        lines.append(_md_row(cells))
    seeds = len(results["recipe"]["seeds"])
    caption = f"ECE with 15 bins, mean over {seeds} seed{'s' * (seeds > 1)}; lower is better."
    return "\n".join([*lines, "", caption]) + "\n"


def _mean(value: Mapping[str, float | None] | float | None) -> float | None:
    return value["mean"] if isinstance(value, Mapping) else value


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def markdown_report(results: Mapping[str, Any]) -> str:
    """The run as markdown: a summary, one table per evaluation set, and notes on the metrics.

    Args:
        results: the content of a run's ``results.json`` (what :func:`~nlpcal.bench.run_bench`
            returns).
    """
    lines = [f"# Benchmark `{results['recipe']['name']}`", ""]
    lines += [f"- {label}: {value}" for label, value in _summary(results)]
    for title, head, body in _tables(results):
        lines += ["", f"## {title}", "", _md_row(head), "|" + "---|" * len(head)]
        lines += [_md_row(row) for row in body]
    lines += ["", "Notes:", *(f"- {note}" for note in _notes(results))]
    return "\n".join(lines) + "\n"


def html_report(
    results: Mapping[str, Any],
    figures: Mapping[str, str | Path],
    explanations: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The run as one self-contained HTML page: summary, tables, notes, the ``figures``
    (caption -> PNG file) embedded as base64, and the token heat maps of ``explanations``
    (method -> a cell's ``explain.json``)."""
    from nlpcal.explain.heatmap import HEATMAP_CSS

    name = html.escape(results["recipe"]["name"])
    style = _STYLE + (HEATMAP_CSS if explanations else "")
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>nlpcal benchmark {name}</title>",
        f"<style>{style}</style></head><body><h1>Benchmark <code>{name}</code></h1><ul>",
        *(
            f"<li>{html.escape(label)}: {html.escape(str(value))}</li>"
            for label, value in _summary(results)
        ),
        "</ul>",
    ]
    for title, head, body in _tables(results):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in head]
        parts.append("</tr>")
        for row in body:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Notes</h2><ul>")
    parts += [f"<li>{html.escape(note)}</li>" for note in _notes(results)]
    parts.append("</ul><h2>Reliability diagrams</h2><div class='figures'>")
    for caption, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</div>")
    if explanations:
        parts += _heatmaps(explanations, results["recipe"]["seeds"][0])
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _heatmaps(explanations: Mapping[str, Mapping[str, Any]], seed: int) -> list[str]:
    """The report's "Why is the model unsure?" section: per method, the same rows of every set."""
    from nlpcal.explain.heatmap import TokenExplanation, heatmap_columns

    parts = ["<h2>Why is the model unsure?</h2>"]
    for method, record in explanations.items():
        groups = {
            name: [
                TokenExplanation(
                    **{**e, "tokens": tuple(e["tokens"]), "scores": tuple(e["scores"])}
                )
                for e in rows
            ]
            for name, rows in record["sets"].items()
        }
        parts.append(
            f"<h3>{html.escape(method)} (seed {seed}, {html.escape(record['method'])})</h3>"
        )
        parts.append(heatmap_columns(groups, record["label_names"], heading="h4"))
    return parts


def _notes(results: Mapping[str, Any]) -> list[str]:
    """The notes on the metrics, with one on the accuracy under attack when the run measured it."""
    notes = list(NOTES)
    attack = results["recipe"].get("robustness")
    if attack:
        norm, rows = attack["norm"], attack["max_samples"]
        scale = "their root-mean-square entry" if norm == "linf" else "their norm"
        sets = ", ".join(attack["sets"] or ()) or "every labelled set"
        notes.append(
            f"`pgd_{norm}_accuracy@<budget>` is the accuracy under PGD on the input token "
            f"embeddings ({attack['steps']} steps; {norm} budget relative to {scale}; "
            f"budget 0 is the clean accuracy) on {sets}"
            + (f", at most {rows} rows of each" if rows else "")
            + ". The attack targets the model's own prediction, so it is measured once per "
            "model: on the uncalibrated rows (`none`), not on calibrated variants or ensembles."
        )
    return notes


def _summary(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    recipe, env = results["recipe"], results["environment"]
    data = recipe["data"]
    calibration = data.get("calibration") or "none"
    trains = all(m.get("train", True) for m in recipe["methods"])
    if isinstance(calibration, Mapping):
        calibration = (
            f"{calibration['holdout']} rows held out of the training source"
            if "holdout" in calibration
            else _source(calibration)
        )
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return [
        ("model", recipe["model"]),
        ("labels", _labels(recipe)),
        (
            "training data",
            _source(data["train"]) if trains else "none: the model is taken as it is",
        ),
        ("calibration data", str(calibration)),
        ("slicing", ", ".join(f"{k}={v}" for k, v in recipe["slicing"].items())),
        ("methods", ", ".join(m["name"] for m in recipe["methods"])),
        ("seeds", ", ".join(map(str, recipe["seeds"]))),
        ("command", env["command"]),
        ("devices", "; ".join(env["devices"])),
        ("versions", f"python {env['python']}, {versions}"),
    ]


def _tables(results: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` per evaluation set, in recipe order."""
    data = results["recipe"]["data"]
    keys = dict.fromkeys([*COLUMNS, *(k for r in results["rows"] for k in r["values"])])
    present = [m for m in keys if any(r["values"].get(m) is not None for r in results["rows"])]
    tables = []
    for spec in (data["test"], *data["shifted"]):
        rows = [r for r in results["rows"] if r["set"] == spec["name"]]
        kind = rows[0]["kind"]
        columns = [m for m in present if m != "ood_auroc" or kind != "in-domain"]
        source = spec["source"]
        if spec.get("corrupt"):
            source += (
                " corrupted (" + ", ".join(f"{k}={v}" for k, v in spec["corrupt"].items()) + ")"
            )
        if spec.get("labeled") is False:
            kind += ", unlabelled: OOD detection only"
        title = f"{spec['name']} ({kind}, n = {rows[0]['n']}): {source}"
        label_map = results.get("label_maps", {}).get(spec["name"])
        if label_map:
            title += f"; {label_map}"
        body = [
            [r["method"], r["variant"], *(_cell(r["values"].get(m)) for m in columns)] for r in rows
        ]
        tables.append((title, ["method", "variant", *(metric(m).label for m in columns)], body))
    for ladder in results.get("drift_curves", []):
        severities = list(ladder["sets"])
        head = [
            "model",
            *(f"severity {s}" + (" (clean)" if str(s) == "0" else "") for s in severities),
        ]
        body = [
            [
                model,
                *(
                    _drift_cell(*(points[m].get(s) for m in ("ece", "accuracy", "confidence")))
                    for s in severities
                ),
            ]
            for model, points in ladder["curves"].items()
        ]
        title = f"drift: {ladder['title']} — ECE (accuracy / mean confidence), mean over seeds"
        tables.append((title, head, body))
    if results.get("selection"):
        columns = [m for m in present if m in COLUMNS and m != "ood_auroc"]
        title = f"calibration split ({SELECTION})"
        body = [
            [r["method"], r["variant"], *(_cell(r["values"].get(m)) for m in columns)]
            for r in results["selection"]
        ]
        tables.append((title, ["method", "variant", *(COLUMNS[m] for m in columns)], body))
    return tables


def _labels(recipe: Mapping[str, Any]) -> str:
    if not all(m.get("train", True) for m in recipe["methods"]):
        return "the model's own (config.id2label)"
    if recipe.get("labels"):
        return ", ".join(recipe["labels"])
    if recipe.get("task"):
        return f"those of the {recipe['task']} task"
    return "those of the training data"


def _source(source: str | Mapping[str, Any]) -> str:
    if isinstance(source, str):
        return source
    columns = ", ".join(f"{k}={v}" for k, v in source.items() if k != "source")
    return f"{source['source']} ({columns})"


def _cell(value: float | Mapping[str, float | None] | None) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        std = "" if value["std"] is None else f" ± {value['std']:.4f}"
        return f"{value['mean']:.4f}{std}"
    return f"{value:.4f}"


def _drift_cell(ece: float | None, accuracy: float | None, confidence: float | None) -> str:
    if ece is None:
        return ""
    return f"{ece:.3f} ({accuracy:.3f} / {confidence:.3f})"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
