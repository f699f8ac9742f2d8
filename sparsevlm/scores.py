"""Visual-token significance (paper §3.2, Eq. 3-4): how much the raters attend to each visual token.

At a pruning layer, take the softmax attention rows of the raters (causal, over every key of the
sequence, scaled by 1/sqrt(head_dim), RoPE already applied to queries and keys as in the model),
average them over heads, read the visual columns, and average over raters.

Only the raters' query rows are formed: the cost is O(R·L) per head, never the L×L matrix, so a
model running `sdpa` or flash attention stays memory-efficient.
"""
from __future__ import annotations

import math

import torch

from .select import arange, gather


def rater_attention(q: torch.Tensor, k: torch.Tensor, rater_pos: torch.Tensor, rater_valid: torch.Tensor,
                    key_valid: torch.Tensor, vis_idx: torch.Tensor | None, vis_valid: torch.Tensor | None,
                    scaling: float | torch.Tensor | None = None, per_head: bool = False) -> torch.Tensor:
    """Head-averaged softmax attention of each rater on each visual token (per head if `per_head`,
    then the shape is (B, H, R, V)); with `vis_idx` None, on every token of the sequence (V = L).

    Grouped-query attention: H query heads share H / H_kv key heads, as in the model.
    Shapes: q (B, H, R, Dh) rater queries, k (B, H_kv, L, Dh) keys, rater_pos (B, R) sequence
            index of each rater, rater_valid (B, R), key_valid (B, L) (false on padding),
            vis_idx (B, V) sequence index of each visual token, vis_valid (B, V)
            -> attn (B, R, V), zero on invalid raters or visual tokens (or padding).
    `scaling`: the logits' scale (default 1/sqrt(Dh)), a number or a 0-d float32 tensor (the same
    product, one op fewer).
    """
    B, H, R, Dh = q.shape
    H_kv, L = k.shape[1], k.shape[2]
    if H % H_kv:
        raise ValueError(f"query heads ({H}) must be a multiple of key heads ({H_kv})")
    scaling = 1.0 / math.sqrt(Dh) if scaling is None else scaling
    G = H // H_kv
    V = L if vis_idx is None else vis_idx.shape[1]
    # The G query heads of each key head, all raters: one matmul per key head. (B, H_kv, G·R, L)
    logits = torch.bmm(q.float().reshape(B * H_kv, G * R, Dh), k.float().reshape(B * H_kv, L, Dh).transpose(1, 2))
    blocked = (arange(L, k.device) > rater_pos.view(B, R, 1)).logical_or_((~key_valid).view(B, 1, L))
    prob = logits.mul_(scaling).view(B, H_kv, G, R, L).masked_fill_(blocked.view(B, 1, 1, R, L), float("-inf"))
    prob = prob.softmax(-1).nan_to_num_(0.0).view(B, H, R, L)
    if vis_idx is None:  # every column (padding has no attention: it is blocked)
        attn, unpaired = prob, ~rater_valid.view(B, R, 1)
    else:
        attn = prob.gather(-1, vis_idx.view(B, 1, 1, V).expand(B, H, R, V))  # (B, H, R, V)
        unpaired = ~(rater_valid.view(B, R, 1) & vis_valid.view(B, 1, V))  # (B, R, V)
    return attn.masked_fill_(unpaired.unsqueeze(1), 0.0) if per_head else attn.mean(1).masked_fill_(unpaired, 0.0)


def rope_gravity(cos: torch.Tensor, sin: torch.Tensor, rater_idx: torch.Tensor, vis_idx: torch.Tensor) -> torch.Tensor:
    """RoPE's distance bias (SparseVLM+, §4.2 "gravity correction"): the scaled attention logit that
    all-ones queries and keys get at each rater/visual position pair, using the model's own rotary
    embeddings. Dividing attention by it removes the preference for nearby tokens.

    Shapes: cos, sin (B, L, Dh) of the current positions, rater_idx (B, R), vis_idx (B, V) -> (B, R, V).
    """
    half = cos.shape[-1] // 2
    sign = torch.cat([-torch.ones(half), torch.ones(cos.shape[-1] - half)]).to(cos)  # rotate_half(ones)
    rotated_ones = (cos + sign * sin).float()  # (B, L, Dh): RoPE applied to an all-ones vector
    return gather(rotated_ones, rater_idx) @ gather(rotated_ones, vis_idx).transpose(1, 2) / cos.shape[-1] ** 0.5


def top_heads(attn: torch.Tensor, k: int) -> torch.Tensor:
    """Average only the k heads that give the visual tokens the most attention (SparseVLM+, §4.3
    "priority heads"); ties go to the lower head index.

    Shapes: attn (B, H, R, V) -> (B, R, V).
    """
    H = attn.shape[1]
    if not 1 <= k <= H:
        raise ValueError(f"top_heads={k} must be between 1 and the model's {H} attention heads")
    total = attn.sum(dim=(2, 3))  # (B, H)
    order = torch.sort(total, dim=-1, descending=True, stable=True).indices[:, :k]  # (B, k)
    return gather(attn, order).mean(1)


def visual_scores(attn: torch.Tensor, rater_valid: torch.Tensor, n_raters: torch.Tensor | None = None) -> torch.Tensor:
    """Significance of each visual token: the raters' attention averaged over raters.

    Shapes: attn (B, R, V), rater_valid (B, R) -> scores (B, V); `n_raters` (B, 1) float: each
    sample's rater count (at least 1), when the caller has it.
    """
    return attn.sum(1).div_(rater_valid.sum(-1, keepdim=True).clamp(min=1) if n_raters is None else n_raters)
