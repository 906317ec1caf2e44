"""Model discovery and output hooks shared by the losses."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from nlpcal.losses import LossContext, create_loss
from nlpcal.losses._modules import (
    classifier_layer,
    mixing_sites,
    num_labels,
    output_layer,
    transform_output,
    unwrap_model,
)
from tests.conftest import tiny_batch, tiny_model


class _Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the model is ``.module`` and forward delegates."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, **kwargs):
        return self.module(**kwargs)


class _Returns(nn.Module):
    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def forward(self, x: torch.Tensor):
        return self.make(x)


def test_mixing_sites_of_each_architecture(arch) -> None:
    model = tiny_model(arch)
    sites = mixing_sites(model)
    assert len(sites) == 3 and sites[0] is model.base_model.embeddings
    assert all(
        type(s).__name__ in ("BertLayer", "RobertaLayer", "TransformerBlock") for s in sites[1:]
    )


def test_wrapped_models_are_looked_into_and_still_trained_through_the_wrapper() -> None:
    model = tiny_model("distilbert")
    wrapped = _Wrapper(_Wrapper(model))
    assert unwrap_model(wrapped) is model
    assert mixing_sites(wrapped)[0] is model.distilbert.embeddings
    assert num_labels(wrapped) == 3 and classifier_layer(wrapped) is model.classifier
    for name in ("regmixup", "manifold_mixup", "double_head", "ova"):
        loss = create_loss(name)
        loss.prepare_model(wrapped)
        torch.manual_seed(0)
        assert torch.isfinite(loss(wrapped, tiny_batch(), LossContext()).loss)


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x,
        lambda x: (x, "extra"),
        lambda x: BaseModelOutput(last_hidden_state=x, hidden_states=(x,)),
    ],
    ids=["tensor", "tuple", "model_output"],
)
def test_transform_output_replaces_the_hidden_state_of_any_output_type(make) -> None:
    module = _Returns(make)
    x = torch.ones(2, 3)
    with transform_output(module, lambda h: 3 * h):
        out = module(x)
    hidden = out if isinstance(out, torch.Tensor) else out[0]
    assert torch.equal(hidden, 3 * x)
    if isinstance(out, BaseModelOutput):
        assert torch.equal(out.last_hidden_state, 3 * x) and out.hidden_states[0] is x
    if isinstance(out, tuple):
        assert out[1] == "extra"
    assert not module._forward_hooks


def test_transform_output_rejects_an_unknown_output_type_and_removes_its_hook() -> None:
    module = _Returns(lambda x: "not a tensor")
    with pytest.raises(TypeError, match="str"), transform_output(module, lambda h: h):
        module(torch.ones(1))
    assert not module._forward_hooks


def test_unknown_layouts_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="cannot find the hidden-state mixing sites of Linear"):
        mixing_sites(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=re.escape("config.num_labels")):
        num_labels(nn.Linear(2, 2))
    model = tiny_model("bert")
    model.classifier = nn.Linear(32, 7)
    with pytest.raises(ValueError, match=re.escape("out_features == config.num_labels == 3")):
        classifier_layer(model)
    with pytest.raises(ValueError, match="mixing sites"):
        create_loss("manifold_mixup").prepare_model(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "arch, path",
    [("bert", "classifier"), ("roberta", "classifier.out_proj"), ("distilbert", "classifier")],
)
def test_output_layer_is_the_linear_layer_that_outputs_the_logits(arch, path):
    model = tiny_model(arch)
    name, layer = output_layer(_Wrapper(model))
    assert name == path and layer is model.get_submodule(path)
    outputs = {}
    layer.register_forward_hook(lambda _m, _a, out: outputs.setdefault("z", out))
    batch = tiny_batch()
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.equal(outputs["z"], logits)


def test_output_layer_refuses_an_unknown_head_and_a_later_linear_layer():
    model = tiny_model("bert")
    model.head = model.classifier
    del model.classifier
    with pytest.raises(
        ValueError, match=r"cannot find the output layer of BertForSequenceClassification"
    ):
        output_layer(model)
    model = tiny_model("bert")
    model.extra = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"another nn.Linear with 3 outputs after it \(`extra`\)"):
        output_layer(model)
