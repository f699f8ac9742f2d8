"""7B-shaped model configs with no weights, and a model built from one with random weights: timings
depend on shapes only, so these stand in for the real checkpoints."""
from __future__ import annotations

import torch


def _vicuna_7b(text_hidden: int = 4096):
    """Vicuna-7B's architecture (the text model of LLaVA-1.5, Video-LLaVA and LLaVA-NeXT-Video).
    `text_hidden` < 4096 narrows it (head size 128 and the MLP's 11008/4096 ratio kept), leaving the
    tokens and the layers as they are: a model that fits a CPU."""
    from transformers import LlamaConfig

    if not (isinstance(text_hidden, int) and 128 <= text_hidden <= 4096 and text_hidden % 128 == 0):
        raise ValueError(f"text_hidden={text_hidden!r}: allowed a multiple of 128 from 128 to 4096")
    heads = text_hidden // 128
    return LlamaConfig(vocab_size=32064, hidden_size=text_hidden, intermediate_size=text_hidden * 11008 // 4096,
                       num_hidden_layers=32, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=4096, pad_token_id=0)


def _clip_l14(image_size: int):
    """CLIP ViT-L/14's architecture at `image_size` pixels (LLaVA's towers)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=image_size, patch_size=14, projection_dim=768)


def llava_1_5_7b_config(attn: str = "sdpa", text_hidden: int = 4096):
    """llava-hf/llava-1.5-7b-hf's architecture (CLIP ViT-L/14-336, Vicuna-7B), no weights;
    `text_hidden` narrows the language model (`_vicuna_7b`), the vision tower stays."""
    from transformers import LlavaConfig

    cfg = LlavaConfig(vision_config=_clip_l14(336), text_config=_vicuna_7b(text_hidden), image_token_id=32000,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    cfg._attn_implementation = attn
    return cfg


def llava_next_7b_config():
    """llava-hf/llava-v1.6-mistral-7b-hf's architecture (CLIP ViT-L/14-336 with anyres crops,
    Mistral-7B), no weights."""
    from transformers import LlavaNextConfig, MistralConfig

    return LlavaNextConfig(
        vision_config=_clip_l14(336),
        text_config=MistralConfig(vocab_size=32064, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=8, sliding_window=None),
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        image_token_id=32000, vision_feature_layer=-2, vision_feature_select_strategy="default")


def llava_onevision_7b_config():
    """llava-hf/llava-onevision-qwen2-7b-ov-hf's architecture (SigLIP-so400m/14-384 with anyres_max_9,
    Qwen2-7B), no weights; transformers' defaults for the tower and the grids."""
    from transformers import LlavaOnevisionConfig, Qwen2Config

    return LlavaOnevisionConfig(
        text_config=Qwen2Config(vocab_size=152128, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                num_attention_heads=28, num_key_value_heads=4, use_sliding_window=False),
        image_token_id=151646, video_token_id=151647)


def video_llava_7b_config(attn: str = "sdpa", text_hidden: int = 4096):
    """LanguageBind/Video-LLaVA-7B-hf's architecture (LanguageBind's CLIP ViT-L/14 towers at 224 for
    images and video frames, Vicuna-7B), no weights: the video model of the SparseVLM paper;
    `text_hidden` narrows the language model (`_vicuna_7b`)."""
    from transformers import VideoLlavaConfig

    cfg = VideoLlavaConfig(vision_config=_clip_l14(224), text_config=_vicuna_7b(text_hidden), image_token_id=32000,
                           video_token_id=32001, vision_feature_layer=-2, vision_feature_select_strategy="default")
    cfg._attn_implementation = attn
    return cfg


def llava_next_video_7b_config():
    """llava-hf/LLaVA-NeXT-Video-7B-hf's architecture (CLIP ViT-L/14-336 with anyres crops for
    images, each video frame average-pooled 2×2; Vicuna-7B), no weights."""
    from transformers import LlavaNextVideoConfig

    return LlavaNextVideoConfig(
        vision_config=_clip_l14(336), text_config=_vicuna_7b(),
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        image_token_id=32001, video_token_id=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
        spatial_pool_mode="average", spatial_pool_stride=2)


