"""Robustness of each example of a batch to perturbations of its input token embeddings.

Every function takes a Hugging Face sequence classifier (possibly wrapped by DDP or
``torch.compile``; the attacks run on the inner model so no gradient synchronisation is
triggered), a batch of model inputs (``input_ids`` and usually ``attention_mask``, optionally
``token_type_ids``; ``labels`` and unknown keys are ignored) and optional labels. The token
embeddings ``e = get_input_embeddings()(input_ids)`` are perturbed and fed as ``inputs_embeds``,
so the model still adds its position and type embeddings; padding is never perturbed. The model
runs in eval mode (dropout off) and is put back in its mode afterwards; parameter gradients are
never touched. All examples of the batch are processed together: no Python loop over examples.

An image classifier (:mod:`nlpcal.adapters.timm`) is perturbed on its pixels instead, viewed as
``(B, C, H·W)`` with no padding (:mod:`nlpcal.losses.sites`), so the radii below are relative to
the image's norm.

Radii are relative to the embedding scale (:func:`~nlpcal.functional.robustness.embedding_scale`):
a radius ``ρ`` under L2 allows ``‖δ‖_F ≤ ρ ‖e‖_F`` over the real tokens, under L∞
``|δ_ij| ≤ ρ · rms(e)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from nlpcal.functional.robustness import (
    AttackNorm,
    _norm,
    ascent_step,
    bisect_radius,
    embedding_scale,
    first_order_radius,
    prediction_margin,
    project,
)
from nlpcal.losses._modules import unwrap_model
from nlpcal.losses.sites import model_sites

__all__ = [
    "EmbeddingPerturbation",
    "RobustnessMode",
    "attack_accuracy",
    "check_robustness_options",
    "example_robustness",
    "flip_radius",
    "margin_radius",
    "noise_accuracy",
    "perturbed_outputs",
    "pgd_flips",
]


class RobustnessMode(str, Enum):
    """How :func:`example_robustness` measures an example's robustness."""

    MARGIN = "margin"
    NOISE = "noise"
    PGD = "pgd"


class EmbeddingPerturbation(str, Enum):
    """How :func:`perturbed_outputs` perturbs the input embeddings: Gaussian noise, or
    signed-gradient (FGSM / PGD) steps against the clean prediction."""

    GAUSSIAN = "gaussian"
    GRADIENT = "gradient"


