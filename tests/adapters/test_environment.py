"""The environment `make test` builds has the vision extra working: torch, torchvision and timm
import together (a torchvision built for another torch fails here instead of skipping the image
tests), and transformers sees torchvision."""

from __future__ import annotations

import torch


def test_torch_torchvision_and_timm_import_together() -> None:
    import timm
    import torchvision
    from transformers.utils import is_torchvision_available

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # a compiled operator
    assert kept.tolist() == [0]
    assert is_torchvision_available()
    assert timm.create_model("test_resnet", pretrained=False, num_classes=3).num_classes == 3
