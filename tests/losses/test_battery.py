"""The shared battery: every registered loss on tiny BERT, RoBERTa and DistilBERT classifiers."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpcal.losses import (
    EXAMPLE_INDEX,
    CalibrationLoss,
    LossContext,
    LossOutput,
    create_loss,
    list_losses,
    register_loss,
)
from nlpcal.losses._modules import classifier_layer
from tests.conftest import NUM_LABELS, tiny_model
from tests.conftest import tiny_batch as conftest_batch

# Every registered loss with its defaults, plus the non-default mixing site of RegMixup.
CASES = [pytest.param(name, {}, id=name) for name in list_losses()] + [
    pytest.param("regmixup", {"mix_site": "hidden"}, id="regmixup-hidden"),
    pytest.param("cme", {"method": "saliency"}, id="cme-saliency"),
    pytest.param("cme", {"through_attention": True}, id="cme-through-attention"),
]
STRENGTH_CASES = [c for c in CASES if create_loss(c.values[0], **c.values[1]).strength]
# Losses whose accumulated micro-batches reproduce one large batch; the others couple the examples
# of a micro-batch by design (mixup partners, CME's pairs) and have their own accumulation tests.
LARGE_BATCH_CASES = [
    c for c in CASES if create_loss(c.values[0], **c.values[1]).matches_large_batch
]
ARCHS = ["bert", "roberta", "distilbert"]


def primed_ar_adals(loss: CalibrationLoss) -> dict[str, Any]:
    """A refreshed-looking AR-AdaLS state over 16 examples, every ε distinct (0 at strength 0)."""
    r = loss.num_strata
    return {
        "num_strata": r,
        "refreshes": 1,
        "robustness": [i / 16 for i in range(16)],
        "strata": [i * r // 16 for i in range(16)],
        "edges": [(b + 0.5) / r for b in range(r - 1)],
        "epsilon": torch.linspace(0, loss.max_smoothing, r).tolist(),
    }


# Stateful losses start from a state in which they differ from cross-entropy.
PRIMED_STATES = {"ar_adals": primed_ar_adals}


def prepared(name: str, kwargs: dict[str, Any], arch: str) -> tuple[CalibrationLoss, nn.Module]:
    loss = create_loss(name, **kwargs)
    model = tiny_model(arch)
    loss.prepare_model(model)
    if name in PRIMED_STATES:
        loss.load_state_dict(PRIMED_STATES[name](loss))
    return loss, model


def tiny_batch(loss: CalibrationLoss, batch_size: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """The conftest batch, plus each example's training-set index for a loss that reads it."""
    batch = conftest_batch(batch_size, seed=seed)
    if EXAMPLE_INDEX in loss.extra_inputs:
        batch[EXAMPLE_INDEX] = torch.arange(batch_size) * 2 % 16
    return batch


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_loss_is_finite_and_reaches_every_trainable_parameter(name, kwargs, arch) -> None:
    loss, model = prepared(name, kwargs, arch)
    batch = tiny_batch(loss)
    torch.manual_seed(0)
    out = loss(model, batch, LossContext(num_items_in_batch=torch.tensor(16), progress=0.3))

    assert isinstance(out, LossOutput)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (8, NUM_LABELS)
    for key, value in out.logs.items():
        assert isinstance(value, Tensor) and value.ndim == 0, key
        assert not value.requires_grad and torch.isfinite(value), key

    out.loss.backward()
    # Every trainable parameter is used: BERT's classifier reads the pooler, while RoBERTa and
    # DistilBERT classifiers are built without one (add_pooling_layer=False), so none is idle.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable - grads(model).keys() == set()
    for n, g in grads(model).items():
        assert torch.isfinite(g).all(), n
    assert classifier_layer(model).weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("name", "kwargs"), STRENGTH_CASES)
