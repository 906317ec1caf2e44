"""AugMix: determinism, shape and range, the operations against PIL, argument errors, datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from nlpcal.data import load_source
from nlpcal.data.augmix import _OPS, AUGMIX_OPS, AugMix, augmix_dataset, list_augmix_ops
from nlpcal.data.image_shift import list_image_corruptions


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    sample = load_source("image:mnist/sample").select(range(32))
    return torch.as_tensor(np.asarray(sample["pixel_values"], dtype=np.float32))


def test_the_same_seed_gives_the_same_images_and_each_call_new_ones(digits) -> None:
    first, again = AugMix(seed=3), AugMix(seed=3)
    a, b = first(digits), again(digits)
    assert torch.equal(a, b)
    assert torch.equal(first(digits), again(digits))  # the second draws agree too
    assert not torch.equal(a, first(digits))  # a fresh augmentation per call
    assert not torch.equal(a, AugMix(seed=4)(digits))
    assert not torch.equal(a, digits)


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (4, 3, 32, 32), (3, 2, 17, 23), (0, 1, 8, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_range_are_kept(shape, dtype) -> None:
    pixels = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    out = AugMix(severity=10, depth=3, seed=0)(pixels)
    assert out.shape == pixels.shape and out.dtype == dtype
    assert out.numel() == 0 or (out.min() >= 0 and out.max() <= 1)


def test_every_operation_keeps_shape_and_range_at_full_strength(digits) -> None:
    n = len(digits)
    for name in list_augmix_ops():
        for sign in (-1.0, 1.0):
            out = _OPS[name](digits, torch.full((n,), 9.99), torch.full((n,), sign))
            assert out.shape == digits.shape, name
            assert out.min() >= 0 and out.max() <= 1, name


def test_the_default_operations_avoid_the_test_corruptions() -> None:
    assert "rotate" in list_augmix_ops() and "rotate" not in AUGMIX_OPS
    assert "rotation" in list_image_corruptions()
    assert not set(AUGMIX_OPS) & set(list_image_corruptions())


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image[0] * 255).round().byte().numpy(), mode="L")


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.as_tensor(np.asarray(image, dtype=np.float32) / 255)[None]


def test_colour_operations_equal_pil(digits) -> None:
    """autocontrast, equalize, posterize and solarize against PIL's ImageOps, as the paper's
    reference code calls them (level 5 of 10: posterize keeps 2 bits, solarize above 128)."""
    images = (digits * 0.6 + 0.2 * torch.rand_like(digits)).mul(255).round().div(255)
    n = len(images)
    level, sign = torch.full((n,), 5.0), torch.ones(n)
    references = {
        "autocontrast": ImageOps.autocontrast,
        "equalize": ImageOps.equalize,
        "posterize": lambda im: ImageOps.posterize(im, 2),
        "solarize": lambda im: ImageOps.solarize(im, 128),
    }
    for name, reference in references.items():
        ours = _OPS[name](images, level, sign)
        expected = torch.stack([_tensor(reference(_pil(image))) for image in images])
        assert (ours - expected).abs().max() <= 1 / 255 + 1e-6, name


def test_geometric_operations_move_the_image_the_right_way() -> None:
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 4] = 1.0  # a dot in the centre
    level = torch.tensor([10.0])  # translate by 3 pixels (a third of 9)
    right = _OPS["translate_x"](image, level, torch.tensor([-1.0]))
    assert torch.nonzero(right[0, 0] > 0.5).tolist() == [[4, 7]]
    down = _OPS["translate_y"](image, level, torch.tensor([-1.0]))
    assert torch.nonzero(down[0, 0] > 0.5).tolist() == [[7, 4]]
    for name in ("shear_x", "shear_y", "rotate"):  # about the centre: the centre stays
        assert _OPS[name](image, level, torch.tensor([1.0]))[0, 0, 4, 4] > 0.5, name


def test_a_chain_that_changes_nothing_returns_the_image(digits) -> None:
    stretched = torch.stack([(d - d.min()) / (d.max() - d.min()) for d in digits])
    out = AugMix(ops=["autocontrast"], width=2, seed=0)(stretched)
    assert torch.allclose(out, stretched, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"severity": 0}, r"severity must be an integer from 1 to 10 .*got 0"),
        ({"severity": 11}, r"severity must be an integer from 1 to 10 .*got 11"),
        ({"severity": 2.5}, r"severity must be an integer from 1 to 10 .*got 2\.5"),
        ({"severity": True}, r"severity must be an integer"),
        ({"width": 0}, r"width \(chains per image\) must be an integer >= 1; got 0"),
        ({"width": "3"}, r"width \(chains per image\) must be an integer >= 1; got '3'"),
        ({"depth": 0}, r"depth \(operations per chain\) must be an integer >= 1, or None"),
        ({"alpha": 0.0}, r"alpha must be a finite number > 0; got 0\.0"),
        ({"alpha": float("nan")}, r"alpha must be a finite number > 0"),
        ({"ops": ["fog"]}, r"ops must be a non-empty list of operations from autocontrast, "),
        ({"ops": []}, r"ops must be a non-empty list"),
        ({"ops": "equalize"}, r"ops must be a non-empty list"),
        ({"seed": -1}, r"seed must be a non-negative integer; got -1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        AugMix(**kwargs)


def test_bad_images_are_named() -> None:
    with pytest.raises(ValueError, match=r"float tensor of images \(N, C, H, W\); got a torch"):
        AugMix()(torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match=r"got a torch\.uint8 tensor of shape \(2, 1, 4, 4\)"):
        AugMix()(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\]; got values in \[0, 255\]"):
        AugMix()(torch.tensor([0.0, 255.0]).view(1, 1, 1, 2))


def test_a_dataset_read_through_augmix_augments_each_batch() -> None:
    data = load_source("image:mnist/sample").select(range(16))
    augmented = augmix_dataset(data, AugMix(seed=0))
    rows = augmented.__getitems__(list(range(8)))  # what a DataLoader reads: one batch
    clean = torch.as_tensor(np.asarray(data[:8]["pixel_values"], dtype=np.float32))
    batch = torch.stack([row["pixel_values"] for row in rows])
    assert batch.shape == clean.shape and not torch.equal(batch, clean)
    assert [row["label"] for row in rows] == data[:8]["label"]
    assert list(augmented["label"]) == data["label"]  # a column on its own: unchanged
    assert torch.equal(batch, AugMix(seed=0)(clean))  # one draw for the whole batch
    assert np.array_equal(np.asarray(data[0]["pixel_values"]), clean[0].numpy())


def test_a_dataset_without_images_is_refused() -> None:
    text = load_source("sample:sst2/test").select(range(4))
    with pytest.raises(ValueError, match=r"needs a 'pixel_values' column; its columns: \["):
        augmix_dataset(text, AugMix())


def test_dataloader_workers_draw_their_own_augmentations() -> None:
    """Each worker reseeds from the loader's worker seed: two workers do not repeat each
    other's draws, and the same loader seed gives the same batches."""
    from torch.utils.data import DataLoader

    pixels = torch.full((8, 1, 6, 6), 0.5)
    pixels[:, :, 2:4, 2:4] = 1.0  # the same image eight times

    def batches(seed: int) -> list[torch.Tensor]:
        augmix = AugMix(seed=0)
        loader = DataLoader(
            pixels,
            batch_size=4,
            num_workers=2,
            collate_fn=lambda rows: augmix(torch.stack(rows)),
            generator=torch.Generator().manual_seed(seed),
        )
        return list(loader)

    first, second = batches(0)
    assert not torch.equal(first, second)  # one batch per worker, different draws
    assert all(torch.equal(a, b) for a, b in zip(batches(0), (first, second), strict=True))
