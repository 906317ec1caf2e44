"""Averaging members' probabilities and the ensemble's OOD score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nlpcal.functional.ensemble import ensemble_ood_score, ensemble_probabilities


def test_mean_over_members_in_any_array_type() -> None:
    a = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    b = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    torch.testing.assert_close(
        ensemble_probabilities([a, b]), torch.tensor([[0.7, 0.3], [0.1, 0.9]])
    )
    torch.testing.assert_close(ensemble_probabilities(b.unsqueeze(0)), b)


def test_ood_scores_of_the_mean_and_the_energy_exception() -> None:
    mean = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    torch.testing.assert_close(ensemble_ood_score(mean, "confidence"), torch.tensor([0.7, 0.5]))
    entropy = -(mean * mean.log()).sum(-1)
    torch.testing.assert_close(ensemble_ood_score(mean, "entropy"), -entropy)
    energies = [torch.tensor([1.0, 3.0]), torch.tensor([3.0, 5.0])]
    torch.testing.assert_close(
        ensemble_ood_score(mean, "energy", energies), torch.tensor([2.0, 4.0])
    )


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        ensemble_probabilities([])
    with pytest.raises(ValueError, match=r"same shape .* got \[\(1, 2\), \(1, 3\)\]"):
        ensemble_probabilities([torch.zeros(1, 2), torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="pass member_scores"):
        ensemble_ood_score(torch.ones(1, 2) / 2, "energy")
    with pytest.raises(ValueError, match="ood_score must be one of"):
        ensemble_ood_score(torch.ones(1, 2) / 2, "nope")
