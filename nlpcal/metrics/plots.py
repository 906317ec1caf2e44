"""Reliability diagrams and confidence histograms, several models or splits overlaid.

matplotlib is imported lazily and only through its object-oriented API (``Figure``), so plotting
never touches the global pyplot state or the interactive backend; files are rendered with Agg.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpcal.functional.metrics import (
    ReliabilityCurve,
    _check_n_bins,
    expected_calibration_error,
    reliability_curve,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["confidence_histogram", "drift_curves", "reliability_diagram"]

_FORMATS = (".png", ".svg", ".pdf")

Curves = Mapping[str, tuple[Any, ...]] | tuple[Any, ...]


def _figure(n_rows: int, height_ratios: list[int]) -> tuple[Figure, list[Axes]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install matplotlib") from err
    fig = Figure(figsize=(5.5, 2.2 + 2.2 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False, height_ratios=height_ratios)
    return fig, list(axes[:, 0])


def _as_mapping(curves: Curves) -> dict[str, tuple[Any, ...]]:
    if isinstance(curves, Mapping):
        if not curves:
            raise ValueError("curves is empty: pass at least one (probs, labels) pair")
        curves = dict(curves)
    elif isinstance(curves, tuple) and len(curves) in (2, 3):
        curves = {"model": curves}
    else:
        raise ValueError(
            "curves must be a (probs, labels) pair or a mapping from a name to such pairs, "
            f"got {type(curves).__name__}"
        )
    for name, pair in curves.items():
        if not isinstance(pair, tuple) or len(pair) not in (2, 3):
            raise ValueError(
                f"curve {name!r} must be a (probs, labels) or (probs, labels, confidence) tuple"
            )
    return curves


def _statistics(curves: Curves, n_bins: int) -> dict[str, tuple[ReliabilityCurve, float]]:
    """Per-bin statistics and ECE of each named ``(probs, labels[, confidence])`` tuple."""
    n_bins = _check_n_bins(n_bins)
    result = {}
    for name, (probs, labels, *confidence) in _as_mapping(curves).items():
        confidence = confidence[0] if confidence else None
        curve = reliability_curve(probs, labels, n_bins=n_bins, confidence=confidence)
        ece = expected_calibration_error(probs, labels, n_bins=n_bins, confidence=confidence)
        result[name] = (curve, float(ece))
    return result


def _draw_histogram(ax: Axes, stats: dict[str, tuple[ReliabilityCurve, float]]) -> None:
    for name, (curve, _) in stats.items():
        edges = curve.edges.cpu().numpy()
        fraction = (curve.count / curve.count.sum()).cpu().numpy()
        ax.stairs(fraction, edges, fill=True, alpha=0.35, label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("fraction of examples")
    ax.set_xlim(0, 1)


def _finish(fig: Figure, title: str | None, path: str | Path | None) -> Figure:
    if title is not None:
        fig.suptitle(title)
    if path is not None:
        path = Path(path)
        if path.suffix.lower() not in _FORMATS:
            raise ValueError(f"path must end in one of {', '.join(_FORMATS)}, got {str(path)!r}")
        fig.savefig(path, dpi=150)
    return fig


def reliability_diagram(
    curves: Curves,
    n_bins: int = 15,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Reliability diagram of one or several models or splits, with a confidence histogram below.

    Each curve plots the accuracy against the mean confidence of the top-label prediction in every
    non-empty equal-width bin; the legend gives each curve's ECE in percent (``n_bins`` bins).
    The lower panel shows the fraction of examples per confidence bin.

    Args:
        curves: a ``(probs, labels)`` pair, or a mapping from a name (e.g. ``"SST-2 (in-domain)"``,
            ``"IMDb (OOD)"``) to such pairs. A third element, the top-label confidence ``(n,)``,
            replaces ``max(probs)`` where the two differ (SLOVA's ``q_ŷ``).
        n_bins: number of equal-width bins.
        path: where to save the figure; the suffix picks the format (``.png``, ``.svg``, ``.pdf``).
        title: the figure title.

    Returns:
        The matplotlib ``Figure``.

    >>> import torch
    >>> probs = torch.softmax(torch.randn(100, 3), dim=1)
    >>> fig = reliability_diagram({"val": (probs, torch.randint(0, 3, (100,)))}, n_bins=10)
    >>> len(fig.axes)
    2
    """
    stats = _statistics(curves, n_bins)
    fig, (ax, ax_hist) = _figure(2, [3, 1])
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, (curve, ece) in stats.items():
        filled = curve.count > 0
        ax.plot(
            curve.confidence[filled].cpu().numpy(),
            curve.accuracy[filled].cpu().numpy(),
            marker="o",
            markersize=4,
            label=f"{name} (ECE {100 * ece:.2f}%)",
            gid=name,
        )
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize="small")
    _draw_histogram(ax_hist, stats)
    return _finish(fig, title, path)


def confidence_histogram(
    curves: Curves,
    n_bins: int = 15,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Histogram of the top-label confidence of one or several models or splits, overlaid.

    Args:
        curves: a ``(probs, labels)`` pair, or a mapping from a name to such pairs.
        n_bins: number of equal-width bins.
        path: where to save the figure; the suffix picks the format (``.png``, ``.svg``, ``.pdf``).
        title: the figure title.

    Returns:
        The matplotlib ``Figure``.

    >>> import torch
    >>> probs = torch.softmax(torch.randn(100, 3), dim=1)
    >>> fig = confidence_histogram((probs, torch.randint(0, 3, (100,))), n_bins=10)
    >>> len(fig.axes)
    1
    """
    stats = _statistics(curves, n_bins)
    fig, (ax,) = _figure(1, [1])
    _draw_histogram(ax, stats)
    ax.legend(loc="upper left", fontsize="small")
    return _finish(fig, title, path)


def drift_curves(
    curves: Mapping[str, Mapping[int, float]],
    metric: str = "ECE",
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """A metric against the strength of a shift, one line per model (the picture of Ovadia et
    al. 2019: calibration error against shift intensity).

    Args:
        curves: name -> {severity: value}; severity 0 is the clean data.
        metric: the y-axis label.
        title: the figure's title.
        path: save to this file (``.png``, ``.svg`` or ``.pdf``).

    >>> fig = drift_curves({"model": {0: 0.05, 1: 0.07, 3: 0.12}})
    >>> fig.axes[0].get_xlabel()
    'corruption severity (0: clean)'
    """
    if not curves or not all(curves.values()):
        raise ValueError("curves must map each name to at least one {severity: value} point")
    fig, (ax,) = _figure(1, [1])
    for name, points in curves.items():
        severities = sorted(points)
        ax.plot(severities, [points[s] for s in severities], marker="o", label=name)
    ax.set_xlabel("corruption severity (0: clean)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _finish(fig, title, path)
