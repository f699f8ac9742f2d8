"""Prefill FLOPs of the language model, as the SparseVLM paper counts them.

Per decoder layer with n tokens, hidden size d and MLP size m: 4·n·d² (q, k, v, o projections) +
2·n²·d (attention scores and weighted sum) + 3·n·d·m (gate, up, down). One multiply-add counts as
one FLOP (the MAC convention of the paper and of fvcore). A layer processes the tokens that enter
it, so pruning after layer l first saves FLOPs in layer l + 1.

fvcore's measured counts and torch's FlopCounterMode cross-check are not here yet (issue #6).
"""
from __future__ import annotations

import pandas as pd
import torch

from .budget import layer_counts
from .config import PRESET_LAYERS, PRESET_SCHEDULES

# The paper's LLaVA-1.5-7B efficiency numbers (arXiv 2410.04417, prefill TFLOPs): dense and the
# fixed schedules equivalent to 192 / 128 / 64 visual tokens.
PAPER_TFLOPS = {"dense": 4.62, 192: 2.14, 128: 1.72, 64: 1.30}
LLAVA_1_5_7B = {"num_layers": 32, "hidden": 4096, "intermediate": 11008, "n_visual": 576, "n_tokens": 695}


def layer_flops(n, hidden: int, intermediate: int):
    """FLOPs (multiply-adds) of one decoder layer on n tokens; n may be a tensor."""
    return 4 * n * hidden ** 2 + 2 * n ** 2 * hidden + 3 * n * hidden * intermediate


def prefill_flops(tokens_per_layer: torch.Tensor, hidden: int, intermediate: int) -> torch.Tensor:
    """Sum over layers. Shapes: tokens_per_layer (B, num_layers) -> (B,) float64."""
    return layer_flops(tokens_per_layer.double(), hidden, intermediate).sum(-1)


def report_flops(report, hidden: int, intermediate: int) -> torch.Tensor:
    """Prefill FLOPs of each sample of a forward, from `sparsevlm.report(model)`: every layer
    processes the sample's text tokens plus the visual tokens entering it. Shapes: -> (B,)."""
    n_text = (report.n_tokens - report.n_visual)[:, None]  # (B, 1)
    return prefill_flops(n_text + report.visual_in, hidden, intermediate)


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
