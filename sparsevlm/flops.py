"""Prefill FLOPs of the language model, as the SparseVLM paper counts them.

Per decoder layer with n tokens, hidden size d and MLP size m: 4·n·d² (q, k, v, o projections) +
2·n²·d (attention scores and weighted sum) + 3·n·d·m (gate, up, down). One multiply-add counts as
one FLOP (the MAC convention of the paper and of fvcore). A layer processes the tokens that enter
it, so pruning after layer l first saves FLOPs in layer l + 1.
Qwen3-VL's DeepStack adds a D-wide feature to each visual token after its first layers: element-wise,
so not counted (n·D adds, under 1e-4 of a layer of Qwen3-VL-8B).
Qwen3.5's hybrid layers (`config_layer_flops`): a full-attention layer's query projection also makes
the output gate (n·d·H·h more). A linear-attention layer (`linear_attention_flops`) has no n² term:
projections, a depthwise convolution, and the chunked gated delta rule, linear in n.
Gemma 3's sliding-window layers count as full ones: the kernels compute all n² scores, then mask them.

Measured counts (`count_flops`) run the real, possibly sparsified model once under fvcore's
`FlopCountAnalysis` or torch's `FlopCounterMode` and split the total by module: vision tower and
projector, each decoder layer, the LM head, and the *overhead* — work the text model does outside
its layers, which for a sparsified model is the method's own scoring, rank, clustering and
re-layout. Both counters are reported as multiply-adds (torch's FlopCounterMode counts 2 per
multiply-add; we halve it). Both count matrix products (linear layers, attention via a handle for
`scaled_dot_product_attention`, which neither counts on CPU by itself) and neither counts
element-wise work (norms, activations, softmax) — as the analytic formula does not.
"""
from __future__ import annotations

import warnings

import pandas as pd
import torch

from .budget import layer_counts
from .config import PRESET_LAYERS, PRESET_SCHEDULES

# The paper's LLaVA-1.5-7B efficiency numbers (arXiv 2410.04417, prefill TFLOPs): dense and the
# fixed schedules equivalent to 192 / 128 / 64 visual tokens.
PAPER_TFLOPS = {"dense": 4.62, 192: 2.14, 128: 1.72, 64: 1.30}
LLAVA_1_5_7B = {"num_layers": 32, "hidden": 4096, "intermediate": 11008, "n_visual": 576, "n_tokens": 695}


def layer_flops(n, hidden: int, intermediate: int, kv_hidden: int | None = None, text_config=None):
    """FLOPs (multiply-adds) of one decoder layer on n tokens; n may be a tensor. `kv_hidden`
    (grouped-query attention: key/value heads × head size) defaults to `hidden`, the paper's form.
    `text_config` (given by `dims` for a model with layers of several types): the mean of its layers
    on n tokens (`config_layer_flops`)."""
    if text_config is not None:
        layers = text_config.num_hidden_layers
        return sum(config_layer_flops(text_config, i, n) for i in range(layers)) / layers
    kv = hidden if kv_hidden is None else kv_hidden
    return 2 * n * hidden ** 2 + 2 * n * hidden * kv + 2 * n ** 2 * hidden + 3 * n * hidden * intermediate


