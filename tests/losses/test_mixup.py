"""RegMixup and Manifold Mixup: clean logits, mixing sites, masks, hooks and randomness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nlpcal.losses.manifold_mixup as manifold_module
import nlpcal.losses.regmixup as regmixup_module
from nlpcal.functional.mixing import mix_attention_masks
from nlpcal.losses import LossContext, create_loss
from nlpcal.losses._modules import (
    classifier_layer,
    eligible_sites,
    mixing_sites,
    transform_output,
)
from tests.conftest import tiny_batch, tiny_model


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def padded_batch(model: nn.Module, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``tiny_batch`` with the model's own padding token, as a tokenizer would pad."""
    batch = tiny_batch(batch_size)
    pad = model.config.pad_token_id or 0
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, pad)
    return batch


def unpadded_batch() -> dict[str, torch.Tensor]:
    batch = tiny_batch()
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    return batch


@pytest.mark.parametrize("mix_site", ["embeddings", "hidden"])
def test_regmixup_returns_the_models_clean_logits(arch, mix_site) -> None:
    model = tiny_model(arch)
    batch = padded_batch(model)
    loss = create_loss("regmixup", mix_site=mix_site)
    loss.prepare_model(model)
    torch.manual_seed(0)
    out = loss(model, batch, LossContext())
    clean = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(out.logits, clean, atol=1e-5, rtol=1e-4)
    ce = F.cross_entropy(clean, batch["labels"])
    torch.testing.assert_close(out.logs["ce"], ce, atol=1e-5, rtol=1e-4)
    assert no_hooks_left(model)


@pytest.mark.parametrize("mix_site", ["embeddings", "hidden"])
def test_regmixup_with_lambda_one_doubles_the_clean_loss(monkeypatch, mix_site) -> None:
    monkeypatch.setattr(regmixup_module, "sample_lambda", lambda alpha, device: torch.tensor(1.0))
    model = tiny_model("bert")
    batch = unpadded_batch()
    out = create_loss("regmixup", mix_site=mix_site, eta=0.5)(model, batch, LossContext())
    ce = F.cross_entropy(
        model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"]
    )
    torch.testing.assert_close(out.loss, 1.5 * ce, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [[0], [1], [2]])
def test_manifold_mixup_with_lambda_one_is_cross_entropy_at_every_site(monkeypatch, layers) -> None:
    monkeypatch.setattr(manifold_module, "sample_lambda", lambda alpha, device: torch.tensor(1.0))
    model = tiny_model("roberta")
    batch = unpadded_batch()
    loss = create_loss("manifold_mixup", layers=layers)
    loss.prepare_model(model)
    out = loss(model, batch, LossContext())
    clean = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(out.loss, F.cross_entropy(clean, batch["labels"]), atol=1e-6, rtol=0)


def test_manifold_mixup_mixes_the_output_of_the_chosen_site(monkeypatch) -> None:
    calls = []
    original = manifold_module.mix

    def spy(h, perm, lam):
        calls.append((h, perm, lam, original(h, perm, lam)))
        return calls[-1][-1]

    monkeypatch.setattr(manifold_module, "mix", spy)
    model = tiny_model("distilbert")
    sites = mixing_sites(model)
    inputs_of_next = []
    sites[2].register_forward_pre_hook(lambda m, args: inputs_of_next.append(args[0]))
    batch = unpadded_batch()
    torch.manual_seed(0)
    out = create_loss("manifold_mixup", layers=[1])(model, batch, LossContext())

    ((h, perm, lam, mixed),) = calls
    assert h.shape == (8, 12, 32) and sorted(perm.tolist()) == list(range(8)) and 0 < lam < 1
    assert len(inputs_of_next) == 1 and inputs_of_next[0] is mixed
    plain = create_loss("cross_entropy")(model, batch, LossContext()).loss
    assert out.logs["mixed"] == 1 and not torch.allclose(out.loss, plain)


def test_manifold_mixup_feeds_the_union_mask_to_the_model(monkeypatch) -> None:
    unions = []

    def spy(mask, perm):
        unions.append(mix_attention_masks(mask, perm))
        return unions[-1]

    monkeypatch.setattr(manifold_module, "mix_attention_masks", spy)
    model = tiny_model("bert")
    fed = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append(kwargs["attention_mask"]), with_kwargs=True
    )
    batch = tiny_batch()
    torch.manual_seed(1)
    create_loss("manifold_mixup")(model, batch, LossContext())
    assert len(fed) == 1 and torch.equal(fed[0], unions[0])
    assert not torch.equal(unions[0], batch["attention_mask"])  # this batch has ragged padding
    assert torch.equal(batch["attention_mask"], tiny_batch()["attention_mask"])  # input untouched


def test_manifold_mixup_hook_is_removed_when_the_forward_raises() -> None:
    model = tiny_model("bert")

    def explode(module, args):
        raise RuntimeError("boom")

    model.classifier.register_forward_pre_hook(explode)
    for layers in ([0], [2]):
        with pytest.raises(RuntimeError, match="boom"):
            create_loss("manifold_mixup", layers=layers)(model, tiny_batch(), LossContext())
        assert no_hooks_left(model)


