"""FastV (Chen et al., ECCV 2024, arXiv 2403.06764): the visual tokens that receive the least
attention at one layer go. Its config and its decision, side by side."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import POSITIONS, MethodConfig, check_choice, check_layers, check_number
from ..scores import rater_attention, visual_scores
from ..select import gather, mask_to_index
from .base import Decision, Method, PruneInput, keep_top


@dataclass(frozen=True)
class FastVConfig(MethodConfig):
    """FastV (Chen et al., ECCV 2024, arXiv 2403.06764): after layer `layer` (K), drop the fraction
    `prune_ratio` (R) of visual tokens that receive the least attention, averaged over heads and
    over every query token ("all", the paper) or only the last token ("last"). Text-agnostic
    beyond the attention itself; one pruning step; defaults K = 2, R = 50 %. `layer=None` (default):
    K = 2 of 32 layers, scaled to the model's depth (`scale_layers`)."""

    DEFAULT_LAYERS = (2,)
    layer: int | None = None
    prune_ratio: float = 0.5
    rater: str = "all"
    positions: str = "compact"

    def __post_init__(self) -> None:
        if self.layer is not None:
            check_layers("layer", (self.layer,))
        check_choice("rater", self.rater, ("all", "last"))
        check_choice("positions", self.positions, POSITIONS)
        check_number("prune_ratio", self.prune_ratio, 0, 1, high_open=True)

    @property
    def pruning_layers(self) -> tuple[int, ...] | None:
        return None if self.layer is None else (self.layer,)


def attention_received(inp: PruneInput, rater_mask: torch.Tensor, raters: int):
    """Attention each visual token receives from the rows in `rater_mask` (at most `raters` per
    sample), averaged over heads and rows. Shapes: rater_mask (B, L) -> scores (B, V) over the
    visual tokens in sequence order, and their (index, valid)."""
    r_idx, r_valid = mask_to_index(rater_mask, raters)  # (B, R)
    v_idx, v_valid = mask_to_index(inp.vis_mask, inp.plan.visual.get(inp.step))  # (B, V)
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
