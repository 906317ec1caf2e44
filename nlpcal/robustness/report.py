"""AR-AdaLS's premise on a user's own model: accuracy and ECE per robustness stratum.

Examples that are easy to attack are worse calibrated: split a reference set into equal-count
robustness strata, place other (shifted) sets with the same edges, and compare accuracy, mean
confidence and ECE stratum by stratum, as a table and a plot.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpcal.functional.strata import assign_strata, equal_count_strata, stratum_metrics
from nlpcal.robustness.embedding import RobustnessMode
from nlpcal.robustness.measure import measure_robustness

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["robustness_strata", "strata_figure", "strata_markdown"]

_COLUMNS = ("count", "accuracy", "confidence", "ece")


def robustness_strata(
    trainer: Any,
    datasets: Mapping[str, Any],
    reference: str | None = None,
    num_strata: int = 5,
    mode: RobustnessMode | str = RobustnessMode.MARGIN,
    n_bins: int = 15,
    **options: Any,
) -> dict[str, Any]:
    """Accuracy, confidence and ECE per robustness stratum of each named set.

    The strata are equal-count on ``reference`` (default: the first set); every other set is
    placed with the reference's edges, so a shifted set shows how its examples spread over the
    in-domain robustness scale. Robustness is measured by :func:`measure_robustness` (``mode``
    and ``options`` as :func:`~nlpcal.robustness.example_robustness`); the probabilities are
    the model's softmax, before any post-hoc calibration.

    Returns:
        ``{"mode", "reference", "edges": [R − 1 floats], "sets": {name: {"count", "accuracy",
        "confidence", "ece": [R floats]}}}`` (JSON-ready; NaN for an empty stratum).

    Example:
        >>> report = robustness_strata(trainer, {"sst2": test, "imdb": imdb})  # doctest: +SKIP
        >>> print(strata_markdown(report))  # doctest: +SKIP
    """
    if not datasets:
        raise ValueError("robustness_strata needs at least one named data set")
    reference = next(iter(datasets)) if reference is None else reference
    if reference not in datasets:
        raise ValueError(f"reference {reference!r} is not among the sets {sorted(datasets)}")
    mode = RobustnessMode(mode)
    measured = {
        name: measure_robustness(trainer, data, mode, seed=0, **options)
        for name, data in datasets.items()
    }
    reference_strata, edges = equal_count_strata(measured[reference].robustness, num_strata)
    sets = {}
    for name, m in measured.items():
        strata = reference_strata if name == reference else assign_strata(m.robustness, edges)
        metrics = stratum_metrics(m.probs, m.labels, strata, num_strata, n_bins)
        sets[name] = {k: metrics[k].tolist() for k in _COLUMNS}
    return {"mode": mode.value, "reference": reference, "edges": edges.tolist(), "sets": sets}


def strata_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table of :func:`robustness_strata`: one row per set and stratum.

    >>> print(strata_markdown({"mode": "margin", "reference": "a", "edges": [0.5],
    ...     "sets": {"a": {"count": [2, 2], "accuracy": [0.5, 1.0], "confidence": [0.9, 0.95],
    ...                    "ece": [0.4, 0.05]}}}))
    | set | stratum | robustness (margin) | n | accuracy | confidence | ECE |
    |---|---|---|---|---|---|---|
    | a | 1 (least robust) | ≤ 0.5 | 2 | 0.500 | 0.900 | 0.400 |
    | a | 2 | > 0.5 | 2 | 1.000 | 0.950 | 0.050 |
    """
    edges = report["edges"]
    bounds = [f"≤ {edges[0]:.3g}"] if edges else ["all"]
    bounds += [f"{lo:.3g} – {hi:.3g}" for lo, hi in itertools.pairwise(edges)]
    bounds += [f"> {edges[-1]:.3g}"] if edges else []
    lines = [
        f"| set | stratum | robustness ({report['mode']}) | n | accuracy | confidence | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, values in report["sets"].items():
        for b, bound in enumerate(bounds):
            label = f"{b + 1} (least robust)" if b == 0 else str(b + 1)
            cells = [f"{values[k][b]:.3f}" for k in ("accuracy", "confidence", "ece")]
            lines.append(
                f"| {name} | {label} | {bound} | {int(values['count'][b])} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def strata_figure(report: Mapping[str, Any], path: str | Path | None = None) -> Figure:
    """Accuracy and ECE per stratum (least to most robust), one line per set; saved to ``path``
    (``.png``, ``.svg`` or ``.pdf``) when given. Needs matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install matplotlib") from err
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    accuracy_ax, ece_ax = fig.subplots(1, 2, sharex=True)
    for name, values in report["sets"].items():
        strata = list(range(1, len(values["count"]) + 1))
        accuracy_ax.plot(strata, values["accuracy"], marker="o", label=name)
        ece_ax.plot(strata, values["ece"], marker="o", label=name)
    for ax, title in ((accuracy_ax, "accuracy"), (ece_ax, "ECE")):
        ax.set_xlabel(f"robustness stratum ({report['mode']}; 1 = least robust)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ece_ax.legend()
    if path is not None:
        fig.savefig(path)
    return fig
