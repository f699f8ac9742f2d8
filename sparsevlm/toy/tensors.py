"""A planted example on plain tensors: one attention layer whose answer is known in advance.

The image is a grid of visual tokens with a few "objects" (blocks of tokens sharing a direction
in embedding space) on a background; the question has tokens that copy one object's direction.
SparseVLM's steps should pick those question tokens as raters, score that object's tokens
highest, keep few tokens (the attention has low rank), and recycle part of the rest.
"""
from __future__ import annotations

import torch

from ..budget import attention_rank, equivalent_tokens, layer_counts, rank_keep_count
from ..raters import select_raters
from ..recycle import recycle
from ..scores import rater_attention, visual_scores
from ..select import compact_positions, gather, mask_to_index, plan_layout, topk_mask


def planted_example(seed: int = 0, grid: int = 8, dim: int = 32, n_text: int = 6, target: int = 1):
    """Embeddings (1, L, dim) = [system, grid² visual, n_text text]; returns a dict with
    `embeds`, `vis_mask`, `valid`, `objects` (grid² object id per visual token, −1 background)
    and `target` (the object the question is about)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g)).Q.T  # orthonormal directions
    objects = torch.full((grid, grid), -1)
    corners = [(1, 1), (1, grid - 3), (grid - 3, 1), (grid - 3, grid - 3)]
    for i, (r, c) in enumerate(corners):
        objects[r:r + 2, c:c + 2] = i
    objects = objects.flatten()
    vis = 0.3 * torch.randn(grid * grid, dim, generator=g) + basis[8]  # background
    for i in range(len(corners)):
        vis[objects == i] += 3 * basis[i]
    text = 0.3 * torch.randn(n_text, dim, generator=g) + basis[9]
    text[1] += 3 * basis[target]  # the question names the target object twice
    text[3] += 3 * basis[target]
    system = torch.randn(1, dim, generator=g)
    embeds = torch.cat([system, vis, text])[None]  # (1, L, D)
    L = embeds.shape[1]
    vis_mask = torch.zeros(1, L, dtype=torch.bool)
    vis_mask[0, 1:1 + grid * grid] = True
    return dict(embeds=embeds, vis_mask=vis_mask, valid=torch.ones(1, L, dtype=torch.bool),
                objects=objects, target=target, grid=grid)


def walkthrough(seed: int = 0, scale: float = 2.0, num_layers: int = 8, layer: int = 2) -> dict:
    """Run every SparseVLM step once on `planted_example` (queries = keys = embeddings, one head)
    and return what each step produced."""
    ex = planted_example(seed)
    embeds, vis_mask, valid = ex["embeds"], ex["vis_mask"], ex["valid"]
    # 1. Raters: text tokens related to the image.
    rater_mask, relevance = select_raters(embeds, vis_mask, valid)
    r_idx, r_valid = mask_to_index(rater_mask)  # (1, R)
    v_idx, v_valid = mask_to_index(vis_mask)  # (1, V)
    # 2. Scores: the raters' attention on the visual tokens.
    heads = embeds[:, None]  # (1, H=1, L, D)
    attn = rater_attention(gather(embeds, r_idx)[:, None], heads, r_idx, r_valid, valid, v_idx, v_valid)
    scores = visual_scores(attn, r_valid)  # (1, V)
    # 3. Keep count from the rank of the raters × visual attention.
    rank = attention_rank(attn, r_valid, v_valid)
    keep_n = rank_keep_count(rank, v_valid.sum(-1), scale)
    keep_vis = topk_mask(scores, v_valid, keep_n)  # (1, V)
    # 4. Recycle part of what is pruned.
    pruned_idx, pruned_valid = mask_to_index(~keep_vis & v_valid)
    rec = recycle(gather(embeds, gather(v_idx, pruned_idx)), gather(scores, pruned_idx), pruned_valid)
    # 5. Gather the shorter sequence.
    keep_seq = valid.clone()
    keep_seq[vis_mask] = keep_vis[v_valid]
    layout = plan_layout(keep_seq, v_idx.amax(-1), rec.valid)
    hidden = layout.apply(embeds, rec.tokens)
    # 6. Equivalent tokens if this step ran after layer `layer` of a `num_layers`-layer model.
    n_after = keep_n + rec.valid.sum(-1)
    counts_in, counts_out = layer_counts(v_valid.sum(-1), num_layers, {layer: n_after})
    return dict(example=ex, rater_mask=rater_mask, relevance=relevance, attn=attn, scores=scores,
                rank=rank, keep_n=keep_n, kept=v_idx[keep_vis] - 1, recycled=rec, layout=layout,
                hidden=hidden, positions=compact_positions(layout.valid),
                equivalent_out=equivalent_tokens(counts_out), equivalent_in=equivalent_tokens(counts_in))
