"""Baselines that reduce the visual tokens *before* the language model, from what the vision tower
saw: VisionZip-style selection + merging and ToMe-style bipartite merging. Both are text-agnostic.

They act on the embeddings entering the language model (the projector's output) and read two
per-token signals that the adapter takes from the vision tower's feature layer: the [CLS] token's
attention (`cls_attention`) and the attention keys (`keys`, heads concatenated). Kept tokens stay in
place; merged tokens are inserted after the visual span, in image order, and take the position of
their representative token when original positions are kept.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..config import PoolingConfig, ToMeConfig, VisionZipConfig, pool_grid
from ..select import gather, host_counts, mask_to_index, to_device
from .base import Decision, Method, PruneInput, keep_mask


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of a with every row of b.
    Shapes: (..., n, D), (..., m, D) -> (..., n, m)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(-1, -2)


def unmerged(x: torch.Tensor, kept: torch.Tensor):
    """A reducer's answer that merges nothing: kept (n,), no merged tokens (0, D), no representatives."""
    return kept, x[:0], torch.zeros(0, dtype=torch.long, device=x.device)


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


def text_after_image(valid: torch.Tensor, vis_mask: torch.Tensor) -> torch.Tensor:
    """The valid text tokens after each sample's last visual token (its instruction): (B, L) -> (B, L)."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    return valid & ~vis_mask & (pos > pos.where(vis_mask, -1).amax(-1, keepdim=True))


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


class _PreLLM(Method):
    """Shared by the pre-LLM baselines: run a per-sample reducer, pad its results into a Decision."""

    prunes_input = True
    needs_vision = True
    #: reads the embeddings of the instruction (the text after the image)
    needs_text = False

    def reduce(self, x, cls, keys, text):
        """One sample: x (n, D) its visual embeddings, cls (n,) and keys (n, Dk) from the vision tower
        (without `needs_vision`: stand-ins, not to be read), text (m, D) the embeddings of the text
        after its last visual token (the instruction; empty without `needs_text`) -> kept (n,) bool,
        merged (C, D), representative (C,) local index."""
        raise NotImplementedError

    def counts(self, vis_mask, valid, token_state) -> dict:
        """Also the instruction's length (with `needs_text`): the per-sample work slices by these."""
        out = super().counts(vis_mask, valid, token_state)
        return out | {"text": text_after_image(valid, vis_mask).sum(-1)} if self.needs_text else out

    def sizes(self, counts, token_state) -> dict:
        """Also each sample's counts, read with the widths before the first layer: the per-sample work
        then reads nothing more."""
        out = super().sizes(counts, token_state) | {f"n_visual{b}": n for b, n in enumerate(counts["visual"])}
        return out | ({f"n_text{b}": n for b, n in enumerate(counts["text"])} if self.needs_text else {})

    def prune(self, inp: PruneInput) -> Decision:
        v_idx, v_valid = mask_to_index(inp.vis_mask, inp.sizes.get("visual0"))  # (B, V)
        x = gather(inp.hidden, v_idx)
        cls, keys = ((gather(inp.vision["cls_attention"], v_idx), gather(inp.vision["keys"], v_idx))
                     if self.needs_vision else (x[..., 0], x))
        counts = inp.sizes
        if f"n_visual{len(x) - 1}" not in counts:  # `prune` called on its own: one read of them all
            counts = self.sizes(host_counts(self.counts(inp.vis_mask, inp.valid, {})), {})
        if self.needs_text:
            t_idx, _ = mask_to_index(text_after_image(inp.valid, inp.vis_mask), inp.valid.shape[1])
            text = gather(inp.hidden, t_idx)
        keep_vis = torch.zeros_like(v_valid)
        merged, reps = [], []
        for b in range(len(x)):
            n = counts[f"n_visual{b}"]
            instruction = text[b, :counts[f"n_text{b}"]] if self.needs_text else x[b, :0]
            kept, m, rep = self.reduce(x[b, :n], cls[b, :n], keys[b, :n], instruction)
            keep_vis[b, :n] = kept
            merged.append(m)
            reps.append(v_idx[b, rep])
        K = max(len(m) for m in merged)
        B, D = len(x), x.shape[-1]
        inserted = x.new_zeros(B, K, D)
        inserted_from = torch.zeros(B, K, dtype=torch.long, device=x.device)
        inserted_valid = torch.zeros(B, K, dtype=torch.bool, device=x.device)
        for b, (m, rep) in enumerate(zip(merged, reps)):
            inserted[b, :len(m)], inserted_from[b, :len(m)], inserted_valid[b, :len(m)] = m, rep, True
        return Decision(keep=keep_mask(inp, v_idx, v_valid, keep_vis), inserted=inserted if K else None,
                        inserted_valid=inserted_valid if K else None, inserted_from=inserted_from if K else None,
                        scores=cls.float(), score_index=(v_idx, v_valid),
                        info={"keep": keep_vis.sum(-1), "merged": inserted_valid.sum(-1)})


class VisionZip(_PreLLM):
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


class ToMe(_PreLLM):
    cfg: ToMeConfig
    name, config = "tome", ToMeConfig

    def counts_after(self, step, n_visual, n_prompt=None):
        return n_visual.clamp(max=self.cfg.keep).long()

    def budget_candidates(self, n_visual):
        return (replace(self.cfg, keep=k) for k in range(1, n_visual + 1))

    def reduce(self, x, cls, keys, text):
        return tome_sample(x, keys, self.cfg.keep)


class Pooling(_PreLLM):
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
