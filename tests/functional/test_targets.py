"""Soft-label targets: the Desai & Durrett smoothing form and the soft cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlpcal.functional.targets import smoothed_targets, soft_cross_entropy


@pytest.mark.parametrize("num_classes", [2, 3, 7])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_smoothed_targets_match_the_hand_formula(num_classes: int, alpha: float) -> None:
    labels = torch.arange(num_classes).repeat(2)
    targets = smoothed_targets(labels, num_classes, alpha)
    for row, y in zip(targets, labels.tolist(), strict=True):
        for k in range(num_classes):
            expected = 1 - alpha if k == y else alpha / (num_classes - 1)
            assert row[k].item() == pytest.approx(expected, abs=1e-7)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(labels)))
    assert targets.dtype == torch.float32


def test_per_example_alpha_smooths_each_row_by_its_own_amount() -> None:
    labels = torch.tensor([0, 1, 2])
    alpha = torch.tensor([0.0, 0.2, 0.5])
    targets = smoothed_targets(labels, 3, alpha)
    for i in range(3):
        torch.testing.assert_close(
            targets[i], smoothed_targets(labels[i : i + 1], 3, alpha[i].item())[0]
        )
    torch.testing.assert_close(
        smoothed_targets(labels, 3, torch.tensor(0.1)), smoothed_targets(labels, 3, 0.1)
    )
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(2,\)"):
        smoothed_targets(labels, 3, torch.tensor([0.1, 0.2]))


def test_smoothing_agrees_with_torch_after_converting_alpha() -> None:
    # torch spreads eps/K over every class; eps = alpha K / (K - 1) gives the same targets.
    logits, labels, alpha, k = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), 0.2, 4
    ours = soft_cross_entropy(logits, smoothed_targets(labels, k, alpha))
    theirs = F.cross_entropy(logits, labels, label_smoothing=alpha * k / (k - 1), reduction="none")
    torch.testing.assert_close(ours, theirs)


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy() -> None:
    logits = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0])
    ce = soft_cross_entropy(logits, F.one_hot(labels, 3).double())
    torch.testing.assert_close(ce, F.cross_entropy(logits.float(), labels, reduction="none"))


def test_soft_cross_entropy_upcasts_half_precision() -> None:
    logits = torch.randn(4, 3).bfloat16()
    assert soft_cross_entropy(logits, torch.full((4, 3), 1 / 3)).dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1, "alpha": 0.1}, "num_classes=1"),
        ({"num_classes": 3, "alpha": 1.0}, "1.0"),
        ({"num_classes": 3, "alpha": -0.2}, "-0.2"),
    ],
)
def test_smoothed_targets_reject_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        smoothed_targets(torch.tensor([0]), **kwargs)


def test_soft_cross_entropy_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))
