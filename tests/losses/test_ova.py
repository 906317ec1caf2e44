"""SLOVA one-vs-all: the loss, the probabilities, the OOD score and the bias initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from nlpcal.functional.ova import ova_probabilities
from nlpcal.functional.predictive import predictive_ood_score
from nlpcal.losses import LossContext, create_loss
from nlpcal.losses._modules import classifier_layer
from tests.conftest import tiny_batch, tiny_model


def test_slova_probabilities_match_the_product_formula_on_a_hand_case() -> None:
    z = torch.tensor([[2.0, -1.0, 0.5]])
    s = torch.sigmoid(z)[0].tolist()
    q = [
        s[0] * (1 - s[1]) * (1 - s[2]),
        s[1] * (1 - s[0]) * (1 - s[2]),
        s[2] * (1 - s[0]) * (1 - s[1]),
    ]
    loss = create_loss("ova")
    torch.testing.assert_close(ova_probabilities(z)[0], torch.tensor(q))
    # the transformed logits are log q, unnormalised: softmax renormalises, the confidence
    # (and default OOD score) is the raw max q
    assert not loss.normalized
    log_q = loss.transform_logits(z)
    torch.testing.assert_close(torch.softmax(log_q, -1)[0], torch.tensor(q) / sum(q))
    torch.testing.assert_close(
        predictive_ood_score(log_q, normalized=loss.normalized), torch.tensor([max(q)])
    )


def test_ood_score_is_low_when_no_class_or_every_class_fires() -> None:
    loss = create_loss("ova")
    z = torch.tensor([[6.0, -6.0, -6.0], [-6.0, -6.0, -6.0], [6.0, 6.0, 6.0]])
    score = predictive_ood_score(loss.transform_logits(z), normalized=loss.normalized)
    assert score[0] > 0.95 and score[1] < 0.01 and score[2] < 0.01


def test_loss_is_the_sum_of_binary_cross_entropies() -> None:
    model = tiny_model("bert")
    batch = tiny_batch()
    out = create_loss("ova")(model, batch, LossContext())
    s = torch.sigmoid(out.logits.detach().float())
    on = torch.nn.functional.one_hot(batch["labels"], 3).bool()
    expected = -(torch.where(on, s.log(), (1 - s).log())).sum(-1).mean()
    torch.testing.assert_close(out.loss.detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("arch", "num_labels"), [("bert", 2), ("roberta", 3), ("distilbert", 5)])
def test_bias_init_makes_every_sigmoid_about_one_over_k(arch, num_labels) -> None:
    model = tiny_model(arch, num_labels=num_labels)
    create_loss("ova").prepare_model(model)
    bias = classifier_layer(model).bias
    torch.testing.assert_close(bias, torch.full((num_labels,), -math.log(num_labels - 1)))
    batch = tiny_batch(num_labels=num_labels)
    with torch.no_grad():
        z = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (torch.sigmoid(z) - 1 / num_labels).abs().max() < 0.05


def test_classifier_finder_picks_the_output_layer() -> None:
    bert, roberta, distil = tiny_model("bert"), tiny_model("roberta"), tiny_model("distilbert")
    assert classifier_layer(bert) is bert.classifier
    assert classifier_layer(roberta) is roberta.classifier.out_proj
    assert classifier_layer(distil) is distil.classifier


def test_ova_uses_the_exponential_calibrator_and_has_no_strength() -> None:
    loss = create_loss("ova")
    assert loss.default_calibrator == "exponential" and loss.strength is None
    assert create_loss("cross_entropy").default_calibrator == "temperature"


def test_bias_of_a_model_trained_with_ova_is_kept():
    loss = create_loss("ova")
    model = tiny_model("bert")
    model.config.nlpcal_loss = "ova"
    with torch.no_grad():
        classifier_layer(model).bias.fill_(0.7)
    loss.prepare_model(model)
    assert torch.all(classifier_layer(model).bias == 0.7)
