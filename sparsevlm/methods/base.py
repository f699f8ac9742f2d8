"""The contract between model adapters and pruning methods.

An adapter knows where the image tokens are and how to run the layers; a method knows which tokens
to keep. At the start of a prefill the method sees the embeddings entering the language model
(`begin`); after each of its pruning layers it sees that layer's output, queries and keys
(`prune`) and returns a `Decision`. A method with `prunes_input` is also asked once before the
first layer (step 0, layer −1, the embeddings as `hidden`, no queries or keys); one with
`needs_vision` gets per-token signals from the vision tower in `PruneInput.vision`. Adapters never
look inside a decision beyond this contract.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..config import layers_for
from ..select import gather, host_ints, mask_to_index, score_order, split_budget, topk_mask


@dataclass(frozen=True)
class Plan:
    """Host integers that give the method's index tensors their widths, so that `prune` reads nothing
    from the device: planned before the first layer (`Method.plan`) or read at a step
    (`Decision.plan`). A missing entry is unknown: read it on the device."""

    #: step -> the most visual tokens of a sample entering it
    visual: dict = field(default_factory=dict)
    #: step -> the longest sequence after it
    width: dict = field(default_factory=dict)
    #: step -> every sample keeps all its tokens there and gains none (the staged decoder leaves the sequence)
    same: dict = field(default_factory=dict)
    #: step -> the most pruned tokens a sample recycles, and the most merged tokens it gains (SparseVLM)
    recycle: dict = field(default_factory=dict)
    clusters: dict = field(default_factory=dict)
    #: the most raters of a sample (SparseVLM)
    raters: int | None = None
    #: the most spans (images, frames) of a sample, for per-span budgets
    spans: int | None = None
    #: each sample's visual tokens, and its instruction's tokens (methods before the language model)
    n_visual: list | None = None
    n_text: list | None = None

    def step(self, step: int, visual: int, width: int, same: bool, **per_step) -> "Plan":
        """This plan with step `step`'s entries added: `visual` tokens at most leave it, the longest
        sequence after it is `width` (and e.g. recycle=..., clusters=...)."""
        entries = {"visual": {**self.visual, step + 1: visual}, "width": {**self.width, step: width},
                   "same": {**self.same, step: bool(same)}}
        entries |= {k: {**getattr(self, k), step: v} for k, v in per_step.items()}
        return replace(self, **entries)

    def merged(self, other: "Plan") -> "Plan":
        """This plan updated with what `other` knows."""
        fields_ = {k: {**getattr(self, k), **getattr(other, k)} for k in ("visual", "width", "same", "recycle",
                                                                             "clusters")}
        fields_ |= {k: getattr(other, k) for k in ("raters", "spans", "n_visual", "n_text")
                    if getattr(other, k) is not None}
        return replace(self, **fields_)


@dataclass(frozen=True)
class PruneInput:
    """What a method sees after a pruning layer.

    Shapes: hidden (B, L, D) the layer's output; valid (B, L) false on padding; vis_mask (B, L)
    visual tokens (recycled ones included); queries (B, H, L, Dh) and keys (B, H_kv, L, Dh) of the
    layer with RoPE applied (None before the first layer); position_embeddings: the stage's RoPE
    (cos, sin), each (B, L, Dh); token_state: the method's own per-token tensors (B, L, ...), kept
    moved as `Method.token_moves` declares ("token": follows its token; "index": positions (B, N) of
    tokens that are never pruned, renumbered; undeclared entries are passed on as they are); vision (for methods with `needs_vision`):
    "cls_attention" (B, L) the vision tower's [CLS] attention on each visual token at the feature
    layer (mean over heads) and "keys" (B, L, Dk) that layer's keys (heads concatenated), zero on
    text.
    """

    step: int
    layer: int
    hidden: torch.Tensor
    valid: torch.Tensor
    vis_mask: torch.Tensor
    queries: torch.Tensor | None
    keys: torch.Tensor | None
    scaling: float | None
    position_embeddings: tuple
    token_state: dict
    vision: dict = field(default_factory=dict)
    n_prompt: torch.Tensor | None = None  # (B,) visual tokens of each sample's prompt (for schedule_of)
    spans: torch.Tensor | None = None  # (B, L) span of each visual token (image, frame), −1 off visual
    #: host integers read before the first layer or at earlier steps: the widths of index tensors
    plan: Plan = field(default_factory=Plan)
    #: the language model's final norm (a callable on hidden states), for methods that compare
    #: tokens as the model's head would see them (DART)
    norm: object = None
    #: (B, L, H_kv·Dh) the layer's keys as projected, before RoPE (whose rotation makes a key's
    #: L1 norm depend on its absolute position, hence on left padding)
    raw_keys: torch.Tensor | None = None


@dataclass(frozen=True)
class Decision:
    """Which tokens stay, and which new tokens are inserted after the visual span.

    Shapes: keep (B, L) bool (text and padding untouched: true on valid text); inserted (B, K, D)
    or None; inserted_valid (B, K); inserted_from (B, K) sequence index whose position an inserted
    token takes when original positions are kept; scores (B, L) the significance the method gave
    each visual token (optional; the report maps it onto the image grid); info: per-sample
    tensors (B,) for the report.
    """

    keep: torch.Tensor
    inserted: torch.Tensor | None = None
    inserted_valid: torch.Tensor | None = None
    inserted_from: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    #: (index (B, V), valid (B, V)) when `scores` (B, V) are given over the visual tokens only: the
    #: sequence index of each entry (the report puts them in place when it is asked for)
    score_index: tuple | None = None
    info: dict = field(default_factory=dict)
    #: host integers the method read at this step, for the adapter and later steps (e.g. the width
    #: after step s, when it was not planned before the first layer)
    plan: Plan = field(default_factory=Plan)


class Method:
    """Base class: a pruning method driven by a config. A new method sets `name` and `config` and
    joins `sparsevlm.methods.ALL`; the command line, the bench and `matched_baselines` read them there."""

    #: the method's name on the command line, in results and in `matched_baselines`
    name: str = ""
    #: its config class (a frozen dataclass, in the method's own file)
    config: type | None = None

    #: decoder layers after which `prune` is called
    pruning_layers: tuple[int, ...] = ()
    #: "compact" renumbers positions after pruning, "original" keeps them
    positions: str = "compact"
    #: also prune once before the first decoder layer (step 0, layer -1)
    prunes_input: bool = False
    #: needs the vision tower's [CLS] attention and keys (PruneInput.vision)
    needs_vision: bool = False
    #: needs each sample's visual tokens to form one square grid (one LLaVA-1.5 image)
    needs_grid: bool = False
    #: needs the pruning layers' keys before RoPE (PruneInput.raw_keys; hooked only then)
    needs_raw_keys: bool = False
    #: reduces video frames: refused on a family that reads no video
    needs_frames: bool = False
    #: how the per-token entries of the method's `token_state` move when the sequence is re-laid out:
    #: "token" (B, L, ...) follows its token, "index" (B, N) positions of tokens never pruned are
    #: renumbered; undeclared entries stay as they are
    token_moves: dict = {}

    def __init__(self, cfg, num_layers: int | None = None):
        self.cfg = cfg
        self.pruning_layers = layers_for(cfg, num_layers)  # paper defaults scaled to the model's depth
        self.positions = cfg.positions

    @property
    def needs_spans(self) -> bool:
        """Whether `PruneInput.spans` is needed (a budget split per image / frame)."""
        return getattr(self.cfg, "budget_per", "sample") == "span"

    def begin(self, embeds: torch.Tensor, vis_mask: torch.Tensor, valid: torch.Tensor) -> dict:
        """Per-token state for this prefill (e.g. raters). Shapes: (B, L, D), (B, L), (B, L)."""
        return {}

    def prune(self, inp: PruneInput) -> Decision:
        raise NotImplementedError

    @property
    def steps(self) -> int:
        """How many times `prune` is called in a prefill."""
        return len(self.pruning_layers) + self.prunes_input

    def counts(self, vis_mask: torch.Tensor, valid: torch.Tensor, token_state: dict) -> dict:
        """Per-sample device counts the plan is made from, read to the host in one transfer before the
        first layer (the only wait for the device when every count is planned): "visual" and "valid"
        tokens of each sample, and whatever else the method's `plan` needs.
        Shapes: vis_mask, valid (B, L) -> {name: (B,) long}."""
        return self._count(visual=vis_mask, valid=valid)

    @staticmethod
    def _count(**masks: torch.Tensor) -> dict:
        """{name: (B,) true entries of each (B, L) mask}, summed together."""
        return dict(zip(masks, torch.stack(list(masks.values())).sum(-1).unbind(0)))

    def dense_reason(self, counts: dict) -> str | None:
        """Why this prefill should run dense (None: it prunes), decided from the per-sample counts read
        before the first layer (`counts`, host lists, with "spans" when spans are needed)."""
        return None

    def plan(self, counts: dict, token_state: dict) -> Plan:
        """The host integers the method and the adapter need, computed on the host from `counts`
        (`Method.counts`, copied to the host): per step, the most visual tokens of a sample entering it,
        the longest sequence after it and whether it keeps everything, planned from `counts_after`;
        only the visual tokens entering the first step when the counts depend on the input.
        Shapes: counts {name: list of B ints}."""
        n_vis = torch.tensor(counts["visual"])
        n_text = torch.tensor(counts["valid"]) - n_vis
        plan, n = Plan(visual={0: int(n_vis.max())}), n_vis
        try:
            for step in range(self.steps):
                n, before = self.counts_after(step, n, n_vis), n
                plan = plan.step(step, int(n.max()), int((n_text + n).max()), bool((n == before).all()))
        except ValueError:
            plan = Plan(visual={0: int(n_vis.max())})
        return plan

    def counts_after(self, step: int, n_visual: torch.Tensor, n_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Visual tokens leaving pruning step `step` (kept + inserted) when `n_visual` enter it,
        for budgets that do not depend on the input (`n_prompt`: each sample's visual tokens in
        its prompt, for budgets written as ratios). A count equal to what enters promises that the step
        keeps every token and inserts none: the staged decoder then leaves the sequence as it is.
        Shapes: (B,) -> (B,) long."""
        raise ValueError(f"{type(self).__name__}'s token counts depend on the input; they cannot be planned")

    @classmethod
    def beside(cls, cfg, matched):
        """This method's config for a comparison with the SparseVLM schedule `cfg`: at cfg's positions,
        its budget knob set by `matched(config, tolerance=1.0)` (`match_budget` to cfg's equivalent
        tokens, within `tolerance`). Methods placed by cfg's layers or schedule say so here."""
        return matched(cls.config(positions=cfg.positions))

    def budget_candidates(self, n_visual: int):
        """Configs of this method spanning its budget knob, from the fewest tokens to all of them
        (`sparsevlm.match_budget` picks the one closest to a target)."""
        raise ValueError(f"{type(self).__name__} has no budget knob to search")


