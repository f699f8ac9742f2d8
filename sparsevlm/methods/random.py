"""Random visual-token selection: the floor every informed method must beat."""
from __future__ import annotations

import torch

from ..budget import schedule_keep_count
from ..config import RandomConfig
from ..select import mask_to_index, put, topk_mask
from .base import Decision, Method, PruneInput


class RandomTokens(Method):
    def __init__(self, cfg: RandomConfig):
        super().__init__(cfg)
        self.pruning_layers = cfg.pruning_layers
        self.positions = cfg.positions

    def prune(self, inp: PruneInput) -> Decision:
        v_idx, v_valid = mask_to_index(inp.vis_mask)  # (B, V)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + inp.step)
        draw = torch.rand(v_idx.shape[1], generator=g).to(inp.hidden.device).expand_as(v_idx)  # (B, V)
        keep_n = schedule_keep_count(self.cfg.schedule[inp.step], v_valid.sum(-1))
        keep_vis = topk_mask(draw, v_valid, keep_n)
        keep = (inp.valid & ~inp.vis_mask) | put(torch.zeros_like(inp.valid), v_idx, v_valid, keep_vis)
        return Decision(keep=keep, info={"keep": keep_n})
