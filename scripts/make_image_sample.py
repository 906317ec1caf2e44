"""Regenerate the MNIST sample bundled in ``nlpcal/data/image_samples`` from the shared data.

Usage::

    python scripts/make_image_sample.py --source ../shared/data

600 digits of the MNIST test set (``image/mnist/t10k-*``), 60 per class, drawn with
``numpy.random.default_rng(0)`` and kept in source order, written as gzipped IDX files (the
original format, gzip timestamp 0) so that the files are reproduced byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nlpcal.data.images import read_idx

__all__ = ["OUT_DIR", "PER_CLASS", "main", "make_image_sample"]

OUT_DIR = Path(__file__).resolve().parents[1] / "nlpcal" / "data" / "image_samples"
PER_CLASS = 60
FILES = ("mnist-sample-images-idx3-ubyte.gz", "mnist-sample-labels-idx1-ubyte.gz")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_image_sample(source: str | Path, out: str | Path = OUT_DIR) -> list[Path]:
    """Write the sample's two IDX files into ``out``; returns their paths."""
    folder = Path(source) / "image" / "mnist"
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(0)
    chosen = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False) for c in range(10)]
        )
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, array in zip(FILES, (images[chosen], labels[chosen]), strict=True):
        path = out / name
        path.write_bytes(gzip.compress(_idx_bytes(array), compresslevel=9, mtime=0))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the shared data folder")
    parser.add_argument("--out", default=str(OUT_DIR), help="destination folder")
    args = parser.parse_args(argv)
    make_image_sample(args.source, args.out)


if __name__ == "__main__":
    main()
