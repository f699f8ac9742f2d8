"""Attention-ranked baselines inside the language model: FastV and PyramidDrop.

Both rank the visual tokens by the attention they receive at a pruning layer, as SparseVLM does,
but without choosing text raters: FastV averages the attention of every token (or of the last
one), PyramidDrop uses the last instruction token.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..config import FastVConfig, PDropConfig
from ..scores import rater_attention, visual_scores
from ..select import gather, mask_to_index
from .base import Decision, Method, PruneInput, keep_top


def attention_received(inp: PruneInput, rater_mask: torch.Tensor, raters: int):
    """Attention each visual token receives from the rows in `rater_mask` (at most `raters` per
    sample), averaged over heads and rows. Shapes: rater_mask (B, L) -> scores (B, V) over the
    visual tokens in sequence order, and their (index, valid)."""
    r_idx, r_valid = mask_to_index(rater_mask, raters)  # (B, R)
    v_idx, v_valid = mask_to_index(inp.vis_mask, inp.sizes.get(f"visual{inp.step}"))  # (B, V)
    q = gather(inp.queries.transpose(1, 2), r_idx).transpose(1, 2)  # (B, H, R, Dh)
    attn = rater_attention(q, inp.keys, r_idx, r_valid, inp.valid, v_idx, v_valid, inp.scaling)
    return visual_scores(attn, r_valid), (v_idx, v_valid)


def last_token(valid: torch.Tensor) -> torch.Tensor:
    """Mask of each sample's last valid token. Shapes: (B, L) -> (B, L)."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    return pos[None, :] == pos.where(valid, -1).amax(-1, keepdim=True)


class FastV(Method):
    cfg: FastVConfig
    name, config = "fastv", FastVConfig

    @classmethod
    def beside(cls, cfg, matched):
        """Pruning once, after cfg's first pruning layer."""
        return matched(FastVConfig(layer=cfg.pruning_layers[0], positions=cfg.positions))

    def prune(self, inp: PruneInput) -> Decision:
        raters, width = (inp.valid, inp.valid.shape[1]) if self.cfg.rater == "all" else (last_token(inp.valid), 1)
        scores, visual = attention_received(inp, raters, width)
        return keep_top(inp, scores, self.counts_after(inp.step, inp.vis_mask.sum(-1)), visual=visual)

    def counts_after(self, step, n_visual, n_prompt=None):
        return n_visual - torch.trunc(n_visual.double() * self.cfg.prune_ratio).long()

    def budget_candidates(self, n_visual):
        return (replace(self.cfg, prune_ratio=(n_visual - k) / n_visual) for k in range(1, n_visual + 1))


class PDrop(Method):
    cfg: PDropConfig
    name, config = "pdrop", PDropConfig

    @classmethod
    def beside(cls, cfg, matched):
        """At cfg's pruning layers (its own 8/16/24 on LLaVA-1.5 cannot go below ~1/4 of the tokens)."""
        return matched(PDropConfig(pruning_layers=cfg.pruning_layers, positions=cfg.positions))

    def prune(self, inp: PruneInput) -> Decision:
        scores, visual = attention_received(inp, last_token(inp.valid), 1)
        return keep_top(inp, scores, self.counts_after(inp.step, inp.vis_mask.sum(-1)), visual=visual)

    def counts_after(self, step, n_visual, n_prompt=None):
        return torch.trunc(n_visual.double() * self.cfg.keep_ratio).long()

    def budget_candidates(self, n_visual):
        ratios = sorted({k / n_visual for k in range(1, n_visual + 1)} | {i / 1000 for i in range(1, 1001)})
        return (replace(self.cfg, keep_ratio=r) for r in ratios)
