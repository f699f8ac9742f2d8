"""Adapter for the LLaVA family of transformers 5.x — `LlavaForConditionalGeneration` (LLaVA-1.5),
`LlavaNextForConditionalGeneration` (LLaVA-NeXT), `LlavaOnevisionForConditionalGeneration`
(LLaVA-OneVision, images and video), `VideoLlavaForConditionalGeneration` (Video-LLaVA, the video
model of the SparseVLM paper) and `LlavaNextVideoForConditionalGeneration` (LLaVA-NeXT-Video) — with
a Llama, Mistral, Qwen2 or Qwen3 text model and full attention. All use 1D RoPE.

One seam is used here, nothing is vendored: `get_placeholder_mask` (where the image and video
features are spliced in) records which positions hold visual tokens: image and video tokens alike,
several images per prompt, a video's frames one after the other (each frame a span of its own for
per-frame budgets: `frame_layout` says how a frame's tokens are laid out). LLaVA-NeXT and OneVision end each row
of their high-resolution grid with an `image_newline` token; it is a visual token here, scored and
pruned like any other (it carries image features too — the learned separator — and the reference
code has no rule for it); so is the [CLS] token that Video-LLaVA keeps at the start of each frame.
For methods that read the vision tower (VisionZip/ToMe-style) its [CLS] attention and keys are
captured at the feature layer: LLaVA-1.5 only, where each image feature is one tower patch. The
decoder loop in stages is `staged.py`'s.
"""
from __future__ import annotations

import math

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..select import ON_HOST
from .family import Family
from .patching import SparsePlaceholders, SparseTop, install
from .state import Clock

#: why a family has no single grid of one feature per vision-tower patch per image (all but LLaVA-1.5)
NOT_ONE_GRID = {
    "llava_next": "builds its features from high-resolution crops (pooled, with newline tokens)",
    "llava_onevision": "builds its features from high-resolution crops (pooled, with newline tokens)",
    "llava_next_video": "builds its features from high-resolution crops (pooled, with newline tokens) and pools "
                        "its video frames",
    "video_llava": "encodes images and video frames with two towers and keeps each frame's [CLS] token",
}


def frame_layout(config) -> tuple[int, int, bool]:
    """A video's layout in the language model, from the model's config: each frame is `lead` tokens
    then a `side` × `side` grid of tokens (row by row), frame after frame; `newline`: one token closes
    the video (counted with its last frame). Returns (side, lead, newline).

    - OneVision: each frame's patch grid pooled to ⌈patches / 2⌉ a side, then one newline for the video;
    - Video-LLaVA: each frame's [CLS] token (its video tower's features keep it), then its patches;
    - LLaVA-NeXT-Video: each frame's patch grid pooled by `spatial_pool_stride`.
    """
    vc = config.vision_config
    patches = vc.image_size // vc.patch_size
    kind = config.model_type
    if kind == "llava_onevision":
        return math.ceil(patches / 2), 0, True
    if kind == "video_llava":
        return patches, 1, False
    if kind == "llava_next_video":
        return patches // config.spatial_pool_stride, 0, False
    raise ValueError(f"model_type {kind!r} reads no video")


def vision_attention(model):
    """The vision tower's attention module at the feature layer LLaVA reads its image features from."""
    f = model.config.vision_feature_layer
    tower = model.model.vision_tower
    encoder = getattr(getattr(tower, "vision_model", tower), "encoder", None)
    if encoder is None or not hasattr(encoder, "layers"):
        raise ValueError(f"vision tower {type(tower).__name__} has no encoder.layers; methods that read the vision "
                         f"tower support CLIP/SigLIP-style towers")
    layers = encoder.layers
    if not isinstance(f, int) or f == 0:
        raise ValueError(f"vision_feature_layer={f!r}: methods that read the vision tower need one feature layer "
                         f"produced by an attention layer (an int other than 0)")
    return (layers[f] if f < 0 else layers[f - 1]).self_attn


def vision_signals(attn, captured, strategy: str):
    """[CLS] attention (mean over heads) and keys (heads concatenated) of each image token at the
    feature layer. Shapes: captured q, k (N_img, T, H·Dh) -> cls (N_img, V), keys (N_img, V, H·Dh)."""
    q, k = captured["q"], captured["k"]
    N, T, _ = q.shape
    qh = q[:, :1].view(N, 1, -1, attn.head_dim).transpose(1, 2)  # (N, H, 1, Dh)
    kh = k.view(N, T, -1, attn.head_dim).transpose(1, 2)  # (N, H, T, Dh)
    cls = ((qh @ kh.transpose(-1, -2)).float() * attn.scale).softmax(-1).mean(1)[:, 0]  # (N, T)
    first = 1 if strategy == "default" else 0  # "default" drops the [CLS] token from the features
    return cls[:, first:], k[:, first:]

def _vision_signals(model) -> list | None:
    """The [CLS] attention and keys of each image the vision tower last encoded in this call
    (computed here, outside the tower, so that counters charge them to the method)."""
    st = model._sparsevlm
    call = st.call()
    captured, call.vision_capture = call.vision_capture, None
    if captured is not None and len(captured) == 2:
        with Clock(st, captured["k"].device):
            call.vision_signals = list(vision_signals(st.vision_attn, captured,
                                                      model.config.vision_feature_select_strategy))
    return call.vision_signals


