"""Image classification data as ``datasets``: MNIST from the shared data, and a bundled sample.

An image dataset has a ``pixel_values`` column of float32 images ``(C, H, W)`` scaled to
``[0, 1]`` (what :class:`~nlpcal.adapters.timm.TimmForImageClassification` takes and what
:func:`~nlpcal.data.image_shift.corrupt_images` corrupts) and a ``label``
:class:`datasets.ClassLabel`. Source strings (:func:`~nlpcal.data.load_source`):

* ``image:mnist/sample``: 600 MNIST test digits bundled with nlpcal (60 per class);
* ``image:mnist/t10k``: the 10,000 MNIST test digits, read from ``data_dir``
  (``<data_dir>/image/mnist/t10k-{images-idx3,labels-idx1}-ubyte.gz``, the original IDX files);
* ``image:mnist/t10k-fit`` and ``image:mnist/t10k-eval``: two disjoint halves of them (5,000
  each, drawn with ``numpy.random.default_rng(0)``, rows in source order), to train on one and
  evaluate on the other when only the test set is at hand (as in the shared data);
* ``image:mnist/train``: the 60,000 training digits, where ``data_dir`` has them.

>>> sample = load_image_source("image:mnist/sample")
>>> sample.num_rows, sample.features["label"].names[:3], np.asarray(sample[0]["pixel_values"]).shape
(600, ['0', '1', '2'], (1, 28, 28))
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
from datasets import Array3D, ClassLabel, Dataset, Features

__all__ = [
    "IMAGE_PREFIX",
    "image_dataset",
    "is_image_dataset",
    "load_image_source",
    "load_mnist",
    "read_idx",
]

IMAGE_PREFIX = "image:"
MNIST_LABELS = tuple(str(d) for d in range(10))
_SAMPLE_FILES = ("mnist-sample-images-idx3-ubyte.gz", "mnist-sample-labels-idx1-ubyte.gz")
_SPLITS = ("t10k", "train")
_HALVES = ("t10k-fit", "t10k-eval")


def is_image_dataset(dataset: object) -> bool:
    """Whether a dataset holds images (a ``pixel_values`` column)."""
    return "pixel_values" in (getattr(dataset, "column_names", None) or ())


def image_dataset(
    images: np.ndarray, labels: Sequence[int] | np.ndarray, label_names: Sequence[str]
) -> Dataset:
    """A dataset of ``images`` ``(N, C, H, W)`` (uint8 0-255, or floats in ``[0, 1]``) and labels.

    Raises:
        ValueError: images not 4-D, labels of another length or outside the label names.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(
            f"images must have shape (N, C, H, W) with one label each; got {images.shape} and "
            f"{labels.shape[0]} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise ValueError(
            f"labels lie in [{labels.min()}, {labels.max()}] but there are "
            f"{len(label_names)} label names"
        )
    pixels = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
    features = Features(
        {
            "pixel_values": Array3D(shape=tuple(images.shape[1:]), dtype="float32"),
            "label": ClassLabel(names=list(label_names)),
        }
    )
    return Dataset.from_dict(
        {"pixel_values": pixels.astype(np.float32), "label": labels}, features=features
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX array (the MNIST format, optionally gzipped) as a numpy array of unsigned bytes.

    Raises:
        ValueError: naming the file, when it is not an IDX file of unsigned bytes or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: shape {shape} needs {int(np.prod(shape))} bytes")
    return body.reshape(shape)


def load_mnist(data_dir: str | os.PathLike[str], split: str = "t10k") -> Dataset:
    """MNIST ``split`` from ``<data_dir>/image/mnist`` (``t10k`` in the shared data).

    Raises:
        ValueError: an unknown split; FileNotFoundError: the files are missing.
    """
    if split not in _SPLITS:
        raise ValueError(f"MNIST has the splits {', '.join(_SPLITS)}; got {split!r}")
    folder = Path(data_dir) / "image" / "mnist"
    images = folder / f"{split}-images-idx3-ubyte.gz"
    labels = folder / f"{split}-labels-idx1-ubyte.gz"
    missing = [str(p) for p in (images, labels) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"MNIST {split} files not found: {', '.join(missing)}")
    return image_dataset(read_idx(images)[:, None], read_idx(labels), MNIST_LABELS)


def load_image_source(
    source: str,
    data_dir: str | os.PathLike[str] | None = None,
    labels: Sequence[str] | None = None,
) -> Dataset:
    """The image dataset a source string names (see the module docstring).

    ``labels``, when given, must be the dataset's label names in the same order (images carry
    no other label set).

    Raises:
        ValueError: a malformed or unknown source, ``data_dir`` missing, other labels.
    """
    body = source.removeprefix(IMAGE_PREFIX)
    name, _, split = body.partition("/")
    if name != "mnist" or split not in ("sample", *_SPLITS, *_HALVES):
        raise ValueError(
            f"unknown image source {source!r}; available: image:mnist/sample (bundled), "
            "image:mnist/t10k, image:mnist/t10k-fit, image:mnist/t10k-eval and "
            "image:mnist/train (read from data_dir)"
        )
    if split == "sample":
        folder = files("nlpcal.data") / "image_samples"
        with as_file(folder / _SAMPLE_FILES[0]) as images, as_file(folder / _SAMPLE_FILES[1]) as ys:
            dataset = image_dataset(read_idx(images)[:, None], read_idx(ys), MNIST_LABELS)
    elif data_dir is None:
        raise ValueError(f"source {source!r} reads local files: pass data_dir (the shared data)")
    elif split in _HALVES:
        full = load_mnist(data_dir, "t10k")
        order = np.random.default_rng(0).permutation(full.num_rows)
        half = order[: full.num_rows // 2] if split == "t10k-fit" else order[full.num_rows // 2 :]
        dataset = full.select(np.sort(half).tolist())
    else:
        dataset = load_mnist(data_dir, split)
    if labels is not None and list(labels) != list(MNIST_LABELS):
        raise ValueError(
            f"source {source!r} has the labels {list(MNIST_LABELS)}, not {list(labels)}"
        )
    return dataset
