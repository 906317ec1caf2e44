"""Annealing Double-Head: the attached head, its initialisation, schedule and training signal."""

from __future__ import annotations

import pytest
import torch

from nlpcal.losses import LossContext, create_loss
from nlpcal.losses.double_head import HEAD_NAME, TemperatureHead
from tests.conftest import tiny_batch, tiny_model


def prepared(arch: str = "bert", **kwargs):
    loss = create_loss("double_head", **kwargs)
    model = tiny_model(arch)
    loss.prepare_model(model)
    return loss, model


def test_head_is_a_submodule_seen_by_optimizer_and_checkpoints(arch) -> None:
    loss, model = prepared(arch)
    head = getattr(model, HEAD_NAME)
    assert isinstance(head, TemperatureHead)
    head_params = {id(p) for p in head.parameters()}
    assert head_params <= {id(p) for p in model.parameters()}
    assert any(key.startswith(HEAD_NAME + ".") for key in model.state_dict())
    loss.prepare_model(model)  # preparing again keeps the trained head
    assert getattr(model, HEAD_NAME) is head


def test_temperature_is_one_at_initialisation() -> None:
    loss, model = prepared()
    z = torch.randn(16, 3) * 10
    torch.testing.assert_close(getattr(model, HEAD_NAME)(z), torch.ones(16))
    torch.testing.assert_close(loss.transform_logits(z, model), z)
    out = loss(model, tiny_batch(), LossContext())
    torch.testing.assert_close(out.logs["temperature"], torch.tensor(1.0))


@pytest.mark.parametrize(
    ("anneal_fraction", "progress", "beta"),
    [
        (0.5, 0.0, 0.0),
        (0.5, 0.1, 0.2),
        (0.5, 0.25, 0.5),
        (0.5, 0.5, 1.0),
        (0.5, 1.0, 1.0),
        (0.2, 0.1, 0.5),
        (1.0, 0.9, 0.9),
        (0.0, 0.0, 1.0),
    ],
)
def test_annealing_schedule(anneal_fraction, progress, beta) -> None:
    assert create_loss("double_head", anneal_fraction=anneal_fraction).beta(
        progress
    ) == pytest.approx(beta)


def test_applied_temperature_follows_the_schedule() -> None:
    loss, model = prepared()
    with torch.no_grad():
        getattr(model, HEAD_NAME).out.bias.add_(2.0)  # T(x) ≈ 3 whatever x
    out = loss(model, tiny_batch(), LossContext(progress=0.125))  # β = 0.25
    t = out.logs["temperature"]
    assert t > 2
    torch.testing.assert_close(out.logs["applied_temperature"], 0.75 + 0.25 * t)


def test_backbone_gradients_are_those_of_cross_entropy() -> None:
    loss, model = prepared()
    ce_model = tiny_model("bert")
    batch = tiny_batch()
    loss(model, batch, LossContext()).loss.backward()
    create_loss("cross_entropy")(ce_model, batch, LossContext()).loss.backward()
    for name, p in ce_model.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).grad, p.grad, atol=1e-6, rtol=0)
    assert getattr(model, HEAD_NAME).out.weight.grad.abs().sum() > 0


def test_head_learns_a_temperature_above_one_for_an_over_confident_model() -> None:
    loss, model = prepared()
    with torch.no_grad():
        model.classifier.weight.mul_(200.0)  # large logits with random labels: over-confident
    head = getattr(model, HEAD_NAME)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    batch = tiny_batch(batch_size=32)
    for _ in range(30):
        optimizer.zero_grad()
        loss(model, batch, LossContext()).loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert head(logits).mean() > 2.0


def test_annealed_head_loss_gives_no_head_gradient_at_the_start() -> None:
    loss, model = prepared(anneal_head_loss=True)
    loss(model, tiny_batch(), LossContext(progress=0.0)).loss.backward()
    assert not getattr(model, HEAD_NAME).out.bias.grad.any()


def test_transform_logits_needs_a_prepared_model() -> None:
    loss = create_loss("double_head")
    with pytest.raises(ValueError, match="prepare_model"):
        loss.transform_logits(torch.zeros(2, 3), tiny_model("bert"))
    with pytest.raises(ValueError, match="needs the model"):
        loss.transform_logits(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="prepare_model"):
        loss(tiny_model("bert"), tiny_batch(), LossContext())


def test_a_mismatched_head_is_rejected() -> None:
    _, model = prepared(hidden_size=16)
    with pytest.raises(ValueError, match="hidden_size=64"):
        create_loss("double_head").prepare_model(model)
