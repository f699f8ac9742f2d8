"""VisionZip-style selection and merging (Yang et al., CVPR 2025, arXiv 2412.04467), before the
language model: [CLS]-dominant tokens stay, the rest merge into a few contextual ones."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import POSITIONS, MethodConfig, check_choice
from .before_llm import PreLLM, cosine, unmerged


@dataclass(frozen=True)
class VisionZipConfig(MethodConfig):
    """VisionZip-style (Yang et al., CVPR 2025, arXiv 2412.04467): before the language model, keep
    the `dominant` visual tokens that the vision tower's [CLS] token attends to most (feature
    layer, mean over heads) and merge the rest into `contextual` tokens: evenly spaced remaining
    tokens are the centres, every other remaining token joins the centre whose vision-tower key is
    most similar (cosine), and each group is averaged. Text-agnostic. VisionZip's LLaVA-1.5 settings
    are 54 + 10 (64 tokens), 108 + 20 (128) and 162 + 30 (192). A budget at or above the visual
    tokens present keeps them all."""

    dominant: int = 54
    contextual: int = 10
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITIONS)
        for name in ("dominant", "contextual"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer >= 0")
        if self.dominant + self.contextual < 1:
            raise ValueError("dominant + contextual must keep at least one visual token")


def zip_sample(x, cls, keys, dominant: int, contextual: int):
    """VisionZip on one sample's n visual tokens. Shapes: x (n, D), cls (n,), keys (n, Dk) ->
    kept (n,) bool, merged (C, D), representative (C,) local index of each merged token's centre."""
    n = x.shape[0]
    kept = torch.zeros(n, dtype=torch.bool, device=x.device)
    if n <= dominant + contextual:  # the budget covers every token: keep all
        return unmerged(x, kept | True)
    order = torch.sort(cls.float(), descending=True, stable=True).indices  # ties to the lower index
    kept[order[:dominant]] = True
    rest = (~kept).nonzero().flatten()  # (n_rest,) ascending
    if contextual == 0:
        return kept, x[:0], rest[:0]
    step = len(rest) // contextual
    centres = rest[::step][:contextual]  # evenly spaced over the remaining tokens
    others = rest[~torch.isin(rest, centres)]
    group = cosine(keys[others], keys[centres]).argmax(-1)  # (n_others,) ties to the lower centre
    total = x[centres].float().clone()
    size = torch.ones(len(centres), device=x.device)
    total.index_add_(0, group, x[others].float())
    size.index_add_(0, group, torch.ones(len(others), device=x.device))
    return kept, (total / size[:, None]).to(x.dtype), centres


class VisionZip(PreLLM):
    cfg: VisionZipConfig
    name, config = "visionzip", VisionZipConfig

    def counts_after(self, step, n_visual, n_prompt=None):
        return n_visual.clamp(max=self.cfg.dominant + self.cfg.contextual).long()

    def budget_candidates(self, n_visual):
        share = self.cfg.contextual / (self.cfg.dominant + self.cfg.contextual)  # the config's split
        for total in range(1, n_visual + 1):
            contextual = min(total - 1, round(total * share)) if total > 1 else 0
            yield replace(self.cfg, dominant=total - contextual, contextual=contextual)

    def reduce(self, x, cls, keys, text):
        return zip_sample(x, cls, keys, self.cfg.dominant, self.cfg.contextual)
