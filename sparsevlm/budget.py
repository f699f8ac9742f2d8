"""How many visual tokens each pruning layer keeps (paper §3.4), and what that costs in
"equivalent tokens".

Rank-based: the rank of the raters × visual attention matrix measures how much distinct
information the visual tokens carry for this question.
- "keep" (reference code, first commit): keep min(int(scale·rank + bias), n − 1) tokens;
  a full-rank matrix (rank = n) prunes nothing.
- "delete" (paper, Eq. 6): delete int(λ·(n − rank)) tokens, λ = scale.
Fixed schedule (reference v1.5 and later): keep a given count per pruning layer; a budget at or
above the visual tokens present keeps them all (the reference would still drop one).

Equivalent tokens: the number of visual tokens a dense model would need for the same work, the
mean over layers of the visual tokens each layer processes. The reference counts each layer's
output (a pruning layer counts its kept tokens); counting each layer's input instead counts a
pruning layer at full size. Both are reported.
"""
from __future__ import annotations

import torch

from .config import SparseVLMConfig


def attention_rank(attn: torch.Tensor, rater_valid: torch.Tensor, vis_valid: torch.Tensor) -> torch.Tensor:
    """Numerical rank of each sample's raters × visual attention matrix (float32 SVD, the default
    tolerance max(R, V)·eps·σ_max of the sample's own size, so padding does not change it).

    Shapes: attn (B, R, V) zero on invalid rows/columns, rater_valid (B, R), vis_valid (B, V) -> (B,) long.
    """
    n_r = rater_valid.sum(-1)  # (B,)
    n_v = vis_valid.sum(-1)  # (B,)
    rtol = torch.maximum(n_r, n_v).float() * torch.finfo(torch.float32).eps  # (B,)
    return torch.linalg.matrix_rank(attn.float(), rtol=rtol).long()


def rank_keep_count(rank: torch.Tensor, n_visual: torch.Tensor, scale: float, bias: float = 0.0,
                    form: str = "keep") -> torch.Tensor:
    """Visual tokens to keep from the attention rank. Shapes: rank (B,), n_visual (B,) -> (B,) long."""
    n = n_visual.double()
    r = rank.double()
    if form == "keep":
        keep = torch.minimum(torch.trunc(scale * r + bias), n - 1)
    elif form == "delete":
        keep = n - torch.trunc(scale * (n - r))
    else:
        raise ValueError(f"form={form!r} is not supported; allowed: 'keep', 'delete'")
    keep = keep.where(r < n, n)  # full rank: nothing is redundant, keep all
    return keep.clamp(min=0).minimum(n).long()


def schedule_keep_count(budget: int, n_visual: torch.Tensor, n_prompt: torch.Tensor | None = None,
                        schedule_of: int | None = None) -> torch.Tensor:
    """Visual tokens to keep under a fixed budget: `budget`, or with `schedule_of` set,
    max(1, round(budget · n_prompt / schedule_of)) for a sample whose prompt has n_prompt visual
    tokens; never more than the `n_visual` present. Shapes: n_visual (B,), n_prompt (B,) -> (B,) long;
    or Python ints (one sample, as the host plans a prefill) -> int, by the same arithmetic (float64,
    rounding half to even, as `torch.round`)."""
    if schedule_of is not None and n_prompt is None:
        raise ValueError("n_prompt (each sample's visual tokens) is required when schedule_of is set")
    if not isinstance(n_visual, torch.Tensor):
        return min(n_visual, budget if schedule_of is None else max(1, round(budget * n_prompt / schedule_of)))
    if schedule_of is None:
        return n_visual.clamp(max=budget).long()
    scaled = (budget * n_prompt.double() / schedule_of).round().clamp(min=1).long()
    return torch.minimum(n_visual.long(), scaled)


def keep_count(cfg: SparseVLMConfig, step: int, n_visual: torch.Tensor, rank: torch.Tensor | None = None,
               n_prompt: torch.Tensor | None = None):
    """Keep count at the `step`-th pruning layer of `cfg`. Shapes: n_visual (B,), rank (B,),
    n_prompt (B,) each sample's visual tokens in the prompt -> (B,)."""
    if cfg.mode == "schedule":
        return schedule_keep_count(cfg.schedule[step], n_visual, n_prompt, cfg.schedule_of)
    if rank is None:
        raise ValueError("rank is required when mode='rank'")
    return rank_keep_count(rank, n_visual, cfg.scale, cfg.bias, cfg.rank_form)


def layer_counts(n_visual: torch.Tensor, num_layers: int, after: dict[int, torch.Tensor]):
    """Visual tokens entering and leaving every decoder layer.

    `after[layer]` is the count leaving that pruning layer (kept + recycled); `after[-1]`, if
    present, the count entering the first layer (pruning before the language model).
    Shapes: n_visual (B,), after values (B,) -> counts_in (B, num_layers), counts_out (B, num_layers).
    """
    bad = [i for i in after if not -1 <= i < num_layers]
    if bad:
        raise ValueError(f"pruning layers {bad} are outside the model's {num_layers} layers")
    current = after.get(-1, n_visual).long()
    ins, outs = [], []
    for layer in range(num_layers):
        ins.append(current)
        current = after[layer].long() if layer in after else current
        outs.append(current)
    return torch.stack(ins, -1), torch.stack(outs, -1)


def equivalent_tokens(counts: torch.Tensor) -> torch.Tensor:
    """Mean visual tokens per layer. Shapes: counts (B, num_layers) -> (B,) float."""
    return counts.double().mean(-1)
