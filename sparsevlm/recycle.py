"""Token recycling (paper §3.3): pruned visual tokens are not simply thrown away.

Of the tokens pruned at a layer, the most significant ones (top `ratio`, by score) are grouped by
density-peak clustering (Rodriguez & Laio, 2014, as in DPC-kNN): a token's density comes from its
k nearest neighbours, cluster centres are the tokens that are both dense and far from any denser
token, and every token joins its nearest centre. Each cluster becomes one token, the mean of its
members (reference code) or their sum (paper, Eq. 8).

Fully deterministic: ties are broken by token index, no random noise is added.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .select import arange, gather, host_ints, mask_to_index, put, topk_mask


def density_peak_clusters(x: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, K: int | None = None):
    """Cluster every sample's valid tokens into k[b] groups.

    Shapes: x (B, N, D), valid (B, N) bool, k (B,) long with 1 <= k[b] <= valid[b].sum() (or 0
            for a sample without tokens) -> assign (B, N) long cluster id (−1 off valid),
            centres (B, K) long token index of each cluster's centre (−1 past k[b]), K = max k
            (read from the device unless given).
    """
    B, N, D = x.shape
    dev = x.device
    if K is None:
        K = host_ints(k.max())[0] if B else 0
    if K == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=dev), torch.empty(B, 0, dtype=torch.long, device=dev)
    # Pairwise distances, normalised by sqrt(D) as in the reference (exact form, not the mm trick).
    xf = x.float()
    dist = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist").div_(D ** 0.5)  # (B, N, N)
    not_token = ~valid  # (B, N)
    invalid = not_token.view(B, 1, N)  # (B, 1, N) columns that are not tokens
    # The largest distance between two tokens (rows that are not tokens are never read after: zeroed).
    dist_max = dist.masked_fill_(not_token.view(B, N, 1), 0.0).masked_fill_(invalid, 0.0).amax((1, 2))  # (B,)
    # Columns that are not tokens are never near (nor denser, nor centres).
    dist.masked_fill_(invalid, float("inf"))
    # Local density: exp(−mean squared distance to the k nearest tokens, itself included).
    nearest = dist.topk(K, dim=-1, largest=False).values  # (B, N, K)
    unused = arange(K, dev) >= k.view(B, 1)  # (B, K) slots past k[b]: neighbours here, clusters below
    nearest = nearest.masked_fill_(unused.view(B, 1, K), 0.0)
    # (a sample without tokens, k = 0, divides 0 by 0: its rows are not tokens, masked next)
    density = nearest.mul_(nearest).sum(-1).div_(k.view(B, 1)).neg_().exp_()
    density.masked_fill_(not_token, -1.0)  # (B, N)
    # Distance to the nearest denser token (ties in density: the lower index counts as denser; padding,
    # at −1, is never denser); the densest token takes the largest distance of its sample.
    d_i, d_j = density.view(B, N, 1), density.view(B, 1, N)
    lower = torch.ones(N, N, dtype=torch.bool, device=dev).tril_(-1)  # [i, j]: j < i
    denser = (d_j > d_i).logical_or_((d_j == d_i).logical_and_(lower))  # (B, N, N)
    # (a token's nearest denser token is never farther than dist_max: only the densest, at inf, changes)
    delta = torch.minimum(torch.where(denser, dist, float("inf")).amin(-1), dist_max.view(B, 1))
    # Centres: the k[b] highest density × distance; ties go to the lower index.
    centre_score = density.mul_(delta).masked_fill_(not_token, float("-inf"))  # (B, N)
    centres = centre_score.sort(dim=-1, descending=True, stable=True).indices[:, :K]  # (B, K)
    # Every token joins its nearest centre; a centre always joins its own cluster.
    to_centre = dist.gather(2, centres.view(B, 1, K).expand(B, N, K))  # (B, N, K)
    to_centre.scatter_(1, centres.view(B, 1, K), float("-inf"))  # (even where another is as near)
    assign = to_centre.masked_fill_(unused.view(B, 1, K), float("inf")).argmin(-1)  # (B, N)
    return assign.masked_fill_(not_token, -1), centres.masked_fill_(unused, -1)


def merge_clusters(x: torch.Tensor, assign: torch.Tensor, num_clusters: int, how: str = "mean") -> torch.Tensor:
    """One token per cluster: the mean (or sum) of its members.

    Shapes: x (B, N, D), assign (B, N) long (−1 = not in any cluster) -> (B, num_clusters, D).
    """
    if how not in ("mean", "sum"):
        raise ValueError(f"how={how!r} is not supported; allowed: 'mean', 'sum'")
    member = (assign.view(*assign.shape, 1) == arange(num_clusters, x.device)).float()  # (B, N, K)
    merged = torch.bmm(member.transpose(1, 2), x.float())  # (B, K, D)
    if how == "mean":
        merged = merged.div_(member.sum(1).clamp_(min=1).view(*merged.shape[:2], 1))
    return merged.to(x.dtype)


@dataclass(frozen=True)
class Recycled:
    """The recycled tokens of a pruning layer.

    Shapes: tokens (B, K, D), valid (B, K); centre (B, K) index into the pruned tokens of each
    cluster's centre (−1 where invalid); assign (B, P) cluster of each pruned token (−1 = dropped).
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    centre: torch.Tensor
    assign: torch.Tensor


