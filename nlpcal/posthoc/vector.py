"""Vector scaling: a per-class scale and bias on the logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nlpcal.functional.scaling import fit_vector_scaling
from nlpcal.posthoc.base import Calibrator, register_calibrator

__all__ = ["VectorScaler"]


@register_calibrator("vector")
class VectorScaler(Calibrator):
    """Vector scaling: calibrated logits ``w ⊙ z + b``, with ``w, b ∈ R^K`` fitted by NLL.

    Fitted by :func:`~nlpcal.functional.scaling.fit_vector_scaling` (L-BFGS from ``w = 1``,
    ``b = 0``, plain NLL with no regulariser; the identity is kept if the fit does not improve
    on it). Unlike temperature scaling it can correct a per-class bias, and it can change the
    argmax. Matrix scaling is not offered.

    Args:
        num_classes: ``K``; set by :meth:`fit` when ``None``. Stored in :meth:`config` so that a
            saved scaler is rebuilt with the right shapes.
        max_iter: most L-BFGS iterations.

    References:
        Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(2000, 3, generator=g)
    >>> y = torch.multinomial((z + torch.tensor([1.5, 0.0, 0.0])).softmax(-1), 1, generator=g)
    >>> scaler = VectorScaler().fit(z, y.squeeze(1))
    >>> round(float(scaler.bias[0] - scaler.bias[1]), 1)
    1.5
    """

    def __init__(self, num_classes: int | None = None, max_iter: int = 200) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        super().__init__()
        self.num_classes = num_classes
        self.max_iter = max_iter
        size = 0 if num_classes is None else num_classes
        self.register_buffer("weight", torch.ones(size))
        self.register_buffer("bias", torch.zeros(size))

    def config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "max_iter": self.max_iter}

    def affine(self) -> tuple[Tensor, Tensor]:
        """``(w, b)``: vector scaling is the affine map ``w ⊙ z + b``."""
        return self.weight, self.bias

    def _fit(self, logits: Tensor, labels: Tensor, features: Tensor | None) -> None:
        num_classes = logits.shape[1]
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"VectorScaler was built for {self.num_classes} classes, got logits with {num_classes}"
            )
        weight, bias = fit_vector_scaling(logits, labels, max_iter=self.max_iter)
        self.num_classes = num_classes
        device = self.weight.device
        self.weight = weight.to(device=device, dtype=torch.float32)
        self.bias = bias.to(device=device, dtype=torch.float32)

    def forward(self, logits: Any, features: Any | None = None) -> Tensor:
        """Calibrated logits ``w ⊙ z + b`` on the logits' device; ``features`` are ignored."""
        logits = self._check_call_inputs(logits)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"VectorScaler was fitted on {self.num_classes} classes, got logits with "
                f"{logits.shape[1]}"
            )
        weight = self.weight.to(device=logits.device, dtype=logits.dtype)
        bias = self.bias.to(device=logits.device, dtype=logits.dtype)
        return logits * weight + bias
