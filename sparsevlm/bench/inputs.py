"""The bench's models and prompts: the embedded toy with its own questions, a 7B-shaped model with a
synthetic prompt as its family builds it, or a local checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.llava import frame_layout
from ..recipes import load_model
from .shapes import (gemma3_12b_config, internvl3_5_8b_config, llava_1_5_7b_config, qwen2_5_vl_7b_config,
                     qwen3_5_9b_config, qwen3_vl_8b_config, random_llava, video_llava_7b_config)

MODELS = ("toy", "toy-video",  # the embedded image and video models
          "llava-1.5-7b-shaped", "qwen2.5-vl-7b-shaped", "video-llava-7b-shaped", "qwen3-vl-8b-shaped",
          "internvl3.5-8b-shaped", "qwen3.5-9b-shaped", "gemma-3-12b-shaped")
#: tiles of the synthetic InternVL image: 2×2 tiles and the thumbnail
INTERNVL_TILES = 5
#: frames of the synthetic video (Video-LLaVA's, as in the paper)
VIDEO_FRAMES = 8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synthetic_inputs(model, n_text: int, seed: int = 0, device=None) -> dict:
    """A prompt as `model`'s family builds it, for timing only: <s>, 5 system tokens, one image's
    visual tokens, `n_text` question tokens; random pixels. LLaVA-1.5: a tower-sized image.
    LLaVA-NeXT / OneVision / NeXT-Video: an image twice the tower's size on each side (the
    whole-image view and 2×2 crops), as many tokens as the model's own feature code makes.
    Video-LLaVA: a video of 8 tower-sized frames, as in the paper (`frame_layout`: 8 × 257 tokens).
    Qwen2-VL / 2.5-VL: 48×48 patches (672 pixels for 14-pixel patches, 576 tokens after 2×2
    merging) between <vision_start> and <vision_end>; Qwen3-VL's and Qwen3.5's 16-pixel patches make that
    768 pixels.
    InternVL: an image of 2×2 tiles and its thumbnail, each tile the tower's size, between <img> and
    </img> (5 × 256 tokens on InternVL3.5).
    Gemma 3: one tower-sized image (896 pixels), 256 tokens between <start_of_image> and <end_of_image>,
    with the token types that make them one bidirectional block."""
    cfg, vision = model.config, model.config.vision_config
    dev, dtype = device or next(model.parameters()).device, next(model.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(10, min(cfg.text_config.vocab_size, 32000), (n,), generator=g)  # noqa: E731
    kind = cfg.model_type
    token = cfg.image_token_id
    if kind in ("llava_next", "llava_onevision", "llava_next_video"):  # the token count comes from the model's code
        side = vision.image_size
        pixels = {"pixel_values": torch.randn(1, 5, 3, side, side, generator=g).to(dev, dtype),
                  "image_sizes": torch.tensor([[2 * side, 2 * side]], device=dev)}
        with torch.no_grad():
            n_visual = len(model.model.get_image_features(*pixels.values(), return_dict=True).pooler_output[0])
    elif kind.startswith("qwen"):
        n_visual = 48 * 48 // vision.spatial_merge_size ** 2
    elif kind == "internvl":
        from ..models.internvl import tile_tokens

        side = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        n_visual = INTERNVL_TILES * tile_tokens(cfg)
        pixels = {"pixel_values": torch.randn(INTERNVL_TILES, 3, side, side, generator=g).to(dev, dtype)}
    elif kind == "gemma3":
        n_visual, side = cfg.mm_tokens_per_image, vision.image_size
        pixels = {"pixel_values": torch.randn(1, 3, side, side, generator=g).to(dev, dtype)}
    elif kind == "video_llava":
        side, lead, _ = frame_layout(cfg)
        n_visual, token = VIDEO_FRAMES * (lead + side * side), cfg.video_token_id
        pixels = {"pixel_values_videos": torch.randn(1, VIDEO_FRAMES, 3, vision.image_size, vision.image_size,
                                                     generator=g).to(dev, dtype)}
    else:
        n_visual = (vision.image_size // vision.patch_size) ** 2
    image = torch.full((n_visual,), token)
    if kind == "internvl":  # <img>, </img>: the tokens after the image context token
        image = torch.cat([torch.tensor([token - 2]), image, torch.tensor([token - 1])])
    if kind.startswith("qwen"):
        image = torch.cat([torch.tensor([cfg.vision_start_token_id]), image, torch.tensor([cfg.vision_end_token_id])])
    if kind == "gemma3":
        image = torch.cat([torch.tensor([cfg.boi_token_id]), image, torch.tensor([cfg.eoi_token_id])])
    ids = torch.cat([torch.tensor([1]), text(5), image, text(n_text)])[None].to(dev)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind.startswith("qwen"):
        patch = 3 * vision.temporal_patch_size * vision.patch_size ** 2
        return {**inputs, "mm_token_type_ids": (ids == cfg.image_token_id).int(),
                "pixel_values": torch.randn(48 * 48, patch, generator=g).to(dev, dtype),
                "image_grid_thw": torch.tensor([[1, 48, 48]], device=dev)}
    if kind == "llava":
        side = vision.image_size
        return {**inputs, "pixel_values": torch.randn(1, 3, side, side, generator=g).to(dev, dtype)}
    if kind == "gemma3":
        inputs["token_type_ids"] = (ids == token).long()
    return {**inputs, **pixels}


def model_and_inputs(model_name: str, device: str, dtype: str, attn: str = "sdpa", text_hidden: int | None = None,
                     batch: int = 1):
    """The bench's model (weights seeded) and prompt: (model, inputs of `batch` prompts, {1: ..., 8: ...}
    batches for `--profile`: the toys' own questions (`toy-video`: the video model's clips), else None)."""
    torch.manual_seed(0)
    batches = None
    if model_name in ("toy", "toy-video"):  # an embedded model on its own questions (the video model's clips)
        from .. import toy
        from ..eval import record_inputs

        video = model_name == "toy-video"
        model, processor = (toy.load_video if video else toy.load)(dtype=DTYPES[dtype])
        model.to(device)
        model.config._attn_implementation = attn
        model.config.text_config._attn_implementation = attn
        records = (toy.video_eval_split if video else toy.eval_split)(limit=max(8, batch))
        pixels = "pixel_values_videos" if video else "pixel_values"
        batches = {}
        for size in sorted({1, 8, batch}):  # different questions: padding as in real batches
            x = record_inputs(processor, records[:size], model.config).to(device)
            x[pixels] = x[pixels].to(DTYPES[dtype])
            batches[size] = x
        inputs = batches[batch]
    elif model_name == "llava-1.5-7b-shaped":
        model = random_llava(llava_1_5_7b_config(attn, text_hidden or 4096), device, DTYPES[dtype])
        inputs = synthetic_inputs(model, n_text=695 - 576 - 6)  # ~695 tokens, as the paper's prompts
    elif model_name == "qwen2.5-vl-7b-shaped":
        config = qwen2_5_vl_7b_config(text_hidden or 3584)
        for c in (config, config.text_config, config.vision_config):
            c._attn_implementation = attn
        model = random_llava(config, device, DTYPES[dtype])
        inputs = synthetic_inputs(model, n_text=695 - 576 - 8)
    elif model_name in ("qwen3-vl-8b-shaped", "internvl3.5-8b-shaped", "qwen3.5-9b-shaped", "gemma-3-12b-shaped"):
        make = {"qwen3-vl-8b-shaped": qwen3_vl_8b_config, "internvl3.5-8b-shaped": internvl3_5_8b_config,
                "qwen3.5-9b-shaped": qwen3_5_9b_config, "gemma-3-12b-shaped": gemma3_12b_config}[model_name]
        config = make(text_hidden) if text_hidden else make()
        for c in (config, config.text_config, config.vision_config):
            c._attn_implementation = attn
        model = random_llava(config, device, DTYPES[dtype])
        inputs = synthetic_inputs(model, n_text=695 - 576 - 8)  # the same ~113 question tokens
    elif model_name == "video-llava-7b-shaped":
        model = random_llava(video_llava_7b_config(attn, text_hidden or 4096), device, DTYPES[dtype])
        inputs = synthetic_inputs(model, n_text=695 - 576 - 6)  # an 8-frame video and the same ~113 text tokens
    elif Path(model_name).is_dir():  # a local checkpoint: timings depend on shapes only
        model, _ = load_model(model_name, device, dtype, with_processor=False)
        model.config.text_config._attn_implementation = attn
        inputs = synthetic_inputs(model, n_text=113)
    else:
        raise ValueError(f"model={model_name!r} is not supported; allowed: {', '.join(MODELS)} or a checkpoint folder")
    if batches is None and batch > 1:  # the same prompt `batch` times
        inputs = {k: v.repeat(batch, *[1] * (v.dim() - 1)) for k, v in inputs.items()}
    return model, inputs, batches
