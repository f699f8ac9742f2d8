"""Adapter for Gemma 3 of transformers 5.x (`Gemma3ForConditionalGeneration`, 4B to 27B), images.

How Gemma 3 lays out an image: the SigLIP tower sees 896 × 896 pixels as 64 × 64 patches; the
projector averages them 4 × 4 into 16 × 16 = 256 tokens (`mm_tokens_per_image`). An image is
`<start_of_image>`, its 256 tokens, `<end_of_image>`. Pan-and-scan adds crops as further images.

What is new to the staged decoder, and what this file does about it:

- Five sliding-window layers to one global layer (`config.layer_types`). A sliding layer's token
  sees the keys less than `sliding_window` positions back. After pruning, the window is measured in
  the kept tokens' positions, not in how many tokens are left: a kept token sees exactly the kept
  tokens the dense model's window holds. With compact positions the window counts kept tokens.
- Two rotary embeddings, a local base for sliding layers and a global one; each layer takes its
  type's (`rotary`, one `staged.ByLayerType` of them).
- The tokens of one image attend to each other in both directions (`token_type_ids`). The
  multimodal model builds one mask per layer type before the text model. Here the 2D padding mask
  and each image's block follow the tokens instead: the block ids are a per-token tensor
  (`token_inputs`), moved with their tokens, so a pruned stage's block holds the image's kept
  tokens. A token a method inserts (a recycled cluster) is in no block: it attends causally.
  Each stage builds two masks, composed as the model composes them. Global: causal, or the same
  image. Sliding: that, and within the window.

Scoring reads causal rows over every key, as on the other families (`scores.rater_attention`). For
a text rater at a global layer this is the model's own attention row. Two rows differ from the
model's: an image token's (FastV's rater="all" rates with it), which the model lets see its whole
image, and any row at a sliding layer, which the model cuts to the window. We keep the causal rule:
it rates every visual token, even one outside a rater's window, and one rule serves every family.

Refused: methods that read the vision tower ([CLS] attention: SigLIP has no [CLS] token, and each
token averages 16 patches), pooling (pan-and-scan gives one picture as several grids), video methods
(Gemma 3 reads images only), and text models with attention-logit soft-capping or bidirectional
attention everywhere (scores and masks would not be the model's).
"""
from __future__ import annotations

import functools
import inspect

import torch
from transformers.masking_utils import create_causal_mask, sliding_window_overlay

from .compat import CACHE
from .family import Family
from .patching import SparsePlaceholders, SparseTop, install
from .staged import ByLayerType

#: the per-token tensor that holds each token's image block: its image's number from 1, 0 off images
BLOCK = "image_block"


def image_blocks(token_type_ids: torch.Tensor) -> torch.Tensor:
    """Each token's image (B, L): 1, 2, ... for the runs of image tokens (type 1) in each row, 0 off
    images. The same runs as transformers' bidirectional blocks, counted from 1 so that a token a
    method inserts (whose per-token entries are zeros) is in none."""
    image = token_type_ids == 1
    start = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    return (start.long().cumsum(-1)).where(image, 0)


def same_image(blocks: torch.Tensor):
    """Mask function: query and key lie in the same image (transformers' index convention)."""
    def inner(batch_idx, head_idx, q_idx, kv_idx):
        q = blocks[batch_idx, q_idx]
        return (q == blocks[batch_idx, kv_idx]) & (q > 0)
    return inner


def window_of(keys: torch.Tensor, width: int):
    """Mask function: the key lies less than `width` positions before the query, by the positions in
    `keys` (B, K), which cover every key of the mask (queries are keys too)."""
    def inner(batch_idx, head_idx, q_idx, kv_idx):
        return keys[batch_idx, kv_idx] > keys[batch_idx, q_idx] - width
    return inner


@functools.cache
def _signature(forward) -> inspect.Signature:
    """The multimodal model's `forward` signature, read once (every decoding step binds to it)."""
    return inspect.signature(forward)


class _SparseGemma3Model(SparsePlaceholders):
    """Mixin for the Gemma 3 model: keeps the 2D padding mask and the token types of this forward
    for the text model, which receives masks built per layer type instead."""

    def forward(self, *args, **kwargs):
        if torch.compiler.is_compiling():  # (compiled decoding runs dense: nothing to keep)
            return super().forward(*args, **kwargs)
        given = _signature(super().forward.__func__).bind_partial(self, *args, **kwargs).arguments
        st = self._sparsevlm
        st.local.gemma3 = (given.get("attention_mask"), given.get("token_type_ids"))
        try:
            return super().forward(*args, **kwargs)
        finally:
            st.local.gemma3 = None


