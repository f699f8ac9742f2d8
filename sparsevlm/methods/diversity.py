"""Methods that keep *different* tokens rather than only important ones (2025): DART (duplicates
of pivot tokens go, inside the language model), DivPrune (max–min diversity), VisPruner (important
by [CLS] attention + diverse), CDPruner (a determinantal point process conditioned on the
instruction) — the last three before the language model, like VisionZip.

Each selection rule is a pure function over one sample's tensors (`divprune_select`,
`dpp_greedy_map`, `vispruner_select`) or over a batch (`dart_select`), tested on hand-made inputs;
the Method classes only feed them and turn their answer into a `Decision`.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..config import CDPrunerConfig, DARTConfig, DivPruneConfig, VisPrunerConfig
from ..select import gather, mask_to_index, one_hot, score_order
from .base import Decision, Method, PruneInput, visual_decision
from .merge import _PreLLM, cosine, text_after_image, unmerged


def divprune_select(x: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max–min diversity (DivPrune): with distance d = 1 − cos, first the token whose
    nearest other token is farthest, then, k − 1 times, the token farthest from its nearest chosen
    token; ties to the lower index. Shapes: x (n, D) -> kept (n,) bool."""
    n = x.shape[0]
    d = 1 - cosine(x, x)  # (n, n)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    gap = d.masked_fill(eye, float("inf")).amin(-1)  # distance to the nearest other token
    kept = torch.zeros(n, dtype=torch.bool, device=x.device)
    slots = torch.arange(n, device=x.device)
    for i in range(min(k, n)):
        j = gap.masked_fill(kept, -float("inf")).argmax().view(1)  # the first of equal maxima
        kept = kept | (slots == j)
        row = d.index_select(0, j)[0]  # (indexing by a device tensor: no host read)
        gap = row if i == 0 else torch.minimum(gap, row)
    return kept