def recycle_counts(n_pruned: torch.Tensor, ratio: float = 0.3, cluster_ratio: float = 0.1):
    """Of n pruned tokens, m = int(n·ratio) + 1 are recycled into c = int(m·cluster_ratio) + 1
    merged tokens (both at most n). Shapes: (B,) -> m (B,), c (B,); or a Python int (one sample, as the
    host plans a prefill) -> two ints, by the same float64 arithmetic."""
    if not isinstance(n_pruned, torch.Tensor):
        m = min(int(n_pruned * ratio) + 1, n_pruned)
        return m, min(int(m * cluster_ratio) + 1, m)
    n = n_pruned.long()
    m = torch.minimum(torch.trunc(n.double() * ratio).long() + 1, n)
    return m, torch.minimum(torch.trunc(m.double() * cluster_ratio).long() + 1, m)


def recycle(pruned: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, ratio: float = 0.3,
            cluster_ratio: float = 0.1, merge: str = "mean", widths: tuple[int, int] | None = None) -> Recycled:
    """Recycle the pruned tokens of every sample.

    m = int(n·ratio) + 1 of the n pruned tokens (the highest scores) are clustered into
    int(m·cluster_ratio) + 1 groups (reference: top 30 %, then one cluster per ten tokens).
    `widths`: (max m, max clusters) when the caller has them on the host (else read here).
    Shapes: pruned (B, P, D), scores (B, P), valid (B, P) bool -> Recycled with K = max clusters.
    """
    m, c = recycle_counts(valid.sum(-1), ratio, cluster_ratio)  # (B,) tokens to recycle, clusters
    M, K = widths if widths is not None else host_ints(m.max(), c.max())
    # The most significant pruned tokens are recycled, the rest are dropped for good.
    sel_idx, sel_valid = mask_to_index(topk_mask(scores, valid, m), M)  # (B, M)
    tokens, centres, assign_sel = cluster_merge(gather(pruned, sel_idx), sel_valid, c, K, merge)
    assign = put(torch.full(valid.shape, -1, dtype=torch.long, device=valid.device), sel_idx, sel_valid, assign_sel)
    centre_ok = centres >= 0
    centre = gather(sel_idx, centres.clamp(min=0)).where(centre_ok, -1)  # (B, K) index into pruned
    return Recycled(tokens=tokens, valid=centre_ok, centre=centre, assign=assign)


def cluster_merge(x: torch.Tensor, valid: torch.Tensor, c: torch.Tensor, K: int, merge: str = "mean"):
    """The chosen tokens of every sample clustered into c[b] groups (density peaks) and merged.
    Shapes: x (B, M, D), valid (B, M), c (B,) -> tokens (B, K, D), centres (B, K) row of x at each
    cluster's centre (−1 past c[b]), assign (B, M) cluster of each row (−1 off valid)."""
    if K == 1:  # one cluster, one neighbour (the token itself): every density is 1, the first token is
        # the densest (ties go to the lower index) and so the centre, and every token joins it
        centres = valid.long().argmax(-1, keepdim=True).masked_fill_(c.view(-1, 1) < 1, -1)  # (B, 1)
        assign = valid.long() - 1  # 0 on the tokens, −1 off them
    else:
        assign, centres = density_peak_clusters(x, valid, c, K)  # (B, M), (B, K)
    return merge_clusters(x, assign, K, merge), centres, assign
