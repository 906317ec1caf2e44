"""Build BENCHMARKS.md, the scoreboard of every method, from the runner's result files alone.

Each shift is one finished run of ``nlpcal bench`` (its ``results.json``); nothing is retrained::

    python benchmarks/scoreboard.py \
        --run "SST-2 → IMDb / Yelp / Amazon=benchmarks/results/sst2_overconfident_cpu" \
        --run "SNLI → MNLI=benchmarks/results/snli_mnli_overconfident_cpu" \
        --run "AG News → its corrupted copies=benchmarks/results/agnews_corrupt_overconfident_cpu" \
        --run "SST-2 → IMDb / Yelp / Amazon, full scale on one GPU=benchmarks/results/gpu_h200/sst2_shift" \
        --run "SNLI → MNLI, full scale on one GPU=benchmarks/results/gpu_h200/snli_mnli" \
        --drift-default benchmarks/results/drift_default.json --out BENCHMARKS.md

(the command that builds this repository's BENCHMARKS.md).

For each run: one row per method and variant (uncalibrated, each post-hoc calibrator, the seed
ensembles) with in-domain accuracy, ECE ×100 with 10 bins (the Desai & Durrett protocol) and 15
bins, in-domain and averaged over the shifted sets, Brier, NLL, AURC, OOD AUROC, and the change of
the shifted-set ECE against plain fine-tuning with temperature scaling; mean ± standard deviation
over seeds (ensembles are one value). A run whose recipe lists a cell that has no result fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BASELINE = ("cross_entropy", "temperature")
TOLERANCE = 0.005  # "at equal accuracy": within half a point of the baseline
OVERCONFIDENCE = 0.03  # the regime: mean confidence at least this far above accuracy
ENSEMBLE = "ensemble"


def load_run(folder: str | Path) -> dict[str, Any]:
    """A finished run's ``results.json``, checked to hold every cell its recipe lists."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished")
    results = json.loads(path.read_text())
    recipe = results["recipe"]
    have = {(c["method"], c["seed"]) for c in results["cells"]}
    missing = [
        f"{m['name']}/seed {s}"
        for m in recipe["methods"]
        for s in recipe["seeds"]
        if (m["name"], s) not in have
    ]
    if missing:
        raise ValueError(f"{path}: no result for the cells {missing}")
    return results


