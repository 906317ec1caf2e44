"""Matching a model's classes to a dataset's: LabelMap, align_labels, model_label_names."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value

from nlpcal.data import LabelMap, align_labels, model_label_names

NLI = ["entailment", "neutral", "contradiction"]
BINARY_NLI = ["entailment", "not_entailment"]
MERGE = {"neutral": "not_entailment", "contradiction": "not_entailment"}


def _both_lists(model, dataset):
    return re.escape(f"Model labels: {model}; set labels: {dataset}")


def _merged_by_loop(probs, model_to_set, n_set):
    """Reference: add up each model class's probability into its set class, one at a time."""
    out = np.zeros((len(probs), n_set))
    for row, values in enumerate(probs):
        for model_class, value in enumerate(values):
            out[row, model_to_set[model_class]] += value
    return out


def test_names_match_ignoring_case_and_order():
    label_map = LabelMap(["NEGATIVE", "POSITIVE"], ["positive", "negative"])
    assert label_map.model_to_set == (1, 0)
    assert not label_map.is_identity
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    np.testing.assert_array_equal(label_map.apply_probs(probs), [[0.8, 0.2], [0.1, 0.9]])
    assert label_map.describe() == (
        "metrics computed in the set's label space: positive ← POSITIVE; negative ← NEGATIVE"
    )


def test_identity():
    same = LabelMap(["neg", "pos"], ["neg", "pos"])
    assert same.is_identity
    assert same.describe() == "model and set share the labels: neg, pos"
    np.testing.assert_array_equal(same.matrix, np.eye(2))
    recased = LabelMap(["Neg", "Pos"], ["neg", "pos"])
    assert recased.is_identity
    assert recased.describe().endswith("neg ← Neg; pos ← Pos")


def test_renames_give_generic_labels_their_names():
    label_map = LabelMap(
        ["LABEL_0", "LABEL_1"],
        ["negative", "positive"],
        {"label_0": "Negative", "LABEL_1": "positive"},
    )
    assert label_map.model_to_set == (0, 1)
    assert label_map.is_identity
    assert repr(label_map) == "LabelMap({'LABEL_0': 'negative', 'LABEL_1': 'positive'})"


def test_renames_override_equal_names():
    swapped = LabelMap(["neg", "pos"], ["neg", "pos"], {"neg": "pos", "pos": "neg"})
    assert swapped.model_to_set == (1, 0)


def test_merge_sums_probabilities():
    label_map = LabelMap(NLI, BINARY_NLI, MERGE)
    assert label_map.model_to_set == (0, 1, 1)
    assert not label_map.is_identity
    np.testing.assert_array_equal(label_map.matrix, [[1, 0], [0, 1], [0, 1]])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.25, 0.5]])
    merged = label_map.apply_probs(probs)
    np.testing.assert_allclose(merged, [[0.7, 0.3], [0.1, 0.9], [0.25, 0.75]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        merged, _merged_by_loop(probs, label_map.model_to_set, 2), atol=1e-15
    )
    np.testing.assert_allclose(merged.sum(axis=-1), 1.0, atol=1e-15)
    assert label_map.describe() == (
        "metrics computed in the set's label space: entailment ← entailment; "
        "not_entailment ← neutral + contradiction"
    )


def test_merge_of_tensors_keeps_dtype_device_and_leading_dimensions():
    label_map = LabelMap(["a", "b", "c", "d"], ["x", "y"], {"a": "x", "b": "y", "c": "x", "d": "y"})
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 5, 4, generator=generator), dim=-1)
    merged = label_map.apply_probs(probs)
    assert merged.shape == (3, 5, 2)
    assert merged.dtype == torch.float32
    expected = torch.stack([probs[..., 0] + probs[..., 2], probs[..., 1] + probs[..., 3]], dim=-1)
    torch.testing.assert_close(merged, expected)
    doubled = label_map.apply_probs(probs.double())
    assert doubled.dtype == torch.float64
    as_numpy = label_map.apply_probs(probs.numpy())
    assert as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, expected.numpy(), rtol=1e-6)


