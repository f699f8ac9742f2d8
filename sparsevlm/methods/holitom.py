"""HoliTom (Shao et al., NeurIPS 2025, arXiv 2505.21334): before the language model, segments that
hold the most repeated tokens merge each repeated token into one, and density peaks merge the rest;
inside it, optionally, the tokens the last token attends to least merge into their most similar kept one."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MethodConfig, check_count, check_layers, check_number
from ..select import gather, mask_to_index, one_hot, topk_mask
from .base import Decision, PruneInput, keep_mask
from .before_llm import cosine
from .fastv import attention_received, last_token
from .fastvid import fastvid_salience
from .video import Reduced, VideoMethod, allocate, check_video, density_peaks, frame_starts, kept_count, nearest


@dataclass(frozen=True)
class HoliTomConfig(MethodConfig):
    """HoliTom (Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large Language Models",
    NeurIPS 2025, arXiv 2505.21334; code github.com/cokeshao/HoliTom). Before the language model
    (outer merging): a token is static across frames t..t+1 when its cosine similarity to the token at
    the same place in the next frame exceeds `threshold`. Segments of consecutive frames (at most
    `max_window`; None: any) are chosen by dynamic programming to maximise the static tokens merged away,
    Σ (length − 1) · static places. A segment's static place becomes one token, the mean over its frames,
    at the place of its first frame's token. Then each group (a segment's merged tokens, a frame's other
    tokens) keeps its share of the budget by size; a frame with changing tokens keeps at least one (the
    code's ceil). Of a frame's share q, its round((1 − `contextual`) · q) dominant tokens stay. The
    rest of q, and a segment's whole share, are density peaks (DPC-kNN, `knn` neighbours) of the
    group's other tokens; each other token joins its nearest peak (Euclidean), or leaves if none.
    A peak with members becomes β · peak + (1 − β) · their mean (β = `beta`, as the code).
    The budget: max(1, round(retention · n)) of a sample's n visual tokens.

    Inside the language model (inner merging, when `inner_ratio` > 0): after `inner_layer` (None: the
    code's, before its fourth layer, scaled to the model's depth) the last token's attention keeps
    round((1 − inner_ratio) · n) visual tokens; each other visual token merges into its most similar
    kept one (cosine of the hidden states), averaging pairwise in sequence order, as the code does.

    Differs from the code: when the static tokens alone would merge away more than the budget allows,
    only the most static ones (highest least similarity) merge, so every sample keeps its planned count
    (the code then keeps fewer). The code ranks dominant tokens by the attention they receive in the
    vision tower's last layer; methods here get no per-token tower signal on video. The stand-in is
    FastVID's here: 1 − the token's cosine similarity to its frame's mean. `contextual` = 1 (the
    code's D = 1) clusters a frame's changing tokens instead and needs no stand-in."""

    DEFAULT_LAYERS = (2,)
    retention: float = 0.1
    threshold: float = 0.8
    max_window: int | None = None
    knn: int = 7
    beta: float = 0.6
    contextual: float = 0.0
    inner_ratio: float = 0.0
    inner_layer: int | None = None
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_video(self)
        check_number("threshold", self.threshold, -1, 1)
        if self.max_window is not None:
            check_count("max_window", self.max_window, 2)
        check_count("knn", self.knn)
        check_number("beta", self.beta, 0, 1)
        check_number("contextual", self.contextual, 0, 1)
        check_number("inner_ratio", self.inner_ratio, 0, 1, high_open=True)
        if self.inner_layer is not None:
            check_layers("inner_layer", (self.inner_layer,))

    @property
    def pruning_layers(self) -> tuple[int, ...] | None:
        """Inner merging's layer (None: the default, scaled); () without inner merging."""
        if self.inner_ratio == 0:
            return ()
        return None if self.inner_layer is None else (self.inner_layer,)


def holitom_segments(static: torch.Tensor, max_window: int | None = None) -> list[tuple[int, int]]:
    """HoliTom's segmentation: the frame segments [s, e] that maximise Σ (e − s) · #places static
    throughout the segment (static[t, j]: place j unchanged from frame t to t + 1), by dynamic
    programming over the frames; among equal totals, the shorter last segment.
    Shapes: static (F − 1, m) bool -> [(start, end)] covering frames 0..F − 1 in order."""
    static = static.cpu()  # (host work: the loop reads every count)
    n = static.shape[0] + 1
    limit = n if max_window is None else max_window
    best, start = [0] * n, list(range(n))
    for i in range(n):
        best[i], start[i] = (best[i - 1] if i else 0), i
        run = torch.ones(static.shape[1], dtype=torch.bool)
        for j in range(i - 1, max(i - limit, -1), -1):  # the segment [j, i], growing to the left
            run &= static[j]
            value = (best[j - 1] if j else 0) + (i - j) * int(run.sum())
            if value > best[i]:
                best[i], start[i] = value, j
    out, i = [], n - 1
    while i >= 0:
        out.append((start[i], i))
        i = start[i] - 1
    return out[::-1]


def spatial_shares(keep: int, sizes: list[int], dynamic: list[bool]) -> list[int]:
    """Tokens each group keeps in spatial merging, `keep` in all: in proportion to its size, as the code's
    shared retain ratio, but every frame's changing tokens (`dynamic`) keep at least one, as the code's
    ceil there does; a budget below the number of such frames shares by size alone."""
    floor = [1 if d else 0 for d in dynamic]
    if sum(floor) > keep:
        floor = [0] * len(sizes)
    rest = allocate(keep - sum(floor), sizes, [n - f for n, f in zip(sizes, floor)])
    return [f + r for f, r in zip(floor, rest)]


def holitom_reduce(x: torch.Tensor, sizes: list[int], keep: int, cfg: HoliTomConfig):
    """HoliTom's outer merging on one sample, frame after frame (`sizes` tokens each), leaving exactly
    `keep` tokens. Shapes: x (n, D) -> kept (n,) bool, merged (C, D), representative (C,) local index."""
    out, starts, dev = Reduced(x), frame_starts(sizes), x.device
    m = min(sizes)  # places every frame has
    xf = x.float()
    sim = torch.stack([F.cosine_similarity(xf[a:a + m], xf[b:b + m], dim=-1)
                       for a, b in zip(starts[:-1], starts[1:])])  # (F − 1, m)
    segments = holitom_segments(sim > cfg.threshold, cfg.max_window)
    # Temporal merging: (least similarity, segment, place); the most static merge first.
    static = []
    for g, (s, e) in enumerate(segments):
        if e > s:
            low = sim[s:e].amin(0).tolist()  # each place's least similarity across the segment
            static += [(v, g, j) for j, v in enumerate(low) if v > cfg.threshold]
    static.sort(key=lambda t: (-t[0], t[1], t[2]))
    excess = x.shape[0] - keep
    items = {}  # representative -> (vector, members, segment), for the temporally merged tokens
    for _, g, j in static:
        if excess == 0:
            break
        s, e = segments[g]
        e = min(e, s + excess)  # only as many frames as the budget still allows
        members = [starts[f] + j for f in range(s, e + 1)]
        items[members[0]] = (xf[members].mean(0), members, g)
        excess -= e - s
    # Spatial merging: each group (a segment's merged tokens, a frame's others) keeps its share.
    gone = {i for _, ms, _ in items.values() for i in ms}
    groups = [[r for r, (_, _, h) in items.items() if h == g] for g in range(len(segments))]
    groups += [[i for i in range(st, st + k) if i not in gone] for st, k in zip(starts, sizes)]
    dynamic = [i >= len(segments) for i, g in enumerate(groups) if g]
    groups = [g for g in groups if g]
    vec = {i: items[i][0] if i in items else xf[i] for g in groups for i in g}
    share = spatial_shares(keep, [len(g) for g in groups], dynamic)
    salience = torch.cat([fastvid_salience(xf[st:st + k]) for st, k in zip(starts, sizes)])  # (n,)
    for g, q, dyn in zip(groups, share, dynamic):
        if q == len(g):
            for i in g:
                if i in items:
                    out.merge(items[i][0], i, items[i][1])
            continue
        out.drop([i for r in g for i in (items[r][1] if r in items else [r])])
        if dyn:  # a frame's changing tokens: the dominant (most salient) stay, the others cluster
            top = round(q * (1 - cfg.contextual))
            order = torch.sort(salience[g], descending=True, stable=True).indices.tolist()
            out.kept[[g[k] for k in order[:top]]] = True
            g, q = [g[k] for k in sorted(order[top:])], q - top
        if q == 0:
            continue
        rows = torch.stack([vec[i] for i in g])  # (|g|, D)
        peaks = density_peaks(rows, q, min(cfg.knn, q))
        join = nearest(rows, rows[peaks], by="euclid")
        join[peaks] = torch.arange(q, device=dev)
        for a in range(q):
            part = [g[k] for k in (join == a).nonzero().flatten().tolist()]
            rep = g[int(peaks[a])]
            members = [i for r in part for i in (items[r][1] if r in items else [r])]
            if members == [rep]:
                out.kept[rep] = True
            else:
                out.merge(cluster_merge(vec[rep], [vec[r] for r in part if r != rep], cfg.beta), rep, members)
    return out.result()


def cluster_merge(center: torch.Tensor, others: list[torch.Tensor], beta: float) -> torch.Tensor:
    """A density peak and the tokens that joined it, as the code merges them: β · peak + (1 − β) · the
    others' mean; the peak alone when none joined. Shapes: center (D,), others [(D,)] -> (D,)."""
    if not others:
        return center
    return beta * center + (1 - beta) * torch.stack(others).mean(0)


def inner_count(n_visual: torch.Tensor, ratio: float) -> torch.Tensor:
    """Visual tokens left by inner merging: max(1, round((1 − ratio) · n)), at most n. Shapes: (B,) -> (B,)."""
    return torch.minimum(n_visual.long(), (n_visual.double() * (1 - ratio)).round().clamp(min=1).long())


def inner_merge(inp: PruneInput, keep_n: torch.Tensor) -> Decision:
    """HoliTom's inner merging after a decoder layer: the `keep_n` (B,) visual tokens the last token
    attends to most stay (heads averaged; ties to the lower index); every other visual token merges into
    the kept one most similar to it (cosine of the layer's output), by pairwise averaging in sequence
    order: a kept token h with members m_1..m_k becomes h / 2^k + Σ_i m_i / 2^(k − i + 1)."""
    scores, (v_idx, v_valid) = attention_received(inp, last_token(inp.valid), 1)  # (B, V)
    V = v_idx.shape[1]
    kept = topk_mask(scores, v_valid, keep_n)  # (B, V)
    h = gather(inp.hidden, v_idx).float()  # (B, V, D)
    target = cosine(h, h).masked_fill(~kept[:, None, :], -float("inf")).argmax(-1)  # (B, V) each one's kept match
    member = one_hot(target, V) * (v_valid & ~kept)[..., None]  # (B, V, V): token i merges into t
    after = ((member.flip(1).cumsum(1).flip(1) - member) * member).sum(-1)  # (B, V) later members of its target
    weight = 0.5 ** (after + 1).double() * member.sum(-1)  # (B, V) a member's weight in its target
    k = member.sum(1)  # (B, V) members of each kept token
    merged = (0.5 ** k.double())[..., None] * h.double() + torch.bmm(
        member.transpose(1, 2).double() * weight[:, None, :], h.double())  # (B, V, D)
    hub = kept & (k > 0)  # kept tokens that took members: replaced by their merged token
    width = inp.plan.visual.get(inp.step + 1) or int(keep_n.max())
    slot, slot_valid = mask_to_index(hub, width)  # (B, K)
    return Decision(keep=keep_mask(inp, v_idx, v_valid, kept & ~hub),
                    inserted=gather(merged, slot).to(inp.hidden.dtype), inserted_valid=slot_valid,
                    inserted_from=gather(v_idx, slot), scores=scores, score_index=(v_idx, v_valid),
                    info={"keep": kept.sum(-1), "merged": slot_valid.sum(-1)})


class HoliTom(VideoMethod):
    cfg: HoliTomConfig
    name, config = "holitom", HoliTomConfig

    def counts_after(self, step, n_visual, n_prompt=None):
        return kept_count(n_visual, self.cfg.retention) if step == 0 else inner_count(n_visual, self.cfg.inner_ratio)

    def reduce_video(self, x, sizes, keep):
        return holitom_reduce(x, sizes, keep, self.cfg)

    def prune(self, inp: PruneInput) -> Decision:
        if inp.step == 0:
            return super().prune(inp)
        return inner_merge(inp, self.counts_after(inp.step, inp.vis_mask.sum(-1)))
