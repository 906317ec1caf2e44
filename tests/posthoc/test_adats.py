"""AdaTS on a fixture whose miscalibration depends on the input, plus its own argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from nlpcal.functional.metrics import expected_calibration_error
from nlpcal.posthoc.adats import AdaTS
from nlpcal.posthoc.temperature import TemperatureScaler
from tests.posthoc.conftest import nll

K, D = 3, 16
SMALL = {"encoder_hidden": (16, 16, 16), "temperature_hidden": (8, 8), "latent_dim": 4, "epochs": 2}


def two_group_fixture(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features from class evidence plus a group offset; logits miscalibrated per group.

    Group A (85%) sits near the origin and its logits are over-confident by a factor 3; group B
    (15%) is offset by 6 along a fixed direction and its logits are under-confident (factor 0.5).
    Labels come from the calibrated logits ``2 · evidence``. Returns features, logits, labels
    and the group (0 = A, 1 = B).
    """
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(K + 1, D, generator=torch.Generator().manual_seed(123))
    group = (torch.rand(n, generator=g) < 0.15).long()
    evidence = torch.randn(n, K, generator=g)
    factors = torch.cat([evidence, 6.0 * group[:, None].float()], dim=1)
    features = factors @ mixing + 0.1 * torch.randn(n, D, generator=g)
    calibrated = 2.0 * evidence
    labels = torch.multinomial(calibrated.softmax(-1), 1, generator=g).squeeze(1)
    logits = calibrated * torch.where(group == 0, 3.0, 0.5)[:, None]
    return features, logits, labels, group


def test_adats_beats_temperature_scaling_when_miscalibration_depends_on_the_input() -> None:
    fit_f, fit_z, fit_y, _ = two_group_fixture(2000, seed=0)
    test_f, test_z, test_y, test_group = two_group_fixture(2000, seed=1)
    adats = AdaTS(encoder_hidden=(64, 64, 64), epochs=40).fit(fit_z, fit_y, fit_f)
    scaler = TemperatureScaler().fit(fit_z, fit_y)
    adats_z, scaled_z = adats(test_z, test_f), scaler(test_z)
    assert nll(adats_z, test_y) < nll(scaled_z, test_y) - 0.005
    adats_ece = expected_calibration_error(adats_z.softmax(-1), test_y)
    scaled_ece = expected_calibration_error(scaled_z.softmax(-1), test_y)
    assert adats_ece < scaled_ece - 0.005
    temperatures = adats.temperatures(test_f)
    assert temperatures[test_group == 1].mean() < temperatures[test_group == 0].mean() - 0.5


def test_default_adats_fits_a_small_held_out_set_and_lowers_the_nll() -> None:
    fit_f, fit_z, fit_y, _ = two_group_fixture(400, seed=0)  # 85% of it over-confident (×3)
    test_f, test_z, test_y, _ = two_group_fixture(400, seed=1)
    adats = AdaTS().fit(fit_z, fit_y, fit_f)
    assert adats.config() == {**AdaTS().config(), "feature_dim": D, "num_classes": K}
    calibrated = adats(test_z, test_f)
    assert nll(calibrated, test_y) < nll(test_z, test_y) - 0.2
    assert adats.temperatures(test_f).median() > 1.5
    assert torch.equal(calibrated.argmax(1), test_z.argmax(1))


@pytest.mark.parametrize(("batch_size", "n"), [(2, 7), (2, 2), (3, 4), (4, 9), (128, 129)])
def test_no_fit_batch_has_a_single_example(monkeypatch, batch_size: int, n: int) -> None:
    features, logits, labels, _ = two_group_fixture(n, seed=0)
    batches = []
    loss = AdaTS._loss

    def spy(self, x, *args):
        batches.append(x.shape[0])
        return loss(self, x, *args)

    monkeypatch.setattr(AdaTS, "_loss", spy)
    adats = AdaTS(**{**SMALL, "epochs": 1}, batch_size=batch_size).fit(logits, labels, features)
    assert sum(batches) == n and min(batches) >= 2 and max(batches) <= max(batch_size, 3)
    assert bool(torch.isfinite(adats.temperatures(features)).all())


def test_forward_divides_by_the_per_example_temperature() -> None:
    features, logits, labels, _ = two_group_fixture(300, seed=0)
    adats = AdaTS(**SMALL).fit(logits, labels, features)
    temperatures = adats.temperatures(features)
    assert temperatures.shape == (300,)
    assert bool((temperatures >= adats.eps).all())
    assert torch.allclose(adats(logits, features), logits / temperatures[:, None])


def test_fit_leaves_the_global_rng_alone_and_depends_on_the_seed() -> None:
    features, logits, labels, _ = two_group_fixture(300, seed=0)
    state = torch.random.get_rng_state()
    first = AdaTS(**SMALL, seed=0).fit(logits, labels, features)
    assert torch.equal(torch.random.get_rng_state(), state)
    other = AdaTS(**SMALL, seed=1).fit(logits, labels, features)
    assert not torch.equal(first.temperatures(features), other.temperatures(features))


def test_dimensions_are_set_by_fit_and_checked_when_called() -> None:
    features, logits, labels, _ = two_group_fixture(300, seed=0)
    adats = AdaTS(**SMALL)
    assert adats.config()["feature_dim"] is None
    adats.fit(logits, labels, features)
    assert (adats.config()["feature_dim"], adats.config()["num_classes"]) == (D, K)
    with pytest.raises(ValueError, match="needs the penultimate features"):
        adats(logits)
    with pytest.raises(ValueError, match="fitted on 16-d features, got 15-d"):
        adats(logits, features[:, :15])
    with pytest.raises(ValueError, match="features have 299 rows but logits have 300"):
        adats(logits, features[:299])
    with pytest.raises(ValueError, match="built with feature_dim=8, got data with 16"):
        AdaTS(**SMALL, feature_dim=8).fit(logits, labels, features)


def test_fit_needs_features() -> None:
    _, logits, labels, _ = two_group_fixture(300, seed=0)
    with pytest.raises(ValueError, match="needs penultimate features"):
        AdaTS(**SMALL).fit(logits, labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"latent_dim": 0}, "latent_dim must be >= 1, got 0"),
        ({"batch_size": 0}, r"batch_size must be >= 2 .*, got 0"),
        ({"batch_size": 1}, r"batch_size must be >= 2 \(each batch standardises .*\), got 1"),
        ({"feature_dim": 0}, "feature_dim must be >= 1, got 0"),
        (
            {"encoder_hidden": ()},
            r"encoder_hidden must be a non-empty list of positive sizes, got \(\)",
        ),
        ({"temperature_hidden": (8, 0)}, r"temperature_hidden .* got \(8, 0\)"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"eps": -1.0}, "eps must be > 0, got -1.0"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaTS(**kwargs)
