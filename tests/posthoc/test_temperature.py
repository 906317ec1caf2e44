"""Temperature scaling on logits of known miscalibration."""

from __future__ import annotations

import pytest
import torch

from nlpcal.functional.scaling import grid_search_temperature, temperature_nll
from nlpcal.posthoc.temperature import TemperatureScaler
from tests.posthoc.conftest import calibrated_logits, nll


def test_over_confident_model_gets_a_temperature_above_one() -> None:
    logits, labels = calibrated_logits(4000)
    scaler = TemperatureScaler().fit(2.5 * logits, labels)
    assert float(scaler.temperature) > 1.5


def test_under_confident_model_gets_a_temperature_below_one() -> None:
    logits, labels = calibrated_logits(4000)
    scaler = TemperatureScaler().fit(0.4 * logits, labels)
    assert float(scaler.temperature) < 0.7


@pytest.mark.parametrize("true_t", [0.3, 1.0, 3.0, 8.0])
def test_recovers_a_known_temperature(true_t: float) -> None:
    logits, labels = calibrated_logits(20000, seed=1)
    scaler = TemperatureScaler().fit(true_t * logits, labels)
    assert float(scaler.temperature) == pytest.approx(true_t, rel=0.04)


def test_calibrated_logits_are_the_logits_divided_by_t() -> None:
    logits, labels = calibrated_logits(500)
    scaler = TemperatureScaler().fit(3 * logits, labels)
    assert torch.equal(scaler(3 * logits), 3 * logits / scaler.temperature)
    assert torch.allclose(scaler.log_value.exp(), scaler.temperature)


def test_nll_improves_on_held_out_data_and_is_no_worse_than_the_grid() -> None:
    logits, labels = calibrated_logits(6000, seed=2)
    fit_logits, fit_labels = 3 * logits[:3000], labels[:3000]
    test_logits, test_labels = 3 * logits[3000:], labels[3000:]
    scaler = TemperatureScaler().fit(fit_logits, fit_labels)
    assert nll(scaler(test_logits), test_labels) < nll(test_logits, test_labels) - 0.05
    grid_t = grid_search_temperature(fit_logits, fit_labels)
    fitted = temperature_nll(fit_logits, fit_labels, scaler.temperature)
    assert float(fitted) <= float(temperature_nll(fit_logits, fit_labels, grid_t)) + 1e-12


def test_temperature_is_one_before_fitting_and_the_buffer_is_not_a_parameter() -> None:
    scaler = TemperatureScaler()
    assert float(scaler.temperature) == 1.0
    assert list(scaler.parameters()) == []
    assert set(scaler.state_dict()) == {"fitted", "log_value"}


def test_rejects_bad_max_iter() -> None:
    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        TemperatureScaler(max_iter=0)
