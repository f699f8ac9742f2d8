"""Adapter for Qwen3.5 of transformers 5.x (`Qwen3_5ForConditionalGeneration`, and the same text model
with mixture-of-experts MLPs, `Qwen3_5MoeForConditionalGeneration`), images and video.

What it shares with Qwen3-VL: visual tokens from `get_placeholder_mask`; interleaved M-RoPE positions,
kept and never renumbered ("original" positions); a video is one visual run per frame after its
timestamp, so a frame is a span for `budget_per="span"`. It has no DeepStack.

What is new: the text model is hybrid. Most layers are linear attention (a gated delta net): a causal
convolution over the last few tokens and a recurrent state, updated token by token, with no attention
matrix. Every few layers (`config.layer_types`; every 4th on the released models) is full attention,
with gated queries and per-head norms on queries and keys.

- Scores come from full-attention layers only: their queries and keys after `q_norm`/`k_norm` and
  RoPE, as the attention uses them (the query's output gate scales what attention returns, not the
  weights). A linear-attention layer has none, so pruning after one is refused, naming the model,
  the method and the full-attention layers to choose instead. We refuse rather than move the layers
  silently: the config stays what runs, and `report` stays equal to `planned_counts`. The recipes (the
  command line's and the bench's presets) move them, visibly, in the configs they build
  (`prunable_layers`: the first full-attention layer at or after each).
- A linear-attention layer after pruning runs over the shorter sequence: its convolution and state
  see the kept tokens in order, as a dense model given only those tokens would. Its mask is the
  padding mask (`staged.ByLayerType`): padding tokens are zeroed before the layer, which keeps the
  state of a left-padded row equal to that of the row alone.
- Its cache is a state (convolution and recurrent), not a token per position. Decoding after a pruned
  prefill continues that state; nothing in it counts tokens. The full-attention layers' caches are
  shorter after pruning, as on every other family.
"""
from __future__ import annotations

from . import compat
from .qwen2_vl import Qwen2VL
from .staged import RECURRENT


def attention_layers(config) -> list[int]:
    """The full-attention layers of a Qwen3.5 text config (the only ones a method may prune after)."""
    return [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"]


class Qwen3_5(Qwen2VL):
    """Qwen3.5 and Qwen3.5-MoE: Qwen2-VL's rules; pruning only after full-attention layers."""

    SUPPORTED = "Qwen3_5ForConditionalGeneration or Qwen3_5MoeForConditionalGeneration"
    MODEL_TYPES = ("qwen3_5", "qwen3_5_moe")
    # (keys before RoPE: after k_norm, per head)
    ATTENTIONS = {"modeling_qwen3_5": "k_norm", "modeling_qwen3_5_moe": "k_norm"}

    def classes(self):
        from transformers import Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration

        return Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration

    def prunable(self, text, layer: int) -> bool:
        return text.config.layer_types[layer] == "full_attention"

    def unprunable_why(self, text, layers) -> str:
        return "linear attention: a recurrent state, no attention matrix, no queries and keys to score tokens with"

    def prunable_hint(self, text, layers) -> str:
        return (f", e.g. the first full-attention layer at or after each: pruning_layers="
                f"{self.prunable_layers(text, layers)} (full attention: {attention_layers(text.config)})")

    def prunable_layers(self, text, layers) -> tuple[int, ...]:
        """Each layer moved to the first full-attention layer at or after it (duplicates merged; a layer
        after the last full-attention layer dropped): pruning later, never earlier, than asked."""
        full = attention_layers(text.config)
        return tuple(sorted({f for f in (next((f for f in full if f >= i), None) for i in layers) if f is not None}))

    def text_unsupported_reason(self, text) -> str | None:
        if not all(hasattr(text, a) for a in ("layers", "norm", "rotary_emb")):
            return f"text model {type(text).__name__} lacks layers/norm/rotary_emb; supported: {self.SUPPORTED}"
        kinds = set(text.config.layer_types)
        if not kinds <= {"full_attention", *RECURRENT} or "full_attention" not in kinds:
            return (f"text model {type(text).__name__} has layer types {sorted(kinds)}; the staged decoder takes full "
                    f"and linear attention, with at least one full-attention layer; supported: {self.SUPPORTED}")
        attn = next(layer.self_attn for layer in text.layers if hasattr(layer, "self_attn"))
        if compat.attention_module(attn, self.ATTENTIONS) is None:
            return (f"attention {type(attn).__name__} is not one whose queries and keys this library captures "
                    f"({', '.join(self.ATTENTIONS)}); supported: {self.SUPPORTED}")
        return None


FAMILY = Qwen3_5()
