"""SparseVLM (arXiv 2410.04417, §3): text raters score the visual tokens, the rank of their
attention (or a fixed schedule) sets the keep count, and pruned tokens are recycled."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..budget import attention_rank, keep_count
from ..config import SparseVLMConfig
from ..raters import select_raters
from ..recycle import cluster_merge, recycle_counts
from ..scores import rater_attention, rope_gravity, top_heads, visual_scores
from ..select import ON_HOST, arange, gather, host_copy, mask_to_index, to_device
from .base import Decision, Method, Plan, PruneInput, scaled_schedules, top_visual, visual_decision


class SparseVLM(Method):
    cfg: SparseVLMConfig
    name, config = "sparsevlm", SparseVLMConfig
    #: the rater mask follows its tokens; once found, the raters' positions (text: never pruned) are renumbered
    token_moves = {"rater": "token", "rater_index": "index"}

    def begin(self, embeds, vis_mask, valid):
        # Raters are chosen once, from the embeddings entering the language model (§3.2).
        raters, _ = select_raters(embeds, vis_mask, valid, self.cfg.rater_rule)
        return {"rater": raters}

    def counts(self, vis_mask, valid, token_state):
        out = self._count(visual=vis_mask, valid=valid, raters=token_state["rater"])
        token_state["n_raters"] = out["raters"]  # (B,) raters are text: the count never changes
        token_state["rater_norm"] = out["raters"].clamp(min=1).float().view(-1, 1)  # (B, 1)
        return out

    def plan(self, counts, token_state):
        # The rater rows, and in schedule mode every later count: they follow from the input's, by
        # integer arithmetic on the host. The per-sample counts of each step go to the device in one
        # copy, for `prune`: token_state["planned"].
        n_vis, n_valid, raters = counts["visual"], counts["valid"], counts["raters"]
        plan = Plan(visual={0: max(n_vis)}, raters=max(raters))
        if self.cfg.mode == "schedule":
            n_text, n, planned = [v - n for v, n in zip(n_valid, n_vis)], n_vis, []
            for step in range(self.steps):
                # A sample without raters cannot be rated: it keeps all its visual tokens.
                keep = [keep_count(self.cfg, step, k, n_prompt=p) if r else k for k, p, r in zip(n, n_vis, raters)]
                plan, step_counts = self._after(plan, step, n, keep, n_text)
                planned.append(step_counts)
                n = [k + c for k, _, c in zip(*step_counts)]
            on_device = to_device(planned, token_state["rater"].device).view(-1, len(n_vis)).unbind(0)
            token_state["planned"] = [on_device[3 * s:3 * s + 3] for s in range(self.steps)]  # (keep, m, c) (B,) each
        return plan

    def _after(self, plan, step, n_vis, keep, n_text):
        """`plan` with step `step` added, and the step's per-sample counts (lists of ints, one per
        sample): kept, recycled and merged tokens."""
        m = c = [0] * len(keep)
        recycled = {}
        if self.cfg.recycle:
            m, c = (list(x) for x in zip(*(recycle_counts(v - k, self.cfg.recycle_ratio, self.cfg.cluster_ratio)
                                           for v, k in zip(n_vis, keep))))
            recycled = {"recycle": max(m), "clusters": max(c)}
        leaving = [k + x for k, x in zip(keep, c)]
        plan = plan.step(step, max(leaving), max(t + x for t, x in zip(n_text, leaving)),
                         keep == list(n_vis) and not any(c), **recycled)
        return plan, [keep, m, c]

    def _counts_on_host(self, step, attn, r_valid, v_valid, inp):
        """Counts that depend on what the layer computed (rank mode): the attention matrix and the
        counts are read in one transfer, the rank (an SVD, which would wait for the device on its
        own), keep counts and the sizes of what follows are computed on the host, and the per-sample
        counts go back to the device. Returns rank, keep, recycled, merged (B,) and the step's plan."""
        dev = attn.device
        n_prompt = inp.n_prompt if inp.n_prompt is not None else v_valid.sum(-1)
        attn, r_valid, v_valid, n_prompt, n_valid = host_copy(attn, r_valid, v_valid, n_prompt, inp.valid.sum(-1))
        with torch.profiler.record_function(ON_HOST):
            n_vis = v_valid.sum(-1)
            rank = attention_rank(attn, r_valid, v_valid) if self.cfg.mode == "rank" else None
            # A sample without raters cannot be rated: it keeps all its visual tokens.
            keep_n = keep_count(self.cfg, step, n_vis, rank, n_prompt).where(r_valid.any(-1), n_vis)  # (B,)
            read, counts = self._after(Plan(), step, n_vis.tolist(), keep_n.tolist(), (n_valid - n_vis).tolist())
        return (None if rank is None else to_device(rank, dev), *to_device(counts, dev).unbind(0), read)

    @staticmethod
    def _raters(state: dict, width: int | None, device):
        """Where the raters are, (B, R), and which entries are raters, (B, R): found in the rater mask at
        the first step; raters are text, never pruned, so after it their positions move with their
        tokens (token_state "rater_index", moved by the adapter) and their count never changes."""
        if "rater_index" not in state:
            state["rater_index"], r_valid = mask_to_index(state.pop("rater"), width)
            if "n_raters" not in state:  # (`prune` called without `counts`)
                state["n_raters"] = r_valid.sum(-1)
            return state["rater_index"], r_valid
        r_idx = state["rater_index"]
        return r_idx, arange(r_idx.shape[1], device) < state["n_raters"].view(-1, 1)

    @staticmethod
    def _scale(state: dict, scaling: float | None, device):
        """The layer's logit scale as a 0-d tensor, made once per prefill (a Python number costs a
        conversion at every use)."""
        if scaling is None:
            return None
        if state.get("scaling", (None,))[0] != scaling:
            state["scaling"] = (scaling, torch.full((), scaling, dtype=torch.float32, device=device))
        return state["scaling"][1]

    def prune(self, inp: PruneInput) -> Decision:
        cfg, plan, step, state = self.cfg, inp.plan, inp.step, inp.token_state
        r_idx, r_valid = self._raters(state, plan.raters, inp.hidden.device)  # (B, R)
        planned = state.get("planned")
        per_head = cfg.rope_correction or bool(cfg.top_heads)
        # The visual tokens as columns (B, V): when their order among themselves matters (heads ranked,
        # the rank of the matrix, a budget per span); otherwise the sequence's columns (B, L) with
        # the visual ones marked: the same scores, decisions and ties, and no index to build.
        if per_head or planned is None or cfg.budget_per != "sample":
            v_idx, v_valid = mask_to_index(inp.vis_mask, plan.visual.get(step))  # (B, V)
        else:
            v_idx, v_valid = None, inp.vis_mask
        # Significance: the raters' attention on the visual tokens, from their query rows only.
        B, H, _, Dh = inp.queries.shape
        q_raters = inp.queries.gather(2, r_idx.view(B, 1, -1, 1).expand(B, H, -1, Dh))  # (B, H, R, Dh)
        attn = rater_attention(q_raters, inp.keys, r_idx, r_valid, inp.valid, v_idx, v_valid,
                               self._scale(state, inp.scaling, inp.hidden.device), per_head=per_head)  # (B, [H,] R, V)
        if cfg.rope_correction:  # SparseVLM+: remove RoPE's preference for nearby tokens
            attn = attn / rope_gravity(*inp.position_embeddings, r_idx, v_idx)[:, None]
        if attn.dim() == 4:
            attn = top_heads(attn, cfg.top_heads) if cfg.top_heads else attn.mean(1)  # (B, R, V)
        scores = visual_scores(attn, r_valid, state.get("rater_norm"))  # (B, V)
        rank = None
        if planned is not None:  # a schedule: the counts were planned before the first layer
            keep_n, m, c = planned[step]
            read = Plan()
        else:  # rank mode (or `prune` called on its own): the one read of this step, then all on the host
            rank, keep_n, m, c, read = self._counts_on_host(step, attn, r_valid, v_valid, inp)
            plan = plan.merged(read)
        keep_vis, order, place = top_visual(inp, scores, keep_n, cfg.budget_per, v_idx, v_valid)  # (B, V)
        dec = replace(visual_decision(inp, v_idx, v_valid, keep_vis, scores, keep_n), plan=read)
        info = {**dec.info, "raters": state["n_raters"], **({"rank": rank} if rank is not None else {})}
        if not cfg.recycle:
            return replace(dec, info=info)
        # Recycling (§3.3): the m best of the pruned tokens (by score) are clustered and merged.
        if cfg.budget_per == "sample":  # the pruned are the places keep_n.. in score order: take the next m
            chosen = (place >= keep_n.view(-1, 1)) & (place < (keep_n + m).view(-1, 1))
        else:
            pruned = (v_valid & ~keep_vis).gather(-1, order)  # (B, V) in score order
            chosen = torch.zeros_like(pruned).scatter_(-1, order, pruned & (pruned.cumsum(-1) <= m[:, None]))
        M, K = plan.recycle[step], plan.clusters[step]
        sel, sel_valid = mask_to_index(chosen, M)  # (B, M) among the columns, ascending
        seq_sel = sel if v_idx is None else gather(v_idx, sel)  # (B, M) their sequence positions
        tokens, centres, _ = cluster_merge(gather(inp.hidden, seq_sel), sel_valid, c, K, cfg.merge)
        inserted_valid = centres >= 0  # (then the unused slots' −1 may be overwritten)
        return replace(dec, inserted=tokens, inserted_valid=inserted_valid,
                       inserted_from=gather(seq_sel, centres.clamp_(min=0)), info={**info, "recycled": c})

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
