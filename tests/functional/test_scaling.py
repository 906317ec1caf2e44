"""Temperature, vector-scaling and SLOVA-exponent fitting against references and the grid."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nlpcal.functional.scaling import (
    confidence_exponent_nll,
    fit_confidence_exponent,
    fit_temperature,
    fit_vector_scaling,
    fold_affine,
    grid_search_temperature,
    reference_temperature_grid,
    temperature_nll,
)

SETTINGS = settings(max_examples=40, deadline=None)


def calibrated(n: int, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, k, generator=g)
    return logits, torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)


@st.composite
def logits_and_labels(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(2, 40))
    k = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.floats(0.01, 60.0))
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g)
    if draw(st.booleans()):  # labels from the model itself, else unrelated to the logits
        labels = torch.multinomial((logits / draw(st.floats(0.2, 5.0))).softmax(-1), 1, generator=g)
        labels = labels.squeeze(1)
    else:
        labels = torch.randint(0, k, (n,), generator=g)
    return logits, labels


# ----------------------------------------------------------------------------- NLL and the grid
def test_temperature_nll_matches_cross_entropy() -> None:
    logits, labels = calibrated(300)
    temps = torch.tensor([[0.5, 1.0], [2.0, 7.5]])
    nll = temperature_nll(logits, labels, temps)
    assert nll.shape == (2, 2)
    assert nll.dtype == torch.float64
    for t, value in zip(temps.flatten(), nll.flatten(), strict=True):
        expected = F.cross_entropy(logits.double() / t.double(), labels)
        assert float(value) == pytest.approx(float(expected), rel=1e-12)
    assert float(temperature_nll(logits, labels, 2.0)) == pytest.approx(float(nll[1, 0]), rel=1e-12)


def test_reference_grid_is_desai_and_durrett() -> None:
    grid = reference_temperature_grid()
    assert grid.shape == (996,)
    assert torch.allclose(grid, torch.arange(0.05, 10.005, 0.01, dtype=torch.float64))


def test_grid_search_picks_the_grid_minimum() -> None:
    logits, labels = calibrated(200)
    grid = torch.tensor([0.5, 1.0, 2.0, 4.0])
    best = grid_search_temperature(3 * logits, labels, grid)
    losses = [float(F.cross_entropy(3 * logits.double() / t, labels)) for t in grid.double()]
    assert float(best) == float(grid[int(np.argmin(losses))])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_temperature_nll_rejects_bad_temperatures(bad: float) -> None:
    logits, labels = calibrated(10)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        temperature_nll(logits, labels, bad)


# ----------------------------------------------------------------------------- fit_temperature
@SETTINGS
@given(logits_and_labels())
def test_fit_temperature_is_never_worse_than_the_grid(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    logits, labels = data
    fitted = fit_temperature(logits, labels)
    assert fitted > 0
    grid_best = grid_search_temperature(logits, labels)
    assert (
        float(temperature_nll(logits, labels, fitted))
        <= float(temperature_nll(logits, labels, grid_best)) + 1e-12
    )


@pytest.mark.parametrize("true_t", [0.2, 1.0, 4.0])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    logits, labels = calibrated(20000, seed=1)
    assert float(fit_temperature(true_t * logits, labels)) == pytest.approx(true_t, rel=0.04)


@pytest.mark.parametrize("failure", ["no_progress", "non_finite"])
def test_fit_temperature_falls_back_to_the_bounded_search(
    failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits, labels = calibrated(3000, seed=2)
    expected = fit_temperature(3 * logits, labels)

    def broken_step(self: torch.optim.LBFGS, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        if failure == "non_finite":
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return closure()

    monkeypatch.setattr(torch.optim.LBFGS, "step", broken_step)
    fallback = fit_temperature(3 * logits, labels)
    assert bool(torch.isfinite(fallback))
    assert float(fallback) == pytest.approx(float(expected), rel=1e-3)
    grid_best = grid_search_temperature(3 * logits, labels)
    assert (
        float(temperature_nll(3 * logits, labels, fallback))
        <= float(temperature_nll(3 * logits, labels, grid_best)) + 1e-12
    )


def test_fit_temperature_extremes_stay_finite() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 3, generator=g)
    separable = fit_temperature(logits, logits.argmax(1))
    assert 0.0099 <= float(separable) <= 0.05
    unrelated = fit_temperature(logits, torch.randint(0, 3, (500,), generator=g))
    assert 10 <= float(unrelated) <= 100


def test_fit_temperature_keeps_device_and_dtype() -> None:
    logits, labels = calibrated(100)
    assert fit_temperature(logits, labels).dtype == torch.float32
    assert fit_temperature(logits.double(), labels).dtype == torch.float64
    from_numpy = fit_temperature(logits.numpy(), labels.numpy())
    assert float(from_numpy) == float(fit_temperature(logits, labels))


def test_fit_temperature_is_fast_on_a_large_held_out_set() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(100_000, 10, generator=g)
    labels = torch.multinomial((logits / 4).softmax(-1), 1, generator=g).squeeze(1)
    fit_temperature(logits[:100], labels[:100])  # the first optimiser in a process imports dynamo
    start = time.perf_counter()
    fitted = fit_temperature(logits, labels)
    # ~0.05 s on one idle core; a generous bound that a grid search (~5 s) would fail.
    assert time.perf_counter() - start < 1.5
    assert float(fitted) == pytest.approx(4.0, rel=0.03)


def test_fit_temperature_rejects_bad_input() -> None:
    logits, labels = calibrated(10)
    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        fit_temperature(logits, labels, max_iter=0)
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(logits.index_fill(0, torch.tensor([2]), math.inf), labels)
    with pytest.raises(ValueError, match="labels must lie in"):
        fit_temperature(logits, labels + 4)


# ----------------------------------------------------------------------------- vector scaling
def test_fit_vector_scaling_recovers_scale_and_bias() -> None:
    logits, labels = calibrated(20000, k=3, seed=3)
    true_w, true_b = torch.tensor([0.5, 2.0, 1.0]), torch.tensor([0.6, -0.2, -0.4])
    observed = (logits - true_b) / true_w
    w, b = fit_vector_scaling(observed, labels)
    assert torch.allclose(w, true_w, rtol=0.08)
    assert torch.allclose(b, true_b, atol=0.08)
    assert float(b.sum()) == pytest.approx(0.0, abs=1e-5)


def test_fit_vector_scaling_never_ends_worse_than_the_identity() -> None:
    logits, labels = calibrated(50, seed=4)
    w, b = fit_vector_scaling(logits, labels, max_iter=1)
    assert F.cross_entropy(logits * w + b, labels) <= F.cross_entropy(logits, labels)


# ----------------------------------------------------------------------------- SLOVA exponent
def correctness(true_exponent: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    confidence = torch.rand(n, generator=g) * 0.98 + 0.01
    return confidence.log(), torch.rand(n, generator=g) < confidence**true_exponent


def test_confidence_exponent_nll_matches_binary_cross_entropy() -> None:
    log_c, right = correctness(1.5, 200, seed=0)
    for a in (0.3, 1.0, 2.5):
        expected = F.binary_cross_entropy(log_c.double().mul(a).exp(), right.double())
        assert float(confidence_exponent_nll(log_c, right, a)) == pytest.approx(
            float(expected), rel=1e-9
        )
    assert confidence_exponent_nll(log_c, right, torch.tensor([1.0, 2.0])).shape == (2,)


@pytest.mark.parametrize("true_exponent", [0.4, 1.0, 3.0])
def test_fit_confidence_exponent_recovers_a_known_exponent(true_exponent: float) -> None:
    log_c, right = correctness(true_exponent, 20000, seed=1)
    assert float(fit_confidence_exponent(log_c, right)) == pytest.approx(true_exponent, rel=0.08)


@SETTINGS
@given(st.integers(2, 60), st.integers(0, 2**16), st.floats(0.05, 20.0))
def test_fit_confidence_exponent_is_never_worse_than_a_grid(n: int, seed: int, a: float) -> None:
    log_c, right = correctness(a, n, seed)
    fitted = fit_confidence_exponent(log_c, right)
    grid = torch.logspace(-2, 2, 401, dtype=torch.float64)
    assert (
        float(confidence_exponent_nll(log_c, right, fitted))
        <= float(confidence_exponent_nll(log_c, right, grid).min()) + 1e-6
    )


def test_confidence_of_one_on_a_wrong_prediction_stays_finite() -> None:
    log_c = torch.tensor([0.0, -0.1, -2.0, -0.05])
    right = torch.tensor([False, True, False, True])
    assert bool(torch.isfinite(fit_confidence_exponent(log_c, right)))


def test_fit_confidence_exponent_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="log_confidence must be <= 0"):
        fit_confidence_exponent(torch.tensor([0.5, -1.0]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"correct must have shape \(2,\)"):
        fit_confidence_exponent(torch.tensor([-0.5, -1.0]), torch.tensor([True]))
    with pytest.raises(ValueError, match="booleans or 0/1"):
        fit_confidence_exponent(torch.tensor([-0.5, -1.0]), torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="exponent must be finite and > 0"):
        confidence_exponent_nll(torch.tensor([-0.5]), torch.tensor([True]), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fold_affine_equals_the_affine_map_after_the_layer(dtype):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(4, 7, generator=g), torch.randn(4, generator=g)
    scale, shift = torch.rand(4, generator=g) + 0.1, torch.randn(4, generator=g)
    h = torch.randn(32, 7, generator=g)
    layer = torch.nn.Linear(7, 4).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
        expected = scale.to(dtype) * layer(h.to(dtype)) + shift.to(dtype)
        folded_weight, folded_bias = fold_affine(layer.weight, layer.bias, scale, shift)
        assert folded_weight.dtype == dtype and folded_bias.dtype == dtype
        folded = h.to(dtype) @ folded_weight.T + folded_bias
    torch.testing.assert_close(folded, expected, rtol=1e-6, atol=1e-6)


def test_fold_affine_of_a_temperature_divides_the_logits():
    weight, bias = torch.randn(3, 5), torch.randn(3)
    h = torch.randn(10, 5)
    folded_weight, folded_bias = fold_affine(weight, bias, torch.tensor(1 / 2.5), 0.0)
    torch.testing.assert_close(h @ folded_weight.T + folded_bias, (h @ weight.T + bias) / 2.5)


def test_fold_affine_without_a_bias_makes_the_shift_the_bias():
    weight = torch.randn(3, 5)
    _, folded_bias = fold_affine(weight, None, 2.0, torch.tensor([1.0, 2.0, 3.0]))
    assert folded_bias.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.ones(3), None, 1.0, 0.0), r"weight must be a floating-point \(K, H\) matrix"),
        (
            (torch.ones(3, 2), None, torch.ones(2), 0.0),
            r"scale must be a scalar or have shape \(3,\)",
        ),
        (
            (torch.ones(3, 2), torch.ones(4), 1.0, 0.0),
            r"bias must be a scalar or have shape \(3,\)",
        ),
        ((torch.ones(3, 2), None, torch.tensor([1.0, 0.0, 1.0]), 0.0), "scale must be non-zero"),
        ((torch.ones(3, 2), None, 1.0, float("nan")), "shift must be finite, got nan"),
    ],
    ids=["vector-weight", "scale-shape", "bias-shape", "zero-scale", "nan-shift"],
)
def test_fold_affine_rejects_bad_input_by_name(args, message):
    with pytest.raises(ValueError, match=message):
        fold_affine(*args)
