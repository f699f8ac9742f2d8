"""Tiny random models of each supported family, built in-process (no download, milliseconds on a
CPU), and their processors: for tests, and for the course's notebook on model families. Same shapes
everywhere: a 4-layer text model, hidden 64, 4 heads and 2 key/value heads; 16-pixel views of
4-pixel patches. InternVL's tiles are 32 pixels: 8 × 8 patches, pixel-shuffled to 4 × 4 = 16 tokens
a tile (256 on the real model)."""
from __future__ import annotations

import torch

FAMILIES = ("next", "onevision", "video-llava", "next-video", "qwen2-vl", "qwen2.5-vl", "internvl", "qwen3-vl",
            "qwen3-vl-moe", "qwen3.5", "qwen3.5-moe", "gemma3")
#: the text models a tiny InternVL may have (InternVL3: Qwen2; InternVL3.5: Qwen3; others: Llama)
INTERNVL_TEXT = ("qwen3", "qwen2", "llama")
IMAGE, VIDEO, START, END = 3, 4, 5, 6  # special token ids of the tiny models
PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def tiny_vlm(family: str, attn: str = "sdpa", seed: int = 0):
    """A tiny random `family` model (see FAMILIES), eval mode, pad token 0."""
    import transformers as tf

    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported; allowed: {', '.join(FAMILIES)}")
    if family == "internvl":
        return tiny_internvl(attn=attn, seed=seed)
    if family.startswith("qwen3.5"):
        return tiny_qwen3_5(moe=family.endswith("moe"), attn=attn, seed=seed)
    if family == "gemma3":
        return tiny_gemma3(attn=attn, seed=seed)
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
        if family.startswith("qwen3"):  # DeepStack: tower layers 0, 1, 2 feed text layers 0, 1, 2
            text.update(head_dim=16, rope_parameters={**text["rope_parameters"], "mrope_interleaved": True})
            vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                          num_position_embeddings=16, deepstack_visual_indexes=[0, 1, 2])
            if family == "qwen3-vl":
                model = tf.Qwen3VLForConditionalGeneration(tf.Qwen3VLConfig(vision_config=vision, text_config=text,
                                                                            **ids))
            else:  # 4 experts, 2 per token
                text.update(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
                model = tf.Qwen3VLMoeForConditionalGeneration(tf.Qwen3VLMoeConfig(vision_config=vision,
                                                                                  text_config=text, **ids))
        elif family == "qwen2-vl":
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


def tiny_internvl(text: str = "qwen3", attn: str = "sdpa", seed: int = 0):
    """A tiny random InternVL (`InternVLForConditionalGeneration`, as the `-hf` checkpoints) with a
    `text` model of INTERNVL_TEXT: 32-pixel tiles of 4-pixel patches, each tile 16 tokens after the
    pixel shuffle (ratio 0.5). Its images are any number of tiles (`pixel_values` (tiles, 3, 32, 32));
    the prompt holds 16 image tokens a tile. Eval mode, pad token 0."""
    import transformers as tf

    if text not in INTERNVL_TEXT:
        raise ValueError(f"text={text!r} is not supported; allowed: {', '.join(INTERNVL_TEXT)}")
    torch.manual_seed(seed)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, initializer_range=0.2)
    text_config = {"qwen3": lambda: tf.Qwen3Config(**common, head_dim=16, use_sliding_window=False),
                   "qwen2": lambda: tf.Qwen2Config(**common, use_sliding_window=False),
                   "llama": lambda: tf.LlamaConfig(**common)}[text]()
    vision = tf.InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=32, patch_size=4)
    model = tf.InternVLForConditionalGeneration(tf.InternVLConfig(
        vision_config=vision, text_config=text_config, image_token_id=IMAGE, image_seq_length=16,
        downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default"))
    for c in (model.config, model.config.text_config):
        c._attn_implementation = attn
    model.eval().generation_config.pad_token_id = 0
    return model


#: the layers of a tiny Gemma 3: sliding and global, so that a stage after pruning at layer 1 holds both kinds
#: and one after layer 2 sliding layers alone (the released models: 5 sliding to 1 global)
GEMMA3_LAYERS = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


def tiny_gemma3(attn: str = "sdpa", seed: int = 0, window: int = 6):
    """A tiny random Gemma 3 (`Gemma3ForConditionalGeneration`): four text layers of GEMMA3_LAYERS, a
    sliding window of `window` tokens, head size 16; rotary bases as the real model's (10,000 local, 10⁶
    global). Its images are 32 pixels, 8 × 8 patches averaged 2 × 2 into 16 tokens (256 on the real model),
    between START and END. Eval mode, pad token 0."""
    import transformers as tf

    torch.manual_seed(seed)
    text = tf.Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                               sliding_window=window, layer_types=GEMMA3_LAYERS, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2, initializer_range=0.2)
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=32, patch_size=4)
    model = tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(text_config=text, vision_config=vision,
                                                              mm_tokens_per_image=16, image_token_id=IMAGE,
                                                              boi_token_id=START, eoi_token_id=END))
    for c in (model.config, model.config.text_config, model.config.vision_config):
        c._attn_implementation = attn
    model.eval().generation_config.pad_token_id = 0
    return model


#: the layers of a tiny Qwen3.5: linear attention, then full, alternating (the released models: 3 linear to 1 full)
QWEN3_5_LAYERS = ["linear_attention", "full_attention", "linear_attention", "full_attention", "linear_attention"]


