"""DyCoke (Tao et al., CVPR 2025, arXiv 2411.15024), before the language model: its temporal token
merging — within windows of four frames, the tokens most like their counterpart in an earlier frame go."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MethodConfig
from .before_llm import unmerged
from .video import VideoMethod, allocate, check_video, frame_starts

#: frames per temporal window (the paper's and its code's)
WINDOW = 4


@dataclass(frozen=True)
class DyCokeConfig(MethodConfig):
    """DyCoke (Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language
    Models", CVPR 2025, arXiv 2411.15024; code github.com/KD-TAO/DyCoke): its first stage, temporal
    token merging (TTM), before the language model. Frames fall into windows of four. The first frame of
    a window stays whole; frames 1 and 3 are compared with the frame before them, frame 2 with frame 0
    (as the code pairs them). A compared token's redundancy is its cosine similarity to the token at the
    same place in its reference frame. Each compared frame drops its most redundant tokens.

    The budget: a sample leaves with max(1, round(retention · n)) of its n visual tokens. The drops are
    shared among compared frames in proportion to their comparable tokens. The paper's K = 0.7 on whole
    windows keeps 0.25 + 0.75 · 0.3 = 0.475, the default. A budget below what TTM can drop also drops,
    from the uncompared tokens, those most like their frame's mean.

    Left out: the second stage, dynamic KV-cache pruning at every decoding step (a decoding-time
    selection that the staged decoder, which prunes at prefill, does not offer)."""

    retention: float = 0.475
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_video(self)


def ttm_references(n_frames: int) -> list[int | None]:
    """The frame each frame is compared with: none for the first of its window, the previous one for
    its second and fourth, the first for its third (DyCoke's odd/even pairing in windows of four)."""
    refs = []
    for f in range(n_frames):
        o = f % WINDOW
        refs.append(None if o == 0 else f - 1 if o % 2 else f - 2)
    return refs


def dycoke_ttm(x: torch.Tensor, sizes: list[int], keep: int) -> torch.Tensor:
    """DyCoke's temporal token merging on one sample, frame after frame (`sizes` tokens each): drop
    n − keep tokens. Each compared frame's comparable tokens (those with a counterpart at the same place
    in its reference frame, `ttm_references`) are ranked by cosine similarity to it; the drops are
    shared among compared frames in proportion to those counts (largest remainders); each drops its
    most similar (ties to the lower index). Drops beyond every comparable token fall on the rest, most
    like their frame's mean first. Shapes: x (n, D) -> kept (n,) bool."""
    n = x.shape[0]
    starts, refs = frame_starts(sizes), ttm_references(len(sizes))
    kept = torch.ones(n, dtype=torch.bool, device=x.device)
    compared = [(f, r, min(sizes[f], sizes[r])) for f, r in enumerate(refs) if r is not None]
    quotas = allocate(n - keep, [m for _, _, m in compared], [m for _, _, m in compared])
    for (f, r, m), q in zip(compared, quotas):
        sim = F.cosine_similarity(x[starts[f]:starts[f] + m].float(), x[starts[r]:starts[r] + m].float(), dim=-1)
        drop = torch.sort(sim, descending=True, stable=True).indices[:q]  # the most redundant
        kept[starts[f] + drop] = False
    left = int(kept.sum()) - keep
    if left > 0:  # a budget below what TTM can drop: the uncompared tokens most like their frame's mean
        frame = torch.repeat_interleave(torch.arange(len(sizes), device=x.device), torch.tensor(sizes, device=x.device))
        means = torch.stack([x[s:s + k].float().mean(0) for s, k in zip(starts, sizes)])
        sim = F.cosine_similarity(x.float(), means[frame], dim=-1).masked_fill(~kept, -float("inf"))
        kept[torch.sort(sim, descending=True, stable=True).indices[:left]] = False
    return kept


class DyCoke(VideoMethod):
    cfg: DyCokeConfig
    name, config = "dycoke", DyCokeConfig

    def reduce_video(self, x, sizes, keep):
        return unmerged(x, dycoke_ttm(x, sizes, keep))
