"""What the decoder layers alone cost at each length, and the time ratio a method's lengths allow
(`sparsevlm bench --layer-curve`)."""
from __future__ import annotations

from contextlib import nullcontext

import pandas as pd
import torch

from ..flops import dims, layer_flops
from ..models import report, sparsified
from ..report import dense_report_for
from .stats import median_spread
from .timing import clock

#: lengths at which `--layer-curve` times a decoder layer (below the prompt's; its own length besides)
CURVE_TOKENS = (1, 16, 32, 64, 96, 128, 192, 256, 384, 512)


def layer_curve(model, counts, repeats: int = 5, warmup: int = 1) -> pd.DataFrame:
    """What one decoder layer costs at each length n in `counts`: the language model runs dense on n
    random embeddings (no cache, causal), each layer's call is clocked on its own (`clock`) and their
    mean taken; in rounds (every n once per round, so the machine's drift falls on all alike), `warmup`
    untimed rounds first. Index `tokens`; columns `layer_ms` (median over the `repeats` rounds),
    `layer_ms_p25` / `layer_ms_p75` (spread) and `layer_flops` (`flops.layer_flops` at n). A method
    that leaves n_ℓ tokens to layer ℓ cannot make its layers cheaper than Σ_ℓ t(n_ℓ) on this machine:
    `predicted_layers_ratio`."""
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
            with torch.no_grad(), clock(text.layers, device) as spent:
                text(inputs_embeds=embeds[n], use_cache=False)
            if round_ >= warmup:
                times[n].append(spent[0] / len(text.layers))
    rows = []
    for n in counts:
        p50, p25, p75 = (t * 1e3 for t in median_spread(times[n]))
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