def _check_budget(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class _Embedded:
    """A batch as its clean continuous input (token embeddings, or pixels), the mask of its
    real positions, and the other model inputs (:mod:`nlpcal.losses.sites`)."""

    def __init__(self, model: nn.Module, inputs: Mapping[str, Any]) -> None:
        self.model = unwrap_model(model)
        self.sites = sites = model_sites(self.model)
        sites.check_input()
        if sites.input_key not in inputs:
            raise ValueError(
                f"embedding robustness needs {sites.input_key!r} in the batch; got keys "
                f"{sorted(inputs)}"
            )
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        with torch.no_grad():
            self.view = sites.input_view(inputs)
        self.dtype = self.view.values.dtype
        self.embeds = self.view.values.float()
        self.mask = self.view.mask
        self.rest = dict(self.view.rest)
        if self.view.mask_key is not None:
            self.rest[self.view.mask_key] = self.mask

    def logits(self, delta: Tensor | None = None) -> Tensor:
        return self.outputs(delta)[0]

    def outputs(self, delta: Tensor | None = None, features: bool = False) -> tuple[Tensor, Any]:
        """The logits of the perturbed batch and, with ``features``, its first-token features
        (the last hidden state at position 0, as the trainer collects them), else ``None``."""
        embeds = self.embeds if delta is None else self.embeds + delta
        hidden = {"output_hidden_states": True} if features else {}
        out = self.model(**self.view.model_inputs(embeds.to(self.dtype), self.rest), **hidden)
        return out.logits.float(), self.sites.features(out).float() if features else None

    def repeated(self, copies: int) -> _Embedded:
        """The batch ``copies`` times over (copy ``c`` of example ``i`` is row ``c·B + i``)."""
        many = object.__new__(_Embedded)
        many.model, many.dtype, many.view = self.model, self.dtype, self.view
        many.embeds = self.embeds.repeat(copies, 1, 1)
        many.mask = self.mask.repeat(copies, 1)
        many.rest = {
            k: v.repeat(copies, *([1] * (v.ndim - 1))) if isinstance(v, Tensor) and v.ndim else v
            for k, v in self.rest.items()
        }
        return many

    def scale(self, norm: AttackNorm) -> Tensor:
        return embedding_scale(self.embeds, self.mask, norm)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    inner = unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        inner.train(was_training)


def _target_and_wrong(batch: _Embedded, labels: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Clean logits, the clean prediction, and which predictions are wrong (never, unlabelled)."""
    with torch.no_grad():
        logits = batch.logits()
    target = logits.argmax(dim=1)
    wrong = torch.zeros_like(target, dtype=torch.bool)
    if labels is not None:
        wrong = target != labels.to(target.device)
    return logits, target, wrong


def margin_radius(
    model: nn.Module,
    inputs: Mapping[str, Any],
    labels: Tensor | None = None,
    norm: AttackNorm | str = AttackNorm.L2,
) -> Tensor:
    """First-order estimate of the smallest flipping radius: ``m / ‖∇_e m‖_* / scale``, ``(B,)``.

    ``m = z_ŷ − max_{k≠ŷ} z_k`` is the clean prediction's margin and ``‖·‖_*`` the dual norm of
    ``norm``; one forward and one backward pass. Misclassified examples (when ``labels`` are
    given) get 0; an example whose margin has no gradient gets ``inf``.

    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    >>> margin_radius(model, {"input_ids": torch.tensor([[2, 7, 9], [2, 5, 0]])}).shape
    torch.Size([2])
    """
    norm = _norm(norm)
    with _eval_mode(model):
        batch = _Embedded(model, inputs)
        delta = torch.zeros_like(batch.embeds, requires_grad=True)
        logits = batch.logits(delta)  # the clean logits, with a graph back to the embeddings
        target = logits.detach().argmax(dim=1)
        margin = prediction_margin(logits, target)
        (grad,) = torch.autograd.grad(margin.sum(), delta)
    wrong = torch.zeros_like(target, dtype=torch.bool)
    if labels is not None:
        wrong = target != labels.to(target.device)
    radius = first_order_radius(margin.detach(), grad, batch.mask, norm) / batch.scale(norm)
    return radius.masked_fill(wrong, 0.0)


def noise_accuracy(
    model: nn.Module,
    inputs: Mapping[str, Any],
    labels: Tensor | None = None,
    sigma: float = 1.0,
    copies: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fraction of ``copies`` noisy copies of each example still predicted right, shape ``(B,)``.

    Each copy adds Gaussian noise of standard deviation ``sigma · rms(e)`` to every entry of the
    real tokens' embeddings; all copies of the batch run as one forward pass of ``B · copies``
    sequences. "Right" is the label when ``labels`` are given, else the clean prediction.

    Args:
        sigma: noise scale relative to the root-mean-square embedding entry (``> 0``).
        copies: noisy copies per example ``m`` (``≥ 1``).
        generator: a ``torch.Generator`` on the model's device, for reproducible noise.
    """
    sigma = _check_budget("sigma", sigma)
    copies = _check_count("copies", copies)
    with _eval_mode(model), torch.no_grad():
        batch = _Embedded(model, inputs)
        _, target, _ = _target_and_wrong(batch, None)
        if labels is not None:
            target = labels.to(target.device)
        many = batch.repeated(copies)
        predicted = many.logits(_gaussian(many, sigma, generator)).argmax(dim=1).view(copies, -1)
    return (predicted == target.unsqueeze(0)).float().mean(dim=0)


def _gaussian(batch: _Embedded, sigma: float | Tensor, generator: torch.Generator | None) -> Tensor:
    """Gaussian noise of standard deviation ``sigma · rms(e)`` (one ``sigma``, or one per row) on
    every entry of the real tokens' embeddings, zero on padding."""
    scale = batch.scale(AttackNorm.LINF) * sigma
    noise = torch.randn(batch.embeds.shape, generator=generator, device=batch.embeds.device)
    noise = noise * scale.view(-1, 1, 1)
    return noise * batch.mask.unsqueeze(-1).to(noise.dtype)


def _pgd(
    batch: _Embedded, target: Tensor, radius: Tensor, norm: AttackNorm, steps: int
) -> tuple[Tensor, Tensor]:
    """PGD within the relative ``radius`` (``(B,)``) against the prediction ``target``: whether it
    makes the prediction leave ``target``, and the last perturbation ``δ``.

    Steps of length ``2.5 · radius / steps`` (Madry et al.) descend the margin from ``δ = 0``;
    an example counts as flipped if any iterate flips it. One step under L∞ is FGSM: the
    signed-gradient step of length ``radius``.
    """
    budget = radius * batch.scale(norm)
    step = 2.5 * budget / steps
    delta = torch.zeros_like(batch.embeds)
    flipped = torch.zeros_like(target, dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        margin = prediction_margin(batch.logits(delta), target)
        flipped |= margin.detach() < 0
        (grad,) = torch.autograd.grad(margin.sum(), delta)
        delta = project(
            delta.detach() - ascent_step(grad, batch.mask, step, norm), batch.mask, budget, norm
        )
    with torch.no_grad():
        flipped |= prediction_margin(batch.logits(delta), target) < 0
    return flipped, delta


def pgd_flips(
    model: nn.Module,
    inputs: Mapping[str, Any],
    radius: float | Tensor,
    norm: AttackNorm | str = AttackNorm.L2,
    steps: int = 5,
) -> Tensor:
    """Whether PGD within relative ``radius`` flips each example's clean prediction, ``(B,)`` bool.

    Args:
        radius: the relative budget, one number or one per example (``(B,)``), each ``> 0``.
        norm: ``"l2"`` or ``"linf"``.
        steps: PGD steps (each one forward and one backward pass).
    """
    norm = _norm(norm)
    steps = _check_count("steps", steps)
    if not isinstance(radius, Tensor):
        radius = torch.tensor(_check_budget("radius", radius))
    elif not bool((radius > 0).all()):
        raise ValueError(f"radius must be > 0, got a minimum of {float(radius.min())}")
    with _eval_mode(model):
        batch = _Embedded(model, inputs)
        _, target, _ = _target_and_wrong(batch, None)
        radius = radius.to(batch.embeds.device).float().expand(target.shape[0])
        return _pgd(batch, target, radius, norm, steps)[0]


def flip_radius(
    model: nn.Module,
    inputs: Mapping[str, Any],
    labels: Tensor | None = None,
    norm: AttackNorm | str = AttackNorm.L2,
    max_radius: float = 1.0,
    min_radius: float = 1e-4,
    search_steps: int = 8,
    pgd_steps: int = 5,
) -> Tensor:
    """The smallest relative radius at which PGD flips the clean prediction, ``(B,)``.

    A per-example binary search over ``[min_radius, max_radius]`` on the log scale (radii span
    orders of magnitude, so the precision is relative), all examples at once: each of the
    ``search_steps`` rounds runs PGD at every example's midpoint and halves its interval. The
    result is the interval's upper end, a radius at which PGD flipped the prediction, within a
    factor ``(max_radius / min_radius) ** (2 ** -search_steps)`` of the smallest one. Examples
    that no tried radius flips get ``max_radius``; misclassified examples (when ``labels`` are
    given) get 0. Cost: ``search_steps · pgd_steps`` forward and backward passes.
    """
    norm = _norm(norm)
    max_radius = _check_budget("max_radius", max_radius)
    min_radius = _check_budget("min_radius", min_radius)
    if min_radius >= max_radius:
        raise ValueError(
            f"min_radius must be below max_radius, got min_radius={min_radius} and "
            f"max_radius={max_radius}"
        )
    search_steps = _check_count("search_steps", search_steps)
    pgd_steps = _check_count("pgd_steps", pgd_steps)
    with _eval_mode(model):
        batch = _Embedded(model, inputs)
        _, target, wrong = _target_and_wrong(batch, labels)
        low = torch.full(target.shape, math.log(min_radius), device=batch.embeds.device)
        high = torch.full_like(low, math.log(max_radius))
        for _ in range(search_steps):
            flipped, _ = _pgd(batch, target, ((low + high) / 2).exp(), norm, pgd_steps)
            low, high = bisect_radius(low, high, flipped)
    return high.exp().masked_fill(wrong, 0.0)


def attack_accuracy(
    model: nn.Module,
    inputs: Mapping[str, Any],
    labels: Tensor,
    radius: float,
    norm: AttackNorm | str = AttackNorm.L2,
    steps: int = 5,
) -> Tensor:
    """Per example, whether the prediction is right and stays right under PGD at ``radius``.

    The mean over a data set is the accuracy under attack at that relative budget.
    """
    with _eval_mode(model), torch.no_grad():
        batch = _Embedded(model, inputs)
        _, _, wrong = _target_and_wrong(batch, labels)
    return ~wrong & ~pgd_flips(model, inputs, radius, norm, steps)


def perturbed_outputs(
    model: nn.Module,
    inputs: Mapping[str, Any],
    family: EmbeddingPerturbation | str,
    strengths: Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
    steps: int = 1,
    norm: AttackNorm | str = AttackNorm.LINF,
    features: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The outputs of every example with its input embeddings perturbed at each of ``S`` strengths.

    ``"gaussian"``: ``δ = s · rms(e) · ζ`` with one standard-normal draw ``ζ`` per example (from
    ``generator``) shared by all strengths, so the outputs change smoothly with ``s`` (common
    random numbers; :func:`noise_accuracy` draws the same noise). ``"gradient"``: PGD of
    ``steps`` steps within the relative radius ``s`` under ``norm`` descending the margin of the
    clean prediction (:func:`pgd_flips`' attack); one step under L∞ is FGSM, the signed-gradient
    step of length ``s · rms(e)``. The ``S`` strengths of a batch run as one batch of ``S · B``
    sequences.

    Args:
        strengths: relative strengths ``(S,)``, each ``> 0``: the noise scale or the radius.
        generator: a ``torch.Generator`` on the model's device, for reproducible noise.
        features: also return the perturbed first-token features (the last hidden state at
            position 0).

    Returns:
        The clean logits ``(B, K)``, the perturbed logits ``(S, B, K)`` and the perturbed
        features ``(S, B, H)`` (``None`` without ``features``).

    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16,
    ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    >>> clean, noisy, _ = perturbed_outputs(model, {"input_ids": torch.tensor([[2, 7, 9]])},
    ...                                     "gaussian", [0.1, 1.0])
    >>> clean.shape, noisy.shape
    (torch.Size([1, 2]), torch.Size([2, 1, 2]))
    """
    family = _family(family)
    steps = _check_count("steps", steps)
    norm = _norm(norm)
    strengths = torch.as_tensor(strengths, dtype=torch.float32).flatten()
    if not len(strengths) or not bool((strengths > 0).all()):
        raise ValueError(
            f"strengths must be a non-empty list of numbers > 0, got {strengths.tolist()}"
        )
    with _eval_mode(model):
        batch = _Embedded(model, inputs)
        clean, target, _ = _target_and_wrong(batch, None)
        size, copies = target.shape[0], len(strengths)
        many = batch.repeated(copies)
        per_row = strengths.to(batch.embeds.device).repeat_interleave(size)
        if family is EmbeddingPerturbation.GAUSSIAN:
            with torch.no_grad():
                delta = _gaussian(batch, 1.0, generator).repeat(copies, 1, 1)
                delta = delta * per_row.view(-1, 1, 1)
        else:
            _, delta = _pgd(many, target.repeat(copies), per_row, norm, steps)
        with torch.no_grad():
            logits, feats = many.outputs(delta.detach(), features)
    return (
        clean,
        logits.view(copies, size, -1),
        None if feats is None else feats.view(copies, size, -1),
    )


def _family(family: EmbeddingPerturbation | str) -> EmbeddingPerturbation:
    try:
        return EmbeddingPerturbation(family)
    except ValueError:
        raise ValueError(
            f"family must be one of {[f.value for f in EmbeddingPerturbation]}, got {family!r}"
        ) from None


_MODES: dict[RobustnessMode, Callable[..., Tensor]] = {
    RobustnessMode.MARGIN: margin_radius,
    RobustnessMode.NOISE: noise_accuracy,
    RobustnessMode.PGD: flip_radius,
}


_BUDGETS = ("radius", "max_radius", "min_radius", "sigma")
_COUNTS = ("copies", "steps", "search_steps", "pgd_steps")


def check_robustness_options(mode: RobustnessMode | str, options: Mapping[str, Any]) -> None:
    """Fail early on options that :func:`example_robustness` would refuse for ``mode``: unknown
    names, budgets ``≤ 0``, counts ``< 1``, an unknown norm.

    >>> check_robustness_options("noise", {"sigma": 0.5, "copies": 16})
    >>> check_robustness_options("margin", {"sigma": 0.5})
    Traceback (most recent call last):
    ...
    ValueError: robustness options ['sigma'] do not apply to mode 'margin'; accepted: ['norm']
    """
    mode = _mode(mode)
    accepted = set(inspect.signature(_MODES[mode]).parameters) - {"model", "inputs", "labels"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"robustness options {unknown} do not apply to mode {mode.value!r}; "
            f"accepted: {sorted(accepted - {'generator'})}"
        )
    for name, value in options.items():
        if name in _BUDGETS:
            _check_budget(name, value)
        elif name in _COUNTS:
            _check_count(name, value)
        elif name == "norm":
            _norm(value)
    if "min_radius" in options or "max_radius" in options:
        low, high = options.get("min_radius", 1e-4), options.get("max_radius", 1.0)
        if low >= high:
            raise ValueError(
                f"min_radius must be below max_radius, got min_radius={low} and max_radius={high}"
            )


def _mode(mode: RobustnessMode | str) -> RobustnessMode:
    try:
        return RobustnessMode(mode)
    except ValueError:
        raise ValueError(
            f"mode must be one of {[m.value for m in RobustnessMode]}, got {mode!r}"
        ) from None


def example_robustness(
    model: nn.Module,
    inputs: Mapping[str, Any],
    labels: Tensor | None = None,
    mode: RobustnessMode | str = RobustnessMode.MARGIN,
    **options: Any,
) -> Tensor:
    """Robustness of each example by ``mode``: larger is more robust, shape ``(B,)``.

    ``"margin"``: :func:`margin_radius`; ``"noise"``: :func:`noise_accuracy`; ``"pgd"``:
    :func:`flip_radius`. ``options`` go to that function (e.g. ``norm``, ``sigma``, ``copies``).
    """
    return _MODES[_mode(mode)](model, inputs, labels, **options)
