"""CME's maths: masked attribution distributions, explanation scores and the pairwise penalty."""

from __future__ import annotations

import math

import pytest
import torch

from nlpcal.functional.pairwise import (
    attribution_distribution,
    correct_wrong_penalty,
    explanation_scores,
)


def brute_force_penalty(scores: list[float], correct: list[bool]) -> float:
    total = 0.0
    for i, s_i in enumerate(scores):
        for j, s_j in enumerate(scores):
            if correct[i] and not correct[j]:
                total += max(0.0, s_j - s_i) ** 2
    return total


@pytest.mark.parametrize("seed", range(5))
def test_penalty_equals_a_double_loop_over_pairs(seed) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 3 + seed * 4
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g) < 0.6
    correct[0], correct[1] = True, False  # at least one pair
    expected = brute_force_penalty(scores.tolist(), correct.tolist())
    got = correct_wrong_penalty(scores, correct)
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("correct", [[True] * 5, [False] * 5])
def test_penalty_is_zero_without_correct_or_wrong_predictions(correct) -> None:
    scores = torch.rand(5, requires_grad=True)
    penalty = correct_wrong_penalty(scores, torch.tensor(correct))
    penalty.backward()
    assert penalty.item() == 0.0
    assert torch.equal(scores.grad, torch.zeros(5))


def test_penalty_only_counts_wrong_above_correct() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.7])  # correct: 0, 2; wrong: 1, 3
    correct = torch.tensor([True, False, True, False])
    # only the pair (i=2, j=3) is out of order: (0.7 − 0.5)²
    assert correct_wrong_penalty(scores, correct).item() == pytest.approx(0.04)


def test_distribution_masks_padding_and_sums_to_one() -> None:
    a = torch.tensor([[1.0, -1.0, 3.0, 7.0], [0.0, 2.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    d = attribution_distribution(a, mask)
    assert d[0, 3] == 0
    torch.testing.assert_close(d.sum(dim=-1), torch.ones(2))
    torch.testing.assert_close(d[0, :3], torch.tensor([1.0, 1.0, 3.0]).softmax(dim=0))
    torch.testing.assert_close(d[1], torch.tensor([0.0, 2.0, 2.0, 0.0]).softmax(dim=0))


def test_distribution_of_half_precision_is_float32() -> None:
    d = attribution_distribution(torch.randn(2, 3).half(), torch.ones(2, 3))
    assert d.dtype == torch.float32


def test_score_is_the_norm_of_the_distribution_times_the_confidence() -> None:
    a = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    s = explanation_scores(a, torch.tensor([0.8, 0.5]), mask)
    # uniform over 4 tokens: norm 1/2; one token carries everything: norm 1
    torch.testing.assert_close(s, torch.tensor([0.4, 0.5]))
    assert math.isclose(s[0].item(), 0.8 / math.sqrt(4), rel_tol=1e-6)


def test_score_gradient_reaches_a_confidence_and_a_live_attribution() -> None:
    a = torch.randn(3, 5, requires_grad=True)
    c = torch.rand(3, requires_grad=True)
    explanation_scores(a, c).sum().backward()
    assert c.grad.abs().sum() > 0 and a.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: attribution_distribution(torch.ones(4)), r"shape \(batch, seq_len\), got \(4,\)"),
        (
            lambda: attribution_distribution(torch.ones(2, 3), torch.ones(2, 4)),
            r"attention_mask must have the shape .*\(2, 3\).*got \(2, 4\)",
        ),
        (
            lambda: attribution_distribution(
                torch.ones(3, 2), torch.tensor([[1, 0], [0, 0], [1, 1]])
            ),
            r"no token at all \(rows \[1\]\)",
        ),
        (
            lambda: explanation_scores(torch.ones(2, 3), torch.ones(3)),
            r"confidence must have shape \(2,\).*got \(3,\)",
        ),
        (
            lambda: correct_wrong_penalty(torch.ones(3), torch.ones(2, dtype=torch.bool)),
            r"got \(3,\) and \(2,\)",
        ),
    ],
)
def test_bad_shapes_and_empty_rows_raise(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
