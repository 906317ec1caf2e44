"""Token attributions: every backend on tiny BERT, RoBERTa and DistilBERT, against direct autograd."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlpcal.explain import (
    TokenAttribution,
    create_attribution,
    list_attributions,
    register_attribution,
)
from nlpcal.losses._modules import input_embeddings
from tests.conftest import tiny_batch, tiny_model

METHODS = list_attributions()


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize("method", METHODS)
def test_scores_are_finite_masked_and_normalised(method, arch) -> None:
    model = tiny_model(arch)
    batch = tiny_batch()
    mask = batch["attention_mask"].bool()
    attribution = create_attribution(method)

    raw = attribution(model, batch)
    scores = attribution.scores(model, batch)

    assert raw.shape == scores.shape == mask.shape
    assert not raw.requires_grad and raw.dtype == torch.float32
    assert torch.isfinite(raw).all() and torch.isfinite(scores).all()
    assert (raw[~mask] == 0).all() and (scores[~mask] == 0).all()
    assert (scores[mask] > 0).all()
    torch.testing.assert_close(scores.sum(dim=-1), torch.ones(len(mask)))
    assert raw[mask].abs().sum() > 0  # the backend attributes something, not all zeros
    # the model is left as it was
    assert model.config._attn_implementation == "sdpa" and not model.training


def direct_embedding_gradient(model, batch, target):
    embeds = input_embeddings(model)(batch["input_ids"]).detach().requires_grad_()
    logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    objective = logits.log_softmax(dim=-1).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(objective, embeds)
    return embeds.detach(), grad


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_saliency_and_input_x_gradient_equal_direct_autograd(arch) -> None:
    model = tiny_model(arch)
    batch = tiny_batch()
    target = batch["labels"]
    embeds, grad = direct_embedding_gradient(model, batch, target)
    mask = batch["attention_mask"]

    saliency = create_attribution("saliency")(model, batch, target)
    torch.testing.assert_close(saliency, grad.abs().sum(dim=-1) * mask, atol=1e-6, rtol=1e-5)
    ixg = create_attribution("input_x_gradient")(model, batch, target)
    torch.testing.assert_close(ixg, (embeds * grad).sum(dim=-1) * mask, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_attention_gradient_equals_direct_output_attentions_and_autograd(arch) -> None:
    model = tiny_model(arch)
    batch = tiny_batch()
    target = batch["labels"]

    got = create_attribution("attention_gradient")(model, model_inputs(batch), target)

    model.config._attn_implementation = "eager"
    out = model(**model_inputs(batch), output_attentions=True)
    last = out.attentions[-1]
    loss = F.cross_entropy(out.logits, target, reduction="sum")
    (grad,) = torch.autograd.grad(loss, last)
    expected = last[:, :, 0, :].mean(dim=1) * grad[:, :, 0, :].mean(dim=1)
    torch.testing.assert_close(got, expected.detach(), atol=1e-7, rtol=1e-5)
    assert got.abs().sum() > 0


def test_attention_gradient_defaults_to_the_predicted_class() -> None:
    model = tiny_model("bert")
    batch = model_inputs(tiny_batch())
    method = create_attribution("attention_gradient")
    predicted = model(**batch).logits.argmax(dim=-1)
    torch.testing.assert_close(method(model, batch), method(model, batch, predicted))
    assert not torch.equal(method(model, batch), method(model, batch, (predicted + 1) % 3))


def test_integrated_gradients_is_complete() -> None:
    """IG attributions add up to log p(x) − log p(baseline): the integral of the gradient."""
    model = tiny_model("bert")
    batch = tiny_batch(batch_size=4)
    target = batch["labels"]
    ig = create_attribution("integrated_gradients", n_steps=64, internal_batch_size=64)
    total = ig(model, batch, target).sum(dim=-1)

    embeds = input_embeddings(model)(batch["input_ids"])
    with torch.no_grad():
        at = [
            model(inputs_embeds=e, attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
            for e in (embeds, torch.zeros_like(embeds))
        ]
    expected = (at[0] - at[1]).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(total, expected, atol=2e-3, rtol=2e-2)


def test_attribution_keeps_train_mode_and_works_under_no_grad() -> None:
    model = tiny_model("roberta").train()
    batch = tiny_batch()
    with torch.no_grad():
        raw = create_attribution("attention_gradient")(model, batch)
    assert model.training and torch.isfinite(raw).all()


# -- bad input ---------------------------------------------------------------------------------
def test_unknown_method_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match="unknown attribution method 'lime'") as err:
        create_attribution("lime")
    for name in METHODS:
        assert name in str(err.value)


@pytest.mark.parametrize("n_steps", [0, -3, 2.5, True])
def test_integrated_gradients_needs_at_least_one_step(n_steps) -> None:
    with pytest.raises(ValueError, match=f"n_steps must be an integer >= 1, got {n_steps!r}"):
        create_attribution("integrated_gradients", n_steps=n_steps)


def test_internal_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"internal_batch_size .* got 0"):
        create_attribution("integrated_gradients", internal_batch_size=0)


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_with_only_padding_raises(method) -> None:
    batch = tiny_batch(batch_size=3)
    batch["attention_mask"][1] = 0
    with pytest.raises(ValueError, match=r"only of padding \(rows \[1\]\)"):
        create_attribution(method)(tiny_model("bert"), batch)


class _NoConfig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_model("bert")

    def forward(self, **kwargs):
        return self.inner(**kwargs)


class _HidesAttention(nn.Module):
    """A classifier with a transformer config whose output carries no attention weights."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_model("bert")
        self.config = self.inner.config

    def forward(self, output_attentions=None, **kwargs):
        return SimpleNamespace(logits=self.inner(**kwargs).logits, attentions=None)


def test_a_model_without_an_attention_config_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot read the attention of _NoConfig"):
        create_attribution("attention_gradient")(_NoConfig(), tiny_batch())


def test_a_model_whose_output_has_no_attention_is_refused() -> None:
    model = _HidesAttention()
    with pytest.raises(
        ValueError, match=r"cannot read the attention of _HidesAttention.*got nothing"
    ):
        create_attribution("attention_gradient")(model, tiny_batch())
    assert model.config._attn_implementation == "sdpa"  # restored after the failure


def test_captum_methods_need_input_embeddings() -> None:
    class NoEmbeddings(nn.Module):
        def forward(self, **kwargs):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="saliency attribution runs on inputs_embeds"):
        create_attribution("saliency")(NoEmbeddings(), tiny_batch())


def test_missing_captum_names_the_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"need captum.*pip install 'captum>=0.7'"):
        create_attribution("saliency")(tiny_model("bert"), tiny_batch())


def test_registering_a_taken_name_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_attribution("saliency")
        class Impostor(TokenAttribution):
            pass

    assert type(create_attribution("saliency")).__name__ == "SaliencyAttribution"
