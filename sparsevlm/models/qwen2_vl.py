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

from .patching import SparsePlaceholders, SparseTop, check_layers, install, text_unsupported_reason

#: position modes the family allows: M-RoPE positions are kept, never renumbered
POSITIONS = ("original",)
SUPPORTED = "Qwen2VLForConditionalGeneration or Qwen2_5_VLForConditionalGeneration"


def _families():
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration


def unsupported_reason(model) -> str | None:
    """Why `model` cannot be sparsified by this adapter (None if it can)."""
    if not isinstance(model, _families()):
        return f"{type(model).__name__} is not supported; supported: {SUPPORTED}"
    return text_unsupported_reason(model.model.language_model, SUPPORTED)


def check(model, method) -> None:
    """Raise if `method` cannot run on `model`; touches nothing."""
    name = type(model).__name__
    check_layers(model.model.language_model, method)
    if method.needs_vision:
        raise ValueError(f"{type(method).__name__} reads the vision tower's [CLS] attention; {name}'s vision tower "
                         f"has no [CLS] token. Use a method that prunes inside the language model (SparseVLM, FastV, "
                         f"PyramidDrop, random)")
    if method.needs_grid:
        raise ValueError(f"{type(method).__name__} pools one square grid of visual tokens per image; {name} merges "
                         f"patches into grids of any shape and frames. Use DivPrune, CDPruner or a method that "
                         f"prunes inside the language model")
    if method.positions not in POSITIONS:
        raise ValueError(f"positions={method.positions!r}: {name} uses M-RoPE, (temporal, height, width) positions; "
                         f"renumbering them has no meaning the model was trained with. Use positions='original'")


def patch(model, method, state: dict) -> None:
    """Swap in the sparse classes and hooks (after `check`)."""
    install(model, method, state, SparseTop, SparsePlaceholders)
