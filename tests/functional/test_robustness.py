"""Embedding-space robustness maths: norms, projections, steps, radii and the bisection."""

from __future__ import annotations

import pytest
import torch

from nlpcal.functional.robustness import (
    ascent_step,
    bisect_radius,
    embedding_scale,
    first_order_radius,
    masked_norm,
    prediction_margin,
    project,
)

NORMS = ["l2", "linf"]


def ragged(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 5, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] + [0] * 5])
    return x, mask


def test_margin_against_a_loop() -> None:
    logits = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(2))
    expected = [
        float(z[t] - max(z[k] for k in range(4) if k != t))
        for z, t in zip(logits, target, strict=True)
    ]
    torch.testing.assert_close(prediction_margin(logits, target), torch.tensor(expected))
    assert bool((prediction_margin(logits, logits.argmax(1)) >= 0).all())


@pytest.mark.parametrize("norm", NORMS)
def test_padding_never_counts(norm) -> None:
    x, mask = ragged()
    garbage = x.clone()
    garbage[mask == 0] = 1e6
    torch.testing.assert_close(masked_norm(garbage, mask, norm), masked_norm(x, mask, norm))
    torch.testing.assert_close(embedding_scale(garbage, mask, norm), embedding_scale(x, mask, norm))
    radius = torch.full((4,), 0.5)
    assert not project(garbage, mask, radius, norm)[mask == 0].any()
    assert not ascent_step(garbage, mask, radius, norm)[mask == 0].any()


def test_linf_scale_is_the_rms_entry_of_real_tokens() -> None:
    x, mask = ragged()
    for i in range(4):
        real = x[i][mask[i].bool()]
        expected = real.pow(2).mean().sqrt()
        torch.testing.assert_close(embedding_scale(x, mask, "linf")[i], expected)
        torch.testing.assert_close(embedding_scale(x, mask, "l2")[i], real.norm())


@pytest.mark.parametrize("norm", NORMS)
def test_projection_lands_in_the_ball_and_keeps_points_inside(norm) -> None:
    x, mask = ragged()
    radius = torch.tensor([0.1, 1.0, 100.0, 0.5])
    p = project(x, mask, radius, norm)
    assert bool((masked_norm(p, mask, norm) <= radius * (1 + 1e-5)).all())
    inside = masked_norm(x, mask, norm) <= radius
    torch.testing.assert_close(p[inside], (x * mask.unsqueeze(-1))[inside])


@pytest.mark.parametrize("norm", NORMS)
def test_ascent_step_has_the_step_length_and_raises_a_linear_function(norm) -> None:
    g, mask = ragged(3)
    step = torch.tensor([0.1, 0.2, 0.3, 0.4])
    d = ascent_step(g, mask, step, norm)
    torch.testing.assert_close(masked_norm(d, mask, norm), step)
    # The step maximises <g, d> over the ball: it equals step · dual norm of g.
    dual = (g * mask.unsqueeze(-1)).flatten(1)
    dual = dual.norm(dim=1) if norm == "l2" else dual.abs().sum(dim=1)
    torch.testing.assert_close((g * d).flatten(1).sum(1), step * dual)


@pytest.mark.parametrize("norm", NORMS)
def test_first_order_radius_is_exact_for_a_linear_margin(norm) -> None:
    g, mask = ragged(4)
    margin = torch.tensor([1.0, 2.0, 0.5, 3.0])
    r = first_order_radius(margin, g, mask, norm)
    # Moving r along the steepest descent direction brings the linear margin exactly to zero.
    d = ascent_step(g, mask, r, norm)
    torch.testing.assert_close(
        margin - (g * d).flatten(1).sum(1), torch.zeros(4), atol=1e-5, rtol=0
    )


def test_first_order_radius_edge_cases() -> None:
    g = torch.zeros(2, 1, 2)
    g[0] = 1.0
    r = first_order_radius(torch.tensor([-1.0, 1.0]), g, torch.ones(2, 1), "l2")
    assert r[0] == 0 and r[1] == float("inf")


def test_bisection_brackets_a_threshold_per_example() -> None:
    threshold = torch.tensor([0.05, 0.3, 0.77, 0.999])
    low, high = torch.zeros(4), torch.ones(4)
    for _ in range(20):
        low, high = bisect_radius(low, high, (low + high) / 2 >= threshold)
    assert bool((low < threshold).all() and (high >= threshold).all())
    assert float((high - low).max()) <= 2**-20


def test_bad_input_names_the_problem() -> None:
    x, mask = ragged()
    with pytest.raises(ValueError, match="norm must be one of"):
        masked_norm(x, mask, "l1")
    with pytest.raises(ValueError, match=r"mask shape \(B, L\)"):
        project(x, mask[:, :2], torch.ones(4), "l2")
    with pytest.raises(ValueError, match="K >= 2"):
        prediction_margin(torch.zeros(3, 1), torch.zeros(3))
