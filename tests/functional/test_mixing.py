"""Mixup maths: the coefficient draw, mixed tensors, mask unions and mixed targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlpcal.functional.mixing import mix, mix_attention_masks, mixed_cross_entropy, sample_lambda


def test_mix_with_lambda_one_is_the_clean_batch() -> None:
    x = torch.randn(4, 5, 3)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(mix(x, perm, torch.tensor(1.0)), x)
    assert torch.equal(mix(x, perm, 0.0), x[perm])


def test_mix_is_the_convex_combination_and_keeps_the_dtype() -> None:
    x = torch.randn(3, 2).bfloat16()
    perm = torch.tensor([1, 2, 0])
    mixed = mix(x, perm, torch.tensor(0.3))
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(
        mixed.float(), 0.3 * x.float() + 0.7 * x[perm].float(), atol=2e-2, rtol=0
    )


def test_mask_union_is_elementwise_max_with_the_partner() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    perm = torch.tensor([1, 2, 0])
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    assert torch.equal(mix_attention_masks(mask, perm), expected)
    assert torch.equal(mix_attention_masks(mask, torch.arange(3)), mask)


def test_mixed_cross_entropy_is_the_soft_target_cross_entropy() -> None:
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 1, 2, 1, 0])
    perm = torch.tensor([4, 3, 2, 1, 0])
    lam = torch.tensor(0.35)
    soft = lam * F.one_hot(labels, 3) + (1 - lam) * F.one_hot(labels[perm], 3)
    expected = -(soft * F.log_softmax(logits, dim=-1)).sum(-1)
    torch.testing.assert_close(mixed_cross_entropy(logits, labels, perm, lam), expected)
    torch.testing.assert_close(
        mixed_cross_entropy(logits, labels, perm, 1.0),
        F.cross_entropy(logits, labels, reduction="none"),
    )


def test_sample_lambda_follows_the_seed_and_the_beta_mean() -> None:
    torch.manual_seed(3)
    first = sample_lambda(20.0)
    torch.manual_seed(3)
    assert torch.equal(sample_lambda(20.0), first)
    draws = torch.stack([sample_lambda(20.0) for _ in range(400)])
    assert draws.shape == (400,) and bool(((draws > 0) & (draws < 1)).all())
    assert abs(draws.mean().item() - 0.5) < 0.02  # Beta(20, 20): mean 0.5, sd 0.078


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_sample_lambda_rejects_a_non_positive_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match=str(alpha)):
        sample_lambda(alpha)


def test_shape_errors_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"perm must have shape \(3,\)"):
        mix(torch.zeros(3, 2), torch.arange(2), 0.5)
    with pytest.raises(ValueError, match="mask must have shape"):
        mix_attention_masks(torch.zeros(3), torch.arange(3))
    with pytest.raises(ValueError, match="labels and perm"):
        mixed_cross_entropy(
            torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.arange(2), 0.5
        )