def scaled_schedules(cfg, n_visual: int, steps: int = 2000):
    """`cfg` with its schedule scaled by factors from 0 up to where every count keeps all
    `n_visual` tokens (a count of `schedule_of` does, when the schedule is written as ratios),
    each count rounded and capped there."""
    cap = getattr(cfg, "schedule_of", None) or n_visual
    low = min([k for k in cfg.schedule if k > 0] or [1])
    for i in range(steps + 1):
        f = i / steps * cap / low
        yield replace(cfg, schedule=tuple(min(cap, round(f * k)) for k in cfg.schedule))


def keep_top(inp: PruneInput, scores: torch.Tensor, keep_n: torch.Tensor, budget_per: str = "sample",
             visual: tuple | None = None) -> Decision:
    """Keep the `keep_n` best-scoring visual tokens and every text token; with budget_per="span",
    `keep_n` is split among the visual spans by size and each keeps its own best.
    Shapes: scores (B, V) over the visual tokens in sequence order, keep_n (B,); `visual`: their
    (index, valid) from `mask_to_index`, when the caller has them."""
    v_idx, v_valid = visual if visual is not None else mask_to_index(inp.vis_mask, inp.plan.visual.get(inp.step))
    return visual_decision(inp, v_idx, v_valid, top_visual(inp, scores, keep_n, budget_per, v_idx, v_valid)[0],
                           scores, keep_n)


