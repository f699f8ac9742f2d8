"""Latency and memory of dense vs sparsified prefill and decoding, measured the same way for every
method: `python -m sparsevlm.bench` or `sparsevlm bench` (`make bench`).

For each method: prefill time (a forward over the prompt with a KV cache and the logits of the last
position only, as `generate` runs it: the time to first token),
per-token decode time (each decoding step of greedy `generate` timed on its own, from one new token's
logits to the next: the median and 25–75 % spread of all steps of all repeats), the KV-cache
bytes after prefill, peak GPU memory of the prefill (CUDA only), and the time the method spends on
its own work (raters, scoring, rank, recycling, re-layout: `Report.overhead_seconds`) as a share of
dense prefill. The image features (vision tower and projector) are timed alone too (`vision_ms`), and
the language model's call is clocked inside each timed prefill (`lm_prefill_ms`: the method's own
work, its stages and the layers), so that `lm_prefill_ratio` — the language model's prefill time
against dense — can be set beside `flops_ratio`, which counts the language model's FLOPs; and the time spent inside the decoder
layers alone (`layers_ms`, each layer's call timed on its own in a second prefill of each turn) gives
`layers_ratio`, what the layers cost at the lengths the method leaves them against dense's: where
`lm_prefill_ratio` exceeds it, the excess is outside the layers (the method's own work, each stage's
mask and rotary embeddings); where it exceeds `flops_ratio`, the layers themselves run fewer tokens
less efficiently than their FLOPs (a property of the machine and the layer's size). Prefill times
are taken in rounds (`prefill_rounds`): each round times every method and the image features once,
in turn, so that the machine's drift over a long run falls on all of them alike; the ratios to dense are taken
round by round (a method against the dense prefill of the same round) and their median reported,
with the 25–75 % spread of `lm_prefill_ratio` over the rounds. Each time is the median of `repeats`
runs after `warmup` runs, with the 25–75 % spread (and, for `lm_prefill_ratio`, a distribution-free
interval of the median: `median_ci`). Results are written as CSV and JSON with the machine, dtype,
attention implementation and library versions (the JSON with every round's ratios).
`--layer-curve` measures instead what the layers alone allow: one decoder layer's time at each
length (`layer_curve`) and the length each method leaves every layer, whence the best time ratio
its layers can reach on this machine (`predicted_layers_ratio`).

Models: the embedded toy (`toy`, CPU-friendly), an LLaVA-1.5-7B-shaped model with random weights
(`llava-1.5-7b-shaped`; timings depend only on shapes: needs ~15 GB in bf16, i.e. a GPU) or a
Qwen2.5-VL-7B-shaped one (`qwen2.5-vl-7b-shaped`: a 672×672 image, 576 visual tokens, M-RoPE,
original positions; VisionZip/ToMe-style do not apply) or a Video-LLaVA-7B-shaped one
(`video-llava-7b-shaped`: the paper's video setting, 8 frames of 257 tokens). With `--text-hidden`
the language model is narrowed (same visual tokens, prompt, layers, pruning layers and vision tower)
so that it runs on a CPU in float32: 1024 for LLaVA, 896 for Qwen.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pandas as pd
import torch

from .flops import dims, prefill_flops, report_flops
from .methods import BASELINES
from .models import report, sparsified
from .models.llava import frame_layout
from .models.staged import CACHE
from .report import dense_report_for
from .utils import device_problem, positive_int, shipped_path

MODELS = ("toy", "llava-1.5-7b-shaped", "qwen2.5-vl-7b-shaped", "video-llava-7b-shaped")
#: frames of the synthetic video (Video-LLaVA's, as in the paper)
VIDEO_FRAMES = 8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: the committed benchmark results (results/ in a checkout, sparsevlm/results/ when installed)
RESULTS = shipped_path("results")


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


def random_llava(config, device: str, dtype: torch.dtype):
    """A model of `config`'s architecture (any family) with random weights built directly on
    `device` in `dtype` (no download; never a float32 copy first: LLaVA-1.5-7B's shapes take ~14 GB
    in bfloat16, 28 GB in float32)."""
    from transformers import AutoModelForImageTextToText

    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


def synthetic_inputs(model, n_text: int, seed: int = 0, device=None) -> dict:
    """A prompt as `model`'s family builds it, for timing only: <s>, 5 system tokens, one image's
    visual tokens, `n_text` question tokens; random pixels. LLaVA-1.5: a tower-sized image.
    LLaVA-NeXT / OneVision / NeXT-Video: an image twice the tower's size on each side (the
    whole-image view and 2×2 crops), as many tokens as the model's own feature code makes.
    Video-LLaVA: a video of 8 tower-sized frames, as in the paper (`frame_layout`: 8 × 257 tokens).
    Qwen2-VL / 2.5-VL: 48×48 patches (672 pixels for 14-pixel patches, 576 tokens after 2×2
    merging) between <vision_start> and <vision_end>."""
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
    elif kind == "video_llava":
        side, lead, _ = frame_layout(cfg)
        n_visual, token = VIDEO_FRAMES * (lead + side * side), cfg.video_token_id
        pixels = {"pixel_values_videos": torch.randn(1, VIDEO_FRAMES, 3, vision.image_size, vision.image_size,
                                                     generator=g).to(dev, dtype)}
    else:
        n_visual = (vision.image_size // vision.patch_size) ** 2
    image = torch.full((n_visual,), token)
    if kind.startswith("qwen"):
        image = torch.cat([torch.tensor([cfg.vision_start_token_id]), image, torch.tensor([cfg.vision_end_token_id])])
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
    return {**inputs, **pixels}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(fn, device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def _median_spread(xs: list[float]):
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return statistics.median(xs), q[0], q[2]


def median_ci(xs, level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of independent draws `xs`: the k-th
    smallest and k-th largest, k the largest for which both tails of Binomial(n, 1/2) below k hold at
    most (1 − level) / 2 each. Returns (low, high, coverage), coverage ≥ level when n allows it (n ≥ 6
    at 95 %); with fewer draws, the smallest and largest and the coverage they have."""
    from math import comb

    xs, n = sorted(xs), len(xs)
    if n == 0:
        raise ValueError("xs is empty: allowed one draw or more")
    tail = lambda k: sum(comb(n, i) for i in range(k)) / 2 ** n  # P(Binomial(n, 1/2) < k)
    k = 1
    while k < n // 2 and tail(k + 1) <= (1 - level) / 2:
        k += 1
    return xs[k - 1], xs[n - k], 1 - 2 * tail(k)


