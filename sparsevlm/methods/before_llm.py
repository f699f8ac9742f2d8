"""Methods that reduce the visual tokens *before* the language model, from what the vision tower
saw or from the embeddings: the shared machinery of VisionZip, ToMe, pooling, DivPrune, VisPruner
and CDPruner.

They act on the embeddings entering the language model (the projector's output); those with
`needs_vision` also read two per-token signals that the adapter takes from the vision tower's
feature layer: the [CLS] token's attention (`cls_attention`) and the attention keys (`keys`, heads
concatenated). Each method reduces one sample at a time (`reduce`); kept tokens stay in place,
merged tokens are inserted after the visual span, in image order, and take the position of their
representative token when original positions are kept."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..select import gather, host_counts, mask_to_index
from .base import Decision, Method, Plan, PruneInput, merged_decision


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of a with every row of b.
    Shapes: (..., n, D), (..., m, D) -> (..., n, m)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(-1, -2)


def unmerged(x: torch.Tensor, kept: torch.Tensor):
    """A reducer's answer that merges nothing: kept (n,), no merged tokens (0, D), no representatives."""
    return kept, x[:0], torch.zeros(0, dtype=torch.long, device=x.device)


def text_after_image(valid: torch.Tensor, vis_mask: torch.Tensor) -> torch.Tensor:
    """The valid text tokens after each sample's last visual token (its instruction): (B, L) -> (B, L)."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    return valid & ~vis_mask & (pos > pos.where(vis_mask, -1).amax(-1, keepdim=True))


class PreLLM(Method):
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

    def plan(self, counts, token_state) -> Plan:
        """Also each sample's counts, read with the widths before the first layer: the per-sample work
        then reads nothing more."""
        return replace(super().plan(counts, token_state), n_visual=list(counts["visual"]),
                       n_text=list(counts["text"]) if self.needs_text else None)

    def prune(self, inp: PruneInput) -> Decision:
        v_idx, v_valid = mask_to_index(inp.vis_mask, inp.plan.visual.get(0))  # (B, V)
        x = gather(inp.hidden, v_idx)
        cls, keys = ((gather(inp.vision["cls_attention"], v_idx), gather(inp.vision["keys"], v_idx))
                     if self.needs_vision else (x[..., 0], x))
        plan = inp.plan
        if plan.n_visual is None:  # `prune` called on its own: one read of them all
            plan = self.plan(host_counts(self.counts(inp.vis_mask, inp.valid, {})), {})
        if self.needs_text:
            t_idx, _ = mask_to_index(text_after_image(inp.valid, inp.vis_mask), inp.valid.shape[1])
            text = gather(inp.hidden, t_idx)
        keep_vis = torch.zeros_like(v_valid)
        merged, reps = [], []
        for b in range(len(x)):
            n = plan.n_visual[b]
            instruction = text[b, :plan.n_text[b]] if self.needs_text else x[b, :0]
            kept, m, rep = self.reduce(x[b, :n], cls[b, :n], keys[b, :n], instruction)
            keep_vis[b, :n] = kept
            merged.append(m)
            reps.append(v_idx[b, rep])
        return merged_decision(inp, v_idx, v_valid, keep_vis, merged, reps, scores=cls.float(),
                               score_index=(v_idx, v_valid))


class KeepPreLLM(PreLLM):
    """Pre-LLM selection of `keep` tokens (no merging), from the embeddings (and the instruction's)."""

    needs_vision = False

    def counts_after(self, step, n_visual, n_prompt=None):
        return n_visual.clamp(max=self.cfg.keep).long()

    def budget_candidates(self, n_visual):
        return (replace(self.cfg, keep=k) for k in range(1, n_visual + 1))

    def reduce(self, x, cls, keys, text):
        return unmerged(x, self.select(x, cls, text))
