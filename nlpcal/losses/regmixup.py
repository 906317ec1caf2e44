"""RegMixup: cross-entropy on the clean batch plus a mixup term used as a regulariser."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpcal.functional.mixing import mix, mix_attention_masks, mixed_cross_entropy, sample_lambda
from nlpcal.losses._modules import check_layers, eligible_sites, transform_output
from nlpcal.losses.base import CalibrationLoss, LossContext, LossOutput, register_loss
from nlpcal.losses.sites import model_sites


class MixSite(str, Enum):
    """Where RegMixup mixes two sequences."""

    EMBEDDINGS = "embeddings"
    HIDDEN = "hidden"


@register_loss("regmixup")
class RegMixupLoss(CalibrationLoss):
    """``CE(x, y) + η·[λ CE(x̃, y) + (1 − λ) CE(x̃, y_π)]`` with ``x̃ = λ x + (1 − λ) x_π``.

    One ``λ ~ Beta(α, α)`` and one random permutation ``π`` are drawn per batch from torch's global
    RNG on the batch's device. The clean and the mixed batch run as one forward pass over ``2B``
    sequences, and the returned logits are the clean half, so they are exactly the model's logits
    on the batch. ``eta=0`` skips the mixed half and is plain cross-entropy.

    For text, ``mix_site="embeddings"`` (the default) mixes the token embeddings
    (``get_input_embeddings()(input_ids)``, fed as ``inputs_embeds``) of the two sequences at their
    common padded length; the model then adds its position and token-type embeddings, keeping
    ``token_type_ids`` of ``x``. The mixed sequence attends to the union of the two attention masks.
    For images (:mod:`nlpcal.adapters.timm`) the "embeddings" site is the pixels, and
    ``mix_site="hidden"`` mixes the output of a backbone stage.
    ``mix_site="hidden"`` mixes the hidden states after a layer drawn uniformly from ``layers``, the
    Manifold Mixup mechanism (see :class:`~nlpcal.losses.manifold_mixup.ManifoldMixupLoss`).

    References:
        Pinto, Yang, Lim, Torr & Dokania, "Using Mixup as a Regularizer Can Surprisingly Improve
        Accuracy & Out-of-Distribution Robustness", NeurIPS 2022.

    Args:
        alpha: concentration of the Beta distribution of ``λ`` (``> 0``); the paper's 20 keeps
            ``λ`` near 0.5.
        eta: weight of the mixup term (``≥ 0``).
        mix_site: ``"embeddings"`` or ``"hidden"``.
        layers: with ``mix_site="hidden"``, the eligible hidden states (0 = embeddings output,
            ``k`` = output of encoder layer ``k``); default ``0..min(2, L − 1)``.

    >>> from nlpcal.losses import create_loss
    >>> create_loss("regmixup", eta=0.5)
    RegMixupLoss(alpha=20.0, eta=0.5, mix_site='embeddings', layers=None)
    """

    strength = "eta"
    deterministic = False
    matches_large_batch = False

    def __init__(
        self,
        alpha: float = 20.0,
        eta: float = 1.0,
        mix_site: MixSite | str = MixSite.EMBEDDINGS,
        layers: Sequence[int] | None = None,
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        try:
            self.mix_site = MixSite(mix_site)
        except ValueError:
            raise ValueError(
                f"mix_site must be one of {[s.value for s in MixSite]}, got {mix_site!r}"
            ) from None
        self.layers = check_layers(layers)
        if self.layers is not None and self.mix_site is MixSite.EMBEDDINGS:
            raise ValueError(f"layers={list(self.layers)} only applies to mix_site='hidden'")
        self.alpha = float(alpha)
        self.eta = float(eta)

    @property
    def requires_embeddings(self) -> bool:  # type: ignore[override]
        return self.mix_site is MixSite.EMBEDDINGS

    def prepare_model(self, model: nn.Module) -> None:
        super().prepare_model(model)
        if self.mix_site is MixSite.HIDDEN:
            eligible_sites(model, self.layers)

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        batch = self.model_inputs(inputs)
        labels = inputs["labels"]
        if self.eta == 0:
            logits = model(**batch).logits
            ce = F.cross_entropy(logits.float(), labels, reduction="none")
            return LossOutput(loss=ctx.reduce(ce), logits=logits, logs={"ce": ce.detach().mean()})

        n = labels.shape[0]
        lam = sample_lambda(self.alpha, labels.device)
        perm = torch.randperm(n, device=labels.device)
        if self.mix_site is MixSite.EMBEDDINGS:
            view = model_sites(model).input_view(batch)
            both = _clean_and_mixed_batch(view.rest, n, perm)
            mixed = torch.cat([view.values, mix(view.values, perm, lam)])
            logits_both = model(**view.model_inputs(mixed, both)).logits
        else:
            sites = eligible_sites(model, self.layers)
            site = sites[int(torch.randint(len(sites), ()))]
            both = _clean_and_mixed_batch(batch, n, perm)
            with transform_output(site, lambda h: torch.cat([h[:n], mix(h[n:], perm, lam)])):
                logits_both = model(**both).logits

        logits, mixed_logits = logits_both[:n], logits_both[n:]
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        mix_ce = mixed_cross_entropy(mixed_logits, labels, perm, lam)
        logs = {"ce": ce.detach().mean(), "mix_ce": mix_ce.detach().mean(), "lambda": lam}
        return LossOutput(loss=ctx.reduce(ce + self.eta * mix_ce), logits=logits, logs=logs)

    def config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "eta": self.eta,
            "mix_site": self.mix_site.value,
            "layers": None if self.layers is None else list(self.layers),
        }


def _clean_and_mixed_batch(batch: Mapping[str, Any], n: int, perm: Tensor) -> dict[str, Any]:
    """Every per-example tensor twice (clean rows, then rows to mix); mixed rows get the mask union."""
    both = {
        k: torch.cat([v, v]) if isinstance(v, Tensor) and v.ndim and v.shape[0] == n else v
        for k, v in batch.items()
    }
    mask = batch.get("attention_mask")
    if mask is not None:
        both["attention_mask"] = torch.cat([mask, mix_attention_masks(mask, perm)])
    return both
