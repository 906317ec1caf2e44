"""Manifold Mixup: mixup of hidden states at a randomly chosen depth of the encoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nlpcal.functional.mixing import mix, mix_attention_masks, mixed_cross_entropy, sample_lambda
from nlpcal.losses._modules import check_layers, eligible_sites, transform_output
from nlpcal.losses.base import CalibrationLoss, LossContext, LossOutput, register_loss


@register_loss("manifold_mixup")
class ManifoldMixupLoss(CalibrationLoss):
    """Cross-entropy against mixed soft targets on a batch mixed at a random hidden layer.

    Per batch, ``k`` is drawn uniformly from the eligible sites, ``λ ~ Beta(α, α)`` and a random
    permutation ``π``; the hidden state after ``k`` encoder layers (``k = 0``: the embeddings
    module's output) becomes ``λ h + (1 − λ) h_π``, and the loss is
    ``λ CE(z̃, y) + (1 − λ) CE(z̃, y_π)``. The mix is a forward hook on the chosen module, removed
    right after the forward pass, also when it raises.

    nlpcal's definition for text: the two sequences are mixed at their common padded length and
    the whole forward pass uses the union of their attention masks, so for ``k ≥ 1`` the layers
    before the mix also attend to the padding positions that are real tokens of the partner
    (at ``k = 0`` nothing precedes the mix). With probability ``1 − mix_prob`` a batch is not mixed
    and gets plain cross-entropy; ``mix_prob=0`` is plain cross-entropy. Whether a batch is mixed
    and the site are drawn from torch's CPU generator (no device synchronisation); ``λ`` and
    ``π`` from the global RNG of the batch's device; all follow ``torch.manual_seed``.

    For an image backbone (:mod:`nlpcal.adapters.timm`) site 0 is the stem's output and site
    ``k`` the output of stage ``k``; images have no mask.

    The returned logits are those of the forward pass that was run: on a mixed batch they are the
    mixed logits (good enough for the trainer's running training metrics, and no second forward
    pass is spent on them). Evaluation must call the model directly, not this loss. The logs are
    ``ce`` (the loss: cross-entropy against the mixed targets, or plain on an unmixed batch),
    ``lambda`` (1 on an unmixed batch) and ``mixed`` (1 or 0), the same keys on every batch.

    References:
        Verma, Lamb, Beckham, Najafi, Mitliagkas, Lopez-Paz & Bengio, "Manifold Mixup: Better
        Representations by Interpolating Hidden States", ICML 2019.

    Args:
        alpha: concentration of the Beta distribution of ``λ`` (``> 0``).
        mix_prob: probability that a batch is mixed, in ``[0, 1]``.
        layers: eligible sites (0 = embeddings output, ``k`` = output of encoder layer ``k``;
            images: 0 = stem, ``k`` = stage ``k``); default ``0..min(2, L − 1)`` for an encoder
            of ``L`` layers.

    >>> from nlpcal.losses import create_loss
    >>> create_loss("manifold_mixup", layers=[0, 1])
    ManifoldMixupLoss(alpha=2.0, mix_prob=1.0, layers=[0, 1])
    """

    strength = "mix_prob"
    deterministic = False
    matches_large_batch = False

    def __init__(
        self, alpha: float = 2.0, mix_prob: float = 1.0, layers: Sequence[int] | None = None
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"mix_prob must lie in [0, 1], got {mix_prob}")
        self.alpha = float(alpha)
        self.mix_prob = float(mix_prob)
        self.layers = check_layers(layers)

    def prepare_model(self, model: nn.Module) -> None:
        super().prepare_model(model)
        eligible_sites(model, self.layers)

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        batch = self.model_inputs(inputs)
        labels = inputs["labels"]
        if not bool(torch.rand(()) < self.mix_prob):
            logits = model(**batch).logits
            ce = F.cross_entropy(logits.float(), labels, reduction="none")
            one = torch.ones((), device=labels.device)
            logs = {"ce": ce.detach().mean(), "lambda": one, "mixed": 0 * one}
            return LossOutput(loss=ctx.reduce(ce), logits=logits, logs=logs)

        sites = eligible_sites(model, self.layers)
        site = sites[int(torch.randint(len(sites), ()))]
        lam = sample_lambda(self.alpha, labels.device)
        perm = torch.randperm(labels.shape[0], device=labels.device)
        if batch.get("attention_mask") is not None:
            batch["attention_mask"] = mix_attention_masks(batch["attention_mask"], perm)
        with transform_output(site, lambda h: mix(h, perm, lam)):
            logits = model(**batch).logits
        mix_ce = mixed_cross_entropy(logits, labels, perm, lam)
        logs = {"ce": mix_ce.detach().mean(), "lambda": lam, "mixed": torch.ones_like(lam)}
        return LossOutput(loss=ctx.reduce(mix_ce), logits=logits, logs=logs)

    def config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "mix_prob": self.mix_prob,
            "layers": None if self.layers is None else list(self.layers),
        }
