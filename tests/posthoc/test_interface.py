"""One battery over every registered post-hoc calibrator: the contract of ``Calibrator``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import nlpcal.posthoc.base as base
from nlpcal.functional.ova import ova_log_probabilities
from nlpcal.posthoc.base import Calibrator, create_calibrator, list_calibrators, load_calibrator

NAMES = list_calibrators()
# Small networks and few epochs keep the battery fast; other calibrators use their defaults.
FAST_KWARGS: dict[str, dict[str, Any]] = {
    "adats": {
        "latent_dim": 4,
        "encoder_hidden": (16, 16, 16),
        "temperature_hidden": (8, 8),
        "epochs": 2,
        "batch_size": 32,
    },
}
PRESERVES_ARGMAX = {"temperature", "adats", "exponential"}
N, K, D = 96, 3, 6


def make(name: str, **overrides: Any) -> Calibrator:
    return create_calibrator(name, **{**FAST_KWARGS.get(name, {}), **overrides})


def data(n: int = N, seed: int = 0, name: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, labels and features; the exponential calibrator gets SLOVA log-probabilities."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, D, generator=g)
    logits = 3 * features[:, :K] + 0.5 * torch.randn(n, K, generator=g)
    labels = torch.multinomial((features[:, :K]).softmax(-1), 1, generator=g).squeeze(1)
    if name == "exponential":
        logits = ova_log_probabilities(logits)
    return logits, labels, features


def fitted(name: str, **overrides: Any) -> tuple[Calibrator, Tensor, Tensor | None]:
    logits, labels, features = data(name=name)
    calibrator = make(name, **overrides)
    features = features if calibrator.requires_features else None
    return calibrator.fit(logits, labels, features), logits, features


def test_builtins_are_registered() -> None:
    assert {"temperature", "vector", "adats", "exponential"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_marks_fitted(name: str) -> None:
    logits, labels, features = data(name=name)
    calibrator = make(name)
    assert not bool(calibrator.fitted)
    out = calibrator.fit(logits, labels, features if calibrator.requires_features else None)
    assert out is calibrator
    assert bool(calibrator.fitted)


@pytest.mark.parametrize("name", NAMES)
def test_calling_before_fit_raises(name: str) -> None:
    logits, _, features = data(name=name)
    with pytest.raises(RuntimeError, match="not fitted"):
        make(name)(logits, features)


@pytest.mark.parametrize("name", NAMES)
def test_output_is_finite_logits_of_the_input_shape(name: str) -> None:
    calibrator, logits, features = fitted(name)
    out = calibrator(logits, features)
    assert out.shape == logits.shape
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    assert not out.requires_grad


@pytest.mark.parametrize("name", sorted(PRESERVES_ARGMAX & set(NAMES)))
def test_argmax_is_unchanged(name: str) -> None:
    calibrator, _, _ = fitted(name)
    test_logits, _, test_features = data(seed=1, name=name)
    features = test_features if calibrator.requires_features else None
    assert torch.equal(calibrator(test_logits, features).argmax(1), test_logits.argmax(1))


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    calibrator, logits, features = fitted(name)
    calibrator.save(tmp_path)
    loaded = load_calibrator(tmp_path)
    assert type(loaded) is type(calibrator)
    assert loaded.config() == calibrator.config()
    assert torch.equal(loaded(logits, features), calibrator(logits, features))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_loads_into_a_calibrator_built_from_config(name: str) -> None:
    calibrator, logits, features = fitted(name)
    config = json.loads(json.dumps(calibrator.config()))
    rebuilt = create_calibrator(name, **config)
    rebuilt.load_state_dict(calibrator.state_dict())
    assert bool(rebuilt.fitted)
    assert torch.equal(rebuilt(logits, features), calibrator(logits, features))


@pytest.mark.parametrize("name", NAMES)
def test_fitting_is_deterministic(name: str) -> None:
    first, logits, features = fitted(name)
    second, _, _ = fitted(name)
    assert torch.equal(first(logits, features), second(logits, features))


@pytest.mark.parametrize("name", NAMES)
def test_refuses_fewer_than_two_examples(name: str) -> None:
    logits, labels, features = data(name=name)
    with pytest.raises(ValueError, match="at least 2"):
        make(name).fit(logits[:1], labels[:1], features[:1])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_refuses_non_finite_logits(name: str, bad: float) -> None:
    logits, labels, features = data(name=name)
    logits[3, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        make(name).fit(logits, labels, features)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad_label", [K, -1])
def test_refuses_labels_out_of_range(name: str, bad_label: int) -> None:
    logits, labels, features = data(name=name)
    labels[5] = bad_label
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        make(name).fit(logits, labels, features)


@pytest.mark.parametrize("name", NAMES)
def test_refuses_non_finite_logits_when_called(name: str) -> None:
    calibrator, logits, features = fitted(name)
    logits = logits.clone()
    logits[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        calibrator(logits, features)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_input_gives_the_same_result_as_tensors(name: str) -> None:
    calibrator, logits, features = fitted(name)
    logits_np, labels_np, features_np = (t.numpy() for t in data(name=name))
    from_numpy = make(name).fit(
        logits_np, labels_np, features_np if calibrator.requires_features else None
    )
    np_features = features.numpy() if features is not None else None
    out = from_numpy(logits.numpy(), np_features)
    assert isinstance(out, Tensor)
    assert torch.equal(out, calibrator(logits, features))


@pytest.mark.parametrize("name", NAMES)
def test_float16_input_is_upcast(name: str) -> None:
    logits, labels, features = (t.half() if t.is_floating_point() else t for t in data(name=name))
    calibrator = make(name)
    features = features if calibrator.requires_features else None
    calibrator.fit(logits, labels, features)
    out = calibrator(logits, features)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    reference = make(name).fit(
        logits.float(), labels, None if features is None else features.float()
    )
    assert torch.equal(
        out, reference(logits.float(), None if features is None else features.float())
    )


@pytest.mark.parametrize("name", NAMES)
def test_float64_input_stays_float64(name: str) -> None:
    calibrator, logits, features = fitted(name)
    features64 = None if features is None else features.double()
    out = calibrator(logits.double(), features64)
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), calibrator(logits, features), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_failed_weights_write_keeps_the_previous_copy(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, logits, features = fitted(name)
    old.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save_file(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    new = make(name).fit(*data(seed=2, name=name)[:2], features)
    monkeypatch.setattr(base, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    assert torch.equal(load_calibrator(tmp_path)(logits, features), old(logits, features))


@pytest.mark.parametrize("name", NAMES)
def test_unserialisable_config_keeps_the_previous_copy(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, _, features = fitted(name)
    old.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    new = make(name).fit(*data(seed=2, name=name)[:2], features)
    monkeypatch.setattr(new, "config", lambda: {"not_json": object()})
    with pytest.raises(TypeError):
        new.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_fits_and_runs_on_the_device_of_the_logits(name: str) -> None:
    logits, labels, _ = data(name=name)
    cpu_calibrator, _, cpu_features = fitted(name)
    gpu_features = None if cpu_features is None else cpu_features.cuda()
    gpu_calibrator = make(name).fit(logits.cuda(), labels.cuda(), gpu_features)
    out = gpu_calibrator(logits.cuda(), gpu_features)
    assert out.device.type == "cuda"
    if name != "adats":  # AdaTS draws its noise from a CUDA generator: another stream
        assert torch.allclose(out.cpu(), cpu_calibrator(logits, cpu_features), rtol=1e-4, atol=1e-4)
    # A calibrator on one device accepts logits on another and answers on the logits' device.
    assert gpu_calibrator(logits, cpu_features).device.type == "cpu"
    assert cpu_calibrator(logits.cuda(), gpu_features).device.type == "cuda"


@pytest.mark.parametrize("name", NAMES)
def test_affine_form_reproduces_the_calibrated_logits(name):
    logits, labels, features = data(name=name)
    calibrator = make(name).fit(logits, labels, features)
    form = calibrator.affine()
    if name in ("temperature", "vector"):
        scale, shift = form
        torch.testing.assert_close(calibrator(logits, features), scale * logits + shift)
    else:
        assert form is None  # sample-dependent (adats) or on SLOVA log-probabilities
