"""CME: the loss against a hand-assembled reference, its bases, and training runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlpcal import CalibratedTrainer, load_calibrated
from nlpcal.explain import create_attribution
from nlpcal.functional.pairwise import correct_wrong_penalty, explanation_scores
from nlpcal.losses import LossContext, create_loss
from nlpcal.losses._modules import classifier_layer
from nlpcal.losses.cme import BASES
from tests.conftest import tiny_batch, tiny_model
from tests.test_trainer import make_args, params, signal_dataset


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def reference_loss(model, batch, method: str, lam: float, base_loss) -> torch.Tensor:
    """CME assembled from its parts: the attribution computed separately, then held constant."""
    labels = batch["labels"]
    attribution = create_attribution(method)(model, batch, labels)
    if method == "attention_gradient":  # CME's own forward pass runs with eager attention
        model.config._attn_implementation = "eager"
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    confidence, prediction = logits.softmax(dim=-1).max(dim=-1)
    scores = explanation_scores(attribution, confidence, batch["attention_mask"])
    penalty = correct_wrong_penalty(scores, prediction == labels)
    return base_loss(logits, labels) + lam * penalty


@pytest.mark.parametrize("method", ["attention_gradient", "saliency"])
@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_penalty_gradient_reaches_the_confidence_not_the_attribution(method, arch) -> None:
    batch = tiny_batch(batch_size=12, seed=4)
    loss = create_loss("cme", lam=3.0, method=method)
    model, ref_model = sharp_model(arch), sharp_model(arch)

    out = loss(model, batch, LossContext())
    ref = reference_loss(ref_model, batch, method, 3.0, F.cross_entropy)
    out.loss.backward()
    ref.backward()

    assert out.logs["cme_penalty"] > 0  # the fixture has pairs in the wrong order
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=1e-5)
    ours, theirs = grads(model), grads(ref_model)
    for name, g in theirs.items():
        torch.testing.assert_close(ours[name], g, atol=1e-6, rtol=1e-4, msg=name)


def sharp_model(arch: str):
    """A tiny model with a peaked last attention and large logits, so attributions are uneven
    and the attention path of the penalty's gradient is far above rounding."""
    model = tiny_model(arch)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("layer.1.attention.self.query", "pooler.dense", "classifier.dense")):
                module.weight.mul_(30)
        classifier_layer(model).weight.mul_(100)
    return model


def test_through_attention_adds_the_attention_factor_gradient() -> None:
    batch = tiny_batch(batch_size=12, seed=4)
    detached, through = sharp_model("bert"), sharp_model("bert")
    ctx = LossContext()
    a = create_loss("cme", lam=100.0)(detached, batch, ctx)
    b = create_loss("cme", lam=100.0, through_attention=True)(through, batch, ctx)
    a.loss.backward()
    b.loss.backward()
    assert a.logs["cme_penalty"] > 0
    torch.testing.assert_close(a.loss, b.loss)  # same value, different gradient
    key = "bert.encoder.layer.1.attention.self.key.weight"  # feeds the last attention
    difference = (grads(detached)[key] - grads(through)[key]).abs().max()
    assert difference > 0.01 * grads(detached)[key].abs().max()
    for n in ("classifier.weight", "bert.pooler.dense.weight"):  # downstream of the attention
        torch.testing.assert_close(grads(detached)[n], grads(through)[n])


def test_label_smoothing_base_with_its_own_kwargs() -> None:
    batch = tiny_batch(batch_size=12, seed=4)
    smoothing = create_loss("label_smoothing", alpha=0.2)
    loss = create_loss("cme", lam=2.0, base="label_smoothing", base_kwargs={"alpha": 0.2})
    model = tiny_model("bert")

    out = loss(model, batch, LossContext())
    zero = create_loss("cme", lam=0.0, base="label_smoothing", base_kwargs={"alpha": 0.2})
    plain = smoothing(model, batch, LossContext())
    torch.testing.assert_close(zero(model, batch, LossContext()).loss, plain.loss)
    # the attention-gradient attribution is that of the base loss: label smoothing's gradient
    with create_attribution("attention_gradient").recording(model) as rec:
        summed = smoothing.compute(model, batch, LossContext(num_items_in_batch=1))
    attribution = create_attribution("attention_gradient").attribute(
        model, batch, batch["labels"], summed.loss, rec
    )
    confidence, prediction = summed.logits.softmax(dim=-1).max(dim=-1)
    scores = explanation_scores(attribution.detach(), confidence, batch["attention_mask"])
    expected = plain.loss + 2.0 * correct_wrong_penalty(scores, prediction == batch["labels"])
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-5)
    assert set(out.logs) >= {"ce", "smoothed_ce", "cme_penalty"}


