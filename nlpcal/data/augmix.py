"""AugMix: a training augmentation of images that mixes chains of simple operations.

After Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and
Uncertainty" (ICLR 2020). Each image is augmented by ``width`` chains of 1 to 3 operations (or
``depth``) drawn from :data:`AUGMIX_OPS`, at a strength drawn up to ``severity``; the chains are
mixed with Dirichlet(``alpha``) weights and the mixture blended with the original image with a
Beta(``alpha``, ``alpha``) weight: ``(1 - m) · x + m · Σ_i w_i · chain_i(x)``. The operations
avoid those of the test corruptions (:mod:`nlpcal.data.image_shift`: noise, blur, contrast,
brightness, rotation, elastic, pixelate); the paper's ``rotate`` is available through ``ops`` but
left out by default, since nlpcal's corruptions include a rotation. The JSD consistency loss of
the paper is not implemented: the augmented image replaces the clean one.

Images are float tensors ``(N, C, H, W)`` in ``[0, 1]``; the operations run on the whole batch
at once (one call per operation and chain step), with the strengths of the paper's reference
code (posterize to 4..0 fewer bits, solarize above ``256 - level``, shear up to 0.3, translate
up to a third of the side, rotate up to 30°, each scaled by a level drawn uniformly in
``[0.1, severity]`` out of 10). nlpcal's geometric operations act about the image centre
(the reference code's PIL ones about the top-left corner), with zeros outside the image.
Random draws come from one ``numpy.random.Generator`` seeded with ``seed``: the same calls give
the same images.

>>> augmix = AugMix(seed=0)
>>> images = torch.rand(4, 1, 28, 28)
>>> mixed = augmix(images)
>>> mixed.shape, bool(mixed.min() >= 0 and mixed.max() <= 1)
(torch.Size([4, 1, 28, 28]), True)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMIX_OPS", "AugMix", "augmix_dataset", "list_augmix_ops"]

# An operation takes the images (n, C, H, W), each one's level in [0, 10] and a sign (±1).
AugOp = Callable[[Tensor, Tensor, Tensor], Tensor]
_OPS: dict[str, AugOp] = {}
_MAX_SEVERITY = 10
_MAX_DEPTH = 3  # the reference code's random depth: 1 to 3 operations per chain


def _register(name: str) -> Callable[[AugOp], AugOp]:
    def decorator(function: AugOp) -> AugOp:
        if name in _OPS:
            raise ValueError(f"AugMix operation {name!r} is already registered")
        _OPS[name] = function
        return function

    return decorator


def list_augmix_ops() -> list[str]:
    """Names of the AugMix operations, sorted (the defaults are :data:`AUGMIX_OPS`).

    >>> list_augmix_ops()[:3]
    ['autocontrast', 'equalize', 'posterize']
    """
    return sorted(_OPS)


class AugMix:
    """AugMix on batches of images (see the module docstring).

    Args:
        severity: the largest strength of an operation, 1 to 10 (the paper's scale; 3 in its
            CIFAR experiments).
        width: chains mixed per image, at least 1 (3 in the paper).
        depth: operations per chain, 1 or more; ``None`` draws 1 to 3 per chain (the paper).
        alpha: the concentration of the Dirichlet mixing weights and of the Beta blend, > 0.
        ops: the operations to draw from (default :data:`AUGMIX_OPS`; see
            :func:`list_augmix_ops`).
        seed: seeds the random draws, a non-negative integer.

    Raises:
        ValueError: naming the argument, for a value outside its range or an unknown operation.

    References:
        Hendrycks, Mu, Cubuk, Zoph, Gilmer, Lakshminarayanan. AugMix: A Simple Data Processing
        Method to Improve Robustness and Uncertainty. ICLR 2020.
    """

    def __init__(
        self,
        severity: int = 3,
        width: int = 3,
        depth: int | None = None,
        alpha: float = 1.0,
        ops: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if not _is_int(severity) or not 1 <= severity <= _MAX_SEVERITY:
            raise ValueError(
                f"AugMix severity must be an integer from 1 to {_MAX_SEVERITY} (the paper's "
                f"scale of operation strength); got {severity!r}"
            )
        if not _is_int(width) or width < 1:
            raise ValueError(
                f"AugMix width (chains per image) must be an integer >= 1; got {width!r}"
            )
        if depth is not None and (not _is_int(depth) or depth < 1):
            raise ValueError(
                "AugMix depth (operations per chain) must be an integer >= 1, or None for 1 to "
                f"{_MAX_DEPTH} drawn per chain; got {depth!r}"
            )
        if (
            not isinstance(alpha, numbers.Real)
            or isinstance(alpha, bool)
            or not math.isfinite(alpha)
            or alpha <= 0
        ):
            raise ValueError(f"AugMix alpha must be a finite number > 0; got {alpha!r}")
        names = AUGMIX_OPS if ops is None else tuple(ops)
        unknown = [name for name in names if name not in _OPS]
        if unknown or not names or isinstance(ops, str):
            raise ValueError(
                f"AugMix ops must be a non-empty list of operations from "
                f"{', '.join(list_augmix_ops())}; got {ops!r}"
            )
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"AugMix seed must be a non-negative integer; got {seed!r}")
        self.severity = int(severity)
        self.width = int(width)
        self.depth = None if depth is None else int(depth)
        self.alpha = float(alpha)
        self.ops = names
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    def __repr__(self) -> str:
        return (
            f"AugMix(severity={self.severity}, width={self.width}, depth={self.depth}, "
            f"alpha={self.alpha}, ops={list(self.ops)}, seed={self.seed})"
        )

    def __call__(self, pixels: Tensor) -> Tensor:
        """The augmented images: same shape and dtype as ``pixels`` ``(N, C, H, W)`` in ``[0, 1]``.

        Raises:
            ValueError: ``pixels`` not a 4-D floating tensor, or values outside ``[0, 1]``.
        """
        _check_pixels(pixels)
        n, k = len(pixels), self.width
        if n == 0:
            return pixels.clone()
        rng = self._generator()
        weights = rng.dirichlet([self.alpha] * k, size=n)  # (n, k)
        blend = rng.beta(self.alpha, self.alpha, size=n)  # (n,)
        steps = self.depth or _MAX_DEPTH
        depth = np.full((n, k), steps) if self.depth else rng.integers(1, _MAX_DEPTH + 1, (n, k))
        ops = rng.integers(len(self.ops), size=(steps, n, k))
        levels = rng.uniform(0.1, self.severity, size=(steps, n, k))
        signs = np.where(rng.random((steps, n, k)) < 0.5, -1.0, 1.0)

        x = pixels.float()
        chains = x.repeat_interleave(k, dim=0)  # (n·k, C, H, W), image-major
        for step in range(steps):
            active = (depth > step).reshape(-1)
            chosen = ops[step].reshape(-1)
            level = torch.as_tensor(levels[step].reshape(-1), dtype=torch.float32)
            sign = torch.as_tensor(signs[step].reshape(-1), dtype=torch.float32)
            for j, name in enumerate(self.ops):
                rows = torch.as_tensor(np.flatnonzero(active & (chosen == j)))
                if len(rows):
                    chains[rows] = _OPS[name](chains[rows], level[rows], sign[rows])
        w = torch.as_tensor(weights, dtype=torch.float32).view(n, k, 1, 1, 1)
        mix = (w * chains.view(n, k, *x.shape[1:])).sum(dim=1)
        m = torch.as_tensor(blend, dtype=torch.float32).view(n, 1, 1, 1)
        return ((1 - m) * x + m * mix).clamp_(0.0, 1.0).to(pixels.dtype)

    def _generator(self) -> np.random.Generator:
        """The generator of this process; in a DataLoader worker, one seeded by ``seed`` and the
        worker's own seed (which the loader draws anew each epoch), so workers, and epochs with
        fresh workers, do not repeat each other's draws."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seed != info.seed:
            self._worker_seed = info.seed
            self.rng = np.random.default_rng([self.seed, info.seed])
        return self.rng

    def transform(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A ``datasets`` transform (:meth:`datasets.Dataset.with_transform`): the batch with
        its ``pixel_values`` augmented as one tensor; other columns, and a batch without
        images (a column read on its own), as they are."""
        out = dict(batch)
        if "pixel_values" in out:
            out["pixel_values"] = self(torch.as_tensor(np.asarray(out["pixel_values"], np.float32)))
        return out


def augmix_dataset(dataset: Any, augmix: AugMix) -> Any:
    """``dataset`` (a ``datasets.Dataset`` with ``pixel_values``) read through ``augmix``:
    every read of its images, e.g. each training batch (one call per batch), draws a fresh
    augmentation; the stored rows are unchanged. Reading a whole column (``data["label"]``)
    runs the transform row by row: read columns from ``dataset`` itself, or
    ``augmented.with_format(None)``. Pass the result as the trainer's ``train_dataset``:

    >>> from nlpcal.data import load_source
    >>> train = augmix_dataset(load_source("image:mnist/sample"), AugMix(seed=0))
    >>> train.__getitems__([0, 1])[0]["pixel_values"].shape
    torch.Size([1, 28, 28])

    Raises:
        ValueError: no ``pixel_values`` column.
    """
    columns = getattr(dataset, "column_names", None) or []
    if "pixel_values" not in columns:
        raise ValueError(
            f"AugMix augments images: the dataset needs a 'pixel_values' column; its columns: "
            f"{columns}"
        )
    return dataset.with_transform(augmix.transform)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_pixels(pixels: Any) -> None:
    if not isinstance(pixels, Tensor) or pixels.ndim != 4 or not pixels.is_floating_point():
        what = (
            f"{pixels.dtype} tensor of shape {tuple(pixels.shape)}"
            if isinstance(pixels, Tensor)
            else type(pixels).__name__
        )
        raise ValueError(f"AugMix takes a float tensor of images (N, C, H, W); got a {what}")
    if pixels.numel() and (pixels.min() < 0 or pixels.max() > 1):
        raise ValueError(
            f"AugMix takes images scaled to [0, 1]; got values in [{float(pixels.min()):.3g}, "
            f"{float(pixels.max()):.3g}]"
        )


def _bytes(x: Tensor) -> Tensor:
    return (x * 255).round().long()


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


@_register("autocontrast")
def _autocontrast(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Stretch each channel to [0, 1] (a constant channel is kept)."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), x)


@_register("equalize")
def _equalize(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Histogram equalisation of each channel over 256 levels, as PIL's ``ImageOps.equalize``."""
    n, c, h, w = x.shape
    q = _bytes(x).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long).scatter_add_(1, q, torch.ones_like(q))
    last = 255 - (hist.flip(1) > 0).long().argmax(dim=1, keepdim=True)  # the highest level used
    step = (h * w - hist.gather(1, last)) // 255
    below = hist.cumsum(1) - hist  # pixels under each level
    lut = ((below + step // 2) // step.clamp_min(1)).clamp_max(255)
    lut = torch.where(step > 0, lut, torch.arange(256).expand_as(lut))  # one level: unchanged
    return (lut.gather(1, q).float() / 255).view(n, c, h, w)


@_register("posterize")
def _posterize(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Keep ``4 - ⌊level · 4 / 10⌋`` bits of each 8-bit value."""
    dropped = 8 - (4 - (level * 4 / _MAX_SEVERITY).long())
    shift = _per_image(dropped)
    return ((_bytes(x) >> shift) << shift).float() / 255


@_register("solarize")
def _solarize(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Invert the values at or above ``256 - ⌊level · 256 / 10⌋`` (out of 255)."""
    threshold = _per_image(256 - (level * 256 / _MAX_SEVERITY).long())
    return torch.where(_bytes(x) >= threshold, 1 - x, x)


def _affine(x: Tensor, linear: Tensor, shift: Tensor) -> Tensor:
    """Sample each output pixel ``p`` (pixels, about the centre) at ``linear @ p + shift``."""
    n, _, h, w = x.shape
    half = torch.tensor([w / 2, h / 2])
    theta = torch.empty(n, 2, 3)
    theta[:, :, :2] = linear * half.view(1, 1, 2) / half.view(1, 2, 1)
    theta[:, :, 2] = shift / half
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _shear(x: Tensor, level: Tensor, sign: Tensor, axis: int) -> Tensor:
    linear = torch.eye(2).repeat(len(x), 1, 1)
    linear[:, axis, 1 - axis] = sign * level * 0.3 / _MAX_SEVERITY
    return _affine(x, linear, torch.zeros(len(x), 2))


def _translate(x: Tensor, level: Tensor, sign: Tensor, axis: int) -> Tensor:
    side = x.shape[3 - axis]  # width for x, height for y
    pixels = (level * (side / 3) / _MAX_SEVERITY).floor()
    shift = torch.zeros(len(x), 2)
    shift[:, axis] = sign * pixels
    return _affine(x, torch.eye(2).repeat(len(x), 1, 1), shift)


@_register("shear_x")
def _shear_x(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Shear along the width by up to 0.3."""
    return _shear(x, level, sign, axis=0)


@_register("shear_y")
def _shear_y(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Shear along the height by up to 0.3."""
    return _shear(x, level, sign, axis=1)


@_register("translate_x")
def _translate_x(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Shift along the width by up to a third of it (whole pixels)."""
    return _translate(x, level, sign, axis=0)


@_register("translate_y")
def _translate_y(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Shift along the height by up to a third of it (whole pixels)."""
    return _translate(x, level, sign, axis=1)


@_register("rotate")
def _rotate(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Rotate by up to 30 degrees (whole degrees); not a default operation (see the module)."""
    angle = torch.deg2rad(sign * (level * 30 / _MAX_SEVERITY).floor())
    cos, sin = torch.cos(angle), torch.sin(angle)
    linear = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return _affine(x, linear, torch.zeros(len(x), 2))


# The default operations: the paper's, without rotate (nlpcal's corruptions include a rotation).
AUGMIX_OPS = (
    "autocontrast",
    "equalize",
    "posterize",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
