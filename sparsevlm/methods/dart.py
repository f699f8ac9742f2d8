"""DART (Wen et al., EMNLP 2025, arXiv 2502.11494), inside the language model: the visual tokens
least like a few pivot tokens stay; duplicates go."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import POSITIONS, MethodConfig, check_choice, check_count, check_layers, check_number
from ..select import gather, mask_to_index, one_hot, score_order
from .base import Decision, Method, PruneInput, visual_decision
from .before_llm import cosine, text_after_image


@dataclass(frozen=True)
class DARTConfig(MethodConfig):
    """DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models:
    Duplication Matters More", EMNLP 2025, arXiv 2502.11494; code github.com/ZichenWen1/DART):
    after layer `pruning_layers` (default: its K = 2, i.e. pruned before the third layer: our
    layer 1 of 32, scaled to the model's depth), pick pivot tokens — the `pivot_image` visual and
    `pivot_text` text tokens (after the image) whose keys have the largest L1 norm — and, pivot by
    pivot, keep the visual tokens *least* similar (cosine of the hidden states after the final norm)
    to it: duplicates of a pivot go. A sample keeps int(n · (1 − reduction_ratio)) visual tokens
    (0.778: 127 of 576), its visual pivots and their picks, shared equally among its pivots (the
    first take one more; DART's code gives each pivot int(n (1 − r) / pivots), 124 of 576, which
    moves in steps of 8 tokens). Text-aware through the text pivots only; no attention weights.
    Pivots are ranked by the L1 norm of the keys before RoPE (rotated keys' norms depend on the
    absolute position, so on left padding)."""

    DEFAULT_LAYERS = (1,)
    pruning_layers: tuple[int, ...] | None = None
    reduction_ratio: float = 0.778
    pivot_image: int = 4
    pivot_text: int = 4
    positions: str = "compact"

    def __post_init__(self) -> None:
        if self.pruning_layers is not None:
            layers = check_layers("pruning_layers", self.pruning_layers)
            if len(layers) != 1:
                raise ValueError(f"pruning_layers={self.pruning_layers!r}: DART prunes once, after one layer")
            object.__setattr__(self, "pruning_layers", layers)
        check_choice("positions", self.positions, POSITIONS)
        check_number("reduction_ratio", self.reduction_ratio, 0, 1, high_open=True)
        check_count("pivot_image", self.pivot_image, 0)
        check_count("pivot_text", self.pivot_text, 0)
        if self.pivot_image + self.pivot_text < 1:
            raise ValueError("pivot_image + pivot_text must be at least 1")


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
        v_idx, v_valid = mask_to_index(inp.vis_mask, inp.plan.visual.get(inp.step))
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
