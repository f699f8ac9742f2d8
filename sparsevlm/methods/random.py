"""Random visual-token selection: the floor every informed method must beat."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import schedule_keep_count
from ..config import (BUDGET_PER, POSITIONS, PRESET_LAYERS, PRESET_SCHEDULES, MethodConfig, check_choice, check_layers,
                      check_schedule, check_schedule_of)
from ..select import host_ints, to_device
from .base import Decision, Method, PruneInput, keep_top, scaled_schedules


@dataclass(frozen=True)
class RandomConfig(MethodConfig):
    """Random baseline, the floor: after each pruning layer keep `schedule[i]` visual tokens drawn
    uniformly at random (seeded; the same draw for every sample of a batch, so a batch gives the
    same result as its samples alone). No recycling."""

    pruning_layers: tuple[int, ...] = PRESET_LAYERS
    schedule: tuple[int, ...] = PRESET_SCHEDULES[192]
    schedule_of: int | None = None  # as SparseVLMConfig.schedule_of
    budget_per: str = "sample"  # as SparseVLMConfig.budget_per
    seed: int = 0
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITIONS)
        layers = check_layers("pruning_layers", self.pruning_layers)
        object.__setattr__(self, "pruning_layers", layers)
        object.__setattr__(self, "schedule", check_schedule(self.schedule, layers))
        check_schedule_of(self.schedule_of)
        check_choice("budget_per", self.budget_per, BUDGET_PER)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2**63)")


class RandomTokens(Method):
    cfg: RandomConfig
    name, config = "random", RandomConfig

    @classmethod
    def beside(cls, cfg, matched):
        """cfg's own layers and schedule: the same counts, chosen at random (nothing to match)."""
        return RandomConfig(pruning_layers=cfg.pruning_layers, schedule=cfg.schedule, schedule_of=cfg.schedule_of,
                            budget_per=cfg.budget_per, positions=cfg.positions)

    def prune(self, inp: PruneInput) -> Decision:
        n_vis = inp.vis_mask.sum(-1)  # (B,)
        # One draw per visual slot, shared by the batch: a sample's choice does not depend on its batch.
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + inp.step)
        width = inp.plan.visual.get(inp.step) or host_ints(n_vis.max())[0]  # the most of a sample
        draw = to_device(torch.rand(width, generator=g), inp.hidden.device).expand(len(n_vis), -1)  # (B, V)
        return keep_top(inp, draw, self.counts_after(inp.step, n_vis, inp.n_prompt), self.cfg.budget_per)

    def counts_after(self, step, n_visual, n_prompt=None):
        return schedule_keep_count(self.cfg.schedule[step], n_visual, n_prompt, self.cfg.schedule_of)

    def budget_candidates(self, n_visual):
        return scaled_schedules(self.cfg, n_visual)
