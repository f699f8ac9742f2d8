"""PyramidDrop (Xing et al., CVPR 2025, arXiv 2410.17247): at the end of each stage the last
instruction token's attention ranks the visual tokens and a fixed fraction stays."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import POSITIONS, MethodConfig, check_choice, check_layers, check_number
from .base import Decision, Method, PruneInput, keep_top
from .fastv import attention_received, last_token


@dataclass(frozen=True)
class PDropConfig(MethodConfig):
    """PyramidDrop (Xing et al., CVPR 2025, arXiv 2410.17247): at the end of each stage (after
    each layer in `pruning_layers`) keep the fraction `keep_ratio` (λ) of the visual tokens left,
    ranked by the attention of the last instruction token. Defaults for a 32-layer LLaVA-1.5:
    layers 8, 16, 24 and λ = 0.5; `pruning_layers=None` (default) scales them to the model's depth
    (`scale_layers`: 6/12/18 on 24 layers)."""

    DEFAULT_LAYERS = (8, 16, 24)
    pruning_layers: tuple[int, ...] | None = None
    keep_ratio: float = 0.5
    positions: str = "compact"

    def __post_init__(self) -> None:
        if self.pruning_layers is not None:
            object.__setattr__(self, "pruning_layers", check_layers("pruning_layers", self.pruning_layers))
        check_choice("positions", self.positions, POSITIONS)
        check_number("keep_ratio", self.keep_ratio, 0, 1, low_open=True)


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
