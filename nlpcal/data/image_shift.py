"""Synthetic image shift: pixel-level corruptions at severities 1 to 5, in the spirit of CIFAR-10-C.

After Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019). Images are float arrays ``(C, H, W)`` in ``[0, 1]``; each corruption
is a pure function ``(image, severity, rng) -> image`` whose strength grows with the severity.
The parameters per severity are nlpcal's choices for small images (28 to 32 pixels), listed
below; they are not CIFAR-10-C's. Each example draws its randomness from
``numpy.random.default_rng([seed, index])`` only (the same draws at every severity), so a
corrupted set depends on the clean data, the arguments and each example's position, in every
process, and a higher severity moves every image further from its clean version.

>>> import numpy as np
>>> image = np.full((1, 4, 4), 0.5, dtype=np.float32)
>>> corrupt_image(image, "brightness", severity=2).max()
np.float32(0.7)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

__all__ = [
    "IMAGE_CORRUPTIONS",
    "corrupt_image",
    "corrupt_images",
    "list_image_corruptions",
]

ImageCorruptionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# Strength per severity 1..5.
_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # Gaussian noise, standard deviation
_SHOT_RATE = (60.0, 25.0, 12.0, 5.0, 3.0)  # Poisson photons per unit intensity
_IMPULSE = (0.03, 0.06, 0.09, 0.17, 0.27)  # fraction of pixels set to 0 or 1
_BLUR_STD = (0.5, 0.75, 1.0, 1.5, 2.0)  # Gaussian blur, pixels
_CONTRAST = (0.6, 0.45, 0.3, 0.2, 0.1)  # contrast kept around the mean
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added intensity
_ROTATION = (10.0, 20.0, 30.0, 45.0, 60.0)  # degrees, sign drawn per image
_ELASTIC = (1.0, 2.0, 3.0, 4.0, 5.0)  # largest displacement, pixels
_PIXELATE = (0.75, 0.6, 0.45, 0.33, 0.25)  # side of the coarse grid, fraction of the image

_FUNCTIONS: dict[str, ImageCorruptionFn] = {}
MIXED = "mixed"


def _register(name: str) -> Callable[[ImageCorruptionFn], ImageCorruptionFn]:
    def decorator(function: ImageCorruptionFn) -> ImageCorruptionFn:
        if name in _FUNCTIONS:
            raise ValueError(f"image corruption {name!r} is already registered")
        _FUNCTIONS[name] = function
        return function

    return decorator


def list_image_corruptions() -> list[str]:
    """Names of the image corruptions, sorted (``"mixed"`` draws one of them per image).

    >>> list_image_corruptions()[:3]
    ['brightness', 'contrast', 'elastic']
    """
    return sorted(_FUNCTIONS)


def corrupt_image(
    image: np.ndarray, corruption: str = MIXED, severity: int = 3, seed: int = 0
) -> np.ndarray:
    """Corrupt one image ``(C, H, W)`` in ``[0, 1]``; equals :func:`corrupt_images` on a dataset
    whose first image it is."""
    name = _check(corruption, severity, seed)
    image = _as_image(image)
    rng = np.random.default_rng([seed, 0])
    return _choose(name, rng)(image, severity, rng)


def corrupt_images(
    dataset: Dataset, corruption: str = MIXED, severity: int = 3, seed: int = 0
) -> Dataset:
    """Corrupt the ``pixel_values`` column of every example; labels and other columns unchanged.

    Args:
        dataset: a dataset with a ``pixel_values`` column of ``(C, H, W)`` images in ``[0, 1]``.
        corruption: a name from :func:`list_image_corruptions`, or ``"mixed"`` (one per image,
            drawn uniformly).
        severity: 1 (mild) to 5 (strong); 0 is rejected, use the clean dataset instead.
        seed: non-negative integer.

    Raises:
        ValueError: an unknown corruption (listing the valid ones), a severity outside 1-5, a
            negative seed, or no ``pixel_values`` column.
    """
    name = _check(corruption, severity, seed)
    if "pixel_values" not in dataset.column_names:
        raise ValueError(
            f"the dataset has no 'pixel_values' column; its columns: {dataset.column_names}"
        )
    return dataset.map(
        _corrupt_batch,
        batched=True,
        with_indices=True,
        input_columns=["pixel_values"],
        fn_kwargs={"corruption": name, "severity": severity, "seed": seed},
        features=dataset.features,
        desc=f"corrupting images ({name}, severity {severity})",
    )


def _corrupt_batch(
    pixels: list[Any], indices: list[int], corruption: str, severity: int, seed: int
) -> dict[str, list[np.ndarray]]:
    out = []
    for image, index in zip(pixels, indices, strict=True):
        rng = np.random.default_rng([seed, index])
        out.append(_choose(corruption, rng)(_as_image(image), severity, rng))
    return {"pixel_values": out}


def _choose(name: str, rng: np.random.Generator) -> ImageCorruptionFn:
    if name == MIXED:
        names = list_image_corruptions()
        name = names[rng.integers(len(names))]
    return _FUNCTIONS[name]


def _check(corruption: str, severity: int, seed: int) -> str:
    name = getattr(corruption, "value", corruption)
    if name != MIXED and name not in _FUNCTIONS:
        raise ValueError(
            f"unknown image corruption {corruption!r}; available: "
            f"{', '.join(list_image_corruptions())}, {MIXED}"
        )
    if not _is_int(severity) or not 1 <= severity <= 5:
        raise ValueError(
            f"severity must be an integer from 1 to 5 (0 would be the clean data); got {severity!r}"
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return name


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_image(image: Any) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"an image must have shape (C, H, W), got {array.shape}")
    return array


def _clip(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@_register("gaussian_noise")
def _gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return _clip(image + _NOISE_STD[severity - 1] * rng.standard_normal(image.shape))


@_register("shot_noise")
def _shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    rate = _SHOT_RATE[severity - 1]
    return _clip(rng.poisson(image * rate) / rate)


@_register("impulse_noise")
def _impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(image.shape) < _IMPULSE[severity - 1]
    salt = rng.random(image.shape) < 0.5
    return np.where(hit, salt.astype(np.float32), image).astype(np.float32)


@_register("gaussian_blur")
def _gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    std = _BLUR_STD[severity - 1]
    radius = math.ceil(3 * std)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * std**2))
    kernel = kernel / kernel.sum()
    x = torch.from_numpy(image)[:, None]  # (C, 1, H, W): each channel on its own
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return _clip(x[:, 0].numpy())


@_register("contrast")
def _contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    mean = image.mean(axis=(1, 2), keepdims=True)
    return _clip((image - mean) * _CONTRAST[severity - 1] + mean)


@_register("brightness")
def _brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return _clip(image + _BRIGHTNESS[severity - 1])


def _warp(image: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    x = torch.from_numpy(image)[None]
    out = F.grid_sample(x, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    return _clip(out[0].numpy())


def _identity_grid(height: int, width: int) -> torch.Tensor:
    ys = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)  # (H, W, 2) as (x, y), grid_sample's order


@_register("rotation")
def _rotation(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    angle = math.radians(sign * _ROTATION[severity - 1])
    _, height, width = image.shape
    grid = _identity_grid(height, width)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float32)
    return _warp(image, grid @ rotation.T)


@_register("elastic")
def _elastic(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    _, height, width = image.shape
    field = torch.from_numpy(rng.uniform(-1.0, 1.0, (2, 1, height, width)).astype(np.float32))
    smooth = _gaussian_blur(field[:, 0].numpy() * 0.5 + 0.5, 5, rng) * 2 - 1  # std 2 px
    field = torch.from_numpy(smooth)
    field = field / field.abs().amax().clamp_min(1e-6) * _ELASTIC[severity - 1]
    scale = torch.tensor([2.0 / width, 2.0 / height]).view(2, 1, 1)
    grid = _identity_grid(height, width) + (field * scale).permute(1, 2, 0)
    return _warp(image, grid)


@_register("pixelate")
def _pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    _, height, width = image.shape
    fraction = _PIXELATE[severity - 1]
    size = (max(1, round(height * fraction)), max(1, round(width * fraction)))
    x = torch.from_numpy(image)[None]
    coarse = F.interpolate(x, size=size, mode="area")
    return _clip(F.interpolate(coarse, size=(height, width), mode="nearest")[0].numpy())


IMAGE_CORRUPTIONS = tuple(list_image_corruptions())