def _prefill(model, inputs: dict):
    """One prefill as `generate` runs it: a forward with a KV cache, logits of the last position only
    (the head over every prompt position would add a cost that no pruning method changes)."""
    return model(**inputs, use_cache=True, logits_to_keep=1)


def prefill_time(model, inputs: dict, cfg=None, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of one prefill (`_prefill`) of `inputs` under `cfg`."""
    device = next(model.parameters()).device
    with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
        return statistics.median(_times(lambda: _prefill(model, inputs), device, repeats, warmup))


def _features(model, inputs: dict):
    """A call computing the image (or video) features alone (vision tower and projector)."""
    cfg = model.config
    if "image_grid_thw" in inputs:  # Qwen2-VL / Qwen2.5-VL
        return lambda: model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    if "pixel_values_videos" in inputs:  # Video-LLaVA: the frames of a video
        return lambda: model.model.get_video_features(inputs["pixel_values_videos"],
                                                      vision_feature_layer=cfg.vision_feature_layer)
    if "image_sizes" in inputs:  # LLaVA-NeXT / OneVision
        return lambda: model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    return lambda: model.model.get_image_features(
        pixel_values=inputs["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy)


def prefill_rounds(model, inputs: dict, rows: dict, repeats: int = 5, warmup: int = 2,
                   layers: dict | None = None, lm: dict | None = None) -> dict:
    """Seconds of one prefill of every method in `rows` ({name: config, None = dense}) and of the
    image features alone ("vision": the part of every prefill that no method inside the language
    model can shorten), measured in rounds: each round times every one once, in turn,
    so that the machine's drift over a long run (other load, clocks, memory) falls on all of them
    alike rather than on whichever ran last. `warmup` untimed rounds first. Returns {name: [s, ...]}.

    With an `lm` dict, the language model's call inside each timed prefill is clocked too (`_clock`
    on it: the method's own work, its stages and the layers; not the image features, the splice or
    the head), and `lm` gets {name: [s, ...]}. With a `layers` dict, each method's turn also runs a
    second prefill whose decoder layers are timed one call at a time, and `layers` gets {name: [s
    inside the layers, ...]}."""
    device = next(model.parameters()).device
    text = model.model.language_model
    calls = {"vision": (None, _features(model, inputs)), **{name: (cfg, lambda: _prefill(model, inputs))
                                                            for name, cfg in rows.items()}}
    times = {name: [] for name in calls}
    for parts in (layers, lm):
        if parts is not None:
            parts.update({name: [] for name in rows})
    for round_ in range(warmup + repeats):
        for name, (cfg, call) in calls.items():
            prefill = name != "vision"  # (the image features alone have no language model to clock)
            with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
                with _clock([text] if prefill and lm is not None else [], device) as in_lm:
                    _sync(device)
                    start = time.perf_counter()
                    call()
                    _sync(device)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
                    if prefill and lm is not None:
                        lm[name].append(in_lm[0])
                if prefill and layers is not None:
                    with _clock(text.layers, device) as spent:
                        call()
                    if round_ >= warmup:
                        layers[name].append(spent[0])
    return times


@contextmanager
def _clock(modules, device):
    """Within the block, each call of each of `modules` is timed on its own (the device synchronised
    around it) and added up: yields a one-item list holding the seconds spent inside them. On the
    decoder layers it tells what the layers cost at the lengths a method leaves them apart from
    everything else a prefill does (the method's own work, each stage's mask and rotary embeddings,
    the vision tower); on the language model, its prefill without the image features."""
    spent, start = [0.0], [0.0]

    def before(module, args):
        _sync(device)
        start[0] = time.perf_counter()

    def after(module, args, out):
        _sync(device)
        spent[0] += time.perf_counter() - start[0]

    hooks = [h for m in modules for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        yield spent
    finally:
        for h in hooks:
            h.remove()


#: lengths at which `--layer-curve` times a decoder layer (below the prompt's; its own length besides)
CURVE_TOKENS = (1, 16, 32, 64, 96, 128, 192, 256, 384, 512)


def layer_curve(model, counts, repeats: int = 5, warmup: int = 1) -> pd.DataFrame:
    """What one decoder layer costs at each length n in `counts`: the language model runs dense on n
    random embeddings (no cache, causal), each layer's call is clocked on its own (`_clock`) and their
    mean taken; in rounds (every n once per round, so the machine's drift falls on all alike), `warmup`
    untimed rounds first. Index `tokens`; columns `layer_ms` (median over the `repeats` rounds),
    `layer_ms_p25` / `layer_ms_p75` (spread) and `layer_flops` (`flops.layer_flops` at n). A method
    that leaves n_ℓ tokens to layer ℓ cannot make its layers cheaper than Σ_ℓ t(n_ℓ) on this machine:
    `predicted_layers_ratio`."""
    from .flops import layer_flops

    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    text = model.model.language_model
    hidden = model.config.text_config.hidden_size
    if not counts or any(not isinstance(n, int) or n < 1 for n in counts):
        raise ValueError(f"counts={counts!r}: allowed a non-empty list of integers ≥ 1")
    g = torch.Generator().manual_seed(0)
    embeds = {n: torch.randn(1, n, hidden, generator=g).to(device, dtype) for n in counts}
    times = {n: [] for n in counts}
    for round_ in range(warmup + repeats):
        for n in counts:
            with torch.no_grad(), _clock(text.layers, device) as spent:
                text(inputs_embeds=embeds[n], use_cache=False)
            if round_ >= warmup:
                times[n].append(spent[0] / len(text.layers))
    rows = []
    for n in counts:
        p50, p25, p75 = (t * 1e3 for t in _median_spread(times[n]))
        rows.append({"tokens": n, "layer_ms": p50, "layer_ms_p25": p25, "layer_ms_p75": p75,
                     "layer_flops": float(layer_flops(n, **dims(model)))})
    return pd.DataFrame(rows).set_index("tokens")


def tokens_per_layer(model, inputs: dict, cfg=None) -> list[int]:
    """The sequence length each decoder layer sees in one prefill of the first prompt of `inputs`
    under `cfg` (None: dense): its text tokens plus the visual tokens entering the layer."""
    with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
        if cfg is None:
            rep = dense_report_for(model, inputs)
        else:
            model(**inputs, use_cache=True, logits_to_keep=1)
            rep = report(model)
    return ((rep.n_tokens - rep.n_visual)[:, None] + rep.visual_in)[0].tolist()


def predicted_layers_ratio(curve: pd.DataFrame, tokens, dense) -> float:
    """Σ_ℓ t(n_ℓ) / Σ_ℓ t(N_ℓ): what the decoder layers cost at the lengths `tokens` (one per layer)
    against `dense`'s, each layer's time t read off `layer_curve` (linear between measured lengths)."""
    import numpy as np

    n, t = curve.index.to_numpy(), curve["layer_ms"].to_numpy()
    if len(tokens) != len(dense):
        raise ValueError(f"tokens has {len(tokens)} layers and dense {len(dense)}: allowed one length per layer in both")
    longest = max(max(tokens), max(dense))
    if longest > n.max():
        raise ValueError(f"tokens up to {longest}: the curve was measured up to {n.max()} only")
    return float(np.interp(tokens, n, t).sum() / np.interp(dense, n, t).sum())


def measure(model, inputs: dict, cfg=None, repeats: int = 5, new_tokens: int = 8) -> dict:
    """One method's decode time, own work, memory and accounting on `inputs` (see module doc; its
    prefill time comes from `prefill_rounds`, beside the other methods')."""
    device = next(model.parameters()).device
    with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
        state = getattr(model, "_sparsevlm", None)
        overhead = None
        if state is not None:  # separately: timing the method's work synchronises around it
            state["timing"] = True
            overhead = statistics.median(_times_overhead(model, inputs, device, repeats))
            state["timing"] = False
        steps = decode_steps(model, inputs, new_tokens, repeats)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        out = model(**inputs, use_cache=True)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20 if device.type == "cuda" else float("nan")
        kv = kv_cache_mb(getattr(out, CACHE))
        rep = report(model) if state is not None else dense_report_for(model, inputs)
        eq, eq_in = float(rep.equivalent_tokens.mean()), float(rep.equivalent_tokens_input.mean())
        flops = float(report_flops(rep, **dims(model)).mean())
    d50, d25, d75 = _median_spread(steps)
    return {"decode_ms_per_token": d50 * 1e3, "decode_ms_p25": d25 * 1e3, "decode_ms_p75": d75 * 1e3,
            "overhead_ms": None if overhead is None else overhead * 1e3,
            "kv_cache_mb": kv, "peak_prefill_mb": peak, "equivalent_tokens": eq,
            "equivalent_tokens_input": eq_in, "tflops": flops / 1e12}


def kv_cache_mb(cache) -> float:
    """MiB held by a KV cache's keys and values, over its layers (each as long as the tokens that reached it)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)) / 2 ** 20


def decode_steps(model, inputs: dict, new_tokens: int, repeats: int) -> list[float]:
    """Seconds of each decoding step of greedy `generate(max_new_tokens=1 + new_tokens)`, `repeats`
    times after one warm-up: the time between the logits of one new token and the next (the forward
    of one token over the KV cache, and choosing it), stamped by a logits processor."""
    from transformers import LogitsProcessor, LogitsProcessorList

    device = next(model.parameters()).device

    class Stamp(LogitsProcessor):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            _sync(device)
            self.times.append(time.perf_counter())
            return scores

    out = []
    for i in range(repeats + 1):
        stamp = Stamp()
        model.generate(**inputs, max_new_tokens=1 + new_tokens, min_new_tokens=1 + new_tokens, do_sample=False,
                       use_cache=True, logits_processor=LogitsProcessorList([stamp]))
        if i:  # the first call warms up
            out += [b - a for a, b in zip(stamp.times, stamp.times[1:])]
    return out


def _times_overhead(model, inputs, device, repeats):
    out = []
    for _ in range(repeats):
        model(**inputs, use_cache=True)
        out.append(report(model).overhead_seconds or 0.0)
    return out


def _inside(event, name: str) -> bool:
    """Whether a profiler event lies inside a range called `name`."""
    event = event.cpu_parent
    while event is not None:
        if event.name == name:
            return True
        event = event.cpu_parent
    return False


def profile_prefill(model, inputs: dict, cfg=None) -> dict:
    """Counted with torch's profiler on one prefill after a warm-up: aten calls, host reads of device
    values (each stalls the host until the device catches up: `aten::_local_scalar_dense`, and the
    method's batched reads, `select.host_ints` / `host_copy`), and the part of both made by the method's own work
    (inside its "sparsevlm::method" ranges). On a CPU a read of a CPU tensor by `.tolist()` or
    `.cpu()` outside those two is not seen; the library makes none while pruning."""
    from torch.profiler import ProfilerActivity, profile

    from .models.patching import METHOD_RANGE
    from .select import HOST_READ, ON_HOST

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if next(model.parameters()).is_cuda else [])
    with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
        model(**inputs, use_cache=True)
        with profile(activities=activities) as prof:
            model(**inputs, use_cache=True)

    def in_method(event):
        return _inside(event, METHOD_RANGE)

    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    # A host read: a device value read as a Python number (`aten::_local_scalar_dense`), or a
    # transfer of several at once by the method (`select.host_ints` / `host_copy`, their own range);
    # not a read inside a transfer, nor one of a value already copied to the host (`select.ON_HOST`).
    reads = [e for e in prof.events() if e.name in ("aten::_local_scalar_dense", HOST_READ)
             and not (e.name != HOST_READ and (_inside(e, HOST_READ) or _inside(e, ON_HOST)))]
    return {"aten_calls": len(aten), "host_reads": len(reads), "method_aten_calls": sum(map(in_method, aten)),
            "method_host_reads": sum(map(in_method, reads))}


def profile_table(model, batches: dict, rows: dict, repeats: int = 5, warmup: int = 2, log=print) -> pd.DataFrame:
    """`profile_prefill` for every method and batch ({batch size: inputs}), with the method's own
    time (`Report.overhead_seconds`, median of `repeats`) as a share of dense prefill at that batch."""
    device = next(model.parameters()).device
    out = []
    for size, inputs in batches.items():
        dense_ms = prefill_time(model, inputs, None, repeats, warmup) * 1e3
        for name, cfg in rows.items():
            r = {"method": name, "batch": size, **profile_prefill(model, inputs, cfg), "method_time_share": 0.0}
            if cfg is not None:
                with torch.no_grad(), sparsified(model, cfg):
                    state = model._sparsevlm
                    state["timing"] = True
                    r["method_time_share"] = statistics.median(_times_overhead(model, inputs, device, repeats)) \
                        * 1e3 / dense_ms
                    state["timing"] = False
            out.append(r)
            log(f"{name:>16} batch {size}: {r['aten_calls']} aten calls ({r['method_aten_calls']} the method's), "
                f"{r['host_reads']} host reads ({r['method_host_reads']}), method time {r['method_time_share']:.1%} "
                f"of dense prefill")
    return pd.DataFrame(out)


def machine(device, dtype, attn: str) -> dict:
    """Where and how the numbers were taken."""
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "attn_implementation": attn}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def model_shape(model) -> tuple[int, int]:
    """(visual tokens per image, language-model layers). Where the visual tokens depend on the image
    (Qwen2-VL, ...), 576: LLaVA-1.5's count, so that presets built for the model keep its ratios."""
    v = model.config.vision_config
    size = getattr(v, "image_size", None)
    return (size // v.patch_size) ** 2 if size else 576, model.config.text_config.num_hidden_layers


def preset_config(model, budget: int, n_visual: int | None = None):
    """`SparseVLMConfig.preset(budget)` for `model`: scaled to its layers and to `n_visual` (default
    `model_shape`'s), in the position mode its family defaults to."""
    from . import SparseVLMConfig
    from .models import default_positions

    n_vis, layers = model_shape(model)
    return SparseVLMConfig.preset(budget, n_visual=n_visual or n_vis, num_layers=layers,
                                  positions=default_positions(model))


def rank_config(model):
    """SparseVLM's rank mode for `model`: the toy's scaled version on the embedded model, else the
    paper's, in the position mode its family defaults to."""
    from . import SparseVLMConfig, toy
    from .models import default_positions

    if model_shape(model) == (toy.TOY_VISUAL, toy.TOY_NUM_LAYERS):
        return toy.rank_config()
    return SparseVLMConfig(positions=default_positions(model))


def methods_for(model, budgets, n_visual: int | None = None, log=None, methods=None) -> dict:
    """{row name: config} — dense, SparseVLM at each budget (LLaVA-1.5 presets scaled to the
    model's `n_visual` tokens per image), and every baseline matched to its equivalent tokens that
    the model's family supports (M-RoPE models: original positions; the others are logged)."""
    from .methods import build, matched_baselines
    from .models import _adapter

    n_vis, layers = model_shape(model)
    n_vis = n_visual or n_vis
    adapter = _adapter(model)
    rows = {"dense": None}
    for n in budgets:
        cfg = preset_config(model, n, n_vis)
        baselines = matched_baselines(cfg, n_vis, layers, methods=[m for m in methods or BASELINES if m != "sparsevlm"])
        for name, c in (({"sparsevlm": cfg} if methods is None or "sparsevlm" in methods else {}) | baselines).items():
            try:
                adapter.check(model, build(c, layers))
            except ValueError as e:
                if log is not None and n == budgets[0]:
                    log(f"{name}: skipped ({str(e).split('; ')[0]})")
                continue
            rows[f"{name} {n}"] = c
    return rows


def model_and_inputs(model_name: str, device: str, dtype: str, attn: str = "sdpa", text_hidden: int | None = None,
                     batch: int = 1):
    """The bench's model (weights seeded) and prompt: (model, inputs of `batch` prompts, {1: ..., 8: ...}
    batches for `--profile`: the toy's own questions, else None)."""
    torch.manual_seed(0)
    batches = None
    if model_name == "toy":
        from . import toy

        model, processor = toy.load(dtype=DTYPES[dtype])
        model.to(device)
        model.config._attn_implementation = attn
        model.config.text_config._attn_implementation = attn
        records = toy.eval_split(limit=max(8, batch))
        batches = {}
        for size in sorted({1, 8, batch}):  # different questions: padding as in real batches
            x = processor(images=[r["image"] for r in records[:size]], text=[r["prompt"] for r in records[:size]],
                          return_tensors="pt", padding=True).to(device)
            x["pixel_values"] = x["pixel_values"].to(DTYPES[dtype])
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
    elif model_name == "video-llava-7b-shaped":
        model = random_llava(video_llava_7b_config(attn, text_hidden or 4096), device, DTYPES[dtype])
        inputs = synthetic_inputs(model, n_text=695 - 576 - 6)  # an 8-frame video and the same ~113 text tokens
    elif Path(model_name).is_dir():  # a local checkpoint: timings depend on shapes only
        from .cli import load_model

        model, _ = load_model(model_name, device, dtype, with_processor=False)
        model.config.text_config._attn_implementation = attn
        inputs = synthetic_inputs(model, n_text=113)
    else:
        raise ValueError(f"model={model_name!r} is not supported; allowed: {', '.join(MODELS)} or a checkpoint folder")
    if model_name != "toy" and batch > 1:  # the same prompt `batch` times
        inputs = {k: v.repeat(batch, *[1] * (v.dim() - 1)) for k, v in inputs.items()}
    return model, inputs, batches


def run(model_name: str = "toy", device: str = "cpu", dtype: str = "float32", attn: str = "sdpa",
        budgets=(192, 128, 64), repeats: int = 5, warmup: int = 2, new_tokens: int = 8, out: str | None = None,
        methods: list[str] | None = None, log=print, text_hidden: int | None = None,
        profile: bool = False, batch: int = 1, curve: bool = False) -> pd.DataFrame:
    """Benchmark dense, SparseVLM and the baselines; write `bench_<model>_<device>.csv/.json` to `out`
    (`bench_llava-1.5-7b-shaped-h<text_hidden>_<device>` for a narrowed language model;
    `..._b<batch>_<device>` when timing `batch` prompts at once: the toy's first `batch` evaluation
    questions, padded as in real batches, or the synthetic prompt repeated). With
    `profile`, count instead the aten calls and host reads of one prefill per method at batch 1 and
    8 (and SparseVLM's rank mode besides the presets): `profile_<model>_<device>.csv/.json`. With
    `curve`, time instead one decoder layer at lengths up to the prompt's (`layer_curve`) and record
    the length each method leaves every layer, logging the layers' time ratio this predicts beside the
    FLOPs ratio: `layers_<model>_<device>.csv/.json` (the curve; the JSON holds the lengths too)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"device={device!r}: {problem}")
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0), ("new_tokens", new_tokens, 1),
                             ("batch", batch, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: allowed an integer ≥ {low}")
    if profile and batch != 1:
        raise ValueError(f"batch={batch}: --profile counts batches of 1 and 8 itself; allowed with it: 1")
    if curve and (profile or batch != 1):
        raise ValueError("--layer-curve times one prompt's layers: allowed without --profile and with batch 1")
    if text_hidden is not None and not model_name.endswith("-shaped"):
        raise ValueError(f"text_hidden={text_hidden} narrows the -shaped models only, not model={model_name!r}")
    model, inputs, batches = model_and_inputs(model_name, device, dtype, attn, text_hidden, batch)
    n_visual = int(dense_report_for(model, inputs).n_visual[0])  # image and video tokens
    rows = methods_for(model, budgets, n_visual=n_visual, log=log, methods=methods or None)
    if profile:
        if "sparsevlm" in (methods or ["sparsevlm"]):
            rows = {**rows, "sparsevlm rank": rank_config(model)}
        if model_name != "toy":  # the same prompt 8 times
            batches = {1: inputs, 8: {k: v.repeat(8, *[1] * (v.dim() - 1))
                                      for k, v in inputs.items()}}
        batches = {1: batches[1], 8: batches[8]}
        table = profile_table(model, batches, rows, repeats, warmup, log)
        info = machine(device, DTYPES[dtype], attn)
        info.update(model=model_name, prompt_tokens=int(inputs["input_ids"].shape[1]), n_visual=n_visual)
        if out is not None:
            _write(table.set_index(["method", "batch"]), info, Path(out),
                   f"profile_{Path(model_name).name}{f'-h{text_hidden}' if text_hidden else ''}_"
                   f"{torch.device(device).type}", log)
        table.attrs["machine"] = info
        return table
    if curve:
        n_prompt = int(inputs["input_ids"].shape[1])
        table = layer_curve(model, sorted({*(n for n in CURVE_TOKENS if n < n_prompt), n_prompt}), repeats, warmup)
        lengths = {name: tokens_per_layer(model, inputs, cfg) for name, cfg in rows.items()}
        flops = {name: float(prefill_flops(torch.tensor([n]), **dims(model))[0]) for name, n in lengths.items()}
        for name, n in lengths.items():
            log(f"{name:>16}: layers at {predicted_layers_ratio(table, n, lengths['dense']):.3f} of dense's time "
                f"(this curve) for {flops[name] / flops['dense']:.3f} of its FLOPs")
        info = machine(device, DTYPES[dtype], attn)
        info.update(model=model_name, text_hidden=model.config.text_config.hidden_size, prompt_tokens=n_prompt,
                    repeats=repeats, warmup=warmup)
        if out is not None:
            _write(table, info, Path(out), f"layers_{Path(model_name).name}{f'-h{text_hidden}' if text_hidden else ''}"
                                           f"_{torch.device(device).type}", log, tokens_per_layer=lengths)
        table.attrs["tokens_per_layer"] = lengths
        table.attrs["machine"] = info
        return table
    layers, lm = {}, {}  # seconds inside the decoder layers and inside the language model, from the same rounds
    rounds = prefill_rounds(model, inputs, rows, repeats, warmup, layers, lm)  # every method in turn, `repeats` rounds
    vision_ms = statistics.median(rounds["vision"]) * 1e3
    log(f"image features (vision tower + projector): {vision_ms:.2f} ms")
    results = []
    for name, cfg in rows.items():
        p50, p25, p75 = (v * 1e3 for v in _median_spread(rounds[name]))
        r = {"prefill_ms": p50, "prefill_ms_p25": p25, "prefill_ms_p75": p75,
             "lm_prefill_ms": statistics.median(lm[name]) * 1e3, "layers_ms": statistics.median(layers[name]) * 1e3,
             **measure(model, inputs, cfg, repeats, new_tokens)}
        results.append({"method": name, **r})
        log(f"{name:>16}: prefill {r['prefill_ms']:.2f} ms, decode {r['decode_ms_per_token']:.2f} ms/token, "
            f"KV {r['kv_cache_mb']:.2f} MB, {r['equivalent_tokens']:.1f} eq. tokens")
    table = pd.DataFrame(results).set_index("method")
    dense = table.loc["dense"]
    table["flops_ratio"] = table["tflops"] / dense["tflops"]
    # Ratios to dense round by round (each round times dense and the method minutes apart at most, so
    # that the machine's drift cancels), then their median and 25–75 % spread over the rounds.
    paired = {name: {"prefill_ratio": [m / d for m, d in zip(rounds[name], rounds["dense"])],
                     # the language model's share, clocked inside the same prefill: comparable with
                     # flops_ratio (language-model FLOPs)
                     "lm_prefill_ratio": [m / d for m, d in zip(lm[name], lm["dense"])],
                     # what the decoder layers alone cost at the lengths the method leaves them: lm_prefill_ratio
                     # above it is the rest (own work, stages); it above flops_ratio, the layers themselves
                     "layers_ratio": [m / d for m, d in zip(layers[name], layers["dense"])]}
              for name in rows}
    for column in ("prefill_ratio", "lm_prefill_ratio", "layers_ratio"):
        table[column] = [statistics.median(paired[name][column]) for name in table.index]
    spread = [_median_spread(paired[name]["lm_prefill_ratio"]) for name in table.index]
    table["lm_prefill_ratio_p25"], table["lm_prefill_ratio_p75"] = [s[1] for s in spread], [s[2] for s in spread]
    ci = [median_ci(paired[name]["lm_prefill_ratio"]) for name in table.index]  # of the median, over the rounds
    table["lm_prefill_ratio_ci_low"], table["lm_prefill_ratio_ci_high"] = [c[0] for c in ci], [c[1] for c in ci]
    table["overhead_share"] = table["overhead_ms"].astype(float) / dense["prefill_ms"]
    info = machine(device, DTYPES[dtype], attn)
    info.update(model=model_name, text_hidden=model.config.text_config.hidden_size, vision_ms=vision_ms,
                prompt_tokens=int(inputs["input_ids"].shape[1]), batch=batch, repeats=repeats, warmup=warmup,
                new_tokens=new_tokens, prefill_timing="rounds: every method once per round, in turn",
                ratio_ci=f"lm_prefill_ratio_ci_*: {ci[0][2]:.1%} interval of the median over the rounds (median_ci)")
    if out is not None:
        _write(table, info, Path(out), f"bench_{Path(model_name).name}{f'-h{text_hidden}' if text_hidden else ''}"
                                       f"{f'_b{batch}' if batch > 1 else ''}_{torch.device(device).type}", log,
               rounds=paired)
    table.attrs["machine"] = info
    return table


def _write(table: pd.DataFrame, info: dict, path: Path, stem: str, log=print, **extra) -> None:
    """`table` as CSV and, with the machine (and any `extra` entries), as JSON."""
    path.mkdir(parents=True, exist_ok=True)
    table.to_csv(path / f"{stem}.csv")
    (path / f"{stem}.json").write_text(json.dumps({"machine": info, "results": json.loads(
        table.reset_index().to_json(orient="records")), **extra}, indent=2) + "\n")
    log(f"wrote {path / stem}.csv and .json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", metavar="{" + ",".join(MODELS) + ",PATH}",
                   help="toy: the embedded model (default); llava-1.5-7b-shaped / qwen2.5-vl-7b-shaped / "
                        "video-llava-7b-shaped (an 8-frame video): random "
                        "weights in those models' shapes (need a GPU unless --text-hidden narrows them); PATH: a "
                        "local checkpoint folder of a supported family (synthetic ~700-token prompt)")
    p.add_argument("--text-hidden", type=int, default=None,
                   help="-shaped models only: narrow the language model to this width (same tokens, layers and "
                        "vision tower): a multiple of 128 up to 4096 for LLaVA (1024 fits a CPU), of 896 up to "
                        "3584 for Qwen (default: the full width)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights and activations (default float32)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation (default sdpa)")
    p.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64], choices=[192, 128, 96, 64],
                   help="SparseVLM presets (LLaVA-1.5 equivalent tokens; scaled on the toy) (default 192 128 64)")
    p.add_argument("--methods", nargs="+", default=None, choices=["sparsevlm", *BASELINES],
                   help="only these methods besides dense (default: all)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per method (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--new-tokens", type=positive_int, default=8, help="tokens decoded to time decoding (default 8)")
    p.add_argument("--out", default="results", help="folder for the CSV/JSON (default results)")
    p.add_argument("--batch", type=int, default=1,
                   help="time this many prompts at once (toy: its first N evaluation questions, padded; the "
                        "-shaped models and checkpoints: the synthetic prompt N times); results get a _bN suffix")
    p.add_argument("--profile", action="store_true",
                   help="count aten calls and host reads of one prefill per method at batch 1 and 8 (torch "
                        "profiler), and the method's own share of them and of the time, instead of timing")
    p.add_argument("--layer-curve", action="store_true",
                   help="time one decoder layer at lengths up to the prompt's and record the length each method "
                        "leaves every layer, instead of timing prefills: what the layers alone allow on this "
                        "machine (layers_<model>_<device>.csv/.json)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsevlm.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        run(a.model, a.device, a.dtype, a.attn, a.budgets, a.repeats, a.warmup, a.new_tokens, a.out, a.methods,
            text_hidden=a.text_hidden, profile=a.profile, batch=a.batch, curve=a.layer_curve)
    except ValueError as e:  # bad input: one line, as `sparsevlm bench` says it
        p.exit(1, f"{p.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
