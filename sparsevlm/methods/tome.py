"""ToMe-style bipartite soft matching (Bolya et al., ICLR 2023, arXiv 2210.09461), before the
language model: the most similar visual tokens merge until the budget remains."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import POSITIONS, MethodConfig, check_choice
from .before_llm import PreLLM, cosine


@dataclass(frozen=True)
class ToMeConfig(MethodConfig):
    """ToMe-style merging (Bolya et al., ICLR 2023, arXiv 2210.09461; SparseVLM's Table 1 baseline):
    before the language model, bipartite soft matching merges the most similar visual tokens —
    split the tokens alternately into two sets, pair each token of the first with its most similar
    token of the second (cosine of the vision tower's keys at the feature layer, as ToMe uses
    keys), merge the r most similar pairs by a size-weighted mean — repeated until `keep` tokens
    remain. Text-agnostic; the language model is not told the merged sizes (no proportional
    attention). A budget at or above the visual tokens present keeps them all."""

    keep: int = 64
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITIONS)
        if not isinstance(self.keep, int) or isinstance(self.keep, bool) or self.keep < 1:
            raise ValueError(f"keep={self.keep!r} must be an integer >= 1")


def tome_sample(x, keys, keep: int):
    """ToMe bipartite soft matching on one sample's n visual tokens, repeated until `keep` remain.
    Shapes: x (n, D), keys (n, Dk) -> kept (n,) bool (tokens never merged), merged (M, D),
    representative (M,) local index of the token each merged group collected into."""
    n = x.shape[0]
    tokens, metric = x.float(), keys.float()
    size = torch.ones(n, device=x.device)
    rep = torch.arange(n, device=x.device)  # the original token each current token is anchored at
    while len(rep) > keep:
        r = min(len(rep) - keep, len(rep) // 2)
        a, b = torch.arange(0, len(rep), 2, device=x.device), torch.arange(1, len(rep), 2, device=x.device)
        best, dst = cosine(metric[a], metric[b]).max(-1)  # each a-token's most similar b-token
        order = torch.sort(best, descending=True, stable=True).indices
        src, stay = a[order[:r]], a[order[r:]]
        dst = b[dst[order[:r]]]
        w = size[src, None]  # merge sums, weighted by how many tokens each already holds
        new_tokens, new_metric, new_size = tokens * size[:, None], metric * size[:, None], size.clone()
        new_tokens.index_add_(0, dst, tokens[src] * w)
        new_metric.index_add_(0, dst, metric[src] * w)
        new_size.index_add_(0, dst, size[src])
        survivors = torch.sort(torch.cat([stay, b])).values
        size = new_size[survivors]
        tokens = new_tokens[survivors] / size[:, None]
        metric = new_metric[survivors] / size[:, None]
        rep = rep[survivors]
    kept = torch.zeros(n, dtype=torch.bool, device=x.device)
    single = size == 1
    kept[rep[single]] = True
    return kept, tokens[~single].to(x.dtype), rep[~single]


class ToMe(PreLLM):
    cfg: ToMeConfig
    name, config = "tome", ToMeConfig

    def counts_after(self, step, n_visual, n_prompt=None):
        return n_visual.clamp(max=self.cfg.keep).long()

    def budget_candidates(self, n_visual):
        return (replace(self.cfg, keep=k) for k in range(1, n_visual + 1))

    def reduce(self, x, cls, keys, text):
        return tome_sample(x, keys, self.cfg.keep)