def tiny_qwen3_5(moe: bool = False, attn: str = "sdpa", seed: int = 0):
    """A tiny random Qwen3.5 (`Qwen3_5ForConditionalGeneration`; `moe`: `Qwen3_5MoeForConditionalGeneration`,
    4 experts, 2 per token, and a shared expert). Five text layers of QWEN3_5_LAYERS, so that a stage after
    pruning can start at a linear-attention layer, hold a full-attention one, or hold linear attention alone.
    Its linear attention: 2 key heads and 4 value heads of 8, a 4-token convolution. Its full attention:
    gated queries, head size 16, RoPE on half of each head in interleaved M-RoPE sections (2, 1, 1). The
    tower: Qwen3-VL's without DeepStack. Eval mode, pad token 0."""
    import transformers as tf

    torch.manual_seed(seed)
    text = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=len(QWEN3_5_LAYERS),
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, initializer_range=0.2, layer_types=QWEN3_5_LAYERS, linear_num_key_heads=2,
                linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                 "mrope_interleaved": True, "partial_rotary_factor": 0.5})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=16)
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
    if moe:
        text.update(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
        config = tf.Qwen3_5MoeConfig(vision_config=vision, text_config=text, **ids)
        model = tf.Qwen3_5MoeForConditionalGeneration(config)
    else:
        model = tf.Qwen3_5ForConditionalGeneration(tf.Qwen3_5Config(vision_config=vision, text_config=text, **ids))
    for c in (model.config, model.config.text_config, model.config.vision_config):
        c._attn_implementation = attn
    model.eval().generation_config.pad_token_id = 0
    return model


#: the vision tokens of a tiny model's prompts, (image, video, start, end), at ids IMAGE, VIDEO, START, END
#: (start and end frame a visual span on Qwen2/2.5-VL; the other families have none)
SPECIAL = {family: ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
           if family.startswith("qwen") else ("<image>", "<video>", "<start>", "<end>") for family in FAMILIES}
#: a chat template as Qwen2/2.5-VL's frames its images and videos, words split by spaces for WORDS
QWEN_CHAT = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] in ('image', 'video') %}"
             "<|vision_start|> <|{{ c['type'] }}_pad|> <|vision_end|> {% else %}{{ c['text'] }} {% endif %}"
             "{% endfor %}{% endfor %}")
WORDS = ["what", "color", "shape", "is", "it", "the", "red", "green", "blue", "circle", "square", "?"]


def tiny_processor(family: str):
    """The processor of `tiny_vlm(family)`, as its checkpoint would ship it: a word-level tokenizer (the
    special tokens of SPECIAL at the model's ids, then WORDS) and the family's own image and video
    processors at the tiny model's sizes (16-pixel views and frames, 4-pixel patches; Qwen: 2 × 2
    patches merged, frames in pairs, 16² to 64² pixels). A checkpoint folder with it loads in `sparsevlm
    eval|demo|show --model` offline. Every family but LLaVA-NeXT needs torchvision (transformers'
    video processors, and its image processors beside them, are torchvision's)."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported; allowed: {', '.join(FAMILIES)}")
    if family.startswith("qwen3"):
        raise ValueError(f"family={family!r} has no tiny processor: Qwen3-VL's and Qwen3.5's video prompts need frame "
                         f"timestamps from video metadata; build its inputs by hand (tests/test_qwen3_vl.py's `batch`)")
    if family == "internvl":
        raise ValueError("family='internvl' has no tiny processor yet: InternVLProcessor needs transformers' video "
                         "processor (torchvision); build its inputs by hand (tests/test_internvl.py's `batch`)")
    image, video, start, end = SPECIAL[family]
    vocab = ["<pad>", "<s>", "</s>", image, video, start, end, "<unk>", *WORDS]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    named = {"image_token": image, "video_token": video} | (
        {"vision_start_token": start, "vision_end_token": end} if family.startswith("qwen") else {})
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                           unk_token="<unk>", padding_side="left", extra_special_tokens=named)
    if family.startswith("qwen"):
        size = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=64 * 64)
        processor = tf.Qwen2VLProcessor if family == "qwen2-vl" else tf.Qwen2_5_VLProcessor
        return processor(image_processor=tf.Qwen2VLImageProcessor(**size), tokenizer=tokenizer,
                         video_processor=tf.Qwen2VLVideoProcessor(**size), chat_template=QWEN_CHAT)
    square, views = {"height": 16, "width": 16}, dict(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    if family == "onevision":
        return tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(image_grid_pinpoints=PINPOINTS, size=square),
            video_processor=tf.LlavaOnevisionVideoProcessor(size=square), tokenizer=tokenizer, num_image_tokens=16,
            vision_feature_select_strategy="full")
    if family == "video-llava":
        return tf.VideoLlavaProcessor(image_processor=tf.VideoLlavaImageProcessor(**views),
                                      video_processor=tf.VideoLlavaVideoProcessor(**views), tokenizer=tokenizer,
                                      patch_size=4)
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    images = LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS, **views)  # (PIL: no torchvision)
    common = dict(image_processor=images, tokenizer=tokenizer, patch_size=4, vision_feature_select_strategy="default",
                  num_additional_image_tokens=1)
    if family == "next-video":
        return tf.LlavaNextVideoProcessor(video_processor=tf.LlavaNextVideoVideoProcessor(**views), **common)
    return tf.LlavaNextProcessor(**common)
