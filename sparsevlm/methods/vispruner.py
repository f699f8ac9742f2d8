"""VisPruner (Zhang et al., ICCV 2025, arXiv 2412.01818), before the language model: important
tokens by the vision tower's [CLS] attention, the rest filled with diverse ones."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import POSITIONS, MethodConfig, check_choice, check_count, check_number
from .before_llm import KeepPreLLM


@dataclass(frozen=True)
class VisPrunerConfig(MethodConfig):
    """VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective
    Token Pruning in VLMs", ICCV 2025, arXiv 2412.01818; code github.com/Theia-4869/VisPruner):
    before the language model, keep int(keep · important_ratio) *important* tokens — those the
    vision tower's [CLS] token attends to most — and fill the rest with *diverse* tokens: of the
    remaining ones (in [CLS]-attention order) split alternately into two sets, drop the (at most 8
    per round) tokens of the first set most similar to the second, until the budget is met.
    Text-agnostic. Default 64 tokens, half important (the ratio is the paper's knob)."""

    keep: int = 64
    important_ratio: float = 0.5
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITIONS)
        check_count("keep", self.keep)
        check_number("important_ratio", self.important_ratio, 0, 1)


def vispruner_select(x: torch.Tensor, cls: torch.Tensor, keep: int, important_ratio: float) -> torch.Tensor:
    """VisPruner on one sample: int(T · ratio) important tokens by [CLS] attention (T = min(keep, n)),
    then diverse ones: the rest, in [CLS]-attention order, split alternately into sets A and B; the
    r = min(8, R − T_div) tokens of A most similar to B (max cosine) are dropped; repeated until
    T_div remain. Ties to the lower index. Shapes: x (n, D), cls (n,) -> kept (n,) bool."""
    n = x.shape[0]
    total = min(keep, n)
    n_imp = int(total * important_ratio)
    n_div = total - n_imp
    order = torch.sort(cls.float(), descending=True, stable=True).indices
    rest, xn = order[n_imp:], F.normalize(x.float(), dim=-1)
    while n_div > 0 and len(rest) - n_div > 0:
        r = min(8, len(rest) - n_div)
        a, b = rest[0::2], rest[1::2]
        sim = (xn[a] @ xn[b].T).amax(-1)  # (|A|,) each A-token's most similar B-token
        distinct = torch.sort(sim, descending=True, stable=True).indices[r:]
        rest = torch.cat([a[distinct], b])
    kept = torch.zeros(n, dtype=torch.bool, device=x.device)
    kept[order[:n_imp]] = True
    if n_div > 0:
        kept[rest] = True
    return kept


class VisPruner(KeepPreLLM):
    cfg: VisPrunerConfig
    name, config = "vispruner", VisPrunerConfig
    needs_vision = True

    def select(self, x, cls, text):
        return vispruner_select(x, cls, self.cfg.keep, self.cfg.important_ratio)
