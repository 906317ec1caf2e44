"""Selective prediction against slow references and hand cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nlpcal.functional.selective import accuracy_at_coverage, aurc, risk_coverage_curve

SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def confidence_correct(draw, max_n: int = 12):
    n = draw(st.integers(1, max_n))
    confidence = draw(
        hnp.arrays(np.float64, n, elements=st.sampled_from([0.1, 0.4, 0.5, 0.7, 0.9, 0.95, 1.0]))
    )
    correct = draw(hnp.arrays(np.bool_, n))
    return confidence, correct


def slow_risks_for_order(correct_in_order) -> list[float]:
    errors, risks = 0, []
    for k, ok in enumerate(correct_in_order, start=1):
        errors += not ok
        risks.append(errors / k)
    return risks


def slow_expected_risks(confidence, correct) -> list[float]:
    """Average of the risk curves over every order of tied examples (brute force)."""
    groups = [
        [bool(correct[i]) for i in range(len(confidence)) if confidence[i] == value]
        for value in sorted(set(confidence.tolist()), reverse=True)
    ]
    orders = [list(itertools.permutations(group)) for group in groups]
    curves = [
        slow_risks_for_order([ok for part in choice for ok in part])
        for choice in itertools.product(*orders)
    ]
    return [sum(curve[k] for curve in curves) / len(curves) for k in range(len(confidence))]


@SETTINGS
@given(data=confidence_correct(max_n=7))
def test_aurc_and_accuracy_at_coverage_equal_brute_force_over_tie_orders(data):
    confidence, correct = data
    risks = slow_expected_risks(confidence, correct)
    assert float(aurc(confidence, correct)) == pytest.approx(sum(risks) / len(risks), abs=1e-12)
    coverages = (0.3, 0.5, 0.8, 1.0)
    at = accuracy_at_coverage(confidence, correct, coverages)
    for c in coverages:
        k = max(1, math.ceil(c * len(confidence)))
        assert float(at[c]) == pytest.approx(1 - risks[k - 1], abs=1e-12)


@SETTINGS
@given(data=confidence_correct(max_n=30))
def test_curve_equals_thresholds_loop(data):
    confidence, correct = data
    coverage, risk = risk_coverage_curve(confidence, correct)
    thresholds = sorted(set(confidence.tolist()), reverse=True)
    assert coverage.shape == risk.shape == (len(thresholds),)
    for j, t in enumerate(thresholds):
        accepted = confidence >= t
        assert float(coverage[j]) == pytest.approx(accepted.mean())
        assert float(risk[j]) == pytest.approx(1 - correct[accepted].mean())
    assert float(coverage[-1]) == 1.0
    assert bool((coverage.diff() > 0).all())


@SETTINGS
@given(data=confidence_correct(max_n=30), seed=st.integers(0, 2**16))
def test_results_do_not_depend_on_input_order(data, seed):
    confidence, correct = data
    perm = np.random.default_rng(seed).permutation(len(confidence))
    assert float(aurc(confidence[perm], correct[perm])) == pytest.approx(
        float(aurc(confidence, correct)), abs=1e-12
    )


def test_hand_case_without_ties():
    confidence = torch.tensor([0.9, 0.8, 0.7, 0.6])
    correct = torch.tensor([True, False, True, False])
    coverage, risk = risk_coverage_curve(confidence, correct)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert float(aurc(confidence, correct)) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    assert float(accuracy_at_coverage(confidence, correct, [0.5])[0.5]) == 0.5


def test_perfect_ranking_beats_inverted_ranking():
    correct = torch.tensor([1] * 8 + [0] * 2)
    good = torch.linspace(1, 0.5, 10)
    bad = good.flip(0)
    assert float(aurc(good, correct)) < float(aurc(bad, correct))
    assert float(accuracy_at_coverage(good, correct, [0.8])[0.8]) == 1.0


def test_all_correct_has_zero_risk():
    confidence = torch.rand(20, generator=torch.Generator().manual_seed(0))
    assert float(aurc(confidence, torch.ones(20))) == 0.0
    assert float(accuracy_at_coverage(confidence, torch.ones(20))[1.0]) == 1.0


def test_coverage_rounding():
    confidence = torch.linspace(1, 0, 100)
    correct = torch.arange(100) < 95
    # ceil(0.95 · 100) must be 95 despite 0.95 · 100 = 95.00000000000001.
    assert float(accuracy_at_coverage(confidence, correct, [0.95])[0.95]) == 1.0


def test_default_coverages_and_numpy_input():
    confidence = np.linspace(1, 0, 40)
    correct = np.arange(40) % 3 != 0
    result = accuracy_at_coverage(confidence, correct)
    assert list(result) == [0.5, 0.8, 0.9, 0.95, 1.0]
    assert float(result[1.0]) == pytest.approx(correct.mean())


@pytest.mark.parametrize(
    ("confidence", "correct", "match"),
    [
        ([0.5, 0.6], [1], "correct has 1 entries but confidence has 2"),
        ([0.5, float("nan")], [1, 0], "non-finite"),
        ([], [], "confidence is empty"),
        ([0.5], [2], r"correct must hold 0/1"),
    ],
)
def test_bad_input_raises(confidence, correct, match):
    with pytest.raises(ValueError, match=match):
        aurc(confidence, correct)


def test_bad_coverage_raises():
    with pytest.raises(ValueError, match=r"coverages must lie in \(0, 1\]"):
        accuracy_at_coverage([0.5], [1], [0.0])