def qwen2_5_vl_7b_config(text_hidden: int = 3584):
    """Qwen/Qwen2.5-VL-7B-Instruct's architecture (window-attention ViT, 2×2 token merging,
    Qwen2.5-7B with M-RoPE), no weights. `text_hidden` < 3584 narrows the language model (head
    size 128, the MLP's ratio kept; 7 query heads per key/value head) to fit a CPU."""
    from transformers import Qwen2_5_VLConfig

    if not (isinstance(text_hidden, int) and 896 <= text_hidden <= 3584 and text_hidden % 896 == 0):
        raise ValueError(f"text_hidden={text_hidden!r}: allowed 896, 1792, 2688 or 3584")
    heads = text_hidden // 128
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=text_hidden,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], in_channels=3)
    text = dict(vocab_size=152064, hidden_size=text_hidden, intermediate_size=text_hidden * 18944 // 3584,
                num_hidden_layers=28, num_attention_heads=heads, num_key_value_heads=heads // 7,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0})
    return Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=151655, video_token_id=151656,
                            vision_start_token_id=151652, vision_end_token_id=151653)



def _qwen3_8b(text_hidden: int = 4096) -> dict:
    """Qwen3-8B's text architecture (the language model of Qwen3-VL-8B and InternVL3.5-8B).
    `text_hidden` < 4096 narrows it (head size 128, 4 query heads per key/value head and the MLP's
    12288/4096 ratio kept), leaving the tokens and the 36 layers as they are."""
    if not (isinstance(text_hidden, int) and 512 <= text_hidden <= 4096 and text_hidden % 512 == 0):
        raise ValueError(f"text_hidden={text_hidden!r}: allowed a multiple of 512 from 512 to 4096")
    heads = text_hidden // 128
    return dict(vocab_size=151936, hidden_size=text_hidden, intermediate_size=3 * text_hidden, num_hidden_layers=36,
                num_attention_heads=heads, num_key_value_heads=heads // 4, head_dim=128)


def qwen3_vl_8b_config(text_hidden: int = 4096):
    """Qwen/Qwen3-VL-8B-Instruct's architecture (a 27-layer ViT with 16-pixel patches, 2×2 token
    merging, DeepStack from tower layers 8, 16 and 24 into text layers 0, 1 and 2; Qwen3-8B with
    interleaved M-RoPE), no weights. `text_hidden` narrows the language model (`_qwen3_8b`)."""
    from transformers import Qwen3VLConfig

    text = _qwen3_8b(text_hidden)
    vision = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=text_hidden,
                  patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                  num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])
    text.update(max_position_embeddings=262144, rope_parameters={
        "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True})
    return Qwen3VLConfig(vision_config=vision, text_config=text, image_token_id=151655, video_token_id=151656,
                         vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=False)


def qwen3_5_9b_config(text_hidden: int = 4096):
    """Qwen/Qwen3.5-9B's architecture, no weights: 32 text layers, three linear-attention layers (16 key
    and 32 value heads of 128, a 4-token convolution) to one full-attention layer (16 gated query
    heads and 4 key/value heads of 256, RoPE on a quarter of each head, interleaved M-RoPE); MLP
    12288; vocabulary 248,320. The text shapes are transformers 5.24's `Qwen3_5TextConfig` defaults,
    which it documents as Qwen3.5-9B's; a fine-tune's config.json naming Qwen/Qwen3.5-9B as its base
    (huggingface.co/khtsly/Mini-Coder) has the same widths, heads and layer types. The tower is
    transformers' default `Qwen3_5VisionConfig` (27 layers, 16-pixel patches, 2×2 merging) with its
    output set to the text width (our choice: the default's 3584 does not fit a 4096-wide model).
    `text_hidden` (a multiple of 1024 up to 4096) narrows the language model: heads of 256 and 128
    and the MLP's ratio kept; the tokens and the 32 layers stay."""
    from transformers import Qwen3_5Config

    if not (isinstance(text_hidden, int) and 1024 <= text_hidden <= 4096 and text_hidden % 1024 == 0):
        raise ValueError(f"text_hidden={text_hidden!r}: allowed a multiple of 1024 from 1024 to 4096")
    heads = text_hidden // 256
    text = dict(vocab_size=248320, hidden_size=text_hidden, intermediate_size=3 * text_hidden, num_hidden_layers=32,
                num_attention_heads=heads, num_key_value_heads=heads // 4, head_dim=256,
                linear_num_key_heads=text_hidden // 256, linear_num_value_heads=text_hidden // 128,
                linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
                max_position_embeddings=262144, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "mrope_section": [11, 11, 10],
                                 "mrope_interleaved": True, "partial_rotary_factor": 0.25})
    vision = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=text_hidden,
                  patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                  num_position_embeddings=2304)
    return Qwen3_5Config(vision_config=vision, text_config=text, tie_word_embeddings=False)