def linear_attention_flops(n, hidden: int, intermediate: int, key_heads: int, value_heads: int, key_dim: int,
                           value_dim: int, conv_kernel: int, chunk: int = 64):
    """FLOPs (multiply-adds) of one linear-attention decoder layer (Qwen3.5's gated delta net) on n
    tokens, as transformers' chunked kernel computes it; n may be a tensor. With K = key_heads ·
    key_dim and V = value_heads · value_dim:
    - projections: n·d·(2K + V) for queries, keys and values, n·d·V for the output gate, 2·n·d·value_heads
      for the decay and the write strength, n·V·d for the output;
    - the causal depthwise convolution over the 2K + V channels: (n + conv_kernel − 1)·(2K + V)·conv_kernel
      (its padded output, as computed; the last conv_kernel − 1 positions are dropped);
    - the gated delta rule, per value head and per chunk of `chunk` tokens (n padded up to chunks):
      two chunk² key products, chunk² values read by the intra-chunk attention, and three
      chunk·key_dim·value_dim products with the recurrent state (read twice, written once);
    - the MLP, 3·n·d·m.
    The two triangular solves of each chunk are not counted (torch's counter does not count them).
    Element-wise work (norms, gates, decays) is not counted, as elsewhere."""
    keys, values = key_heads * key_dim, value_heads * value_dim
    chunks = -(-n // chunk)  # ceil, for ints and tensors alike
    mix = value_heads * chunks * (2 * chunk ** 2 * key_dim + chunk ** 2 * value_dim + 3 * chunk * key_dim * value_dim)
    return (n * hidden * (2 * keys + 2 * values + 2 * value_heads) + n * values * hidden
            + (n + conv_kernel - 1) * (2 * keys + values) * conv_kernel + mix + 3 * n * hidden * intermediate)


#: text models whose full-attention query projection also makes an output gate (twice as wide)
GATED_QUERIES = ("qwen3_5_text", "qwen3_5_moe_text")


def mlp_width(text_config) -> int:
    """The MLP width one token passes through. A dense MLP: `intermediate_size`. A mixture of experts
    (Qwen3-VL-MoE, Qwen3.5-MoE; `intermediate_size`, if set, is not what a token meets): the experts a
    token is routed to, k · `moe_intermediate_size`, plus
    a shared expert's width where there is one. The router's d × E multiply-adds are left out. With
    transformers' default shapes they are 0.4 % of the experts' (Qwen3-VL-MoE) and 1.9 % (Qwen3.5-MoE)."""
    t = text_config
    if getattr(t, "num_experts", None):
        shared = getattr(t, "shared_expert_intermediate_size", None) or 0
        return t.num_experts_per_tok * t.moe_intermediate_size + shared
    return t.intermediate_size


def config_layer_flops(text_config, layer: int, n):
    """FLOPs (multiply-adds) of decoder layer `layer` of a dense-MLP text model on n tokens, by its type
    (`text_config.layer_types`). Full attention with H heads of size h: `layer_flops` with H·h in place of
    d where they differ (n·d·H·h for queries and output, 2·n²·H·h for attention), plus the output gate's
    n·d·H·h where the queries are gated (Qwen3.5). Linear attention: `linear_attention_flops`.
    Sliding-window attention (Gemma 3) counts as full attention: transformers' eager and sdpa kernels
    form every score of the n × n matrix and mask those outside the window."""
    t = text_config
    kind = (getattr(t, "layer_types", None) or ["full_attention"] * t.num_hidden_layers)[layer]
    if kind == "linear_attention":
        return linear_attention_flops(n, t.hidden_size, mlp_width(t), t.linear_num_key_heads,
                                      t.linear_num_value_heads, t.linear_key_head_dim, t.linear_value_head_dim,
                                      t.linear_conv_kernel_dim)
    if kind not in ("full_attention", "sliding_attention"):
        raise ValueError(f"layer {layer} is {kind!r}; counted: 'full_attention', 'sliding_attention', "
                         f"'linear_attention'")
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    gate = n * t.hidden_size * t.num_attention_heads * head_dim if t.model_type in GATED_QUERIES else 0
    d, q = t.hidden_size, t.num_attention_heads * head_dim
    kv = (t.num_key_value_heads or t.num_attention_heads) * head_dim
    return 2 * n * d * q + 2 * n * d * kv + 2 * n ** 2 * q + 3 * n * d * mlp_width(t) + gate


def prefill_flops(tokens_per_layer: torch.Tensor, hidden: int, intermediate: int,
                  kv_hidden: int | None = None, text_config=None) -> torch.Tensor:
    """Sum over layers; with `text_config` (layers of several types), each layer by its type.
    Shapes: tokens_per_layer (B, num_layers) -> (B,) float64."""
    n = tokens_per_layer.double()
    if text_config is not None:
        return sum(config_layer_flops(text_config, i, n[:, i]) for i in range(n.shape[-1]))
    return layer_flops(n, hidden, intermediate, kv_hidden).sum(-1)


def dims(model) -> dict:
    """hidden, intermediate and kv_hidden of a LLaVA model's language model (for the formula); and
    its `text_config` where its layers are of several types (Qwen3.5), counted layer by layer."""
    t = model.config.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    out = {"hidden": t.hidden_size, "intermediate": mlp_width(t),
           "kv_hidden": (t.num_key_value_heads or t.num_attention_heads) * head_dim}
    if set(getattr(t, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
        out["text_config"] = t
    return out


def report_flops(report, hidden: int, intermediate: int, kv_hidden: int | None = None,
                 text_config=None) -> torch.Tensor:
    """Prefill FLOPs of each sample of a forward, from `sparsevlm.report(model)`: every layer
    processes the sample's text tokens plus the visual tokens entering it (`text_config`: each layer
    by its type, as `dims` gives it for Qwen3.5). Shapes: -> (B,)."""
    n_text = (report.n_tokens - report.n_visual)[:, None]  # (B, 1)
    return prefill_flops(n_text + report.visual_in, hidden, intermediate, kv_hidden, text_config)


def _sdpa_macs(q_shape, k_shape, v_shape) -> int:
    """Multiply-adds of attention: scores (q·kᵀ) and the weighted sum of values, full matrix."""
    *batch, lq, e = q_shape
    n = 1
    for b in batch:
        n *= b
    return n * lq * k_shape[-2] * (e + v_shape[-1])


def _fvcore_sdpa(inputs, outputs):
    from fvcore.nn.jit_handles import get_shape
    return _sdpa_macs(*(get_shape(x) for x in inputs[:3]))


def _torch_sdpa(q_shape, k_shape, v_shape, *args, **kwargs):
    return 2 * _sdpa_macs(q_shape, k_shape, v_shape)  # FlopCounterMode counts FLOPs = 2 × MACs


class _Logits(torch.nn.Module):
    """The model as a function of tensors returning logits (what tracing needs)."""

    def __init__(self, model, names):
        super().__init__()
        self.m, self.names = model, names

    def forward(self, *tensors):
        return self.m(**dict(zip(self.names, tensors)), use_cache=False).logits


COUNTERS = ("fvcore", "torch")


def count_flops(model, inputs: dict, counter: str = "fvcore") -> dict:
    """Measured multiply-adds of one forward of `model` (dense or sparsified) on `inputs`
    (input_ids, attention_mask, pixel_values, and whatever tensors the family takes: image_sizes,
    image_grid_thw, ...). Returns {"total", "vision" (tower + projector),
    "layers" (decoder layers, sum), "per_layer" (list), "lm_head", "overhead" (everything outside
    the model's own modules: the pruning method's scoring, rank, clustering, re-layout; 0 for a
    dense model)} as ints. The counters agree exactly on the decoder layers and the LM head; on the
    vision tower fvcore also counts LayerNorm (5 per element), torch does not."""
    if counter not in COUNTERS:
        raise ValueError(f"counter={counter!r} is not supported; allowed: {', '.join(map(repr, COUNTERS))}")
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]  # image sizes, grids, ... too
    wrapped = _Logits(model, names).eval()
    args = tuple(inputs[k] for k in names)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent branches
        if counter == "fvcore":
            from fvcore.nn import FlopCountAnalysis
            fca = FlopCountAnalysis(wrapped, args).set_op_handle("aten::scaled_dot_product_attention", _fvcore_sdpa)
            fca.unsupported_ops_warnings(False)
            fca.uncalled_modules_warnings(False)
            try:
                by = {k[2:] if k.startswith("m.") else ("" if k == "m" else k): v for k, v in fca.by_module().items()}
            except (TypeError, RuntimeError) as e:  # torch.jit.trace cannot follow some models' Python
                name = getattr(type(model), "_sparsevlm_original", type(model)).__name__
                raise ValueError(f"fvcore cannot trace {name} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0]}); use counter='torch'") from None
            total = fca.total()
        else:
            from torch.utils.flop_counter import FlopCounterMode
            ops = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _torch_sdpa}
            with FlopCounterMode(display=False, custom_mapping=ops) as fc:
                wrapped(*args)
            prefix = f"{type(wrapped).__name__}.m"
            by = {k[len(prefix) + 1:]: sum(v.values()) // 2 for k, v in fc.get_flop_counts().items()
                  if k.startswith(prefix + ".")}
            total = fc.get_total_flops() // 2
    text = model.model.language_model
    per_layer = [int(by.get(f"model.language_model.layers.{i}", 0)) for i in range(text.config.num_hidden_layers)]
    text_parts = sum(int(by.get(f"model.language_model.{c}", 0)) for c, _ in text.named_children() if c != "layers")
    vision = sum(int(by.get(f"model.{c}", 0)) for c, _ in model.model.named_children() if c != "language_model")
    head = int(by.get("lm_head", 0))
    return {"total": int(total), "vision": vision, "layers": sum(per_layer), "per_layer": per_layer, "lm_head": head,
            "overhead": int(total) - vision - sum(per_layer) - text_parts - head}


def paper_table() -> pd.DataFrame:
    """The paper's LLaVA-1.5-7B FLOPs table, recomputed from the architecture and the presets.
    Index: dense, 192, 128, 64. Columns: tflops (ours), tflops_paper, ratio (ours / paper)."""
    a = LLAVA_1_5_7B
    n_text = a["n_tokens"] - a["n_visual"]
    rows = {}
    for name in PAPER_TFLOPS:
        after = {} if name == "dense" else {
            layer: torch.tensor([k]) for layer, k in zip(PRESET_LAYERS, PRESET_SCHEDULES[name])}
        counts_in, _ = layer_counts(torch.tensor([a["n_visual"]]), a["num_layers"], after)
        ours = prefill_flops(n_text + counts_in, a["hidden"], a["intermediate"]).item() / 1e12
        rows[name] = {"tflops": round(ours, 3), "tflops_paper": PAPER_TFLOPS[name],
                      "ratio": round(ours / PAPER_TFLOPS[name], 3)}
    return pd.DataFrame.from_dict(rows, orient="index")
