"""Average pooling of the visual grid to h × w tokens, before the language model: the simple
baseline that 2025 benchmark studies find strong."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..config import POSITIONS, MethodConfig, check_choice, check_count
from ..select import to_device
from .before_llm import PreLLM, unmerged


@dataclass(frozen=True)
class PoolingConfig(MethodConfig):
    """Average pooling of the visual grid (a simple baseline that benchmark studies of 2025 find
    strong; LLaVA-OneVision pools its video frames 2 × 2 the same way): before the
    language model, each image's square grid of visual tokens is average-pooled (adaptive windows)
    to an h × w grid of `tokens` = h · w tokens, h ≤ w the most nearly square factors of `tokens`
    (at most 2:1). Each pooled token takes the position of its window's centre token. Text-agnostic;
    needs one square grid per sample (LLaVA-1.5 with one image)."""

    tokens: int = 64
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITIONS)
        check_count("tokens", self.tokens)
        if pool_grid(self.tokens) is None:
            raise ValueError(f"tokens={self.tokens!r} has no h × w grid with h ≤ w ≤ 2h; e.g. 64 (8 × 8), "
                             f"128 (8 × 16), 192 (12 × 16)")


def pool_grid(tokens: int) -> tuple[int, int] | None:
    """The most nearly square h × w = tokens with h ≤ w ≤ 2h (None if there is none)."""
    h = math.isqrt(tokens)
    while h >= 1 and tokens % h:
        h -= 1
    w = tokens // h
    return (h, w) if w <= 2 * h else None


def _centres(s: int, h: int) -> list[int]:
    """Centre row of each of the h adaptive-pooling windows over s rows (window i spans
    floor(i·s/h) .. ceil((i+1)·s/h) − 1)."""
    return [(i * s // h + -(-(i + 1) * s // h) - 1) // 2 for i in range(h)]


def pool_sample(x: torch.Tensor, h: int, w: int):
    """Average pooling of one sample's square grid of n = s² tokens (row-major) to h × w adaptive
    windows. Shapes: x (n, D) -> pooled (h·w, D) row-major, centre (h·w,) local index of each
    window's centre token."""
    n, D = x.shape
    s = math.isqrt(n)
    if s * s != n or max(h, w) > s:
        raise ValueError(f"PoolingConfig pools one square grid per sample: {n} visual tokens "
                         f"{'are not a square grid (several images?)' if s * s != n else f'form a {s} × {s} grid'}, "
                         f"cannot give {h} × {w}")
    grid = x.float().T.reshape(1, D, s, s)
    pooled = F.adaptive_avg_pool2d(grid, (h, w))[0].flatten(1).T  # (h·w, D)
    centre = to_device([r * s + c for r in _centres(s, h) for c in _centres(s, w)], x.device)
    return pooled.to(x.dtype), centre


class Pooling(PreLLM):
    cfg: PoolingConfig
    name, config = "pooling", PoolingConfig
    needs_grid = True
    needs_vision = False

    def counts_after(self, step, n_visual, n_prompt=None):
        return n_visual.clamp(max=self.cfg.tokens).long()

    def budget_candidates(self, n_visual):
        side = math.isqrt(n_visual)
        return (replace(self.cfg, tokens=t) for t in range(1, n_visual + 1)  # (keep-all only where it is a grid)
                if (g := pool_grid(t)) is not None and (t == n_visual or g[1] <= side))

    @classmethod
    def beside(cls, cfg, matched):
        """The nearest h × w grid: its grids skip some counts."""
        return matched(PoolingConfig(positions=cfg.positions), tolerance=math.inf)

    def reduce(self, x, cls, keys, text):
        n = x.shape[0]
        if n <= self.cfg.tokens:  # the budget covers every token: keep all
            return unmerged(x, torch.ones(n, dtype=torch.bool, device=x.device))
        pooled, centre = pool_sample(x, *pool_grid(self.cfg.tokens))
        return torch.zeros(n, dtype=torch.bool, device=x.device), pooled, centre
