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

from .select import gather


def rater_attention(q: torch.Tensor, k: torch.Tensor, rater_pos: torch.Tensor, rater_valid: torch.Tensor,
                    key_valid: torch.Tensor, vis_idx: torch.Tensor, vis_valid: torch.Tensor,
                    scaling: float | None = None) -> torch.Tensor:
    """Head-averaged softmax attention of each rater on each visual token.

    Grouped-query attention: H query heads share H / H_kv key heads, as in the model.
    Shapes: q (B, H, R, Dh) rater queries, k (B, H_kv, L, Dh) keys, rater_pos (B, R) sequence
            index of each rater, rater_valid (B, R), key_valid (B, L) (false on padding),
            vis_idx (B, V) sequence index of each visual token, vis_valid (B, V)
            -> attn (B, R, V), zero on invalid raters or visual tokens.
    """
    B, H, R, Dh = q.shape
    H_kv, L = k.shape[1], k.shape[2]
    if H % H_kv:
        raise ValueError(f"query heads ({H}) must be a multiple of key heads ({H_kv})")
    scaling = 1.0 / math.sqrt(Dh) if scaling is None else scaling
    q = q.float().reshape(B, H_kv, H // H_kv, R, Dh)  # (B, H_kv, G, R, Dh)
    logits = torch.einsum("bkgrd,bkld->bkgrl", q, k.float()) * scaling  # (B, H_kv, G, R, L)
    # Causal: a rater sees the keys up to its own position, never padding.
    pos = torch.arange(L, device=k.device)
    allowed = (pos[None, None, :] <= rater_pos[:, :, None]) & key_valid[:, None, :]  # (B, R, L)
    logits = logits.masked_fill(~allowed[:, None, None], float("-inf"))
    prob = logits.softmax(-1).nan_to_num(0.0).mean(dim=(1, 2))  # (B, R, L), averaged over heads
    attn = gather(prob.transpose(1, 2), vis_idx).transpose(1, 2)  # (B, R, V)
    return attn * (rater_valid[:, :, None] & vis_valid[:, None, :])


def visual_scores(attn: torch.Tensor, rater_valid: torch.Tensor) -> torch.Tensor:
    """Significance of each visual token: the raters' attention averaged over raters.

    Shapes: attn (B, R, V), rater_valid (B, R) -> scores (B, V).
    """
    return attn.sum(1) / rater_valid.sum(-1, keepdim=True).clamp(min=1)
