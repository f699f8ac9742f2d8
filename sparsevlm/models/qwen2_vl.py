"""Adapter for Qwen2-VL and Qwen2.5-VL of transformers 5.x (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`), images and video.

Where the visual tokens are: `get_placeholder_mask`, as for LLaVA (image and video masks). How
positions work: M-RoPE — each token has a (temporal, height, width) position, (3, B, L), computed
by the model from the image and video grids, with `rope_deltas` kept on the model for decoding.
The staged decoder keeps each surviving token's 3D position ("original" positions), a recycled
token takes the position of its cluster centre's token (`Decision.inserted_from`), and decoding
takes the model's own positions (attention-mask count + `rope_deltas`), which do not depend on
how many tokens were pruned. "compact" renumbering is refused: renumbering text and (t, h, w)
grid positions together has no meaning that the model was trained with.
"""
from __future__ import annotations

from .family import Family
from .patching import SparsePlaceholders, SparseTop, install


class Qwen2VL(Family):
    """Qwen2-VL and Qwen2.5-VL: M-RoPE positions are kept, never renumbered."""

    SUPPORTED = "Qwen2VLForConditionalGeneration or Qwen2_5_VLForConditionalGeneration"
    POSITIONS = ("original",)
    MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
    ATTENTIONS = {"modeling_qwen2_vl": "k_proj", "modeling_qwen2_5_vl": "k_proj"}

    def classes(self):
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    def tower_why(self, model) -> str:
        return f"{type(model).__name__}'s vision tower has no [CLS] token"

    def grid_why(self, model) -> str:
        return f"{type(model).__name__} merges patches into grids of any shape and frames"

    def positions_why(self) -> str:
        return ("uses M-RoPE, (temporal, height, width) positions; renumbering them has no meaning the model was "
                "trained with. Use positions='original'")

    def patch(self, model, method, state) -> None:
        install(model, method, state, SparseTop, SparsePlaceholders, self)


FAMILY = Qwen2VL()