def internvl3_5_8b_config(text_hidden: int = 4096):
    """OpenGVLab/InternVL3_5-8B-HF's architecture (InternViT-300M on 448-pixel tiles of 14-pixel
    patches, pixel shuffle 0.5: 256 tokens a tile; Qwen3-8B), no weights. The tower is
    transformers' default InternVL vision config. `text_hidden` narrows the language model."""
    from transformers import InternVLConfig, Qwen3Config

    text = Qwen3Config(**_qwen3_8b(text_hidden), max_position_embeddings=40960, rope_theta=1000000.0,
                       use_sliding_window=False, tie_word_embeddings=False)
    return InternVLConfig(text_config=text, image_seq_length=256, downsample_ratio=0.5, vision_feature_layer=-1,
                          vision_feature_select_strategy="default", tie_word_embeddings=False)

def gemma3_12b_config(text_hidden: int = 3840):
    """google/gemma-3-12b-it's architecture, no weights: 48 text layers, five sliding-window layers
    (1,024 tokens, rotary base 10⁴) to one global layer (base 10⁶, linear scaling 8); 16 query and 8
    key/value heads of 256; MLP 15,360. The widths are those of Google's MaxText config for gemma3-12b;
    the vocabulary (262,208) is `Gemma3TextConfig`'s default; the tower is SigLIP-So400m at 896 pixels (14-pixel patches, 27 layers),
    its 64 × 64 patches averaged 4 × 4 into 256 tokens. `text_hidden` (a multiple of 480 up to 3840)
    narrows the language model: heads of 256, two query heads per key/value head and the MLP's ratio
    kept; the tokens and the 48 layers stay."""
    from transformers import Gemma3Config

    if not (isinstance(text_hidden, int) and 480 <= text_hidden <= 3840 and text_hidden % 480 == 0):
        raise ValueError(f"text_hidden={text_hidden!r}: allowed a multiple of 480 from 480 to 3840")
    heads = text_hidden // 240
    text = dict(vocab_size=262208, hidden_size=text_hidden, intermediate_size=4 * text_hidden, num_hidden_layers=48,
                num_attention_heads=heads, num_key_value_heads=heads // 2, head_dim=256, query_pre_attn_scalar=256,
                sliding_window=1024, max_position_embeddings=131072,
                rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    vision = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                  num_attention_heads=16, image_size=896, patch_size=14, vision_use_head=False)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256)


def random_llava(config, device: str, dtype: torch.dtype):
    """A model of `config`'s architecture (any family) with random weights built directly on
    `device` in `dtype` (no download; never a float32 copy first: LLaVA-1.5-7B's shapes take ~14 GB
    in bfloat16, 28 GB in float32)."""
    from transformers import AutoModelForImageTextToText

    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    model.generation_config.pad_token_id = 0
    return model
