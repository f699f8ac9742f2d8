"""FastVID (Shen et al., NeurIPS 2025, arXiv 2503.11187), before the language model: the video is cut
into segments where consecutive frames differ; in each segment, salient tokens stay and the rest merge
into density-peak anchors."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MethodConfig, check_count, check_number
from .before_llm import cosine
from .video import Reduced, VideoMethod, allocate, check_video, density_peaks, frame_starts, nearest

#: neighbours in FastVID's density (its code's k)
KNN = 4


@dataclass(frozen=True)
class FastVIDConfig(MethodConfig):
    """FastVID (Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models",
    NeurIPS 2025, arXiv 2503.11187; code github.com/LunarShen/FastVID): before the language model.
    DySeg: frames are cut into segments after the `segments` − 1 lowest cosine similarities between
    consecutive frames' global features, and wherever one falls below `threshold`. STPrune: the
    budget, max(1, round(retention · n)) of a sample's n visual tokens, is shared among frames by size.
    Of a frame's share r, r − ⌊r · `context`⌋ salient tokens stay (ATS); the rest of the frame's tokens
    go to its segment's pool, and the segment's ⌊r · context⌋ per frame become anchors (DTM). Anchor
    frames are every `anchor_every`-th frame of a segment, counted back from its last; they share
    the segment's anchors equally. A frame's anchors are the density peaks (DPC-kNN, 4 neighbours) of
    its own pooled tokens. Each anchor frame groups the whole pool: every pooled token joins its most
    similar anchor there (cosine). An anchor becomes w · anchor + (1 − w) · mean(its group),
    w = max(1 / (group size + 1), `beta`).

    Differs from the paper: a frame's global feature is its mean embedding, as the code does for
    Qwen2.5-VL. Salience is 1 − the cosine similarity to that mean, not the vision tower's pooling-head
    attention: the video families here hand methods no per-token tower signal. Anchors that the anchor
    frames cannot hold go to the segment's other frames, so the budget is met exactly."""

    retention: float = 0.25
    segments: int = 8
    threshold: float = 0.9
    context: float = 0.4
    beta: float = 0.6
    anchor_every: int = 4
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_video(self)
        check_count("segments", self.segments)
        check_number("threshold", self.threshold, -1, 1)
        check_number("context", self.context, 0, 1)
        check_number("beta", self.beta, 0, 1)
        check_count("anchor_every", self.anchor_every)


def fastvid_segments(global_features: torch.Tensor, segments: int, threshold: float) -> list[int]:
    """FastVID's DySeg: cut after frame t where the cosine similarity s_t of frames t and t + 1 is
    among the `segments` − 1 lowest (ties to the earlier frame), or below `threshold`.
    Shapes: global_features (F, D) -> the segments' lengths, in order (they add up to F)."""
    s = F.cosine_similarity(global_features[:-1].float(), global_features[1:].float(), dim=-1)  # (F − 1,)
    lowest = torch.sort(s, stable=True).indices[:max(segments - 1, 0)]
    cuts = sorted(set(lowest.tolist()) | set((s < threshold).nonzero().flatten().tolist()))
    ends = [c + 1 for c in cuts] + [len(global_features)]
    return [b - a for a, b in zip([0] + ends[:-1], ends) if b > a]


def anchor_merge(x: torch.Tensor, anchors: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FastVID's density-based token merging: every row of x joins its most cosine-similar anchor (an
    anchor joins itself); an anchor becomes w · anchor + (1 − w) · mean(its group), w = max(1 / (group
    size + 1), beta). Shapes: x (m, D), anchors (k,) rows of x -> merged (k, D), group (m,) in 0..k−1."""
    group = nearest(x, x[anchors])  # (m,)
    group[anchors] = torch.arange(len(anchors), device=x.device)
    size = torch.zeros(len(anchors), device=x.device).index_add_(0, group, torch.ones(len(x), device=x.device))
    mean = torch.zeros(len(anchors), x.shape[1], device=x.device).index_add_(0, group, x.float()) / size[:, None]
    w = (1 / (size + 1)).clamp(min=beta)[:, None]
    return w * x[anchors].float() + (1 - w) * mean, group


def fastvid_salience(frame: torch.Tensor) -> torch.Tensor:
    """The stand-in for FastVID's attention-based salience (ATS): 1 − the cosine similarity of each
    token to its frame's mean embedding. The tokens the frame's summary describes worst rank first.
    Shapes: frame (k, D) -> (k,)."""
    return 1 - cosine(frame, frame.float().mean(0, keepdim=True))[:, 0]


def anchor_frames(length: int, every: int) -> list[int]:
    """FastVID's anchor frames in a segment of `length` frames: every `every`-th frame counted back
    from the last (the last always among them), in order."""
    return [i for i in range(length) if (length - 1 - i) % every == 0]


def fastvid_reduce(x: torch.Tensor, sizes: list[int], keep: int, cfg: FastVIDConfig):
    """FastVID on one sample, frame after frame (`sizes` tokens each), leaving exactly `keep` tokens.
    Shapes: x (n, D) -> kept (n,) bool, merged (C, D), representative (C,) local index."""
    out = Reduced(x)
    starts = frame_starts(sizes)
    frames = [x[s:s + k].float() for s, k in zip(starts, sizes)]
    glob = torch.stack([f.mean(0) for f in frames])  # (F, D) each frame's global feature
    share = allocate(keep, sizes, sizes)  # r_f
    context = [math.floor(r * cfg.context) for r in share]
    rest = []  # per frame: indices of its tokens that are not salient (its part of the segment's pool)
    for f, s in enumerate(starts):
        order = torch.sort(fastvid_salience(frames[f]), descending=True, stable=True).indices
        rest.append(s + order[share[f] - context[f]:].sort().values)  # the salient stay in place
    first = 0
    for length in fastvid_segments(glob, cfg.segments, cfg.threshold):
        seg = torch.cat(rest[first:first + length])  # (m,) the segment's pool
        offset = frame_starts([len(r) for r in rest[first:first + length]])
        targets = anchor_frames(length, cfg.anchor_every)
        weights = [1 if i in targets else 0 for i in range(length)]  # others only take what targets cannot
        per = allocate(sum(context[first:first + length]), weights, [len(r) for r in rest[first:first + length]])
        out.drop(seg)
        alone = []
        for i, k in enumerate(per):
            if k == 0:
                continue
            local = rest[first + i] - starts[first + i]  # the frame's pooled tokens, within the frame
            anchors = offset[i] + density_peaks(frames[first + i][local], k, KNN)  # rows of seg
            merged, group = anchor_merge(x[seg], anchors, cfg.beta)
            size = torch.bincount(group, minlength=len(anchors)).tolist()
            for a in range(len(anchors)):
                rep = int(seg[anchors[a]])
                if size[a] == 1:  # an anchor alone stays as it is
                    alone.append(rep)
                else:
                    out.merge(merged[a], rep, seg[group == a])
        out.kept[alone] = True  # after the merges: an anchor may also join another anchor frame's group
        first += length
    return out.result()


class FastVID(VideoMethod):
    cfg: FastVIDConfig
    name, config = "fastvid", FastVIDConfig

    def reduce_video(self, x, sizes, keep):
        return fastvid_reduce(x, sizes, keep, self.cfg)
