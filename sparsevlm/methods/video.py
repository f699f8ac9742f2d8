"""What the video methods share (DyCoke, FastVID, VidCom2, HoliTom): a sample's frames, its budget as a
share of its visual tokens, integer allocations that add up exactly, density peaks, and the pass
before the language model that hands each sample's frames to the method's rule.

Frames are the visual spans the adapter reports (`PruneInput.spans`): one per video frame (LLaVA
families), one per temporal patch of two frames (Qwen2/2.5-VL's M-RoPE), one per image otherwise.
Several images in one prompt are read as frames, in order. A sample of one span has no frames: the
method cannot help it (`dense_reason`), and `prune` refuses it if asked anyway.

Budgets: a sample of n visual tokens leaves with max(1, round(retention · n)) tokens (never more than
n; kept and merged together), so that the counts are planned before the first layer and
`match_budget` can set `retention`. Each rule shares that total among frames by its own criterion.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..config import POSITIONS, check_choice, check_number
from ..select import gather, host_copy, mask_to_index, visual_spans
from .base import Decision, Method, PruneInput, merged_decision
from .before_llm import cosine


def check_video(cfg) -> None:
    """The fields every video config has: `positions` and `retention` in (0, 1]."""
    check_choice("positions", cfg.positions, POSITIONS)
    check_number("retention", cfg.retention, 0, 1, low_open=True)


def kept_count(n_visual, retention: float):
    """Visual tokens a sample leaves with: max(1, round(retention · n)), at most n (0 for n = 0).
    Shapes: (B,) long -> (B,) long; or a Python int -> int (the same float64 arithmetic)."""
    if not isinstance(n_visual, torch.Tensor):
        return min(n_visual, max(1, round(n_visual * retention)))
    return torch.minimum(n_visual.long(), (n_visual.double() * retention).round().clamp(min=1).long())


def allocate(total: int, weights, caps) -> list[int]:
    """Integers q_i <= caps_i that add up to min(total, Σ caps), in proportion to `weights` where no
    cap binds (water-filling: a capped entry takes its cap, the rest is shared again), rounded by
    largest remainders (ties to the lower index). Non-positive weights share equally."""
    caps = [int(c) for c in caps]
    total = min(int(total), sum(caps))
    share = [0.0] * len(caps)
    free = [i for i, c in enumerate(caps) if c > 0]
    left = float(total)
    while free:
        w = [max(float(weights[i]), 0.0) for i in free]
        w = w if sum(w) > 0 else [1.0] * len(free)
        want = {i: left * wi / sum(w) for i, wi in zip(free, w)}
        over = [i for i in free if want[i] > caps[i]]
        if not over:
            for i in free:
                share[i] = want[i]
            break
        for i in over:
            share[i] = float(caps[i])
            left -= caps[i]
        free = [i for i in free if i not in over]
    out = [min(caps[i], math.floor(s + 1e-9)) for i, s in enumerate(share)]
    order = sorted(range(len(caps)), key=lambda i: (-(share[i] - out[i]), i))
    for i in order:
        if sum(out) >= total:
            break
        if out[i] < caps[i]:
            out[i] += 1
    return out


def density_peaks(x: torch.Tensor, k: int, knn: int) -> torch.Tensor:
    """The k density peaks of the rows of x (DPC-kNN, Rodriguez & Laio 2014, as FastVID and HoliTom
    use it): density exp(−mean squared distance to the knn nearest rows, itself included; distances
    divided by sqrt(D)), δ the distance to the nearest denser row (ties in density: the lower index is
    denser; the densest takes the largest distance), peaks the k largest density · δ (ties to the
    lower index). Shapes: x (n, D) -> (min(k, n),) indices, ascending."""
    n, D = x.shape
    if k >= n:
        return torch.arange(n, device=x.device)
    xf = x.float()
    dist = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist") / D ** 0.5  # (n, n)
    near = dist.topk(min(knn, n), dim=-1, largest=False).values  # (n, knn)
    density = near.pow(2).mean(-1).neg().exp()  # (n,)
    idx = torch.arange(n, device=x.device)
    d_i, d_j = density[:, None], density[None, :]
    denser = (d_j > d_i) | ((d_j == d_i) & (idx[None, :] < idx[:, None]))  # (n, n): j is denser than i
    delta = torch.where(denser, dist, float("inf")).amin(-1)
    delta = torch.where(delta.isinf(), dist.max(), delta)
    order = torch.sort(density * delta, descending=True, stable=True).indices
    return order[:k].sort().values


def nearest(x: torch.Tensor, anchors: torch.Tensor, by: str = "cosine") -> torch.Tensor:
    """Which anchor each row of x joins: the most cosine-similar, or the nearest in Euclidean distance
    (`by="euclid"`); ties to the lower anchor. Shapes: x (n, D), anchors (k, D) -> (n,) long in 0..k−1."""
    if by == "cosine":
        return cosine(x, anchors).argmax(-1)
    return torch.cdist(x.float(), anchors.float(), compute_mode="donot_use_mm_for_euclid_dist").argmin(-1)


class Reduced:
    """A sample's reduction: which of its n visual tokens stay as they are, and the merged tokens that
    replace the others (each at the position of its representative token). Built by the rules."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.kept = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        self.merged: list[torch.Tensor] = []
        self.reps: list[int] = []

    def drop(self, idx) -> None:
        self.kept[idx] = False

    def merge(self, vector: torch.Tensor, rep: int, members) -> None:
        """`members` (local indices, the representative among them) leave; `vector` takes `rep`'s place."""
        self.kept[members] = False
        self.merged.append(vector.to(self.x.dtype))
        self.reps.append(int(rep))

    def result(self):
        """kept (n,) bool, merged (C, D), representative (C,) local index."""
        merged = torch.stack(self.merged) if self.merged else self.x[:0]
        return self.kept, merged, torch.tensor(self.reps, dtype=torch.long, device=self.x.device)


