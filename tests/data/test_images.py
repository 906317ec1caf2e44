"""Image data: MNIST loading, the bundled sample, corruptions (determinism, severity order, errors)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from nlpcal.data import corrupt_dataset, load_source
from nlpcal.data.image_shift import corrupt_image, corrupt_images, list_image_corruptions


@pytest.fixture(scope="module")
def sample():
    return load_source("image:mnist/sample").select(range(64))


def _distance(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.sqrt(((a - b) ** 2).sum(axis=(1, 2, 3))).mean())


def test_the_bundled_sample() -> None:
    data = load_source("image:mnist/sample")
    assert data.num_rows == 600
    assert np.bincount(data["label"]).tolist() == [60] * 10
    pixels = np.asarray(data["pixel_values"][:5])
    assert pixels.shape == (5, 1, 28, 28) and data.features["pixel_values"].dtype == "float32"
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_mnist_from_the_shared_data(shared_data) -> None:
    full = load_source("image:mnist/t10k", data_dir=shared_data)
    assert full.num_rows == 10_000 and full.features["label"].names == [str(d) for d in range(10)]
    fit = load_source("image:mnist/t10k-fit", data_dir=shared_data)
    held = load_source("image:mnist/t10k-eval", data_dir=shared_data)
    assert fit.num_rows == held.num_rows == 5_000
    fit_digits = {np.asarray(p, dtype=np.float32).tobytes() for p in fit["pixel_values"][:200]}
    assert not fit_digits & {
        np.asarray(p, dtype=np.float32).tobytes() for p in held["pixel_values"]
    }


def test_make_image_sample_reproduces_the_bundled_files(shared_data, tmp_path) -> None:
    path = Path(__file__).resolve().parents[2] / "scripts" / "make_image_sample.py"
    spec = importlib.util.spec_from_file_location("make_image_sample", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_image_sample"] = module
    spec.loader.exec_module(module)
    for written in module.make_image_sample(shared_data, tmp_path):
        assert written.read_bytes() == (module.OUT_DIR / written.name).read_bytes(), written.name


def test_bad_sources_are_named() -> None:
    with pytest.raises(ValueError, match="unknown image source 'image:cifar/test'; available"):
        load_source("image:cifar/test")
    with pytest.raises(ValueError, match="pass data_dir"):
        load_source("image:mnist/t10k")
    with pytest.raises(ValueError, match="holds images; it has no text task"):
        load_source("image:mnist/sample", "sentiment")


@pytest.mark.parametrize("name", list_image_corruptions())
def test_distance_rises_strictly_with_severity(sample, name) -> None:
    clean = sample["pixel_values"]
    distances = [
        _distance(corrupt_images(sample, name, severity, seed=0)["pixel_values"], clean)
        for severity in range(1, 6)
    ]
    assert all(b > a for a, b in itertools.pairwise(distances)), distances


@pytest.mark.parametrize("name", [*list_image_corruptions(), "mixed"])
def test_corruptions_are_deterministic_under_a_seed(sample, name) -> None:
    subset = sample.select(range(8))
    first = np.asarray(corrupt_dataset(subset, name, 4, seed=3)["pixel_values"])
    again = np.asarray(corrupt_dataset(subset, name, 4, seed=3)["pixel_values"])
    assert np.array_equal(first, again)
    assert corrupt_dataset(subset, name, 4, seed=3)["label"] == subset["label"]
    one = corrupt_image(np.asarray(subset[0]["pixel_values"]), name, 4, seed=3)
    assert np.array_equal(one, first[0])
    assert first.min() >= 0.0 and first.max() <= 1.0


def test_seeds_differ_for_random_corruptions(sample) -> None:
    subset = sample.select(range(4))
    a = np.asarray(corrupt_images(subset, "gaussian_noise", 2, seed=0)["pixel_values"])
    b = np.asarray(corrupt_images(subset, "gaussian_noise", 2, seed=1)["pixel_values"])
    assert not np.array_equal(a, b)


def test_bad_corruptions_are_named(sample) -> None:
    with pytest.raises(
        ValueError, match=r"unknown image corruption 'fog'; available: brightness, .*mixed"
    ):
        corrupt_images(sample, "fog", 3)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
            corrupt_images(sample, "contrast", severity)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        corrupt_images(sample, "contrast", 1, seed=-1)
    with pytest.raises(ValueError, match="no 'pixel_values' column"):
        corrupt_images(sample.rename_column("pixel_values", "x"), "contrast", 1)
