"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175), before the language model: the visual
tokens that solve the max–min diversity problem greedily."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import POSITIONS, MethodConfig, check_choice, check_count
from .before_llm import KeepPreLLM, cosine


@dataclass(frozen=True)
class DivPruneConfig(MethodConfig):
    """DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
    Models", CVPR 2025, arXiv 2503.02175; code github.com/vbdi/divprune): before the language model,
    keep the `keep` visual tokens that solve the max–min diversity problem greedily on the
    projected visual embeddings (distance 1 − cosine): first the token farthest from its nearest
    neighbour, then repeatedly the token farthest from its nearest kept token. Text-agnostic.
    Default 64 tokens, the tightest budget 2025 comparisons report (its paper sets a ratio)."""

    keep: int = 64
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITIONS)
        check_count("keep", self.keep)


def divprune_select(x: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max–min diversity (DivPrune): with distance d = 1 − cos, first the token whose
    nearest other token is farthest, then, k − 1 times, the token farthest from its nearest chosen
    token; ties to the lower index. Shapes: x (n, D) -> kept (n,) bool."""
    n = x.shape[0]
    d = 1 - cosine(x, x)  # (n, n)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    gap = d.masked_fill(eye, float("inf")).amin(-1)  # distance to the nearest other token
    kept = torch.zeros(n, dtype=torch.bool, device=x.device)
    slots = torch.arange(n, device=x.device)
    for i in range(min(k, n)):
        j = gap.masked_fill(kept, -float("inf")).argmax().view(1)  # the first of equal maxima
        kept = kept | (slots == j)
        row = d.index_select(0, j)[0]  # (indexing by a device tensor: no host read)
        gap = row if i == 0 else torch.minimum(gap, row)
    return kept


class DivPrune(KeepPreLLM):
    cfg: DivPruneConfig
    name, config = "divprune", DivPruneConfig

    def select(self, x, cls, text):
        return divprune_select(x, self.cfg.keep)
