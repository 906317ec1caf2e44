"""Annealing Double-Head: the attached head, its initialisation, schedule and training signal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

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
    loss(model, batch, LossContext(progress=1.0)).loss.backward()
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
        loss(model, batch, LossContext(progress=1.0)).loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert head(logits).mean() > 2.0


def varying_temperature(model) -> TemperatureHead:
    """Give the head a temperature that differs from 1 and depends on the logits."""
    head = getattr(model, HEAD_NAME)
    with torch.no_grad():
        head.out.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
        head.out.bias.add_(1.0)
    return head


def head_gradients(loss, model, head, batch, progress: float) -> dict[str, torch.Tensor]:
    head.zero_grad()
    loss(model, batch, LossContext(progress=progress)).loss.backward()
    return {name: p.grad.clone() for name, p in head.named_parameters()}


def test_annealing_scales_the_head_gradient_from_zero_to_the_full_nll() -> None:
    loss, model = prepared()
    head = varying_temperature(model)
    batch = tiny_batch()
    with torch.no_grad():
        z = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert (head(z) - 1).abs().min() > 0.3

    at_start = head_gradients(loss, model, head, batch, progress=0.0)
    assert all(not g.any() for g in at_start.values())

    for progress, beta in ((0.125, 0.25), (1.0, 1.0)):
        grads = head_gradients(loss, model, head, batch, progress)
        head.zero_grad()
        applied = (1 - beta) + beta * head(z)
        F.cross_entropy(z / applied[:, None], batch["labels"]).backward()
        for name, p in head.named_parameters():
            assert p.grad.abs().sum() > 0, name
            torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_predictions_use_the_last_training_beta_until_training_ends() -> None:
    loss, model = prepared(anneal_fraction=1.0)
    head = varying_temperature(model)
    batch = tiny_batch()
    z = torch.randn(5, 3) * 4
    t = head(z).detach()
    torch.testing.assert_close(loss.transform_logits(z, model), z / t[:, None])  # not trained yet

    loss(model, batch, LossContext(progress=0.9))  # eval mode: not a training step, β stays 1
    torch.testing.assert_close(loss.transform_logits(z, model), z / t[:, None])
    model.train()
    loss(model, batch, LossContext(progress=0.25))  # a training step at β = 0.25
    mid_training = loss.transform_logits(z, model)
    torch.testing.assert_close(mid_training, z / (0.75 + 0.25 * t)[:, None])
    assert not torch.allclose(mid_training, z / t[:, None])

    (callback,) = loss.callbacks()
    callback.on_train_end(None, None, None)
    torch.testing.assert_close(loss.transform_logits(z, model), z / t[:, None])
    reloaded = create_loss("double_head", **loss.config())
    torch.testing.assert_close(reloaded.transform_logits(z, model), z / t[:, None])


def test_the_trainer_ends_the_annealing(tmp_path) -> None:
    from nlpcal import CalibratedTrainer
    from tests.test_trainer import make_args, signal_dataset

    loss = create_loss("double_head", anneal_fraction=1.0)  # β = 0, then 0.5 at the last step
    args = make_args(tmp_path, max_steps=2, posthoc="none")
    trainer = CalibratedTrainer(tiny_model("bert"), args, loss=loss, train_dataset=signal_dataset())
    z = torch.randn(5, 3)
    seen = []
    trainer.add_callback(_RecordPredictions(loss, z, seen))
    trainer.train()
    head = trainer.model.nlpcal_calibration_head
    t = head(z.to(trainer.model.device)).detach().cpu()
    (first, _), (second, t_second) = seen
    torch.testing.assert_close(first, z)
    torch.testing.assert_close(second, z / (0.5 + 0.5 * t_second)[:, None])
    torch.testing.assert_close(loss.transform_logits(z, trainer.model).cpu(), z / t[:, None])


class _RecordPredictions(TrainerCallback):
    """Records the predictive logits of ``z`` and the head's ``T(z)`` after each step."""

    def __init__(self, loss, z: torch.Tensor, seen: list) -> None:
        self.loss, self.z, self.seen = loss, z, seen

    def on_step_end(self, args, state, control, model=None, **kwargs):
        z = self.z.to(model.device)
        with torch.no_grad():
            predictive = self.loss.transform_logits(z, model).cpu()
            self.seen.append((predictive, getattr(model, HEAD_NAME)(z).cpu()))


def test_the_deprecated_anneal_head_loss_option_is_accepted_and_ignored() -> None:
    old_config = {"hidden_size": 64, "head_weight": 1.0, "anneal_fraction": 0.5, "eps": 0.01}
    for value in (False, True):
        with pytest.warns(DeprecationWarning, match="anneal_head_loss"):
            loss = create_loss("double_head", **old_config, anneal_head_loss=value)
        assert loss.config() == old_config == create_loss("double_head").config()


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
