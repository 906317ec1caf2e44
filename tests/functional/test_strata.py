"""Equal-count strata, their edges, per-stratum gaps and the smoothing update."""

from __future__ import annotations

import pytest
import torch

from nlpcal.functional.strata import (
    adapt_smoothing,
    assign_strata,
    equal_count_strata,
    stratum_calibration_gap,
)


@pytest.mark.parametrize(("n", "r"), [(10, 10), (100, 10), (103, 7), (57, 2)])
def test_strata_are_equal_count_and_ordered(n, r) -> None:
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    strata, edges = equal_count_strata(values, r)
    counts = torch.bincount(strata, minlength=r)
    assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == n
    for b in range(r - 1):  # every value of a stratum is below every value of the next
        assert values[strata == b].max() <= values[strata == b + 1].min()
    assert bool((edges[1:] >= edges[:-1]).all())
    # The edges place the training values themselves in their own strata.
    assert torch.equal(assign_strata(values, edges), strata)


def test_ties_still_give_equal_counts() -> None:
    values = torch.tensor([0.0] * 12 + [0.5, 0.7, 0.9, 1.2])
    strata, edges = equal_count_strata(values, 4)
    assert torch.bincount(strata).tolist() == [4, 4, 4, 4]
    assert edges.tolist()[:2] == [0.0, 0.0]
    assert assign_strata(torch.tensor([0.0]), edges).item() == 0


def test_strata_bad_input() -> None:
    with pytest.raises(ValueError, match="num_strata must be an integer >= 2, got 1"):
        equal_count_strata(torch.zeros(5), 1)
    with pytest.raises(ValueError, match="cannot split 3 examples into num_strata=4"):
        equal_count_strata(torch.zeros(3), 4)


def test_gap_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(50, generator=g)
    correct = torch.rand(50, generator=g) < 0.6
    strata = torch.randint(0, 5, (50,), generator=g)
    strata[strata == 3] = 2  # stratum 3 empty
    gap, counts = stratum_calibration_gap(conf, correct, strata, 5)
    for b in range(5):
        sel = strata == b
        assert counts[b] == sel.sum()
        expected = (conf[sel].mean() - correct[sel].float().mean()) if sel.any() else 0.0
        assert gap[b].item() == pytest.approx(float(expected), abs=1e-6)


def test_over_confident_stratum_smooths_more_and_under_confident_less() -> None:
    eps = torch.tensor([0.2, 0.2, 0.2, 0.2])
    conf = torch.tensor([0.95, 0.95, 0.6, 0.6, 0.9, 0.7])
    correct = torch.tensor([0, 1, 1, 1, 1, 0])
    strata = torch.tensor([0, 0, 1, 1, 2, 2])
    gap, counts = stratum_calibration_gap(conf, correct, strata, 4)
    new = adapt_smoothing(eps, gap, counts, step=0.5, max_value=0.5)
    assert new[0] > eps[0]  # over-confident: 0.95 vs 50 % correct
    assert new[1] < eps[1]  # under-confident: 0.6 vs 100 % correct
    assert new[2] == pytest.approx(0.2 + 0.5 * (0.8 - 0.5))
    assert new[3] == eps[3]  # no adaptation example: unchanged
    capped = adapt_smoothing(eps, torch.tensor([2.0, -2.0, 0, 0]), counts, 0.5, 0.5)
    assert capped[:2].tolist() == [0.5, 0.0]
