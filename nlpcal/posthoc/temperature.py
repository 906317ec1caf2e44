"""Temperature scaling: one positive scalar ``T`` divides every logit."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nlpcal.functional.scaling import fit_temperature
from nlpcal.posthoc.base import ScalarCalibrator, register_calibrator

__all__ = ["TemperatureScaler"]


@register_calibrator("temperature")
class TemperatureScaler(ScalarCalibrator):
    """Temperature scaling: calibrated logits ``z / T`` with one ``T > 0`` fitted by NLL.

    ``T`` is stored as ``log_value`` (a buffer, so it is in ``state_dict`` but not in
    ``parameters()``) and fitted by :func:`~nlpcal.functional.scaling.fit_temperature`: L-BFGS on
    ``log T`` from ``T = 1``, a golden-section fallback, and a final check that guarantees an NLL
    no worse than the grid search of Desai & Durrett (2020). ``T > 1`` softens an over-confident
    model; the argmax never changes.

    Args:
        max_iter: most L-BFGS iterations.

    References:
        Guo et al., "On Calibration of Modern Neural Networks", ICML 2017. Desai & Durrett,
        "Calibration of Pre-trained Transformers", EMNLP 2020.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> z = 2 * torch.randn(5000, 4, generator=g)
    >>> y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    >>> scaler = TemperatureScaler().fit(3 * z, y)
    >>> round(float(scaler.temperature), 2)
    3.07
    >>> torch.allclose(scaler(3 * z), 3 * z / scaler.temperature)
    True
    """

    @property
    def temperature(self) -> Tensor:
        """The fitted temperature ``T`` (1 before fitting)."""
        return self.value

    def affine(self) -> tuple[Tensor, Tensor]:
        """``(1 / T, 0)``: temperature scaling is the affine map ``z / T``."""
        return 1.0 / self.temperature, torch.zeros(())

    def _fit(self, logits: Tensor, labels: Tensor, features: Tensor | None) -> None:
        temperature = fit_temperature(logits, labels, max_iter=self.max_iter)
        self.log_value.copy_(temperature.log())

    def forward(self, logits: Any, features: Any | None = None) -> Tensor:
        """Calibrated logits ``logits / T`` on the logits' device; ``features`` are ignored."""
        logits = self._check_call_inputs(logits)
        return logits / self.temperature.to(logits.device)