class Gemma3(Family):
    """Gemma 3: sliding and global layers, two rotary bases, bidirectional image blocks."""

    SUPPORTED = "Gemma3ForConditionalGeneration"
    #: original positions first: the sliding windows are measured in positions (see the module docstring)
    POSITIONS = ("original", "compact")
    MODEL_TYPES = ("gemma3",)
    ATTENTIONS = {"modeling_gemma3": "k_norm"}

    def classes(self):
        from transformers import Gemma3ForConditionalGeneration

        return (Gemma3ForConditionalGeneration,)

    def visual_tokens(self, config):
        return config.mm_tokens_per_image  # (each image or pan-and-scan crop)

    def reads_video(self, model) -> bool:
        return False

    def tower_why(self, model) -> str:
        return (f"{type(model).__name__}'s SigLIP tower has no [CLS] token, and each token averages 4 × 4 tower "
                f"patches")

    def grid_why(self, model) -> str:
        return f"{type(model).__name__} may give one picture as several pan-and-scan crops, each a grid"

    def text_unsupported_reason(self, text) -> str | None:
        if not all(hasattr(text, a) for a in ("layers", "norm", "rotary_emb")):
            return f"text model {type(text).__name__} lacks layers/norm/rotary_emb; supported: {self.SUPPORTED}"
        cfg = text.config
        kinds = set(getattr(cfg, "layer_types", None) or ())
        if not kinds or not kinds <= {"full_attention", "sliding_attention"}:
            return (f"text model {type(text).__name__} has layer types {sorted(kinds)}; the staged decoder runs "
                    f"full_attention and sliding_attention; supported: {self.SUPPORTED}")
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            return (f"text model {type(text).__name__} caps its attention logits (attn_logit_softcapping="
                    f"{cfg.attn_logit_softcapping}); scores would not be its attention; supported: {self.SUPPORTED} "
                    f"without it (Gemma 3's default)")
        if getattr(cfg, "use_bidirectional_attention", False):
            return (f"text model {type(text).__name__} attends in both directions everywhere "
                    f"(use_bidirectional_attention=True); supported: {self.SUPPORTED} with causal attention")
        return None

    def patch(self, model, method, state) -> None:
        install(model, method, state, SparseTop, _SparseGemma3Model, self)

    # The staged loop's hooks.

    def _given(self, text):
        return getattr(text._sparsevlm.local, "gemma3", None)

    def padding_mask(self, text, attention_mask):
        given = self._given(text)
        if isinstance(attention_mask, dict) and given is not None and not isinstance(given[0], dict):
            return given[0]  # (None: the model was given no padding mask)
        return attention_mask

    def token_inputs(self, text, kwargs, hidden):
        given = self._given(text)
        if given is None or given[1] is None:  # (decoding: generate passes no token types after the prompt)
            return kwargs, {}
        return kwargs, {BLOCK: image_blocks(given[1].to(hidden.device))}

    def rotary(self, text, hidden, position_ids, layer):
        def build(kind, _layer):
            return text.rotary_emb(hidden, position_ids, kind)
        return ByLayerType(text.config.layer_types, build)

    def layer_masks(self, text, hidden, mask2d, keys, cache, skip, extras):
        return functools.partial(self._mask, text, hidden, mask2d, keys, cache, skip, extras.get(BLOCK))

    @staticmethod
    def _mask(text, hidden, mask2d, keys, cache, skip, blocks, kind, layer):
        """One layer type's mask: global, causal or same image; sliding, that and within the window
        (by the keys' positions, else by index as transformers counts it)."""
        window = None
        if kind == "sliding_attention":
            width = text.config.sliding_window
            window = sliding_window_overlay(width) if keys is None else window_of(keys, width)
        return create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=mask2d,
                                  or_mask_function=None if blocks is None else same_image(blocks),
                                  and_mask_function=window, layer_idx=layer, allow_is_causal_skip=skip,
                                  **{CACHE: cache})


FAMILY = Gemma3()
