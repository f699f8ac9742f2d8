"""Clocks: one prefill as `generate` runs it, prefills of every method in rounds, the time inside
chosen modules, each decoding step, and one method's decode time, own work, memory and accounting."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext

import torch

from ..flops import dims, report_flops
from ..models import config_of, report, sparsified, timing
from ..models.compat import CACHE
from ..report import dense_report_for
from .stats import median_spread


def sync(device) -> None:
    """Wait for `device` to finish its queued work (CUDA; nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed ones (`device` synchronised around each)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def prefill(model, inputs: dict):
    """One prefill as `generate` runs it: a forward with a KV cache, logits of the last position only
    (the head over every prompt position would add a cost that no pruning method changes)."""
    return model(**inputs, use_cache=True, logits_to_keep=1)


def prefill_time(model, inputs: dict, cfg=None, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of one prefill (`prefill`) of `inputs` under `cfg`."""
    device = next(model.parameters()).device
    with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
        return statistics.median(timed(lambda: prefill(model, inputs), device, repeats, warmup))


def features(model, inputs: dict):
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

    With an `lm` dict, the language model's call inside each timed prefill is clocked too (`clock`
    on it: the method's own work, its stages and the layers; not the image features, the splice or
    the head), and `lm` gets {name: [s, ...]}. With a `layers` dict, each method's turn also runs a
    second prefill whose decoder layers are timed one call at a time, and `layers` gets {name: [s
    inside the layers, ...]}."""
    device = next(model.parameters()).device
    text = model.model.language_model
    calls = {"vision": (None, features(model, inputs)), **{name: (cfg, lambda: prefill(model, inputs))
                                                            for name, cfg in rows.items()}}
    times = {name: [] for name in calls}
    for parts in (layers, lm):
        if parts is not None:
            parts.update({name: [] for name in rows})
    for round_ in range(warmup + repeats):
        for name, (cfg, call) in calls.items():
            is_prefill = name != "vision"  # (the image features alone have no language model to clock)
            with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
                with clock([text] if is_prefill and lm is not None else [], device) as in_lm:
                    sync(device)
                    start = time.perf_counter()
                    call()
                    sync(device)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
                    if is_prefill and lm is not None:
                        lm[name].append(in_lm[0])
                if is_prefill and layers is not None:
                    with clock(text.layers, device) as spent:
                        call()
                    if round_ >= warmup:
                        layers[name].append(spent[0])
    return times


@contextmanager
def clock(modules, device):
    """Within the block, each call of each of `modules` is timed on its own (the device synchronised
    around it) and added up: yields a one-item list holding the seconds spent inside them. On the
    decoder layers it tells what the layers cost at the lengths a method leaves them apart from
    everything else a prefill does (the method's own work, each stage's mask and rotary embeddings,
    the vision tower); on the language model, its prefill without the image features."""
    spent, start = [0.0], [0.0]

    def before(module, args):
        sync(device)
        start[0] = time.perf_counter()

    def after(module, args, out):
        sync(device)
        spent[0] += time.perf_counter() - start[0]

    hooks = [h for m in modules for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        yield spent
    finally:
        for h in hooks:
            h.remove()


def measure(model, inputs: dict, cfg=None, repeats: int = 5, new_tokens: int = 8) -> dict:
    """One method's decode time, own work, memory and accounting on `inputs` (see module doc; its
    prefill time comes from `prefill_rounds`, beside the other methods')."""
    device = next(model.parameters()).device
    with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
        sparse, overhead = config_of(model) is not None, None
        if sparse:  # separately: timing the method's work synchronises around it
            with timing(model):
                overhead = statistics.median(overhead_times(model, inputs, repeats))
        steps = decode_steps(model, inputs, new_tokens, repeats)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        out = model(**inputs, use_cache=True)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20 if device.type == "cuda" else float("nan")
        kv = kv_cache_mb(getattr(out, CACHE))
        rep = report(model) if sparse else dense_report_for(model, inputs)
        eq, eq_in = float(rep.equivalent_tokens.mean()), float(rep.equivalent_tokens_input.mean())
        flops = float(report_flops(rep, **dims(model)).mean())
    d50, d25, d75 = median_spread(steps)
    return {"decode_ms_per_token": d50 * 1e3, "decode_ms_p25": d25 * 1e3, "decode_ms_p75": d75 * 1e3,
            "overhead_ms": None if overhead is None else overhead * 1e3,
            "kv_cache_mb": kv, "peak_prefill_mb": peak, "equivalent_tokens": eq,
            "equivalent_tokens_input": eq_in, "tflops": flops / 1e12}


def kv_cache_mb(cache) -> float:
    """MiB held by a KV cache's keys and values, over its layers (each as long as the tokens that reached it).
    A linear-attention layer (Qwen3.5) holds its convolution and recurrent states instead, of a fixed size."""
    def tensors(layer):
        if hasattr(layer, "keys"):
            yield from (layer.keys, layer.values)
        for states in (getattr(layer, "conv_states", {}), getattr(layer, "recurrent_states", {})):
            yield from (t for t in states.values() if t is not None)

    return sum(t.numel() * t.element_size() for layer in cache.layers for t in tensors(layer)) / 2 ** 20


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
            sync(device)
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


def overhead_times(model, inputs: dict, repeats: int) -> list[float]:
    """The method's own seconds (`Report.overhead_seconds`) in each of `repeats` prefills; inside `timing(model)`."""
    out = []
    for _ in range(repeats):
        model(**inputs, use_cache=True)
        out.append(report(model).overhead_seconds or 0.0)
    return out
