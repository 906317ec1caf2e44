"""SLOVA's exponential calibration of one-vs-all confidences."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nlpcal.functional.scaling import fit_confidence_exponent
from nlpcal.posthoc.base import ScalarCalibrator, register_calibrator

__all__ = ["ExponentialCalibrator"]


@register_calibrator("exponential")
class ExponentialCalibrator(ScalarCalibrator):
    """Exponential calibration of SLOVA one-vs-all confidences: ``q_ŷ ↦ q_ŷ^a``.

    nlpcal's definition: the input is the SLOVA log-probabilities ``log q`` — what the ``ova``
    loss's ``transform_logits`` returns, ``ova_log_probabilities(z)`` of the one-vs-all logits
    ``z``, with ``q_k = σ(z_k) Π_{j≠k} (1 − σ(z_j))`` — so it is fed like every other calibrator,
    with the loss's predictive logits. The prediction is ``ŷ = argmax q`` (``= argmax z``) and its
    confidence ``q_ŷ``. One scalar ``a = exp(α) > 0`` is fitted on held-out data by the binary NLL of
    ``q_ŷ^a`` against correctness ``1[ŷ = y]`` (see
    :func:`~nlpcal.functional.scaling.fit_confidence_exponent`); ``a > 1`` lowers the confidence
    of an over-confident model. :meth:`confidence` returns the calibrated, unnormalised
    confidence ``q_ŷ^a`` (an OOD score is ``1 − confidence``).

    Calling the calibrator returns ``a · log q``, the unnormalised log class confidences
    ``log q^a`` (``normalized = False``): ECE, MCE, reliability diagrams, AURC and the default OOD
    score read the confidence ``q_ŷ^a`` that was fitted, Brier and NLL read ``q^a`` renormalised
    over the ``K`` classes (see :mod:`nlpcal.functional.predictive`). The argmax never changes.

    Args:
        max_iter: most L-BFGS iterations.

    References:
        Wójcik et al., "SLOVA: Uncertainty Estimation Using Single Label One-Vs-All Classifier",
        2022.

    >>> from nlpcal.functional.ova import ova_log_probabilities
    >>> g = torch.Generator().manual_seed(0)
    >>> z = 4 * torch.randn(4000, 3, generator=g) - 2
    >>> conf = ova_log_probabilities(z).max(dim=1).values.exp()
    >>> right = torch.rand(4000, generator=g) < conf**2  # over-confident: true accuracy q^2
    >>> y = torch.where(right, z.argmax(1), (z.argmax(1) + 1) % 3)
    >>> calibrator = ExponentialCalibrator().fit(ova_log_probabilities(z), y)
    >>> round(float(calibrator.exponent), 1)
    2.0
    >>> bool((calibrator.confidence(ova_log_probabilities(z)) <= conf).all())
    True
    """

    normalized = False

    @property
    def exponent(self) -> Tensor:
        """The fitted exponent ``a`` (1 before fitting)."""
        return self.value

    def _fit(self, logits: Tensor, labels: Tensor, features: Tensor | None) -> None:
        log_conf, predicted = _check_log_q(logits).max(dim=1)
        exponent = fit_confidence_exponent(log_conf, predicted == labels, max_iter=self.max_iter)
        self.log_value.copy_(exponent.log())

    def forward(self, logits: Any, features: Any | None = None) -> Tensor:
        """``a · log q`` for SLOVA log-probabilities ``log q``: the log of ``q^a``."""
        log_q = _check_log_q(self._check_call_inputs(logits))
        return self.exponent.to(log_q.device) * log_q

    def confidence(self, logits: Any) -> Tensor:
        """Calibrated confidence ``q_ŷ^a`` ``(n,)`` of the predicted class, not renormalised."""
        return self(logits).max(dim=1).values.exp()


def _check_log_q(log_q: Tensor) -> Tensor:
    """SLOVA log-probabilities satisfy ``Σ_k q_k ≤ 1``; raw one-vs-all logits usually do not."""
    excess = float(torch.logsumexp(log_q.double(), dim=1).max())
    if excess > 1e-4:
        raise ValueError(
            "ExponentialCalibrator expects SLOVA log-probabilities log q (Σ_k q_k ≤ 1), got rows "
            f"with log Σ q = {excess:.3g} > 0; pass ova_log_probabilities(one_vs_all_logits)"
        )
    return log_q
