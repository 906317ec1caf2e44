"""Reliability diagrams and confidence histograms: files, overlays and legends."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib")

from nlpcal.functional.metrics import expected_calibration_error, reliability_curve
from nlpcal.metrics.plots import confidence_histogram, reliability_diagram


def predictions(n: int, sharpness: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(sharpness * torch.randn(n, 2, generator=g), dim=1)
    return probs, torch.randint(0, 2, (n,), generator=g)


CURVES = {
    "SST-2 (in-domain)": predictions(400, 2.0, seed=0),
    "IMDb (OOD)": predictions(300, 6.0, seed=1),
}


def curve_lines(ax):
    return [line for line in ax.get_lines() if line.get_gid() in CURVES]


def test_two_curves_are_overlaid_with_ece_in_the_legend():
    fig = reliability_diagram(CURVES, n_bins=10, title="calibration")
    ax, ax_hist = fig.axes
    lines = curve_lines(ax)
    assert [line.get_gid() for line in lines] == list(CURVES)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    for name, (probs, labels) in CURVES.items():
        ece = 100 * float(expected_calibration_error(probs, labels, n_bins=10))
        assert f"{name} (ECE {ece:.2f}%)" in legend
    assert len(ax_hist.patches) == 2  # one histogram per curve
    assert fig._suptitle.get_text() == "calibration"


def test_points_are_the_non_empty_bins():
    fig = reliability_diagram(CURVES, n_bins=10)
    for line in curve_lines(fig.axes[0]):
        curve = reliability_curve(*CURVES[line.get_gid()], n_bins=10)
        filled = curve.count > 0
        assert list(line.get_xdata()) == pytest.approx(curve.confidence[filled].tolist())
        assert list(line.get_ydata()) == pytest.approx(curve.accuracy[filled].tolist())


def test_single_pair_is_accepted():
    fig = reliability_diagram(CURVES["IMDb (OOD)"], n_bins=5)
    assert [line.get_gid() for line in fig.axes[0].get_lines()] == [None, "model"]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_saved_files_are_valid(tmp_path, suffix):
    path = tmp_path / f"diagram{suffix}"
    reliability_diagram(CURVES, path=path)
    hist_path = tmp_path / f"histogram{suffix}"
    confidence_histogram(CURVES, path=str(hist_path))
    for written in (path, hist_path):
        data = written.read_bytes()
        assert len(data) > 1000
        if suffix == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
        else:
            assert b"<svg" in data[:1000]


def test_histogram_overlays_every_curve():
    fig = confidence_histogram(CURVES, n_bins=8)
    (ax,) = fig.axes
    assert len(ax.patches) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(CURVES)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match=r"must end in one of \.png, \.svg, \.pdf"):
        reliability_diagram(CURVES, path=tmp_path / "diagram.jpg")
    with pytest.raises(ValueError, match="curves is empty"):
        reliability_diagram({})
    with pytest.raises(ValueError, match="curves must be a"):
        reliability_diagram([1, 2, 3])
    with pytest.raises(ValueError, match="n_bins"):
        confidence_histogram(CURVES, n_bins=0)


def test_pyplot_state_is_untouched():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    reliability_diagram(CURVES)
    assert plt.get_fignums() == before