class VideoMethod(Method):
    """A video method before the language model: each sample's visual tokens, split into its frames,
    go to the method's `reduce_video`, which must leave exactly `kept_count(n, retention)` tokens."""

    prunes_input = True
    needs_vision = False
    #: reads video frames: a family that reads no video (LLaVA-1.5, LLaVA-NeXT) cannot help it
    needs_frames = True

    @property
    def needs_spans(self) -> bool:
        return True  # the frames

    def counts_after(self, step, n_visual, n_prompt=None):
        return kept_count(n_visual, self.cfg.retention)

    def budget_candidates(self, n_visual):
        return (replace(self.cfg, retention=k / n_visual) for k in range(1, n_visual + 1))

    def dense_reason(self, counts: dict) -> str | None:
        """Why this prefill should run dense, from the per-sample counts read before the first layer
        ("visual", "spans"): a sample with visual tokens in one span holds an image, not frames."""
        one = [b for b, (n, s) in enumerate(zip(counts["visual"], counts.get("spans", []))) if n > 0 and s < 2]
        return self.no_frames(one) if one else None

    def no_frames(self, samples) -> str:
        return (f"{type(self).__name__} reduces video frames; sample(s) {list(samples)} hold one visual span (an "
                f"image), no frames to compare")

    def reduce_video(self, x: torch.Tensor, sizes: list[int], keep: int):
        """One sample: x (n, D) its visual embeddings frame after frame, `sizes` its frames' token counts
        (at least two), `keep` the tokens it must leave with (< n) -> kept (n,) bool, merged (C, D),
        representative (C,) local index."""
        raise NotImplementedError

    def prune(self, inp: PruneInput) -> Decision:
        v_idx, v_valid = mask_to_index(inp.vis_mask, inp.plan.visual.get(inp.step))  # (B, V)
        x = gather(inp.hidden, v_idx)  # (B, V, D)
        spans = inp.spans if inp.spans is not None else visual_spans(inp.vis_mask)
        frame = gather(spans, v_idx).masked_fill(~v_valid, -1)  # (B, V) frame of each visual token
        n_vis, frame_host = host_copy(v_valid.sum(-1), frame)  # one read: each sample's frame layout
        B = len(x)
        keep_vis = torch.zeros_like(v_valid)
        merged, reps = [], []
        for b in range(B):
            n = int(n_vis[b])
            sizes = torch.bincount(frame_host[b, :n]).tolist() if n else []
            keep = kept_count(n, self.cfg.retention)
            if keep >= n:  # the budget covers every token
                kept, m, rep = torch.ones(n, dtype=torch.bool, device=x.device), x[b, :0], v_idx[b, :0]
            elif len(sizes) < 2:
                raise ValueError(self.no_frames([b]))
            else:
                kept, m, rep = self.reduce_video(x[b, :n], sizes, keep)
                rep = v_idx[b, rep]
            keep_vis[b, :n] = kept
            merged.append(m)
            reps.append(rep)
        return merged_decision(inp, v_idx, v_valid, keep_vis, merged, reps)


def frame_starts(sizes: list[int]) -> list[int]:
    """Where each frame starts among a sample's visual tokens."""
    out, s = [], 0
    for n in sizes:
        out.append(s)
        s += n
    return out
