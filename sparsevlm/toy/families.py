"""Tiny random models of each supported family, built in-process (no download, milliseconds on a
CPU): for tests, and for the course's notebook on model families. Same shapes everywhere: a
4-layer text model, hidden 64, 4 heads and 2 key/value heads; 16-pixel views of 4-pixel patches."""
from __future__ import annotations

import torch

FAMILIES = ("next", "onevision", "video-llava", "next-video", "qwen2-vl", "qwen2.5-vl")
IMAGE, VIDEO, START, END = 3, 4, 5, 6  # special token ids of the tiny models
PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def tiny_vlm(family: str, attn: str = "sdpa", seed: int = 0):
    """A tiny random `family` model (see FAMILIES), eval mode, pad token 0."""
    import transformers as tf

    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported; allowed: {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    text = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, pad_token_id=0, initializer_range=0.2)
    clip = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
                patch_size=4)
    if family == "next":
        model = tf.LlavaNextForConditionalGeneration(tf.LlavaNextConfig(
            vision_config=tf.CLIPVisionConfig(**clip), text_config=tf.LlamaConfig(**text), image_token_id=IMAGE,
            image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1, vision_feature_select_strategy="default"))
    elif family == "video-llava":  # an image: 4×4 patches; a video: per frame its 4×4 patches and [CLS]
        model = tf.VideoLlavaForConditionalGeneration(tf.VideoLlavaConfig(
            vision_config=tf.CLIPVisionConfig(**clip), text_config=tf.LlamaConfig(**text), image_token_id=IMAGE,
            video_token_id=VIDEO, vision_feature_layer=-1, vision_feature_select_strategy="default"))
    elif family == "next-video":  # images as NeXT; a video: per frame its 4×4 patches pooled 2×2
        model = tf.LlavaNextVideoForConditionalGeneration(tf.LlavaNextVideoConfig(
            vision_config=tf.CLIPVisionConfig(**clip), text_config=tf.LlamaConfig(**text), image_token_id=IMAGE,
            video_token_id=VIDEO, image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
            vision_feature_select_strategy="default", spatial_pool_stride=2))
    elif family == "onevision":
        vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=16, patch_size=4)
        model = tf.LlavaOnevisionForConditionalGeneration(tf.LlavaOnevisionConfig(
            vision_config=vision, text_config=tf.Qwen2Config(**text, use_sliding_window=False), image_token_id=IMAGE,
            video_token_id=VIDEO, image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
            vision_feature_select_strategy="full"))
    else:
        text.update(bos_token_id=1, eos_token_id=2,
                    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0})
        ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
        if family == "qwen2-vl":
            vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4,
                          spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
            model = tf.Qwen2VLForConditionalGeneration(tf.Qwen2VLConfig(vision_config=vision, text_config=text, **ids))
        else:
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16,
                          fullatt_block_indexes=[1])
            model = tf.Qwen2_5_VLForConditionalGeneration(tf.Qwen2_5_VLConfig(vision_config=vision, text_config=text,
                                                                              **ids))
    for c in (model.config, model.config.text_config):
        c._attn_implementation = attn
    model.eval().generation_config.pad_token_id = 0
    return model


WORDS = ["<pad>", "<s>", "</s>", "<image>", "<unk>", "what", "color", "shape", "is", "it", "the", "red", "green",
         "blue", "circle", "square", "?"]


def tiny_next_processor():
    """A LLaVA-NeXT processor for `tiny_vlm("next")`: a word-level tokenizer over WORDS ("<image>" is
    token 3) and the PIL image processor with the tiny model's grid (16-pixel views, 4-pixel patches).
    Together they make a checkpoint folder that `sparsevlm eval --model` can load offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaNextProcessor, PreTrainedTokenizerFast
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", padding_side="left",
                                        extra_special_tokens={"image_token": "<image>"})
    images = LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS, size={"shortest_edge": 16},
                                        crop_size={"height": 16, "width": 16})
    return LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=4,
                              vision_feature_select_strategy="default", image_token="<image>",
                              num_additional_image_tokens=1)
