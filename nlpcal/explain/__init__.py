"""Token attributions of text classifiers behind one interface, each registered under a name."""

from nlpcal.explain.attention_gradient import (
    AttentionGradientAttribution,
    first_token_attention_attribution,
)
from nlpcal.explain.base import (
    Recording,
    TokenAttribution,
    attention_mask_of,
    create_attribution,
    list_attributions,
    register_attribution,
)
from nlpcal.explain.captum import (
    InputXGradientAttribution,
    IntegratedGradientsAttribution,
    SaliencyAttribution,
)
from nlpcal.explain.heatmap import TokenExplanation, explain_texts, render_html, render_terminal

__all__ = [
    "AttentionGradientAttribution",
    "InputXGradientAttribution",
    "IntegratedGradientsAttribution",
    "Recording",
    "SaliencyAttribution",
    "TokenAttribution",
    "TokenExplanation",
    "attention_mask_of",
    "create_attribution",
    "explain_texts",
    "first_token_attention_attribution",
    "list_attributions",
    "register_attribution",
    "render_html",
    "render_terminal",
]
