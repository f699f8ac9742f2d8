"""Adapter for InternVL 3 and 3.5 of transformers 5.x (`InternVLForConditionalGeneration`, the `-hf`
checkpoints), with a full-attention Qwen2, Qwen3 or Llama text model. 1D RoPE: both position modes.

How InternVL lays out an image: the processor cuts it into up to `max_patches` square tiles, plus a
thumbnail of the whole image (after the tiles) when there is more than one tile. Each tile goes
through the vision tower alone; its patch grid is pixel-shuffled (2 × 2 patches become one token)
and projected. So a tile is (image_size / patch_size · downsample_ratio)² tokens: 256 on the real
model (448-pixel tiles, 14-pixel patches, ratio 0.5). An image is `<img>`, its tiles' tokens one
tile after the other, then `</img>`. A video is its frames as images, one tile each, between
"FrameN:" text. The language model sees image tokens only: `get_placeholder_mask` gives one mask.

Where the visual tokens are: `get_placeholder_mask`, as for LLaVA (`SparsePlaceholders`).

Spans for `budget_per="span"`: one tile, not one image. The reference SparseVLM has no rule for
tiles. A tile is the unit the model encodes, a square grid of its own. Per-tile budgets keep every
part of a high-resolution image and the thumbnail (the global view) in the answer's reach, in
proportion to their sizes. A video frame is one tile, so a span is also one frame. The tile of each
position is given to the staged loop as `frames` (what video frames give elsewhere).

Refused: methods that read the vision tower's [CLS] attention (VisionZip/ToMe-style, VisPruner).
Each InternVL token is four tower patches, shuffled into one, so no patch attention is one token's.
Pooling needs one square grid per sample; an InternVL image is several tiles. Video methods need to
tell frames from images; the language model gets both as image tokens.
"""
from __future__ import annotations

import torch

from .family import Family
from .patching import SparsePlaceholders, SparseTop, install


def tile_tokens(config) -> int:
    """Tokens of one tile in the language model: the tower's patch grid, pixel-shuffled by
    `downsample_ratio` in each direction (256 on InternVL3/3.5: (448 / 14 · 0.5)²)."""
    vc, r = config.vision_config, config.downsample_ratio
    size = vc.image_size if isinstance(vc.image_size, (list, tuple)) else (vc.image_size, vc.image_size)
    patch = vc.patch_size if isinstance(vc.patch_size, (list, tuple)) else (vc.patch_size, vc.patch_size)
    return round(size[0] // patch[0] * r) * round(size[1] // patch[1] * r)


def tiles(vis: torch.Tensor, per: int) -> torch.Tensor:
    """The tile of each position within its image (B, L): a run of consecutive image tokens is one
    image, `per` tokens a tile; −1 off the image tokens."""
    idx = torch.arange(vis.shape[1], device=vis.device).expand_as(vis)
    start = vis & ~torch.nn.functional.pad(vis, (1, 0))[:, :-1]
    offset = idx - idx.where(start, 0).cummax(-1).values  # place within its image
    return (offset // per).where(vis, -1)


class _SparseInternVLModel(SparsePlaceholders):
    """Mixin for the InternVL model: with per-span budgets, each image token's tile."""

    def get_placeholder_mask(self, *args, **kwargs):
        mask = super().get_placeholder_mask(*args, **kwargs)  # (B, L, 1): image tokens only
        if self._sparsevlm.method.needs_spans:
            self._sparsevlm.call().frames = tiles(mask[..., 0], tile_tokens(self.config))
        return mask


class InternVL(Family):
    """InternVL 3 and 3.5 (`-hf`): 1D RoPE, both position modes; a span is one tile."""

    SUPPORTED = "InternVLForConditionalGeneration with a full-attention Qwen2, Qwen3 or Llama text model"
    POSITIONS = ("compact", "original")
    MODEL_TYPES = ("internvl",)
    ATTENTIONS = {"modeling_qwen2": "k_proj", "modeling_qwen3": "k_norm", "modeling_llama": "k_proj"}

    def classes(self):
        from transformers import InternVLForConditionalGeneration

        return (InternVLForConditionalGeneration,)

    def reads_video(self, model) -> bool:
        return False  # (its frames reach the language model as images: see `check`)

    def tower_why(self, model) -> str:
        return (f"{type(model).__name__} pixel-shuffles 2 × 2 tower patches into each token, not one feature per "
                f"tower patch")

    def grid_why(self, model) -> str:
        return f"{type(model).__name__} builds each image from several tiles and a thumbnail"

    def check(self, model, method) -> None:
        name, meth = type(model).__name__, type(method).__name__
        if method.needs_frames:
            raise ValueError(f"{meth} reduces video frames; {name} gives a video's frames to the language model as "
                             f"images (one tile each), so frames cannot be told from images. Use a method for images "
                             f"(SparseVLM, FastV, PyramidDrop, DivPrune, ...)")
        super().check(model, method)

    def patch(self, model, method, state) -> None:
        install(model, method, state, SparseTop, _SparseInternVLModel, self)


FAMILY = InternVL()