def test_apply_probs_checks_its_input():
    label_map = LabelMap(NLI, BINARY_NLI, MERGE)
    with pytest.raises(ValueError, match=r"shape \(4, 2\); expected a last dimension of 3"):
        label_map.apply_probs(np.ones((4, 2)))
    with pytest.raises(ValueError, match="floating point"):
        label_map.apply_probs(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        label_map.apply_probs([[0.2, 0.3, 0.5]])


@pytest.mark.parametrize(
    ("model", "dataset", "renames", "problem"),
    [
        (
            NLI,
            BINARY_NLI,
            {"neutral": "not_entailment"},
            "the model classes ['contradiction'] have no class in the set",
        ),
        (
            ["neg", "pos"],
            ["neg", "neutral", "pos"],
            None,
            "the set classes ['neutral'] receive no model class",
        ),
        (["pos", "POS"], ["pos"], None, "the model labels 'pos' and 'POS' are equal ignoring case"),
        (
            ["neg", "pos"],
            ["Neg", "neg", "pos"],
            None,
            "the set labels 'Neg' and 'neg' are equal ignoring case",
        ),
        (
            ["neg", "pos"],
            ["neg", "pos"],
            {"neg": "pos", "NEG": "neg"},
            "the renames 'neg' and 'NEG' are equal ignoring case",
        ),
        (
            NLI,
            BINARY_NLI,
            {"neutrall": "not_entailment"},
            "names 'neutrall', which is not a model label",
        ),
        (
            NLI,
            BINARY_NLI,
            {"neutral": "not_entailed"},
            "names 'not_entailed', which is not a set label",
        ),
        (["neg", "neg"], ["neg"], None, "label names must be unique"),
        ([], ["neg"], None, "the label set is empty"),
    ],
)
def test_refusals_show_both_label_lists(model, dataset, renames, problem):
    with pytest.raises(ValueError, match=re.escape(problem) + ".*" + _both_lists(model, dataset)):
        LabelMap(model, dataset, renames)


def test_model_label_names_and_from_model():
    from transformers import BertConfig

    config = BertConfig(id2label={0: "NEGATIVE", 1: "POSITIVE"})
    assert model_label_names(config) == ["NEGATIVE", "POSITIVE"]
    model = SimpleNamespace(config=SimpleNamespace(id2label={"1": "pos", "0": "neg"}))
    assert model_label_names(model) == ["neg", "pos"]
    assert LabelMap.from_model(model, ["pos", "neg"]).model_to_set == (1, 0)
    renamed = LabelMap.from_model(config, ["good", "bad"], {"negative": "bad", "positive": "good"})
    assert renamed.model_to_set == (1, 0)
    with pytest.raises(ValueError, match=r"ids must be 0 \.\. 1, got \[0, 2\]"):
        model_label_names(SimpleNamespace(id2label={0: "a", 2: "b"}))
    with pytest.raises(ValueError, match="SimpleNamespace has no id2label"):
        model_label_names(SimpleNamespace())


def _dataset(labels, names):
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    texts = [f"t{i}" for i in range(len(labels))]
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def test_align_labels_permutes_ids_by_name():
    dataset = _dataset([0, 1, 1, 0], ["pos", "neg"])
    aligned = align_labels(dataset, ["neg", "pos"])
    assert aligned.features["label"].names == ["neg", "pos"]
    assert aligned["label"][:] == [1, 0, 0, 1]
    assert aligned["text"][:] == dataset["text"][:]
    assert align_labels(dataset, ["pos", "neg"]) is dataset


def test_align_labels_onto_a_larger_label_set():
    test = _dataset([1, 0, 1], ["sadness", "anger", "unused"])
    aligned = align_labels(test, ["anger", "fear", "joy", "sadness"])
    assert aligned["label"][:] == [0, 3, 0]
    assert aligned.features["label"].names == ["anger", "fear", "joy", "sadness"]


def test_align_labels_refuses_unknown_classes_and_other_columns():
    test = _dataset([0, 1, 2], ["anger", "disgust", "joy"])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "test.csv: column 'label' has labels not in the label set: ['disgust']; the label set "
            "is ['anger', 'joy']"
        ),
    ):
        align_labels(test, ["anger", "joy"], name="test.csv")
    plain = Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(ValueError, match="expected a ClassLabel column 'label'"):
        align_labels(plain, ["a"])
    with pytest.raises(ValueError, match="row 1: label -1"):
        align_labels(_dataset([0, -1], ["a", "b"]), ["b", "a"])