def test_no_wrong_prediction_means_no_penalty() -> None:
    model = tiny_model("bert")
    batch = tiny_batch()
    batch["labels"] = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
    out = create_loss("cme", lam=5.0)(model, batch, LossContext())
    ce = create_loss("cross_entropy")(model, batch, LossContext())
    assert out.logs["cme_penalty"] == 0 and out.logs["cme_score_wrong"] == 0
    torch.testing.assert_close(out.loss, ce.loss)


def test_a_padding_only_example_is_refused_before_the_forward() -> None:
    batch = tiny_batch()
    batch["attention_mask"][2] = 0
    with pytest.raises(ValueError, match=r"only of padding \(rows \[2\]\)"):
        create_loss("cme")(tiny_model("bert"), batch, LossContext())


def test_every_other_loss_is_refused_as_base_and_the_message_lists_the_allowed() -> None:
    assert BASES == ("cross_entropy", "label_smoothing")
    for name in ("ova", "regmixup", "double_head", "cme"):
        with pytest.raises(ValueError, match=r"base must be one of \['cross_entropy', 'label_s"):
            create_loss("cme", base=name)


def test_bfloat16_autocast_gives_a_finite_loss_and_gradients() -> None:
    model = tiny_model("bert").train()
    batch = tiny_batch(batch_size=12, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = create_loss("cme", lam=1.0)(model, batch, LossContext())
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(g).all() for g in grads(model).values())


@pytest.mark.parametrize("method", ["attention_gradient", "integrated_gradients"])
def test_trainer_runs_with_gradient_accumulation_and_saves_the_loss(tmp_path, method) -> None:
    model = tiny_model("bert")
    args = make_args(
        tmp_path,
        calibration_loss="cme",
        loss_kwargs={"method": method, "method_kwargs": {"n_steps": 2}}
        if method == "integrated_gradients"
        else {"method": method},
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=4,
        logging_steps=2,
    )
    trainer = CalibratedTrainer(model, args, train_dataset=signal_dataset(32))
    before = params(model)
    trainer.train()
    after = params(model)

    assert model.config._attn_implementation == "sdpa"
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    logged = [e for e in trainer.state.log_history if "cme/cme_penalty" in e]
    assert len(logged) == 2 and all(e["loss"] == e["loss"] for e in logged)  # finite, not NaN

    trainer.save_model(str(tmp_path / "saved"))
    loaded = load_calibrated(tmp_path / "saved")
    assert loaded.loss.config() == trainer.calibration_loss.config()


def test_accumulation_sums_the_penalties_of_the_micro_batches() -> None:
    """Pairs never cross micro-batches: 2 x 6 accumulated is the mean base loss over 12 plus
    each half's penalty at weight 6/12, which differs from the penalty over all 12."""
    batch = tiny_batch(batch_size=12, seed=4)
    model = sharp_model("bert")
    loss = create_loss("cme", lam=10.0)
    whole = loss(model, batch, LossContext())
    halves = [{k: v[part] for k, v in batch.items()} for part in (slice(0, 6), slice(6, 12))]
    alone = [loss(model, half, LossContext()) for half in halves]
    accumulated = sum(loss(model, h, LossContext(num_items_in_batch=12)).loss for h in halves)

    expected = whole.logs["ce"] + 10.0 * sum(0.5 * a.logs["cme_penalty"] for a in alone)
    torch.testing.assert_close(accumulated.detach(), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(accumulated, whole.loss, atol=1e-4)