def top_visual(inp: PruneInput, scores, keep_n, budget_per, v_idx, v_valid):
    """Which visual tokens `keep_top` keeps (B, V), and the order of all of them by score and each
    one's place in it (`score_order`, (B, V) each)."""
    order, rank = score_order(scores, v_valid)
    if budget_per != "span":
        return (rank < keep_n.view(-1, 1)) & v_valid, order, rank
    spans = gather(inp.spans, v_idx).clamp(min=0)  # (B, V)
    n_spans = inp.plan.spans or host_ints(spans.max())[0] + 1
    return topk_mask(scores, v_valid, split_budget(keep_n, spans, v_valid, n_spans), spans), order, rank


def visual_decision(inp: PruneInput, v_idx, v_valid, keep_vis, scores, keep_n) -> Decision:
    """The Decision that keeps the visual tokens `keep_vis` (B, V) and every text token. With `v_idx`
    None, `keep_vis` and `scores` are over the whole sequence (B, L) instead (false off visual)."""
    if v_idx is None:
        return Decision(keep=(inp.valid & ~inp.vis_mask) | keep_vis, scores=scores, info={"keep": keep_n})
    return Decision(keep=keep_mask(inp, v_idx, v_valid, keep_vis), scores=scores, score_index=(v_idx, v_valid),
                    info={"keep": keep_n})