@pytest.mark.parametrize("num_items", [None, 8])
def test_zero_strength_is_cross_entropy(name, kwargs, arch, num_items) -> None:
    strength = create_loss(name, **kwargs).strength
    loss, model = prepared(name, {**kwargs, strength: 0.0}, arch)
    reference, ce_model = prepared("cross_entropy", {}, arch)
    batch = tiny_batch(loss)
    ctx = LossContext(num_items_in_batch=num_items, progress=0.7)

    torch.manual_seed(0)
    out = loss(model, batch, ctx)
    ref = reference(ce_model, tiny_batch(reference), ctx)
    out.loss.backward()
    ref.loss.backward()

    torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=0)
    ours, theirs = grads(model), grads(ce_model)
    assert theirs.keys() <= ours.keys()
    for n, g in theirs.items():
        torch.testing.assert_close(ours[n], g, atol=1e-6, rtol=0, msg=n)
    for n in ours.keys() - theirs.keys():  # parameters the loss added (a head) learn nothing
        assert not ours[n].any(), n


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_same_seed_same_loss(name, kwargs, arch) -> None:
    loss, model = prepared(name, kwargs, arch)
    batch = tiny_batch(loss)

    def run(seed: int) -> Tensor:
        torch.manual_seed(seed)
        return loss(model, batch, LossContext()).loss

    first = run(0)
    assert torch.equal(run(0), first)
    if not loss.deterministic:  # a sampling loss must actually depend on the draw
        assert not torch.equal(run(1), first)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("name", "kwargs"), LARGE_BATCH_CASES)
def test_gradient_accumulation_matches_one_large_batch(name, kwargs, arch) -> None:
    assert_accumulation_matches_one_large_batch(name, kwargs, arch)


DETERMINISTIC_CASES = [c for c in CASES if create_loss(c.values[0], **c.values[1]).deterministic]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("name", "kwargs"), DETERMINISTIC_CASES)
def test_each_micro_batch_carries_its_share_of_the_accumulated_batch(name, kwargs, arch) -> None:
    """What gradient accumulation means for every loss, also those coupling a micro-batch's
    examples: a micro-batch of 4 in an accumulated batch of 8 is its own loss times 4/8."""
    loss, model = prepared(name, kwargs, arch)
    micro = tiny_batch(loss, batch_size=4, seed=1)
    alone = loss(model, micro, LossContext(num_items_in_batch=None, progress=0.2)).loss
    share = loss(model, micro, LossContext(num_items_in_batch=torch.tensor(8), progress=0.2)).loss
    torch.testing.assert_close(share, alone * 4 / 8, atol=1e-6, rtol=1e-5)


# A mixup loss pairs each example with a partner from its own micro-batch, so accumulating 2 × 4
# cannot reproduce a batch of 8 whose pairs cross the halves: by design those are different
# losses. What is defined is that each micro-batch's loss carries its share of the accumulated
# batch. With λ fixed and a permutation of 8 that maps each half onto itself exactly as the
# permutation of 4 does (and one eligible layer), the batch of 8 is the sum of its two halves.
MIXUP_CASES = [
    pytest.param("regmixup", {}, id="regmixup"),
    pytest.param("regmixup", {"mix_site": "hidden", "layers": [1]}, id="regmixup-hidden"),
    pytest.param("manifold_mixup", {"layers": [1]}, id="manifold_mixup"),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("name", "kwargs"), MIXUP_CASES)
def test_mixup_gradient_accumulation_matches_a_large_batch_with_the_same_pairs(
    monkeypatch, name, kwargs, arch
) -> None:
    module = sys.modules[type(create_loss(name)).__module__]
    monkeypatch.setattr(module, "sample_lambda", lambda alpha, device: torch.tensor(0.3))
    half = [2, 0, 3, 1]
    perms = {4: half, 8: half + [4 + i for i in half]}
    monkeypatch.setattr(torch, "randperm", lambda n, device=None: torch.tensor(perms[n]))
    assert_accumulation_matches_one_large_batch(name, kwargs, arch)


