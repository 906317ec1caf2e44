"""The timm adapter: exact logits, features, saving, errors; every loss and calibrator on images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nlpcal import CalibratedTrainer, CalibrationArguments, load_calibrated
from nlpcal.adapters.timm import TimmForImageClassification, create_timm_classifier
from nlpcal.losses import LossContext, create_loss, list_losses
from nlpcal.losses.sites import model_sites
from nlpcal.robustness import example_robustness
from tests.adapters.conftest import NUM_LABELS, tiny_image_batch, tiny_image_model

timm = pytest.importorskip("timm")

IMAGE_LOSSES = [name for name in list_losses() if name != "cme"]


def test_logits_equal_the_raw_timm_model_exactly(image_arch) -> None:
    model = tiny_image_model(image_arch)
    x = tiny_image_batch(image_arch)["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        assert torch.equal(out.logits, model.timm_model(x))
        pre = model.timm_model.forward_head(model.timm_model.forward_features(x), pre_logits=True)
    assert torch.equal(model_sites(model).features(out), pre.flatten(1))
    assert out.hidden_states[-1].shape == (x.shape[0], model.timm_model.num_features)


def test_a_wrapped_module_keeps_its_weights_and_logits() -> None:
    raw = timm.create_model("test_resnet", pretrained=False, num_classes=4, in_chans=1).eval()
    x = torch.rand(3, 1, 28, 28)
    model = create_timm_classifier(raw, ["a", "b", "c", "d"]).eval()
    assert torch.equal(model(pixel_values=x).logits, raw(x))
    assert model.config.id2label == {0: "a", 1: "b", 2: "c", 3: "d"}
    assert model.config.num_channels == 1
    assert model.config.architecture == "test_resnet"
    create_timm_classifier(raw, 2)  # a different class count resets the classifier
    assert raw.get_classifier().out_features == 2


def test_save_and_load_round_trip(tmp_path) -> None:
    from transformers import AutoModelForImageClassification

    model = tiny_image_model()
    x = tiny_image_batch()["pixel_values"]
    model.save_pretrained(tmp_path)
    for loaded in (
        TimmForImageClassification.from_pretrained(tmp_path),
        AutoModelForImageClassification.from_pretrained(tmp_path),
    ):
        assert all(
            torch.equal(a, b)
            for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
        )
        # Same weights; memory-mapped tensors may take another CPU kernel path (last bits).
        assert torch.allclose(
            loaded.eval()(pixel_values=x).logits, model(pixel_values=x).logits, atol=1e-6, rtol=0
        )
        assert loaded.config.image_size == [28, 28]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"no model named 'resnet1'; close matches: .*resnet18"):
        create_timm_classifier("resnet1", 3)
    model = tiny_image_model()
    with pytest.raises(
        ValueError, match=r"shape \(B, 1, H, W\).*1-channel images.*\(2, 3, 28, 28\)"
    ):
        model(pixel_values=torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="must be 28x28 images for this model, got 32x32"):
        model(pixel_values=torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="floating point"):
        model(pixel_values=torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="lacks timm's model contract: no forward_features"):
        create_timm_classifier(nn.Linear(2, 2), 2)
    vit = tiny_image_model("test_vit")
    with pytest.raises(ValueError, match=r"divisible by the patch size \(16, 16\).*got 28x28"):
        vit(pixel_values=torch.rand(1, 3, 28, 28))


@pytest.mark.parametrize("name", IMAGE_LOSSES)
def test_every_loss_trains_an_image_model(name) -> None:
    model = tiny_image_model().train()
    loss = create_loss(name)
    loss.prepare_model(model)
    batch = tiny_image_batch()
    if name == "ar_adals":
        batch["example_index"] = torch.arange(len(batch["labels"]))
    torch.manual_seed(0)
    out = loss(model, batch, LossContext(progress=0.5))
    assert torch.isfinite(out.loss) and out.logits.shape == (6, NUM_LABELS)
    out.loss.backward()
    backbone = [p for n, p in model.named_parameters() if n.startswith("timm_model.")]
    assert all(p.grad is not None for p in backbone)


@pytest.mark.parametrize("name", [n for n in IMAGE_LOSSES if create_loss(n).strength])
def test_zero_strength_is_cross_entropy_on_images(name) -> None:
    loss = create_loss(name, **{create_loss(name).strength: 0.0})
    model = tiny_image_model()
    loss.prepare_model(model)
    batch = tiny_image_batch()
    if name == "ar_adals":
        batch["example_index"] = torch.arange(len(batch["labels"]))
    expected = nn.functional.cross_entropy(
        model(pixel_values=batch["pixel_values"]).logits, batch["labels"]
    )
    assert torch.allclose(loss(model, batch, LossContext()).loss, expected, atol=1e-6)


def test_mixup_sites_are_pixels_and_stages() -> None:
    model = tiny_image_model()
    stages = model_sites(model).mixing_sites()
    assert stages[0] is model.timm_model.act1 and stages[-1] is model.timm_model.layer4
    batch = tiny_image_batch()
    for loss in (
        create_loss("regmixup", mix_site="hidden", layers=[0, 4]),
        create_loss("manifold_mixup", layers=[4]),
    ):
        loss.prepare_model(model)
        assert torch.isfinite(loss(model, batch, LossContext()).loss)
    with pytest.raises(ValueError, match=r"layers must lie in \[0, 4\]"):
        create_loss("manifold_mixup", layers=[5]).prepare_model(model)


@pytest.mark.parametrize("mode", ["margin", "noise", "pgd"])
def test_robustness_is_measured_on_pixels(mode) -> None:
    model = tiny_image_model()
    batch = tiny_image_batch()
    options = {"search_steps": 2, "pgd_steps": 2} if mode == "pgd" else {}
    values = example_robustness(
        model, {"pixel_values": batch["pixel_values"]}, batch["labels"], mode, **options
    )
    assert values.shape == (6,) and bool(torch.isfinite(values).all())
    with torch.no_grad():
        wrong = model(pixel_values=batch["pixel_values"]).logits.argmax(1) != batch["labels"]
    if mode != "noise":
        assert bool((values[wrong] == 0).all())


def _args(tmp_path, **overrides) -> CalibrationArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=2e-3,
        max_steps=6,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return CalibrationArguments(**defaults)


@pytest.fixture(scope="module")
def digits():
    from nlpcal.data import load_source

    data = load_source("image:mnist/sample").train_test_split(test_size=200, seed=0)
    return data["train"], data["test"]


def test_trainer_calibrators_and_saving_on_images(tmp_path, digits) -> None:
    train, held = digits
    model = create_timm_classifier("test_resnet", train.features["label"].names, 1, (28, 28))
    args = _args(
        tmp_path,
        posthoc=["temperature", "vector", "adats"],
        posthoc_kwargs={"adats": {"epochs": 2}},
    )
    trainer = CalibratedTrainer(model, args, train_dataset=train, calibration_dataset=held)
    trainer.train()
    assert set(trainer.calibrators) == {"temperature", "vector", "adats"}
    preds = trainer.predictions(held, features=True)
    assert preds.features.shape == (200, model.timm_model.num_features)
    assert preds.labels.tolist() == held["label"]
    outputs = trainer.variant_outputs(preds)
    assert all(torch.isfinite(o.class_probs).all() for o in outputs.values())

    trainer.save_model(str(tmp_path / "saved"))
    for variant in ("temperature", "adats"):
        loaded = load_calibrated(tmp_path / "saved", calibrator=variant)
        assert isinstance(loaded.model, TimmForImageClassification)
        x = torch.tensor(held["pixel_values"][:16])
        expected = trainer.calibrators[variant](preds.logits[:16], preds.features[:16])
        assert torch.allclose(loaded(pixel_values=x), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["ova", "double_head", "ar_adals", "manifold_mixup", "regmixup"])
def test_trainer_runs_each_method_on_images(tmp_path, digits, name) -> None:
    train, held = digits
    model = create_timm_classifier("test_resnet", train.features["label"].names, 1, (28, 28))
    kwargs = (
        {"num_strata": 2, "refresh_steps": 2, "adaptation_samples": 20}
        if name == "ar_adals"
        else {}
    )
    args = _args(tmp_path, calibration_loss=name, loss_kwargs=kwargs, max_steps=4)
    trainer = CalibratedTrainer(model, args, train_dataset=train, calibration_dataset=held)
    trainer.train()
    preds = trainer.predictions(held)
    assert preds.logits.shape == (200, 10) and bool(torch.isfinite(preds.logits).all())
