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

__all__ = [
    "AttentionGradientAttribution",
    "InputXGradientAttribution",
    "IntegratedGradientsAttribution",
    "Recording",
    "SaliencyAttribution",
    "TokenAttribution",
    "attention_mask_of",
    "create_attribution",
    "first_token_attention_attribution",
    "list_attributions",
    "register_attribution",
]
