"""SLOVA: a one-vs-all head whose probabilities can all be low on out-of-distribution inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpcal.functional.ova import ova_log_probabilities, ova_loss
from nlpcal.losses._modules import classifier_layer, num_labels
from nlpcal.losses.base import CalibrationLoss, LossContext, LossOutput, register_loss


@register_loss("ova")
class OneVsAllLoss(CalibrationLoss):
    """One-vs-all training: ``−log s_y − Σ_{k≠y} log(1 − s_k)`` with ``s_k = σ(z_k)``.

    nlpcal's definition (the paper's internals beyond the confirmed idea): the SLOVA probability is
    ``q_k = s_k · Π_{j≠k} (1 − s_j)``; the prediction is ``argmax s`` (the same as ``argmax q``) and
    the confidence ``q_ŷ``. :meth:`transform_logits` returns ``log q``, unnormalised
    (``normalized = False``): the confidence that ECE, reliability diagrams, AURC and the default
    OOD score read is ``q_ŷ = max_k q_k`` itself (``1 −`` SLOVA's OOD score, low when no class
    fires), while Brier and NLL read ``q`` renormalised over the ``K`` classes (see
    :mod:`nlpcal.functional.predictive`). :meth:`prepare_model` sets the classifier bias to ``−log(K − 1)`` so that
    ``σ(z) ≈ 1/K`` at the start. The post-hoc step is the exponential calibration ``q_ŷ^a``
    (``default_calibrator = "exponential"``). There is no strength knob: no setting of this loss
    is cross-entropy.

    References:
        Wójcik, Grela, Śmieja, Misztal & Tabor, "SLOVA: Uncertainty Estimation Using Single Label
        One-Vs-All Classifier", arXiv:2206.13923, 2022.

    >>> from nlpcal.losses import create_loss
    >>> loss = create_loss("ova")
    >>> loss.transform_logits(torch.tensor([[0.0, 0.0]])).exp()
    tensor([[0.2500, 0.2500]])
    """

    default_calibrator = "exponential"
    normalized = False

    def prepare_model(self, model: nn.Module) -> None:
        super().prepare_model(model)
        k = num_labels(model)
        if k < 2:
            raise ValueError(f"the one-vs-all loss needs at least 2 classes, got num_labels={k}")
        classifier = classifier_layer(model)
        if classifier.bias is None:
            raise ValueError("the one-vs-all loss initialises the classifier bias, but it has none")
        if self.trained_with(model):
            return
        with torch.no_grad():
            classifier.bias.fill_(-math.log(k - 1))

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        logits = model(**self.model_inputs(inputs)).logits
        per_example = ova_loss(logits.float(), inputs["labels"])
        with torch.no_grad():
            ce = F.cross_entropy(ova_log_probabilities(logits.float()), inputs["labels"])
        logs = {"ova": per_example.detach().mean(), "ce": ce}
        return LossOutput(loss=ctx.reduce(per_example), logits=logits, logs=logs)

    def transform_logits(self, logits: Tensor, model: nn.Module | None = None) -> Tensor:
        """``log q``: its softmax is the SLOVA probability renormalised over the classes."""
        return ova_log_probabilities(logits.float())
