"""Adapter for Qwen3-VL of transformers 5.x (`Qwen3VLForConditionalGeneration`, and the same text
model with mixture-of-experts MLPs, `Qwen3VLMoeForConditionalGeneration`), images and video.

What it shares with Qwen2-VL: visual tokens from `get_placeholder_mask`; M-RoPE positions, (t, h, w)
per token, kept and never renumbered ("original" positions; its sections interleave inside the
rotary embedding, which the staged loop calls as the model does); decoding from the model's own
positions. A video is one visual run per frame with its timestamp's text tokens between runs, so a
frame is a span for `budget_per="span"`.

What is new, DeepStack: the vision tower's features from several of its layers are added to the
hidden states of the visual tokens after the first decoder layers (feature j after layer j). The
text model gets them as keywords (`compat.pop_deepstack`). Here they become per-token tensors,
(B, L, D) each, that the staged loop moves with their tokens: a token pruned before a DeepStack
layer takes its features with it, and a token a method inserts (a recycled cluster) gets none. A
merged token is a mix of many tokens, and no one patch's features belong to it.
"""
from __future__ import annotations

from . import compat
from .qwen2_vl import Qwen2VL


class Qwen3VL(Qwen2VL):
    """Qwen3-VL and Qwen3-VL-MoE: Qwen2-VL's rules, plus DeepStack features that follow their tokens."""

    SUPPORTED = "Qwen3VLForConditionalGeneration or Qwen3VLMoeForConditionalGeneration"
    MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
    # (the queries and keys after their norms, as attention rotates them; keys before RoPE: after k_norm)
    ATTENTIONS = {"modeling_qwen3_vl": "k_norm", "modeling_qwen3_vl_moe": "k_norm"}

    def classes(self):
        from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

        return Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

    def token_inputs(self, text, kwargs, hidden):
        kwargs = dict(kwargs)
        mask, features = compat.pop_deepstack(kwargs)
        if mask is None or not features:
            return kwargs, {}
        mask = mask.to(hidden.device)
        extras = {}
        for j, feature in enumerate(features):  # (N, D) in row-major order of `mask` -> (B, L', D), zeros elsewhere
            zeros = hidden.new_zeros(*mask.shape, hidden.shape[-1])  # (masked_scatter: no host read, unlike indexing)
            extras[f"deepstack{j}"] = zeros.masked_scatter(mask[..., None], feature.to(hidden.device, hidden.dtype))
        return kwargs, extras

    def after_layer(self, text, layer, hidden, extras):
        feature = extras.pop(f"deepstack{layer}", None)  # (not carried past its layer)
        return hidden if feature is None else hidden + feature  # (+0 off the visual tokens, as the model leaves them)


FAMILY = Qwen3VL()
