"""CME: calibration with model explanations (a confidence-ranking penalty on explanations)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from nlpcal.explain.base import attention_mask_of, create_attribution
from nlpcal.functional.pairwise import correct_wrong_penalty, explanation_scores
from nlpcal.losses.base import CalibrationLoss, LossContext, LossOutput, create_loss, register_loss

__all__ = ["BASES", "CMELoss"]

#: Losses CME may add its penalty to: single-forward, deterministic losses on the model's own
#: logits (their softmax is the prediction), whose batch loss is a sum of per-example terms.
BASES = ("cross_entropy", "label_smoothing")


@register_loss("cme")
class CMELoss(CalibrationLoss):
    """``base + λ·w·Σ_{i correct} Σ_{j wrong} max(0, s_j − s_i)²``, ``s_i = ‖softmax(|a_i|)‖₂ · c_i``.

    Each example's token attribution ``a_i`` (padding masked out) is turned into a distribution
    over its tokens; its norm is high when a few tokens explain the prediction. Times the
    differentiable top-label confidence ``c_i`` it gives the score ``s_i``, and every pair of a
    correctly predicted ``i`` and a wrongly predicted ``j`` of the batch whose scores are in the
    wrong order is penalised. The penalty is 0 when the batch has no correct or no wrong
    prediction. Nothing changes at inference.

    The attribution is that of the base loss: for ``attention_gradient`` (the paper's, the
    default) the attention of the last layer from the first token times the gradient of the
    summed base loss with respect to it, read from the step's own forward pass (run with eager
    attention). The captum methods (``saliency``, ``input_x_gradient``, ``integrated_gradients``)
    explain the log-likelihood of the label on the input embeddings with extra passes.

    The attribution is a constant in the backward pass, so the penalty's gradient reaches the
    model through the confidences only. The authors' code keeps the attention factor of the
    attention-gradient attribution differentiable (only the gradient factor is constant);
    ``through_attention=True`` reproduces that.

    Pairs are formed within each micro-batch, and the penalty of a micro-batch of ``B`` examples
    is weighted by ``B / N`` for an accumulated batch of ``N`` (:meth:`LossContext.batch_weight`),
    so with ``N = B`` the loss is exactly ``mean base loss + λ R`` as in the paper. Gradient
    accumulation therefore sums the micro-batches' penalties instead of ranking pairs across
    them; it reproduces one large batch only in its base loss.

    References:
        Li, Hu & Chen, "Calibration Meets Explanation: A Simple and Effective Approach for Model
        Confidence Estimates", EMNLP 2022.

    Args:
        lam: weight ``λ`` of the penalty (``≥ 0``); 0 is the base loss alone.
        method: a registered attribution method (:func:`nlpcal.explain.list_attributions`).
        method_kwargs: its hyper-parameters, e.g. ``{"n_steps": 4}`` for integrated gradients.
        base: the loss the penalty is added to, one of :data:`BASES`.
        base_kwargs: its hyper-parameters, e.g. ``{"alpha": 0.1}`` for label smoothing.
        through_attention: let the penalty's gradient flow through the attention factor of the
            ``attention_gradient`` attribution, as the authors' code does.

    >>> from nlpcal.losses import create_loss
    >>> create_loss("cme", base="label_smoothing", base_kwargs={"alpha": 0.05})
    CMELoss(lam=1.0, method='attention_gradient', method_kwargs={}, base='label_smoothing', \
base_kwargs={'alpha': 0.05}, through_attention=False)
    """

    strength = "lam"
    matches_large_batch = False

    def __init__(
        self,
        lam: float = 1.0,
        method: str = "attention_gradient",
        method_kwargs: Mapping[str, Any] | None = None,
        base: str = "cross_entropy",
        base_kwargs: Mapping[str, Any] | None = None,
        through_attention: bool = False,
    ) -> None:
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if base not in BASES:
            raise ValueError(f"base must be one of {list(BASES)}, got {base!r}")
        if through_attention and method != "attention_gradient":
            raise ValueError(
                "through_attention=True only applies to method='attention_gradient', "
                f"got method={method!r}"
            )
        self.lam = float(lam)
        self.method_kwargs = dict(method_kwargs or {})
        self.base_kwargs = dict(base_kwargs or {})
        self.attribution = create_attribution(method, **self.method_kwargs)
        self.base = create_loss(base, **self.base_kwargs)
        self.through_attention = bool(through_attention)

    def prepare_model(self, model: nn.Module) -> None:
        self.base.prepare_model(model)
        self.attribution.check_model(model)

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        if self.lam == 0:
            return self.base.compute(model, inputs, ctx)
        labels = inputs["labels"]
        n = labels.shape[0]
        batch = self.model_inputs(inputs)
        mask = attention_mask_of(batch)
        # The base loss summed over the micro-batch: its gradient per example is that example's.
        summed = LossContext(num_items_in_batch=1, progress=ctx.progress, trainer=ctx.trainer)
        with self.attribution.recording(model) as recorded:
            out = self.base.compute(model, inputs, summed)
        attribution = self.attribution.attribute(model, batch, labels, out.loss, recorded)
        if not self.through_attention:
            attribution = attribution.detach()

        confidence, prediction = out.logits.float().softmax(dim=-1).max(dim=-1)
        scores = explanation_scores(attribution, confidence, mask)
        correct = prediction == labels
        penalty = correct_wrong_penalty(scores, correct)
        weight = ctx.batch_weight(n)
        loss = out.loss * (weight / n) + self.lam * weight * penalty
        logs = {
            **out.logs,
            "cme_penalty": penalty.detach(),
            "cme_score_correct": _mean_where(scores.detach(), correct),
            "cme_score_wrong": _mean_where(scores.detach(), ~correct),
        }
        return LossOutput(loss=loss, logits=out.logits, logs=logs)

    def config(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "method": self.attribution.name,
            "method_kwargs": dict(self.method_kwargs),
            "base": self.base.name,
            "base_kwargs": dict(self.base_kwargs),
            "through_attention": self.through_attention,
        }


def _mean_where(values: Tensor, where: Tensor) -> Tensor:
    """Mean of ``values`` over ``where`` (0 when empty), without a host synchronisation."""
    count = where.sum()
    return (values * where).sum() / count.clamp(min=1)
