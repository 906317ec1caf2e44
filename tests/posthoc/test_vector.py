"""Vector scaling on a model with a per-class bias."""

from __future__ import annotations

import pytest
import torch

from nlpcal.posthoc.temperature import TemperatureScaler
from nlpcal.posthoc.vector import VectorScaler
from tests.posthoc.conftest import calibrated_logits, nll

BIAS = torch.tensor([1.5, 0.0, -0.5, -1.0])


def biased_split() -> tuple[torch.Tensor, ...]:
    """A calibrated model whose observed logits carry a per-class bias; fit and test halves."""
    logits, labels = calibrated_logits(8000, seed=3)
    observed = logits - BIAS
    return observed[:4000], labels[:4000], observed[4000:], labels[4000:]


def test_vector_scaling_removes_a_per_class_bias() -> None:
    fit_logits, fit_labels, _, _ = biased_split()
    scaler = VectorScaler().fit(fit_logits, fit_labels)
    centred = BIAS - BIAS.mean()
    assert torch.allclose(scaler.bias, centred, atol=0.15)
    assert torch.allclose(scaler.weight, torch.ones(4), atol=0.1)
    assert float(scaler.bias.sum()) == pytest.approx(0.0, abs=1e-5)


def test_vector_scaling_beats_temperature_scaling_on_held_out_nll() -> None:
    fit_logits, fit_labels, test_logits, test_labels = biased_split()
    vector = VectorScaler().fit(fit_logits, fit_labels)
    temperature = TemperatureScaler().fit(fit_logits, fit_labels)
    before = nll(test_logits, test_labels)
    assert nll(vector(test_logits), test_labels) < nll(temperature(test_logits), test_labels) - 0.02
    assert nll(vector(test_logits), test_labels) < before - 0.05


def test_forward_is_the_affine_map() -> None:
    fit_logits, fit_labels, test_logits, _ = biased_split()
    scaler = VectorScaler().fit(fit_logits, fit_labels)
    assert torch.allclose(scaler(test_logits), test_logits * scaler.weight + scaler.bias)


def test_num_classes_is_set_by_fit_and_checked() -> None:
    fit_logits, fit_labels, test_logits, _ = biased_split()
    scaler = VectorScaler().fit(fit_logits, fit_labels)
    assert scaler.config()["num_classes"] == 4
    with pytest.raises(ValueError, match="fitted on 4 classes, got logits with 3"):
        scaler(test_logits[:, :3])
    with pytest.raises(ValueError, match="built for 3 classes, got logits with 4"):
        VectorScaler(num_classes=3).fit(fit_logits, fit_labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_classes": 0}, "num_classes must be >= 1, got 0"), ({"max_iter": -2}, "got -2")],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VectorScaler(**kwargs)