def _sets(results: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The in-domain test set and the labelled shifted sets (an unlabelled set, for OOD
    detection only, has no accuracy or calibration to average)."""
    data = results["recipe"]["data"]
    shifted = [s["name"] for s in data["shifted"] if s.get("labeled", True)]
    return data["test"]["name"], shifted


def _value(values: Mapping[str, Any], metric: str) -> float | None:
    value = values.get(metric)
    if value is None:
        return None
    return value["mean"] if isinstance(value, Mapping) else float(value)


def _per_seed(
    results: Mapping[str, Any], method: str, variant: str, metric: str, sets: Sequence[str]
) -> list[float]:
    """For each seed, ``metric`` averaged over ``sets``."""
    values = []
    for cell in results["cells"]:
        if cell["method"] != method:
            continue
        per_set = [cell["metrics"][name][variant].get(metric) for name in sets]
        if any(v is None for v in per_set):
            return []
        values.append(statistics.fmean(per_set))
    return values


def _ensemble_value(
    results: Mapping[str, Any], method: str, variant: str, metric: str, sets: Sequence[str]
) -> list[float]:
    rows = {
        r["set"]: r["values"]
        for r in results["rows"]
        if r["method"] == method and r["variant"] == variant
    }
    per_set = [_value(rows[name], metric) for name in sets if name in rows]
    if len(per_set) != len(sets) or any(v is None for v in per_set):
        return []
    return [statistics.fmean(per_set)]


def summarise(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method and variant: ``{metric_where: [values over seeds]}``."""
    test, shifted = _sets(results)
    every_shifted = [s["name"] for s in results["recipe"]["data"]["shifted"]]
    variants: dict[str, list[str]] = {m["name"]: [] for m in results["recipe"]["methods"]}
    for r in results["rows"]:  # every variant the runner scored, in its order
        names = variants.get(r["method"])
        if names is not None and not r["variant"].startswith(ENSEMBLE):
            names += [] if r["variant"] in names else [r["variant"]]
    ensembles = len(results["recipe"]["seeds"]) > 1
    rows = []
    for method, names in variants.items():
        for variant in names:
            kinds = [(variant, _per_seed)]
            if ensembles:
                label = ENSEMBLE if variant == "none" else f"{ENSEMBLE}+{variant}"
                kinds.append((label, _ensemble_value))
            for label, read in kinds:
                row: dict[str, Any] = {"method": method, "variant": label}
                for metric in ("accuracy", "ece_10", "ece", "brier", "nll", "aurc"):
                    row[f"{metric}_in"] = read(results, method, label, metric, [test])
                    row[f"{metric}_out"] = read(results, method, label, metric, shifted)
                row["ood_auroc"] = read(results, method, label, "ood_auroc", every_shifted)
                rows.append(row)
    return rows


def nominate(results: Mapping[str, Any], tolerance: float = TOLERANCE) -> dict[str, Any] | None:
    """The recommended recipe of a run, by a rule fixed before any result existed, that reads the
    calibration split only (each calibrator cross-fitted, see ``calibration_split`` in the cells):

    among single models (a training loss with one of its variants) whose mean calibration-split
    accuracy is within ``tolerance`` of plain fine-tuning with temperature scaling, the lowest
    mean calibration-split ECE (15 bins), ties broken by NLL. A method whose training itself
    adapted on the calibration split (:func:`trained_on_calibration`) is not eligible: its
    scores there are not held out. ``None`` when the run's cells do not record the calibration
    split.
    """
    seen = trained_on_calibration(results)
    rows = {
        (r["method"], r["variant"]): r["values"]
        for r in results.get("selection", [])
        if r["method"] not in seen
    }
    if BASELINE not in rows:
        return None
    floor = _value(rows[BASELINE], "accuracy") - tolerance
    eligible = [key for key, values in rows.items() if _value(values, "accuracy") >= floor]
    method, variant = min(
        eligible, key=lambda key: (_value(rows[key], "ece"), _value(rows[key], "nll"))
    )
    return {"method": method, "variant": variant, "values": rows[(method, variant)]}


def trained_on_calibration(results: Mapping[str, Any]) -> list[str]:
    """The methods whose training adapted on the calibration split: in the runner, AR-AdaLS
    adapts its per-stratum smoothing on that split (its ``adaptation_set`` default; the runner
    passes no other eval set to training), which the post-hoc calibrators are fitted on too."""
    return [
        m["name"]
        for m in results.get("recipe", {}).get("methods", [])
        if m["calibration_loss"] == "ar_adals"
    ]


def _regime(results: Mapping[str, Any]) -> list[str]:
    """Plain fine-tuning on the calibration split, per seed: is it over-confident?"""
    lines = []
    for cell in results["cells"]:
        values = cell.get("calibration_split", {}).get("none")
        if cell["method"] != BASELINE[0] or values is None:
            continue
        gap = values["confidence"] - values["accuracy"]
        short = "" if gap >= OVERCONFIDENCE else f" — short of the +{OVERCONFIDENCE:.2f} margin"
        lines.append(
            f"seed {cell['seed']}: accuracy {values['accuracy']:.3f}, mean confidence "
            f"{values['confidence']:.3f} ({gap:+.3f}), ECE-15 {values['ece']:.3f}{short}"
        )
    return lines


def _fmt(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _delta(values: Sequence[float], baseline: Sequence[float]) -> str:
    if not values or not baseline:
        return "–"
    change = statistics.fmean(values) / statistics.fmean(baseline) - 1
    return f"{100 * change:+.0f} %"


def section(title: str, folder: str | Path, results: Mapping[str, Any]) -> str:
    """The markdown section of one run: provenance, the table and a ranking."""
    rows = summarise(results)
    env = results["environment"]
    baseline = next(
        (r for r in rows if (r["method"], r["variant"]) == BASELINE), {"ece_10_out": []}
    )
    seconds = sum(c.get("seconds", 0) for c in results["cells"])
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    test, shifted = _sets(results)
    lines = [
        f"## {title}",
        "",
        f"- Run: `{folder}` — command `{env['command']}`",
        f"- Device: {'; '.join(env['devices'])}; python {env['python']}, {versions}",
        f"- Wall time of the cells: {seconds / 60:.0f} min; seeds "
        f"{', '.join(map(str, results['recipe']['seeds']))}",
        f"- In-domain: `{test}`; shifted (averaged): {', '.join(f'`{s}`' for s in shifted)}",
        *_pending(folder, results),
        "",
        "| method | variant | accuracy | ECE×100 in | ECE×100 shifted | Δ shifted ECE vs CE+TS "
        "| ECE-15×100 in | ECE-15×100 shifted | Brier shifted | NLL shifted | AURC in "
        "| OOD AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['method']}` | {r['variant']} | {_fmt(r['accuracy_in'], 100, 1)} "
            f"| {_fmt(r['ece_10_in'], 100)} | {_fmt(r['ece_10_out'], 100)} "
            f"| {_delta(r['ece_10_out'], baseline['ece_10_out'])} "
            f"| {_fmt(r['ece_in'], 100)} | {_fmt(r['ece_out'], 100)} "
            f"| {_fmt(r['brier_out'], 1, 3)} | {_fmt(r['nll_out'], 1, 3)} "
            f"| {_fmt(r['aurc_in'], 1, 3)} | {_fmt(r['ood_auroc'], 1, 3)} |"
        )
    regime = _regime(results)
    if regime:
        lines += [
            "",
            "Plain fine-tuning on the calibration split (the over-confident regime needs mean "
            f"confidence at least {OVERCONFIDENCE:.2f} above accuracy):",
        ]
        lines += [f"- {line}" for line in regime]
    chosen = nominate(results)
    if chosen is not None:
        row = next(
            r for r in rows if (r["method"], r["variant"]) == (chosen["method"], chosen["variant"])
        )
        values = chosen["values"]
        lines += [
            "",
            f"Recommended recipe, chosen on the calibration split alone (rule: `nominate` in "
            f"`benchmarks/scoreboard.py`): `{chosen['method']}` {chosen['variant']} — "
            f"calibration-split ECE-15 {_value(values, 'ece'):.3f}, accuracy "
            f"{_value(values, 'accuracy'):.3f}. On the shifted sets: ECE×100 "
            f"{_fmt(row['ece_10_out'], 100)} against {_fmt(baseline['ece_10_out'], 100)} for "
            f"plain fine-tuning with temperature scaling "
            f"({_delta(row['ece_10_out'], baseline['ece_10_out'])}; target −40 %), in-domain "
            f"accuracy {_fmt(row['accuracy_in'], 100, 1)} against "
            f"{_fmt(baseline.get('accuracy_in', []), 100, 1)}.",
        ]
    closest = _closest(rows, baseline)
    if closest is not None:
        lines += [
            "",
            f"Closest to the target (reported, not chosen: it reads the shifted sets): "
            f"`{closest['method']}` {closest['variant']}, the single model with the lowest "
            f"shifted-set ECE×100 at in-domain accuracy within {100 * TOLERANCE:g} points of "
            "the baseline: "
            f"{_fmt(closest['ece_10_out'], 100)} "
            f"({_delta(closest['ece_10_out'], baseline['ece_10_out'])}), accuracy "
            f"{_fmt(closest['accuracy_in'], 100, 1)}.",
        ]
    unjudged = sorted(
        {m["name"] for m in results["recipe"]["methods"]}
        - {r["method"] for r in results.get("selection", [])}
    )
    if chosen is not None and unjudged:
        lines += [
            "",
            f"Not judged by the rule: {', '.join(f'`{m}`' for m in unjudged)}, whose cells do "
            "not all record the calibration split (cells of an older run).",
        ]
    seen = trained_on_calibration(results)
    if seen:
        lines += [
            "",
            f"Not eligible for the recommendation: {', '.join(f'`{m}`' for m in seen)}, whose "
            "training adapted on the calibration split (AR-AdaLS adapts its smoothing there), so "
            "its calibration-split scores are not held out.",
        ]
    ranked = sorted(
        (r for r in rows if r["ece_10_out"] and not r["variant"].startswith(ENSEMBLE)),
        key=lambda r: statistics.fmean(r["ece_10_out"]),
    )
    lines += ["", "Ranking by shifted-set ECE (10 bins), single models:"]
    lines += [
        f"{i}. `{r['method']}` {r['variant']}: {_fmt(r['ece_10_out'], 100)} "
        f"(accuracy {_fmt(r['accuracy_in'], 100, 1)})"
        for i, r in enumerate(ranked, 1)
    ]
    return "\n".join(lines) + "\n"


def _closest(
    rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any], tolerance: float = TOLERANCE
) -> Mapping[str, Any] | None:
    """The single model with the lowest mean shifted-set ECE (10 bins) whose mean in-domain
    accuracy is within ``tolerance`` of the baseline's (or above it)."""
    if not baseline.get("accuracy_in"):
        return None
    floor = statistics.fmean(baseline["accuracy_in"]) - tolerance
    eligible = [
        r
        for r in rows
        if r["ece_10_out"]
        and r["accuracy_in"]
        and not r["variant"].startswith(ENSEMBLE)
        and statistics.fmean(r["accuracy_in"]) >= floor
    ]
    return min(eligible, key=lambda r: statistics.fmean(r["ece_10_out"]), default=None)


def _pending(folder: str | Path, results: Mapping[str, Any]) -> list[str]:
    """A line naming the methods the run folder's whole recipe lists but this report does not
    (``nlpcal bench --methods`` reported part of it); none when the report is whole."""
    stored = Path(folder) / "recipe.json"
    if not stored.is_file():
        return []
    reported = {m["name"] for m in results["recipe"]["methods"]}
    pending = [m["name"] for m in json.loads(stored.read_text())["methods"]]
    pending = [name for name in pending if name not in reported]
    if not pending:
        return []
    return [
        f"- **In progress**: the run's recipe also lists {', '.join(f'`{m}`' for m in pending)}, "
        "not finished yet (the run resumes in the same folder); the ranking and the recommended "
        "recipe below cover the reported methods only"
    ]


def drift_section(path: str | Path) -> str:
    """The markdown section of ``benchmarks/drift_default.py``'s result: the default drift
    perturbation, chosen on the calibration split alone, and each candidate's fitting time."""
    result = json.loads(Path(path).read_text())
    calibration, train = result["calibration"], result["train"]
    trained = (
        f"fine-tuned on {train['rows']:,} rows of `{train['source']}` for {train['epochs']:g} epochs"
        if train
        else "as given"
    )
    lines = [
        "## Drift-aware fitting: the default perturbation",
        "",
        f"- Result: `{path}` — command `{result['command']}`",
        f"- Device: {result['device']}; python {result['versions']['python']}, torch "
        f"{result['versions']['torch']}, transformers {result['versions']['transformers']}; "
        f"{result['wall_seconds'] / 60:.1f} min in all",
        f"- Model: `{result['model']}`, {trained}; calibration split: {calibration['rows']:,} rows "
        f"of `{calibration['source']}` (accuracy {calibration['accuracy']:.3f})",
        f"- Rule (fixed before the run, `benchmarks/drift_default.py`): {result['rule']}"
        + (
            f"; corruptions left out in turn: {', '.join(result['corruptions'])}; "
            f"{result['levels']} levels, {result['search_steps']} search rounds"
            if "corruptions" in result
            else ""
        ),
        "",
        "| candidate | held-out ECE-15×100 | in-domain ECE-15×100 | fit time | × plain |",
        "|---|---|---|---|---|",
    ]
    for name, c in result["candidates"].items():
        mark = " **(chosen)**" if name == result["chosen"] else ""
        fit = (
            "– | –"
            if c["fit_seconds"] is None
            else f"{c['fit_seconds']:.2f} s | {c['fit_time_vs_plain']:.1f}"
        )
        lines.append(
            f"| `{name}`{mark} | {100 * c['held_out_ece']:.2f} | {100 * c['in_domain_ece']:.2f} "
            f"| {fit} |"
        )
    for name, reason in result.get("not_scored", {}).items():
        lines.append(f"| `{name}` | not scored: {reason} | | | |")
    for name, reason in result.get("not_timed", {}).items():
        lines.append(f"| `{name}` (fit time) | not timed: {reason} | | | |")
    lines += [
        "",
        "`plain` is temperature scaling on the clean rows; the others fit one temperature on the "
        "clean rows plus perturbed copies (`corruption`: text corruptions at severities 1–5; "
        "`gaussian`/`gradient`: embedding perturbations whose accuracy falls by `drop` of the way "
        "to chance). Fit times include building the copies, on the whole calibration split.",
    ]
    if "compared" not in result:  # written before drift_default.py averaged the in-domain ECE
        last = list(result["candidates"]["corruption"]["held_out_ece_by_corruption"])[-1]
        lines.append(
            f"In-domain ECE of `corruption` in this result: its fit with `{last}` held out (the "
            "last of the corruptions); the script now averages over all of them."
        )
    lines.append("")
    return "\n".join(lines)


def scoreboard(
    runs: Mapping[str, str | Path], preamble: str = "", drift_default: str | Path | None = None
) -> str:
    """The whole BENCHMARKS.md from the named run folders (and ``drift_default.py``'s result)."""
    parts = [
        "# Benchmarks: the scoreboard",
        "",
        "Generated from result files by `python benchmarks/scoreboard.py` (see its docstring); "
        "do not edit by hand. ECE ×100 with 10 equal-width bins follows Desai & Durrett (2020); "
        "'shifted' averages the shifted sets of a run. Mean ± standard deviation over seeds; "
        "ensemble rows average the seeds' probabilities and are one value. Δ is the relative "
        "change of the shifted-set ECE against plain fine-tuning with temperature scaling "
        "(`cross_entropy` temperature).",
        "",
    ]
    if preamble:
        parts += [preamble.strip(), ""]
    loaded = {title: load_run(folder) for title, folder in runs.items()}
    devices = [d.lower() for r in loaded.values() for d in r["environment"]["devices"]]
    if not any("cuda" in d or "nvidia" in d for d in devices):
        parts += [
            "**GPU run: pending.** The full-scale sentiment and NLI runs on one GPU are prepared "
            "and smoke-tested in `benchmarks/gpu/` (its README); no GPU run is in this "
            "scoreboard: every table below is from the CPU recipes.",
            "",
        ]
    parts += [section(title, runs[title], results) for title, results in loaded.items()]
    if drift_default is not None:
        parts.append(drift_section(drift_default))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        help="TITLE=FOLDER of a finished run (repeat, in order)",
    )
    parser.add_argument("--preamble", type=Path, help="a markdown file placed after the title")
    parser.add_argument(
        "--drift-default", type=Path, help="the result of benchmarks/drift_default.py"
    )
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.run:
        title, sep, folder = spec.rpartition("=")
        if not sep or not title:
            parser.error(f"--run takes TITLE=FOLDER, got {spec!r}")
        runs[title] = folder
    preamble = args.preamble.read_text() if args.preamble else ""
    args.out.write_text(scoreboard(runs, preamble, args.drift_default))
    print(args.out)


if __name__ == "__main__":
    main()
