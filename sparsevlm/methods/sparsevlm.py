"""SparseVLM (arXiv 2410.04417, §3): text raters score the visual tokens, the rank of their
attention (or a fixed schedule) sets the keep count, and pruned tokens are recycled."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..budget import attention_rank, keep_count
from ..config import SparseVLMConfig
from ..raters import select_raters
from ..recycle import recycle, recycle_counts
from ..scores import rater_attention, rope_gravity, top_heads, visual_scores
from ..select import gather, mask_to_index
from .base import Decision, Method, PruneInput, keep_top, scaled_schedules


class SparseVLM(Method):
    cfg: SparseVLMConfig

    def begin(self, embeds, vis_mask, valid):
        # Raters are chosen once, from the embeddings entering the language model (§3.2).
        raters, _ = select_raters(embeds, vis_mask, valid, self.cfg.rater_rule)
        return {"rater": raters}

    def prune(self, inp: PruneInput) -> Decision:
        cfg = self.cfg
        r_idx, r_valid = mask_to_index(inp.token_state["rater"])  # (B, R)
        v_idx, v_valid = mask_to_index(inp.vis_mask)  # (B, V)
        # Significance: the raters' attention on the visual tokens, from their query rows only.
        q_raters = gather(inp.queries.transpose(1, 2), r_idx).transpose(1, 2)  # (B, H, R, Dh)
        attn = rater_attention(q_raters, inp.keys, r_idx, r_valid, inp.valid, v_idx, v_valid, inp.scaling,
                               per_head=True)  # (B, H, R, V)
        if cfg.rope_correction:  # SparseVLM+: remove RoPE's preference for nearby tokens
            attn = attn / rope_gravity(*inp.position_embeddings, r_idx, v_idx)[:, None]
        attn = top_heads(attn, cfg.top_heads) if cfg.top_heads else attn.mean(1)  # (B, R, V)
        scores = visual_scores(attn, r_valid)  # (B, V)
        n_vis = v_valid.sum(-1)  # (B,)
        rank = attention_rank(attn, r_valid, v_valid) if cfg.mode == "rank" else None
        keep_n = keep_count(cfg, inp.step, n_vis, rank, inp.n_prompt)  # (B,)
        # A sample without raters cannot be rated: it keeps all its visual tokens.
        keep_n = keep_n.where(r_valid.any(-1), n_vis)
        dec = keep_top(inp, scores, keep_n, cfg.budget_per)
        info = {**dec.info, "raters": r_valid.sum(-1), **({"rank": rank} if rank is not None else {})}
        if not cfg.recycle:
            return replace(dec, info=info)
        # Recycling (§3.3): the best of the pruned tokens are clustered and merged.
        p_seq, p_valid = mask_to_index(inp.vis_mask & ~dec.keep)  # (B, P) sequence index of each pruned token
        rec = recycle(gather(inp.hidden, p_seq), gather(dec.scores, p_seq), p_valid,
                      cfg.recycle_ratio, cfg.cluster_ratio, cfg.merge)
        return replace(dec, inserted=rec.tokens, inserted_valid=rec.valid,
                       inserted_from=gather(p_seq, rec.centre.clamp(min=0)),
                       info={**info, "recycled": rec.valid.sum(-1)})

    def counts_after(self, step, n_visual, n_prompt=None):
        if self.cfg.mode == "rank":
            raise ValueError("SparseVLM in mode='rank' keeps a number of tokens that depends on the input; "
                             "plan budgets with mode='schedule' (SparseVLMConfig.preset or schedule=...)")
        keep = keep_count(self.cfg, step, n_visual, n_prompt=n_prompt)
        return keep + recycle_counts(n_visual - keep, self.cfg.recycle_ratio, self.cfg.cluster_ratio)[1] \
            if self.cfg.recycle else keep

    def budget_candidates(self, n_visual):
        self.counts_after(0, torch.tensor([n_visual]), torch.tensor([n_visual]))  # rank mode: a clear error
        return scaled_schedules(self.cfg, n_visual)
