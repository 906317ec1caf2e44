"""Why is the model unsure? Token attributions of chosen texts as an HTML heat map or terminal text.

:func:`explain_texts` tokenises texts, predicts, and attributes each prediction to its tokens with
any registered method (normalised scores ``softmax(|a|)`` over the real tokens, as CME ranks
them). :func:`render_html` draws groups of explanations side by side (in-domain next to
out-of-domain, say) as one self-contained HTML page: inline CSS, no script, nothing fetched.
:func:`render_terminal` prints the same as coloured (ANSI) or plain text.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nlpcal.explain.base import attention_mask_of, create_attribution
from nlpcal.functional.pairwise import attribution_distribution

__all__ = [
    "HEATMAP_CSS",
    "TokenExplanation",
    "explain_texts",
    "heatmap_columns",
    "render_html",
    "render_terminal",
]


@dataclass(frozen=True)
class TokenExplanation:
    """One text's prediction and its token scores.

    Attributes:
        tokens: the tokenizer's tokens, padding removed (special tokens kept).
        scores: one normalised score per token, summing to 1.
        prediction: the predicted class.
        confidence: its probability.
        label: the true class, if given.
    """

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    prediction: int
    confidence: float
    label: int | None = None


def explain_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | None = None,
    method: str = "attention_gradient",
    text_pairs: Sequence[str] | None = None,
    method_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    max_length: int = 128,
) -> list[TokenExplanation]:
    """Explain each text's prediction with ``method``, in batches, with the model in eval mode.

    Args:
        model: a Hugging Face sequence classifier (its mode is restored afterwards).
        tokenizer: its tokenizer.
        texts: the texts to explain.
        labels: their true classes (shown next to the prediction), or ``None``.
        method: a registered attribution method (:func:`nlpcal.explain.list_attributions`).
        text_pairs: each text's second segment (NLI: the hypothesis), or ``None``.
        method_kwargs: its hyper-parameters.
        batch_size: texts per forward pass (``≥ 1``).
        max_length: tokens kept per text.

    Returns:
        One :class:`TokenExplanation` per text, in order; each attributes the predicted class.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a sequence of strings (a list of texts, not one string)")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"labels must have one entry per text ({len(texts)}), got {len(labels)}")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(
            f"text_pairs must have one entry per text ({len(texts)}), got {len(text_pairs)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    attribution = create_attribution(method, **dict(method_kwargs or {}))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[TokenExplanation] = []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            pairs = None if text_pairs is None else list(text_pairs[start : start + batch_size])
            enc = tokenizer(
                chunk,
                pairs,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            inputs = {k: v.to(device) for k, v in enc.items()}
            raw, logits = attribution.explain(model, inputs)
            mask = attention_mask_of(inputs)
            scores = attribution_distribution(raw, mask).cpu()
            confidence, prediction = logits.float().softmax(dim=-1).max(dim=-1)
            keep = (mask != 0).cpu()
            for row, ids in enumerate(enc["input_ids"]):
                index = start + row
                out.append(
                    TokenExplanation(
                        tokens=tuple(tokenizer.convert_ids_to_tokens(ids[keep[row]].tolist())),
                        scores=tuple(scores[row][keep[row]].tolist()),
                        prediction=int(prediction[row]),
                        confidence=float(confidence[row]),
                        label=None if labels is None else int(labels[index]),
                    )
                )
    finally:
        model.train(was_training)
    return out


def _words(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """Each token's display text and whether it continues the previous word (WordPiece ``##``,
    byte-level BPE tokens without the ``Ġ`` / ``▁`` word marker)."""
    bpe = any(t.startswith(("Ġ", "▁")) for t in tokens)
    shown = []
    for i, token in enumerate(tokens):
        if token.startswith("##"):
            shown.append((token[2:], True))
        elif token.startswith(("Ġ", "▁")):
            shown.append((token[1:], False))
        else:
            special = token.startswith(("<", "[")) and token.endswith((">", "]"))
            previous_special = i > 0 and tokens[i - 1].startswith(("<", "["))
            shown.append((token, bpe and i > 0 and not special and not previous_special))
    return shown


def _caption(e: TokenExplanation, label_names: Sequence[str] | None) -> str:
    def name(k: int) -> str:
        return label_names[k] if label_names is not None and k < len(label_names) else str(k)

    text = f"predicted {name(e.prediction)} ({e.confidence:.2f})"
    if e.label is not None:
        text += f", label {name(e.label)}" + ("" if e.label == e.prediction else " — wrong")
    return text


_PAGE_CSS = "body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }"
HEATMAP_CSS = """
.groups { display: grid; gap: 1.5em; }
.group .head { font-size: 1.1em; border-bottom: 1px solid #ccc; }
.example { margin: 0.8em 0; line-height: 1.9; }
.caption { font-size: 0.85em; color: #555; }
.wrong { color: #b00; }
.t { padding: 0.1em 0.05em; border-radius: 3px; }
.note { font-size: 0.85em; color: #555; max-width: 60em; }
"""


def render_html(
    groups: Mapping[str, Sequence[TokenExplanation]],
    title: str = "Why is the model unsure?",
    label_names: Sequence[str] | None = None,
) -> str:
    """A self-contained HTML page: one column per group, each token shaded by its score.

    A token's shade is its score relative to the largest score of its text; hovering shows the
    score. Text is HTML-escaped.

    Args:
        groups: column title → explanations (e.g. ``{"in-domain": ..., "out-of-domain": ...}``).
        title: the page title.
        label_names: class names for the captions (default the class numbers).

    >>> e = TokenExplanation(("[CLS]", "fine", "[SEP]"), (0.2, 0.7, 0.1), 1, 0.6)
    >>> page = render_html({"in-domain": [e]})
    >>> page.startswith("<!DOCTYPE html>") and "fine" in page and "http" not in page
    True
    """
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_PAGE_CSS}{HEATMAP_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{heatmap_columns(groups, label_names)}"
        "</body></html>\n"
    )


def heatmap_columns(
    groups: Mapping[str, Sequence[TokenExplanation]],
    label_names: Sequence[str] | None = None,
    heading: str = "h2",
) -> str:
    """The heat maps of :func:`render_html` as an HTML fragment (a note and one column per group,
    each under a ``heading`` element), styled by :data:`HEATMAP_CSS`: for pages that embed them,
    such as the benchmark report."""
    if not groups:
        raise ValueError("groups is empty: pass at least one named list of explanations")
    columns = []
    for name, explanations in groups.items():
        cards = []
        for e in explanations:
            top = max(e.scores) if e.scores else 1.0
            spans = []
            for (word, joined), score in zip(_words(e.tokens), e.scores, strict=True):
                alpha = score / top if top > 0 else 0.0
                spans.append(
                    ("" if joined or not spans else " ")
                    + f'<span class="t" style="background: rgba(230, 80, 30, {alpha:.3f})" '
                    f'title="{score:.3f}">{html.escape(word)}</span>'
                )
            wrong = e.label is not None and e.label != e.prediction
            caption = html.escape(_caption(e, label_names))
            cards.append(
                f'<div class="example"><div class="caption{" wrong" if wrong else ""}">'
                f"{caption}</div>{''.join(spans)}</div>"
            )
        columns.append(
            f'<div class="group"><{heading} class="head">{html.escape(name)}</{heading}>'
            f"{''.join(cards)}</div>"
        )
    return (
        '<p class="note">Each token is shaded by its share of the attribution of the predicted '
        "class (darkest: the text's strongest token). A confident prediction should rest on a "
        "few strong tokens; an even spread means the model cannot point at its evidence.</p>"
        f'<div class="groups" style="grid-template-columns: repeat({len(columns)}, 1fr)">'
        f"{''.join(columns)}</div>"
    )


def render_terminal(
    explanations: Sequence[TokenExplanation],
    color: bool = True,
    top_k: int = 3,
    label_names: Sequence[str] | None = None,
) -> str:
    """The explanations as terminal text: tokens on a shaded (ANSI 24-bit) background, or plain
    text with the ``top_k`` strongest tokens listed.

    >>> e = TokenExplanation(("[CLS]", "fine", "[SEP]"), (0.2, 0.7, 0.1), 1, 0.6, label=0)
    >>> print(render_terminal([e], color=False))
    predicted 1 (0.60), label 0 — wrong
      [CLS] fine [SEP]
      strongest: fine 0.70, [CLS] 0.20, [SEP] 0.10
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    blocks = []
    for e in explanations:
        top = max(e.scores) if e.scores else 1.0
        parts = []
        for (word, joined), score in zip(_words(e.tokens), e.scores, strict=True):
            if color:
                shade = round(255 * (1 - (score / top if top > 0 else 0.0)))
                word = f"\x1b[48;2;255;{shade};{shade}m\x1b[38;2;0;0;0m{word}\x1b[0m"
            parts.append(word if joined or not parts else " " + word)
        lines = [_caption(e, label_names), "  " + "".join(parts)]
        if not color:
            order = torch.tensor(e.scores).argsort(descending=True, stable=True)[:top_k].tolist()
            strongest = ", ".join(f"{e.tokens[i]} {e.scores[i]:.2f}" for i in order)
            lines.append(f"  strongest: {strongest}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