def test_mix_prob_draws_whether_a_batch_is_mixed() -> None:
    model = tiny_model("bert")
    loss = create_loss("manifold_mixup", mix_prob=0.5)
    torch.manual_seed(0)
    mixed = [loss(model, tiny_batch(), LossContext()).logs["mixed"].item() for _ in range(40)]
    assert 0.2 < sum(mixed) / len(mixed) < 0.8
    assert set(mixed) == {0.0, 1.0}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_manifold_mixup_is_exact_under_gradient_checkpointing() -> None:
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_model("bert").train()  # checkpointing only acts in train mode (dropout is 0)
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        torch.manual_seed(0)
        create_loss("manifold_mixup", layers=[1])(
            model, tiny_batch(), LossContext()
        ).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for n, g in plain.items():
        torch.testing.assert_close(checkpointed[n], g, atol=1e-6, rtol=1e-5, msg=n)


def test_mixing_layers_deeper_than_the_model_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[5\].*2 encoder layers"):
        create_loss("manifold_mixup", layers=[0, 5]).prepare_model(tiny_model("bert"))


@pytest.mark.parametrize(("n_layers", "expected"), [(1, [0]), (2, [0, 1]), (4, [0, 1, 2])])
def test_default_sites_are_the_embeddings_and_the_first_layers(n_layers, expected) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    sites = mixing_sites(model)
    assert sites[0] is model.bert.embeddings and sites[1:] == list(model.bert.encoder.layer)
    assert eligible_sites(model, None) == [sites[k] for k in expected]
    assert eligible_sites(model, [n_layers]) == [model.bert.encoder.layer[-1]]


def test_embedding_loss_needs_input_embeddings() -> None:
    model = tiny_model("bert")
    model.get_input_embeddings = lambda: None
    with pytest.raises(ValueError, match=r"regmixup.*input embeddings"):
        create_loss("regmixup").prepare_model(model)

    def not_implemented():
        raise NotImplementedError

    model.get_input_embeddings = not_implemented
    with pytest.raises(ValueError, match="input embeddings"):
        create_loss("regmixup").prepare_model(model)
    create_loss("regmixup", mix_site="hidden").prepare_model(model)  # hidden mixing needs none


def test_eta_zero_runs_a_single_clean_forward() -> None:
    model = tiny_model("bert")
    sizes = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(len(kwargs["attention_mask"])), with_kwargs=True
    )
    create_loss("regmixup", eta=0.0)(model, tiny_batch(), LossContext())
    create_loss("regmixup")(model, tiny_batch(), LossContext())
    assert sizes == [8, 16]  # eta=0: the batch alone; otherwise clean and mixed in one pass


def fix_the_draws(monkeypatch, module, lam: float, perms: dict[int, list[int]]) -> None:
    """Make ``module``'s λ draw return ``lam`` and ``torch.randperm(n)`` return ``perms[n]``."""
    monkeypatch.setattr(module, "sample_lambda", lambda alpha, device: torch.tensor(lam))
    monkeypatch.setattr(torch, "randperm", lambda n, device=None: torch.tensor(perms[n]))


PERM = [3, 0, 6, 1, 7, 2, 5, 4]


@pytest.mark.parametrize("mix_site", ["embeddings", "hidden"])
def test_regmixup_matches_a_hand_computation_on_a_padded_batch(arch, monkeypatch, mix_site) -> None:
    model = tiny_model(arch)
    with torch.no_grad():
        classifier_layer(model).weight.mul_(100.0)  # confident logits: CE tells targets apart
    batch = padded_batch(model)
    fix_the_draws(monkeypatch, regmixup_module, 0.3, {8: PERM})
    loss = create_loss(
        "regmixup", eta=0.5, mix_site=mix_site, layers=None if mix_site == "embeddings" else [1]
    )
    loss.prepare_model(model)
    fed = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append(kwargs), with_kwargs=True
    )
    out = loss(model, batch, LossContext())
    handle.remove()

    perm, y, mask = torch.tensor(PERM), batch["labels"], batch["attention_mask"]
    union = torch.maximum(mask, mask[perm])
    assert not torch.equal(union, mask)  # the ragged padding makes the union matter
    (inputs,) = fed  # one forward pass: the clean rows, then the rows to mix
    assert torch.equal(inputs["attention_mask"], torch.cat([mask, union]))
    clean = model(input_ids=batch["input_ids"], attention_mask=mask).logits
    if mix_site == "embeddings":
        embeds = model.get_input_embeddings()(batch["input_ids"])
        mixed_embeds = 0.3 * embeds + 0.7 * embeds[perm]
        torch.testing.assert_close(inputs["inputs_embeds"], torch.cat([embeds, mixed_embeds]))
        mixed = model(inputs_embeds=mixed_embeds, attention_mask=union).logits
    else:
        with transform_output(mixing_sites(model)[1], lambda h: 0.3 * h + 0.7 * h[perm]):
            mixed = model(input_ids=batch["input_ids"], attention_mask=union).logits

    def expected(partner_labels):
        mix_ce = 0.3 * F.cross_entropy(mixed, y) + 0.7 * F.cross_entropy(mixed, partner_labels)
        return F.cross_entropy(clean, y) + 0.5 * mix_ce

    torch.testing.assert_close(out.loss, expected(y[perm]), atol=1e-4, rtol=1e-5)
    # Targets permuted otherwise than the inputs give a clearly different loss.
    assert not torch.allclose(expected(y[perm.argsort()]), out.loss, rtol=0.01)
    assert no_hooks_left(model)