class _SparseLlava(SparseTop):
    """Beams and `num_return_sequences`: transformers encodes each image once and expands the
    features for the copies of a prompt; the vision tower's signals are expanded the same way."""

    def _expand_multimodal_outputs(self, input_ids, mm_encoder_output, expand_size=1, inputs_embeds=None):
        out = super()._expand_multimodal_outputs(input_ids, mm_encoder_output, expand_size=expand_size,
                                                 inputs_embeds=inputs_embeds)
        call = self._sparsevlm.call()
        signals = _vision_signals(self)
        if signals is not None:  # expand each image's signals exactly as transformers expands its features
            call.vision_signals = [
                super(_SparseLlava, self)._expand_multimodal_outputs(
                    input_ids, {"image": BaseModelOutputWithPooling(pooler_output=t)}, expand_size=expand_size,
                    inputs_embeds=inputs_embeds)["image"].pooler_output for t in signals]
        return out


class _SparseLlavaModel(SparsePlaceholders):
    """Mixin for the LLaVA model: for methods that need them, the vision tower's signals at the
    visual positions."""

    def _placed(self, vis):
        st = self._sparsevlm
        call = st.call()
        signals = _vision_signals(self) if st.method.needs_vision else None
        call.vision_signals = None  # consumed: the next prefill encodes its own images
        if signals is not None:
            with Clock(st, vis.device):
                call.vision = self._vision_per_token(signals, vis)

    def _frames(self, video):
        """A video is its frames' tokens (`frame_layout`), one frame after the other; OneVision's
        closing newline token is counted with the last frame."""
        side, lead, newline = frame_layout(self.config)
        per = lead + side * side
        idx = torch.arange(video.shape[1], device=video.device).expand_as(video)
        start = video & ~torch.nn.functional.pad(video, (1, 0))[:, :-1]
        offset = idx - idx.where(start, 0).cummax(-1).values  # place within its video
        frame = offset // per
        if newline:  # the token after the last frame's grid is the newline: it belongs to that frame
            last = video & ~torch.nn.functional.pad(video, (0, 1))[:, 1:]
            frame = frame - (last & (offset > 0) & (offset % per == 0)).long()
        return frame.where(video, -1)

    def _vision_per_token(self, signals, vis):
        """The vision tower's [CLS] attention and keys, placed at the image positions (B, L[, Dk])."""
        cls, keys = signals
        why = f"{self._sparsevlm.method_name} needs one image feature per vision-tower patch"
        if vis.device.type == "cpu":  # a CPU tensor is read without waiting for anything
            with torch.profiler.record_function(ON_HOST):
                if cls.numel() != int(vis.sum()):
                    raise ValueError(f"{cls.numel()} vision-tower tokens for {int(vis.sum())} image positions: {why}")
        else:  # checked on the device, without a host read
            torch._assert_async(vis.sum() == cls.numel(), f"vision-tower tokens differ from image positions: {why}")
        seq_cls = torch.zeros(vis.shape, dtype=cls.dtype, device=vis.device).masked_scatter(vis, cls.to(vis.device))
        seq_keys = torch.zeros(*vis.shape, keys.shape[-1], dtype=keys.dtype, device=vis.device).masked_scatter(
            vis[..., None], keys.to(vis.device))
        return {"cls_attention": seq_cls, "keys": seq_keys}


class Llava(Family):
    """LLaVA-1.5, LLaVA-NeXT, OneVision, Video-LLaVA and LLaVA-NeXT-Video: 1D RoPE, both position modes."""

    SUPPORTED = ("LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, "
                 "LlavaOnevisionForConditionalGeneration, VideoLlavaForConditionalGeneration or "
                 "LlavaNextVideoForConditionalGeneration with a full-attention Llama, Mistral, Qwen2 or Qwen3 text model")
    POSITIONS = ("compact", "original")
    MODEL_TYPES = ("llava", "llava_next", "llava_onevision", "video_llava", "llava_next_video")
    ATTENTIONS = {"modeling_llama": "k_proj", "modeling_mistral": "k_proj", "modeling_qwen2": "k_proj",
                  "modeling_qwen3": "k_norm"}

    def classes(self):
        from transformers import (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration,
                                  LlavaNextVideoForConditionalGeneration, LlavaOnevisionForConditionalGeneration,
                                  VideoLlavaForConditionalGeneration)

        return (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration,
                LlavaOnevisionForConditionalGeneration, VideoLlavaForConditionalGeneration,
                LlavaNextVideoForConditionalGeneration)

    def visual_tokens(self, config):
        """LLaVA-1.5 and Video-LLaVA's images: one grid of tower patches. The others tile each image."""
        if config.model_type not in ("llava", "video_llava"):
            return None
        v = config.vision_config
        return (v.image_size // v.patch_size) ** 2

    def reads_video(self, model) -> bool:
        return model.config.model_type in ("llava_onevision", "video_llava", "llava_next_video")

    def tower_why(self, model) -> str | None:
        why = self.grid_why(model)
        return f"{why}, not one feature per tower patch" if why else None

    def grid_why(self, model) -> str | None:
        why = NOT_ONE_GRID.get(model.config.model_type)
        return f"{type(model).__name__} {why}" if why else None

    def check(self, model, method) -> None:
        super().check(model, method)
        if method.needs_vision:
            vision_attention(model)

    def patch(self, model, method, state) -> None:
        """Methods that read the vision tower also capture its feature layer's queries and keys."""
        if method.needs_vision:
            state.vision_attn = attn = vision_attention(model)
            for name, proj in (("q", attn.q_proj), ("k", attn.k_proj)):
                def vhook(_mod, _inp, out, name=name):
                    call = state.call()
                    if call.vision_capture is None:
                        call.vision_capture = {}
                    call.vision_capture[name] = out
                state.hooks.append(proj.register_forward_hook(vhook))
        install(model, method, state, _SparseLlava, _SparseLlavaModel, self)


FAMILY = Llava()
