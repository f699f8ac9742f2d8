"""Every use of transformers' internals, in one place. Checked on transformers 5.24.0 (the version
`constraints.txt` pins); the notes say what earlier 5.x releases did.

Public API the library builds on elsewhere (classes, `create_causal_mask`, `DynamicCache`, model
outputs) is imported where it is used. What is here is private or shaped by one version:

| what | used for | version note |
|---|---|---|
| the KV-cache keyword, `cache` or `past_key_values` | calling layers and masks | renamed in 5.24 |
| `StaticLayer` | telling a pre-allocated cache | |
| a modeling module's `apply_rotary_pos_emb` | capturing a pruning layer's queries and keys | |
| `output_capturing._CAN_RECORD_REGISTRY` | output recording for the swapped classes | keyed by the model from 5.23 |
| a decoder layer's `position_embeddings=` keyword | the staged loop | |
| `config._attn_implementation` | skipping the mask of one sdpa decoding token | |
| Qwen3-VL's text-model keywords `visual_pos_masks`, `deepstack_visual_embeds` | DeepStack in the staged loop | |

The seams the mixins override are transformers' own method names: `get_placeholder_mask`,
`_expand_multimodal_outputs` and `loss_function` (`patching.py`, `llava.py`).
"""
from __future__ import annotations

import functools
import inspect
import sys
import threading

from transformers.cache_utils import StaticLayer
from transformers.masking_utils import create_causal_mask

#: the KV cache's keyword and output field: `cache` from transformers 5.24 (`past_key_values`, the
#: name before, still works there, deprecated)
CACHE = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"

def attention_kind(config) -> str | None:
    """The attention implementation a config runs ("eager", "sdpa", ...): a private field of it."""
    return config._attn_implementation


def preallocated(cache) -> bool:
    """Whether `cache` has pre-allocated layers (a static cache), which cannot hold fewer tokens."""
    return cache is not None and any(isinstance(layer, StaticLayer) for layer in getattr(cache, "layers", ()))


def run_layer(layer, hidden, mask, layer_positions, position_embeddings, cache, use_cache, kwargs):
    """One decoder layer, called with the keywords transformers' text models pass."""
    return layer(hidden, attention_mask=mask, position_ids=layer_positions, use_cache=use_cache,
                 position_embeddings=position_embeddings, **{CACHE: cache}, **kwargs)


def pop_deepstack(kwargs: dict):
    """Remove Qwen3-VL's DeepStack keywords from a text model's `kwargs` and return them: the visual
    positions (B, L) bool and, per decoder layer from the first, the features of those positions
    (N, D) in row-major order (the text model adds feature j after layer j). (None, []) when absent."""
    mask = kwargs.pop("visual_pos_masks", None)
    features = kwargs.pop("deepstack_visual_embeds", None)
    return mask, list(features or [])


def attention_module(attn, attentions: dict):
    """The modeling module an attention layer comes from, if it is among `attentions` (a family's
    `ATTENTIONS`) and rotates with its module's `apply_rotary_pos_emb`; None otherwise."""
    if type(attn).__module__.rsplit(".", 1)[-1] not in attentions:
        return None
    module = sys.modules.get(type(attn).__module__)
    return module if hasattr(module, "apply_rotary_pos_emb") else None


def keys_before_rope(attn, attentions: dict):
    """The submodule of `attn` whose output is the keys before RoPE (from a family's `ATTENTIONS`)."""
    return getattr(attn, attentions[type(attn).__module__.rsplit(".", 1)[-1]])


def register_output_recording(cls, original) -> None:
    """Let transformers record outputs (`output_attentions`, ...) for `cls` as for `original`: it looks
    classes up by name in a registry."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:
        return
    # keyed by the class's name (transformers >= 5.23 derives that key from the model itself; a plain dict before)
    dict.__setitem__(_CAN_RECORD_REGISTRY, str(cls), original._can_record_outputs)


#: where this thread's rotary embeddings are being captured (a pruning layer's capture), or None
ROPE_CAPTURE = threading.local()
#: attention modules whose `apply_rotary_pos_emb` is wrapped -> how many sparsified models use it
_WRAPPED: dict = {}


def wrap_rope(module) -> None:
    """Wrap `module.apply_rotary_pos_emb` so that, while a pruning layer runs, its outputs (the
    queries and keys the attention uses) are kept: no op is added, nothing is recomputed."""
    if module in _WRAPPED:
        _WRAPPED[module] += 1
        return
    original = module.apply_rotary_pos_emb

    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, *args, **kwargs):
        out = original(q, k, *args, **kwargs)
        slot = getattr(ROPE_CAPTURE, "slot", None)
        if slot is not None:
            slot["q"], slot["k"] = out
        return out

    apply_rotary_pos_emb._sparsevlm_original = original
    _WRAPPED[module] = 1
    module.apply_rotary_pos_emb = apply_rotary_pos_emb


def unwrap_rope(module) -> None:
    """One model fewer uses the wrapper; the last one puts the original back."""
    if module in _WRAPPED:
        _WRAPPED[module] -= 1
        if _WRAPPED[module] == 0:
            module.apply_rotary_pos_emb = module.apply_rotary_pos_emb._sparsevlm_original
            del _WRAPPED[module]
