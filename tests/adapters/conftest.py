"""Tiny timm image classifiers (``pretrained=False``) and image batches."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

NUM_LABELS = 3


def tiny_image_model(arch: str = "test_resnet", num_labels: int = NUM_LABELS, seed: int = 0):
    """A randomly initialised tiny timm classifier for 1x28x28 images (ViT: 3x32x32)."""
    from nlpcal.adapters.timm import create_timm_classifier

    torch.manual_seed(seed)
    if arch == "test_vit":
        return create_timm_classifier(arch, num_labels, img_size=32).eval()
    return create_timm_classifier(arch, num_labels, num_channels=1, image_size=(28, 28)).eval()


def tiny_image_batch(arch: str = "test_resnet", batch_size: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape = (3, 32, 32) if arch == "test_vit" else (1, 28, 28)
    return {
        "pixel_values": torch.rand(batch_size, *shape, generator=g),
        "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=g),
    }


@pytest.fixture(params=["test_resnet", "test_efficientnet", "test_vit"])
def image_arch(request) -> str:
    return request.param