def merged_decision(inp: PruneInput, v_idx, v_valid, keep_vis, merged: list, reps: list, **fields) -> Decision:
    """The Decision that keeps the visual tokens `keep_vis` (B, V) and every text token, and inserts
    each sample's merged tokens: `merged[b]` (C_b, D), each taking the position of the sequence index
    in `reps[b]` (C_b,). `fields`: more of the Decision (scores, score_index)."""
    B, D, dev = len(merged), inp.hidden.shape[-1], inp.hidden.device
    K = max(len(m) for m in merged)
    inserted = inp.hidden.new_zeros(B, K, D)
    inserted_from = torch.zeros(B, K, dtype=torch.long, device=dev)
    inserted_valid = torch.zeros(B, K, dtype=torch.bool, device=dev)
    for b, (m, rep) in enumerate(zip(merged, reps)):
        inserted[b, :len(m)], inserted_from[b, :len(m)], inserted_valid[b, :len(m)] = m, rep, True
    return Decision(keep=keep_mask(inp, v_idx, v_valid, keep_vis), inserted=inserted if K else None,
                    inserted_valid=inserted_valid if K else None, inserted_from=inserted_from if K else None,
                    info={"keep": keep_vis.sum(-1), "merged": inserted_valid.sum(-1)}, **fields)


def keep_mask(inp: PruneInput, v_idx, v_valid, keep_vis) -> torch.Tensor:
    """Every valid text token and the visual tokens `keep_vis` (B, V) at `v_idx`: (B, L) bool. (An
    addition, not a write, so that padded entries of `v_idx` pointing at a kept token change nothing.)"""
    keep = (inp.valid & ~inp.vis_mask).long()
    return keep.scatter_add_(1, v_idx, keep_vis.logical_and(v_valid).long()) > 0