def assert_accumulation_matches_one_large_batch(name, kwargs, arch) -> None:
    """Two micro-batches of 4 give the loss and gradients of one batch of 8."""
    loss, big_model = prepared(name, kwargs, arch)
    _, acc_model = prepared(name, kwargs, arch)
    batch = tiny_batch(loss, batch_size=8)

    big = loss(big_model, batch, LossContext(num_items_in_batch=None, progress=0.2)).loss
    big.backward()
    total = torch.zeros(())
    for half in (slice(0, 4), slice(4, 8)):
        micro = {k: v[half] for k, v in batch.items()}
        part = loss(acc_model, micro, LossContext(num_items_in_batch=torch.tensor(8), progress=0.2))
        part.loss.backward()
        total = total + part.loss.detach()

    torch.testing.assert_close(total, big.detach(), atol=1e-6, rtol=1e-5)
    expected = grads(big_model)
    assert grads(acc_model).keys() == expected.keys()
    for n, g in grads(acc_model).items():
        torch.testing.assert_close(g, expected[n], atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_config_is_json_and_recreates_the_loss(name, kwargs) -> None:
    loss = create_loss(name, **kwargs)
    config = json.loads(json.dumps(loss.config()))
    again = create_loss(name, **config)
    assert type(again) is type(loss) and again.config() == loss.config()
    assert again.name == name and repr(again) == repr(loss)
    assert isinstance(loss.default_calibrator, str)


# -- registry ------------------------------------------------------------------------------------
def test_unknown_loss_lists_the_available_names() -> None:
    with pytest.raises(ValueError, match="nope") as err:
        create_loss("nope")
    for name in list_losses():
        assert name in str(err.value)


def test_registering_a_taken_name_raises_and_keeps_the_first() -> None:
    before = list_losses()
    with pytest.raises(ValueError, match="already registered"):

        @register_loss("label_smoothing")
        class Impostor(CalibrationLoss):
            pass

    assert list_losses() == before
    assert type(create_loss("label_smoothing")).__name__ == "LabelSmoothingLoss"


@pytest.mark.parametrize(
    ("name", "kwargs", "arg", "bad"),
    [
        ("label_smoothing", {"alpha": -0.1}, "alpha", "-0.1"),
        ("label_smoothing", {"alpha": 1.0}, "alpha", "1.0"),
        ("regmixup", {"alpha": 0.0}, "alpha", "0.0"),
        ("regmixup", {"eta": -0.5}, "eta", "-0.5"),
        ("regmixup", {"mix_site": "pixels"}, "mix_site", "'pixels'"),
        ("regmixup", {"layers": [1]}, "layers", "[1]"),
        ("regmixup", {"mix_site": "hidden", "layers": [-1]}, "layers", "[-1]"),
        ("regmixup", {"mix_site": "hidden", "layers": []}, "layers", "[]"),
        ("manifold_mixup", {"alpha": -2.0}, "alpha", "-2.0"),
        ("manifold_mixup", {"mix_prob": 1.5}, "mix_prob", "1.5"),
        ("manifold_mixup", {"layers": [0, 0]}, "layers", "[0, 0]"),
        ("manifold_mixup", {"layers": "01"}, "layers", "'01'"),
        ("double_head", {"hidden_size": 0}, "hidden_size", "got 0"),
        ("double_head", {"hidden_size": 2.5}, "hidden_size", "2.5"),
        ("double_head", {"head_weight": -1.0}, "head_weight", "-1.0"),
        ("double_head", {"anneal_fraction": 1.5}, "anneal_fraction", "1.5"),
        ("double_head", {"eps": 1.0}, "eps", "1.0"),
        ("cme", {"lam": -1.0}, "lam", "-1.0"),
        ("cme", {"base": "ova"}, "base", "'ova'"),
        ("cme", {"method": "lime"}, "lime", "attention_gradient, input_x_gradient"),
        ("cme", {"method": "saliency", "through_attention": True}, "through_attention", "saliency"),
        (
            "cme",
            {"method": "integrated_gradients", "method_kwargs": {"n_steps": 0}},
            "n_steps",
            "0",
        ),
        ("cme", {"base": "label_smoothing", "base_kwargs": {"alpha": 2.0}}, "alpha", "2.0"),
        ("ar_adals", {"num_strata": 1}, "num_strata", "got 1"),
        ("ar_adals", {"eta": 0.0}, "eta", "0.0"),
        ("ar_adals", {"max_smoothing": 1.0}, "max_smoothing", "1.0"),
        ("ar_adals", {"mode": "fgsm"}, "mode", "'fgsm'"),
        ("ar_adals", {"refresh_steps": 0}, "refresh_steps", "got 0"),
        ("ar_adals", {"refresh_fraction": 0.0}, "refresh_fraction", "0.0"),
        ("ar_adals", {"robustness_kwargs": {"sigma": 0.0}, "mode": "noise"}, "sigma", "0.0"),
        (
            "ar_adals",
            {"robustness_kwargs": {"max_radius": -1.0}, "mode": "pgd"},
            "max_radius",
            "-1",
        ),
        ("ar_adals", {"robustness_kwargs": {"copies": 8}}, "copies", "'margin'"),
        ("ar_adals", {"adaptation_samples": 5}, "adaptation_samples", "got 5"),
    ],
)
def test_bad_hyper_parameters_raise_naming_the_value(name, kwargs, arg, bad) -> None:
    with pytest.raises(ValueError, match=arg) as err:
        create_loss(name, **kwargs)
    assert bad in str(err.value)


@pytest.mark.parametrize("name", ["label_smoothing", "ova", "double_head", "ar_adals"])
def test_losses_that_need_classes_reject_a_one_label_model(name) -> None:
    with pytest.raises(ValueError, match="num_labels=1"):
        create_loss(name).prepare_model(tiny_model("bert", num_labels=1))


# -- extensibility: per-example state and extra batch columns (AR-AdaLS, CME) --------------------
class _CountingLoss(CalibrationLoss):
    """A toy stateful loss: counts how often each training example was seen."""

    name = "counting_toy"
    extra_inputs = ("example_index",)

    def __init__(self, num_examples: int) -> None:
        self.seen = torch.zeros(num_examples, dtype=torch.long)

    def compute(self, model: nn.Module, inputs: Mapping[str, Any], ctx: LossContext) -> LossOutput:
        logits = model(**self.model_inputs(inputs)).logits
        ce = F.cross_entropy(logits.float(), inputs["labels"], reduction="none")
        self.seen.index_add_(0, inputs["example_index"], torch.ones_like(inputs["example_index"]))
        return LossOutput(loss=ctx.reduce(ce), logits=logits, logs={"ce": ce.detach().mean()})

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = torch.tensor(state["seen"], dtype=torch.long)


def test_extra_inputs_reach_the_loss_but_not_the_model_and_state_round_trips() -> None:
    loss = _CountingLoss(num_examples=10)
    batch = {**conftest_batch(batch_size=4), "example_index": torch.tensor([0, 3, 3, 9])}
    assert set(loss.model_inputs(batch)) == {"input_ids", "attention_mask"}

    out = loss(tiny_model("bert"), batch, LossContext())
    assert torch.isfinite(out.loss)
    assert loss.seen.tolist() == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1]

    state = json.loads(json.dumps(loss.state_dict()))
    resumed = _CountingLoss(num_examples=10)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.seen, loss.seen)
    assert loss.callbacks() == []


def test_stateless_losses_refuse_foreign_state() -> None:
    stateless = [create_loss(name) for name in list_losses() if not create_loss(name).state_dict()]
    assert {"cross_entropy", "regmixup", "ova"} <= {loss.name for loss in stateless}
    for loss in stateless:
        loss.load_state_dict({})
        with pytest.raises(ValueError, match="seen"):
            loss.load_state_dict({"seen": [1]})
