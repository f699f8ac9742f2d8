"""The toy model's architecture, tokenizer and processor: the exact LlavaForConditionalGeneration
of LLaVA-1.5 (CLIP vision tower, MLP projector, Llama language model), only tiny."""
from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from .data import IMAGE, PATCH, vocabulary

IMAGE_TOKEN = "<image>"


def build_tokenizer(words: list[str] | None = None, **special) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the toy vocabulary, or `words` (whitespace-separated words);
    `special`: more named special tokens (the video model's video_token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(words or vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": IMAGE_TOKEN, **special},
                                   padding_side="left")


def build_processor(mean, std, tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaProcessor:
    """Processor: per-channel normalisation with the dataset's statistics (no resize or crop:
    images are already IMAGE px), and one <image> word expanded into one token per patch."""
    image_processor = CLIPImageProcessorPil(do_resize=False, do_center_crop=False, do_rescale=True,
                                            do_normalize=True, image_mean=list(mean), image_std=list(std),
                                            do_convert_rgb=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer or build_tokenizer(), patch_size=PATCH,
                          vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=1)


def build_config(layers: int = 8, hidden: int = 128, vision_hidden: int = 128, vision_layers: int = 3) -> LlavaConfig:
    vocab = vocabulary()
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=4, image_size=IMAGE,
                              patch_size=PATCH, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 16 * 16,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=128, pad_token_id=vocab.index("<pad>"),
                       bos_token_id=vocab.index("<s>"), eos_token_id=vocab.index("</s>"), tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab.index(IMAGE_TOKEN),
                       image_seq_length=(IMAGE // PATCH) ** 2, vision_feature_layer=-1,
                       vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", tie_word_embeddings=False)