def dpp_greedy_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP inference of a DPP with kernel L (Chen, Zhang & Zhou, NeurIPS 2018): add, k times,
    the item with the largest gain in log det L_S, i.e. the largest d_i² = L_ii − ‖c_i‖², updating
    the rows c_i of the incremental Cholesky factor: e_i = (L_ji − ⟨c_j, c_i⟩) / d_j, d_i² −= e_i².
    O(n · k²). Shapes: kernel (n, n) symmetric PSD -> kept (n,) bool."""
    n = kernel.shape[0]
    k = min(k, n)
    c = kernel.new_zeros(k, n)
    d2 = kernel.diagonal().clone()
    kept = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    slots = torch.arange(n, device=kernel.device)
    for i in range(k):
        j = d2.masked_fill(kept, -float("inf")).argmax().view(1)
        kept = kept | (slots == j)
        e = (kernel.index_select(0, j)[0] - c[:i].index_select(1, j)[:, 0] @ c[:i]) \
            / d2.index_select(0, j).clamp(min=1e-12).sqrt()
        c[i] = e
        d2 = d2 - e * e
    return kept


def conditional_kernel(x: torch.Tensor, text: torch.Tensor, theta: float) -> torch.Tensor:
    """CDPruner's kernel L = diag(q) S diag(q): S the cosine similarity of the visual embeddings,
    r = mean cosine similarity to the instruction's embeddings, min–max normalised; q = exp(α r),
    α = θ / (2(1 − θ)), or q = r when θ = 1. Shapes: x (n, D), text (m, D) -> (n, n)."""
    r = cosine(x, text).mean(-1) if len(text) else x.new_zeros(x.shape[0], dtype=torch.float)
    r = (r - r.min()) / (r.max() - r.min() + 1e-6)
    q = r if theta == 1 else torch.exp(theta / (2 * (1 - theta)) * r)
    return q[:, None] * cosine(x, x) * q[None, :]


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


def dart_counts(n_visual: torch.Tensor, cfg: DARTConfig):
    """Visual pivots and picks per sample: min(pivot_image, n) pivots, and picks up to
    int(n · (1 − reduction_ratio)) kept tokens in all (at least the pivots)."""
    n_piv = n_visual.clamp(max=cfg.pivot_image)
    total = torch.trunc(n_visual.double() * (1 - cfg.reduction_ratio)).long()
    return n_piv, (total - n_piv).clamp(min=0)


def dart_select(hidden, key_norm, v_idx, v_valid, t_idx, t_valid, cfg: DARTConfig):
    """DART on a batch: pivots are the visual (and text) tokens of largest key L1 norm; each pivot
    in turn (visual pivots first, each group by norm) takes its share of the picks — the candidates
    (visual, not yet kept) least similar to it by cosine of `hidden`. The picks are shared equally
    among the pivots a sample has (the first ones take one more when they do not divide).
    Shapes: hidden (B, L, D), key_norm (B, L), v_idx/v_valid (B, V), t_idx/t_valid (B, T) ->
    kept (B, V) bool over the visual tokens."""
    B, V = v_valid.shape
    n_piv, picks = dart_counts(v_valid.sum(-1), cfg)
    piv_v = score_order(gather(key_norm, v_idx), v_valid)[0][:, :cfg.pivot_image]  # (B, ≤P_i) positions in V
    piv_v_ok = torch.arange(piv_v.shape[1], device=v_valid.device) < n_piv[:, None]
    piv_t = score_order(gather(key_norm, t_idx), t_valid)[0][:, :cfg.pivot_text]  # positions in T
    piv_t_ok = torch.arange(piv_t.shape[1], device=v_valid.device) < t_valid.sum(-1, keepdim=True)
    pivots = torch.cat([gather(v_idx, piv_v), gather(t_idx, piv_t)], 1)  # (B, P) sequence indices
    ok = torch.cat([piv_v_ok, piv_t_ok], 1)
    slot = ok.long().cumsum(-1) - 1  # each pivot's place among the sample's pivots
    have = ok.sum(-1, keepdim=True).clamp(min=1)
    share = (picks[:, None] // have + (slot < picks[:, None] % have)).where(ok, 0)  # (B, P)
    kept = one_hot(piv_v, V).mul(piv_v_ok[..., None]).sum(1).bool() & v_valid  # visual pivots
    h_vis = gather(hidden, v_idx)  # (B, V, D)
    sims = cosine(gather(hidden, pivots), h_vis)  # (B, P, V)
    for p in range(pivots.shape[1]):
        free = v_valid & ~kept
        rank = score_order(-sims[:, p], free)[1]  # least similar first
        kept |= (rank < share[:, p:p + 1]) & free
    return kept


class DART(Method):
    cfg: DARTConfig
    name, config = "dart", DARTConfig
    needs_raw_keys = True

    def prune(self, inp: PruneInput) -> Decision:
        v_idx, v_valid = mask_to_index(inp.vis_mask, inp.sizes.get(f"visual{inp.step}"))
        t_idx, t_valid = mask_to_index(text_after_image(inp.valid, inp.vis_mask), inp.valid.shape[1])
        # Key L1 norms before RoPE: rotated keys (what the cache holds, and DART's code reads) have
        # norms that depend on the absolute position, so on left padding; the same for a sample alone.
        keys = inp.raw_keys if inp.raw_keys is not None else inp.keys.transpose(1, 2).flatten(2)  # (B, L, H_kv·Dh)
        hidden = inp.norm(inp.hidden) if inp.norm is not None else inp.hidden
        kept = dart_select(hidden, keys.float().abs().sum(-1), v_idx, v_valid, t_idx, t_valid, self.cfg)
        return visual_decision(inp, v_idx, v_valid, kept, kept.float(), kept.sum(-1))

    def counts_after(self, step, n_visual, n_prompt=None):
        n_piv, picks = dart_counts(n_visual, self.cfg)
        return n_piv + picks

    def budget_candidates(self, n_visual):
        for total in range(n_visual + 1):  # each count of kept tokens, the ratio in the middle of its range
            yield replace(self.cfg, reduction_ratio=max(0.0, 1 - (total + 0.5) / n_visual))


class _Keep(_PreLLM):
    """Pre-LLM selection of `keep` tokens (no merging), from the embeddings (and the instruction's)."""

    needs_vision = False

    def counts_after(self, step, n_visual, n_prompt=None):
        return n_visual.clamp(max=self.cfg.keep).long()

    def budget_candidates(self, n_visual):
        return (replace(self.cfg, keep=k) for k in range(1, n_visual + 1))

    def reduce(self, x, cls, keys, text):
        return unmerged(x, self.select(x, cls, text))


class DivPrune(_Keep):
    cfg: DivPruneConfig
    name, config = "divprune", DivPruneConfig

    def select(self, x, cls, text):
        return divprune_select(x, self.cfg.keep)


class VisPruner(_Keep):
    cfg: VisPrunerConfig
    name, config = "vispruner", VisPrunerConfig
    needs_vision = True

    def select(self, x, cls, text):
        return vispruner_select(x, cls, self.cfg.keep, self.cfg.important_ratio)


class CDPruner(_Keep):
    cfg: CDPrunerConfig
    name, config = "cdpruner", CDPrunerConfig
    needs_text = True

    def select(self, x, cls, text):
        return dpp_greedy_map(conditional_kernel(x, text, self.cfg.theta), self.cfg.keep)
