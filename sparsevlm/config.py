"""Configuration of SparseVLM: one frozen dataclass, validated on construction.

Defaults follow the reference code (github.com/Gumpest/SparseVLMs, first commit 91fb6d9);
where the paper (arXiv 2410.04417) says something else, a field selects the paper's form.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace

# Keep counts per pruning layer of the reference's fixed schedules, for a 32-layer LLaVA-1.5-7B with
# 576 visual tokens pruned at layers 2, 6 and 15 (github.com/Gumpest/SparseVLMs,
# llava/model/language_model/score.py). The key is the "equivalent" number of visual tokens the
# schedule is meant to match. SparseVLM v1.5: 192/128/64 since commit 2e54818 (2025-03-02), 96
# since 9e1f649 (2025-12-11).
PRESET_LAYERS = (2, 6, 15)
PRESET_SCHEDULES = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}
# SparseVLM+ (the reference's USE_VERSION=2_0): its own lists, since commit 9e1f649 (2025-12-11),
# unchanged at 26a5f48.
PLUS_SCHEDULES = {
    192: (300, 200, 118),
    128: (238, 108, 60),
    96: (246, 54, 28),
    64: (66, 34, 20),
}

#: Every method's paper defaults are for LLaVA-1.5-7B's 32 decoder layers.
PAPER_DEPTH = 32


def scale_layers(layers, num_layers: int) -> tuple[int, ...]:
    """Layer indices written for a 32-layer LLaVA-1.5-7B, on a model with `num_layers` layers:
    ceil(l · num_layers / 32), as `SparseVLMConfig.preset` scales its pruning layers (duplicates
    merged). E.g. PyramidDrop's 8/16/24 become 6/12/18 on 24 layers and 7/14/21 on 28."""
    if num_layers == PAPER_DEPTH:
        return tuple(layers)
    return tuple(sorted({-(-l * num_layers // PAPER_DEPTH) for l in layers}))


def layers_for(cfg, num_layers: int | None = None) -> tuple[int, ...]:
    """The decoder layers after which `cfg`'s method prunes on a model with `num_layers` layers:
    the config's own layers when it names them, else its paper defaults (`DEFAULT_LAYERS`, for
    32 layers) scaled to the model (`scale_layers`); unscaled when the depth is not known."""
    if cfg.pruning_layers is not None:
        return tuple(cfg.pruning_layers)
    return scale_layers(cfg.DEFAULT_LAYERS, num_layers or PAPER_DEPTH)


MODES = ("rank", "schedule")
RANK_FORMS = ("keep", "delete")
RATER_RULES = ("mean", "all", "last")
MERGES = ("mean", "sum")
POSITIONS = ("compact", "original")
BUDGET_PER = ("sample", "span")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def _number(name: str, value, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False) -> None:
    """A real, finite number (not a bool or a string) in the given range, or ValueError naming the field."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < low or value > high or (low_open and value == low) or (
            high_open and value == high):
        lo, hi = "(" if low_open or low == -math.inf else "[", ")" if high_open or high == math.inf else "]"
        where = "" if (low, high) == (-math.inf, math.inf) else f" in {lo}{low:g}, {high:g}{hi}"
        raise ValueError(f"{name}={value!r} must be a finite number{where}")


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")


def _counts(value) -> tuple | None:
    """`value` as a tuple of non-negative integers, or None when it is not one (a bare number, a string)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return None
    out = tuple(value)
    return out if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in out) else None


def _layers(name: str, layers) -> tuple[int, ...]:
    out = _counts(layers)
    if not out or any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"{name}={layers!r} must be a non-empty, strictly increasing tuple of layer indices >= 0")
    return out


def _schedule_of(value, used: bool = True) -> None:
    if value is None:
        return
    if not used:
        raise ValueError(f"schedule_of={value!r} is only used with mode='schedule'")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"schedule_of={value!r} must be None (absolute counts) or an integer >= 1 (the visual "
                         f"tokens the schedule was written for)")


def _schedule(schedule, layers: tuple[int, ...]) -> tuple[int, ...]:
    sched = _counts(schedule)
    if sched is None or len(sched) != len(layers):
        raise ValueError(f"schedule={schedule!r} must hold {len(layers)} integers >= 0, one per pruning layer {layers}")
    return sched


@dataclass(frozen=True)
class SparseVLMConfig:
    """How SparseVLM prunes. `SparseVLMConfig()` is the paper's rank-based mode.

    Every field is checked in `__post_init__`; a wrong value raises `ValueError` naming the field.
    """

    # "rank": keep count from the rank of the raters x visual attention (paper §3.4, first
    # reference version); "schedule": fixed keep counts per pruning layer (reference v1.5+).
    mode: str = "rank"
    # Decoder layers after which visual tokens are pruned (0-based, strictly increasing).
    pruning_layers: tuple[int, ...] = (2, 6, 15, 19)
    # Rank mode. rank_form "keep" (reference): keep min(int(scale·rank + bias), n − 1) tokens.
    # rank_form "delete" (paper, Eq. 6): delete int(scale·(n − rank)) tokens; scale is λ in (0, 1].
    scale: float = 13.5
    bias: float = 0.0
    rank_form: str = "keep"
    # Schedule mode: visual tokens kept at each pruning layer (same length as pruning_layers).
    schedule: tuple[int, ...] | None = None
    # What the schedule's counts are for: None, absolute counts for every sample; N, counts for a
    # sample of N visual tokens, so a sample with n keeps max(1, round(count · n / N)) — the same
    # ratios where the number of visual tokens varies per image (LLaVA-NeXT, OneVision, Qwen2-VL,
    # several images, video). `preset` sets it to the n_visual it was built for.
    schedule_of: int | None = None
    # How a sample's keep count is shared: "sample" (reference): all its visual tokens — images,
    # video frames, newline tokens — compete for it; "span": it is split among the spans in
    # proportion to their sizes (largest remainders) and each span keeps its own best tokens. A span
    # is a run of consecutive visual tokens (one image); under M-RoPE, one video frame.
    budget_per: str = "sample"
    # Which text tokens rate the visual ones: "mean" (paper: relevance above the mean),
    # "all" text tokens after the image, or only the "last" token.
    rater_rule: str = "mean"
    # Token recycling (paper §3.3): the top `recycle_ratio` of pruned tokens by score are
    # clustered into int(n · cluster_ratio) + 1 groups, each merged into one token by `merge`
    # ("mean" as the reference code, "sum" as the paper's Eq. 8).
    recycle: bool = True
    recycle_ratio: float = 0.3
    cluster_ratio: float = 0.1
    merge: str = "mean"
    # SparseVLM+ (reference main, "V2.0"): divide the raters' attention by RoPE's distance bias,
    # and average only the `top_heads` heads that attend most to the visual tokens (None: all).
    rope_correction: bool = False
    top_heads: int | None = None
    # Positions of the tokens that remain: "compact" renumbers them 0..n−1 in every layer after a
    # pruning layer (reference); "original" keeps each token's position in the full prompt.
    positions: str = "compact"

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("budget_per", self.budget_per, BUDGET_PER)
        _choice("rank_form", self.rank_form, RANK_FORMS)
        _choice("rater_rule", self.rater_rule, RATER_RULES)
        _choice("merge", self.merge, MERGES)
        _choice("positions", self.positions, POSITIONS)
        layers = _layers("pruning_layers", self.pruning_layers)
        object.__setattr__(self, "pruning_layers", layers)
        if self.mode == "schedule":
            if self.schedule is None:
                raise ValueError("schedule=None: mode='schedule' needs one keep count per pruning layer")
            object.__setattr__(self, "schedule", _schedule(self.schedule, layers))
        elif self.schedule is not None:
            raise ValueError(f"schedule={self.schedule!r} is only used with mode='schedule' (mode={self.mode!r})")
        _schedule_of(self.schedule_of, self.mode == "schedule")
        if self.rank_form == "delete" and self.mode == "rank":  # the paper's λ
            _number("scale", self.scale, 0, 1, low_open=True)
        else:
            _number("scale", self.scale, 0, low_open=True)
        _number("bias", self.bias, -math.inf)
        if self.top_heads is not None and (not isinstance(self.top_heads, int) or isinstance(self.top_heads, bool)
                                           or self.top_heads < 1):
            raise ValueError(f"top_heads={self.top_heads!r} must be None (all heads) or an integer >= 1")
        _flag("recycle", self.recycle)
        _flag("rope_correction", self.rope_correction)
        _number("recycle_ratio", self.recycle_ratio, 0, 1, low_open=True)
        _number("cluster_ratio", self.cluster_ratio, 0, 1, low_open=True)

    @classmethod
    def preset(cls, tokens: int, n_visual: int = 576, num_layers: int = 32, **overrides) -> "SparseVLMConfig":
        """The reference's fixed schedule meant to equal `tokens` visual tokens (192, 128, 96, 64)
        on a 32-layer LLaVA-1.5-7B with 576 visual tokens; other fields may be overridden. For
        another model the schedule is scaled: layers 2/6/15 of 32 → ceil(l · num_layers / 32),
        budgets × n_visual / 576 (at least 1). `schedule_of` is n_visual: a sample with another
        number of visual tokens keeps the same ratios (a `schedule` given here is taken as
        absolute counts unless `schedule_of` is given too)."""
        return cls._scaled(PRESET_SCHEDULES, tokens, n_visual, num_layers, overrides)

    @classmethod
    def _scaled(cls, table: dict, tokens: int, n_visual: int, num_layers: int, overrides: dict):
        """`table[tokens]` at layers 2/6/15, scaled to the model as `preset` says."""
        if tokens not in table:
            raise ValueError(f"tokens={tokens!r} has no preset; allowed: {sorted(table, reverse=True)}")
        layers, schedule = PRESET_LAYERS, table[tokens]
        if (n_visual, num_layers) != (576, 32):
            if not isinstance(num_layers, int) or num_layers < 3 or not isinstance(n_visual, int) or n_visual < 1:
                raise ValueError(f"n_visual={n_visual!r}, num_layers={num_layers!r}: need n_visual >= 1 and "
                                 f"num_layers >= 3 to scale a preset")
            layers = scale_layers(PRESET_LAYERS, num_layers)
            schedule = tuple(max(1, round(k * n_visual / 576)) for k in schedule)[:len(layers)]
        # counts given by the caller are for this model as they stand; the preset's own are ratios
        fields_ = {"mode": "schedule", "pruning_layers": layers, "schedule": schedule,
                   "schedule_of": None if "schedule" in overrides else n_visual}
        return cls(**{**fields_, **overrides})

    @classmethod
    def plus(cls, tokens: int, n_visual: int = 576, num_layers: int = 32, **overrides) -> "SparseVLMConfig":
        """SparseVLM+ at a preset budget, as the reference's main branch runs it (USE_VERSION=2_0):
        its own schedules (`PLUS_SCHEDULES`; e.g. 238 / 108 / 60 kept after layers 2 / 6 / 15 for
        128), RoPE gravity correction, the 14 strongest of LLaVA-1.5-7B's 32 heads, no recycling,
        original positions; scaled to another model as `preset` is. Set `top_heads` for a model with
        another head count. The v1.5 schedules with these settings: `preset(n, rope_correction=True,
        top_heads=14, recycle=False, positions="original")`."""
        plus = {"rope_correction": True, "top_heads": 14, "recycle": False, "positions": "original"}
        return cls._scaled(PLUS_SCHEDULES, tokens, n_visual, num_layers, {**plus, **overrides})

    def replace(self, **changes) -> "SparseVLMConfig":
        """A copy with some fields changed (validated again)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; fields are {sorted(names)}")
        return replace(self, **changes)


@dataclass(frozen=True)
class RandomConfig:
    """Random baseline, the floor: after each pruning layer keep `schedule[i]` visual tokens drawn
    uniformly at random (seeded; the same draw for every sample of a batch, so a batch gives the
    same result as its samples alone). No recycling."""

    pruning_layers: tuple[int, ...] = PRESET_LAYERS
    schedule: tuple[int, ...] = PRESET_SCHEDULES[192]
    schedule_of: int | None = None  # as SparseVLMConfig.schedule_of
    budget_per: str = "sample"  # as SparseVLMConfig.budget_per
    seed: int = 0
    positions: str = "compact"

    def __post_init__(self) -> None:
        _choice("positions", self.positions, POSITIONS)
        layers = _layers("pruning_layers", self.pruning_layers)
        object.__setattr__(self, "pruning_layers", layers)
        object.__setattr__(self, "schedule", _schedule(self.schedule, layers))
        _schedule_of(self.schedule_of)
        _choice("budget_per", self.budget_per, BUDGET_PER)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2**63)")


@dataclass(frozen=True)
class FastVConfig:
    """FastV (Chen et al., ECCV 2024, arXiv 2403.06764): after layer `layer` (K), drop the fraction
    `prune_ratio` (R) of visual tokens that receive the least attention, averaged over heads and
    over every query token ("all", the paper) or only the last token ("last"). Text-agnostic
    beyond the attention itself; one pruning step; defaults K = 2, R = 50 %. `layer=None` (default):
    K = 2 of 32 layers, scaled to the model's depth (`scale_layers`)."""

    DEFAULT_LAYERS = (2,)
    layer: int | None = None
    prune_ratio: float = 0.5
    rater: str = "all"
    positions: str = "compact"

    def __post_init__(self) -> None:
        if self.layer is not None:
            _layers("layer", (self.layer,))
        _choice("rater", self.rater, ("all", "last"))
        _choice("positions", self.positions, POSITIONS)
        _number("prune_ratio", self.prune_ratio, 0, 1, high_open=True)

    @property
    def pruning_layers(self) -> tuple[int, ...] | None:
        return None if self.layer is None else (self.layer,)


@dataclass(frozen=True)
class PDropConfig:
    """PyramidDrop (Xing et al., CVPR 2025, arXiv 2410.17247): at the end of each stage (after
    each layer in `pruning_layers`) keep the fraction `keep_ratio` (λ) of the visual tokens left,
    ranked by the attention of the last instruction token. Defaults for a 32-layer LLaVA-1.5:
    layers 8, 16, 24 and λ = 0.5; `pruning_layers=None` (default) scales them to the model's depth
    (`scale_layers`: 6/12/18 on 24 layers)."""

    DEFAULT_LAYERS = (8, 16, 24)
    pruning_layers: tuple[int, ...] | None = None
    keep_ratio: float = 0.5
    positions: str = "compact"

    def __post_init__(self) -> None:
        if self.pruning_layers is not None:
            object.__setattr__(self, "pruning_layers", _layers("pruning_layers", self.pruning_layers))
        _choice("positions", self.positions, POSITIONS)
        _number("keep_ratio", self.keep_ratio, 0, 1, low_open=True)


class _BeforeLLM:
    """Methods that prune once, before the language model (not after one of its layers)."""

    @property
    def pruning_layers(self) -> tuple[int, ...]:
        return ()


@dataclass(frozen=True)
class VisionZipConfig(_BeforeLLM):
    """VisionZip-style (Yang et al., CVPR 2025, arXiv 2412.04467): before the language model, keep
    the `dominant` visual tokens that the vision tower's [CLS] token attends to most (feature
    layer, mean over heads) and merge the rest into `contextual` tokens: evenly spaced remaining
    tokens are the centres, every other remaining token joins the centre whose vision-tower key is
    most similar (cosine), and each group is averaged. Text-agnostic. VisionZip's LLaVA-1.5 settings
    are 54 + 10 (64 tokens), 108 + 20 (128) and 162 + 30 (192). A budget at or above the visual
    tokens present keeps them all."""

    dominant: int = 54
    contextual: int = 10
    positions: str = "compact"

    def __post_init__(self) -> None:
        _choice("positions", self.positions, POSITIONS)
        for name in ("dominant", "contextual"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer >= 0")
        if self.dominant + self.contextual < 1:
            raise ValueError("dominant + contextual must keep at least one visual token")


@dataclass(frozen=True)
class ToMeConfig(_BeforeLLM):
    """ToMe-style merging (Bolya et al., ICLR 2023, arXiv 2210.09461; SparseVLM's Table 1 baseline):
    before the language model, bipartite soft matching merges the most similar visual tokens —
    split the tokens alternately into two sets, pair each token of the first with its most similar
    token of the second (cosine of the vision tower's keys at the feature layer, as ToMe uses
    keys), merge the r most similar pairs by a size-weighted mean — repeated until `keep` tokens
    remain. Text-agnostic; the language model is not told the merged sizes (no proportional
    attention). A budget at or above the visual tokens present keeps them all."""

    keep: int = 64
    positions: str = "compact"

    def __post_init__(self) -> None:
        _choice("positions", self.positions, POSITIONS)
        if not isinstance(self.keep, int) or isinstance(self.keep, bool) or self.keep < 1:
            raise ValueError(f"keep={self.keep!r} must be an integer >= 1")


def _count(name: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


@dataclass(frozen=True)
class DARTConfig:
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
            layers = _layers("pruning_layers", self.pruning_layers)
            if len(layers) != 1:
                raise ValueError(f"pruning_layers={self.pruning_layers!r}: DART prunes once, after one layer")
            object.__setattr__(self, "pruning_layers", layers)
        _choice("positions", self.positions, POSITIONS)
        _number("reduction_ratio", self.reduction_ratio, 0, 1, high_open=True)
        _count("pivot_image", self.pivot_image, 0)
        _count("pivot_text", self.pivot_text, 0)
        if self.pivot_image + self.pivot_text < 1:
            raise ValueError("pivot_image + pivot_text must be at least 1")


@dataclass(frozen=True)
class DivPruneConfig(_BeforeLLM):
    """DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
    Models", CVPR 2025, arXiv 2503.02175; code github.com/vbdi/divprune): before the language model,
    keep the `keep` visual tokens that solve the max–min diversity problem greedily on the
    projected visual embeddings (distance 1 − cosine): first the token farthest from its nearest
    neighbour, then repeatedly the token farthest from its nearest kept token. Text-agnostic.
    Default 64 tokens, the tightest budget 2025 comparisons report (its paper sets a ratio)."""

    keep: int = 64
    positions: str = "compact"

    def __post_init__(self) -> None:
        _choice("positions", self.positions, POSITIONS)
        _count("keep", self.keep)


@dataclass(frozen=True)
class VisPrunerConfig(_BeforeLLM):
    """VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective
    Token Pruning in VLMs", ICCV 2025, arXiv 2412.01818; code github.com/Theia-4869/VisPruner):
    before the language model, keep int(keep · important_ratio) *important* tokens — those the
    vision tower's [CLS] token attends to most — and fill the rest with *diverse* tokens: of the
    remaining ones (in [CLS]-attention order) split alternately into two sets, drop the (at most 8
    per round) tokens of the first set most similar to the second, until the budget is met.
    Text-agnostic. Default 64 tokens, half important (the ratio is the paper's knob)."""

    keep: int = 64
    important_ratio: float = 0.5
    positions: str = "compact"

    def __post_init__(self) -> None:
        _choice("positions", self.positions, POSITIONS)
        _count("keep", self.keep)
        _number("important_ratio", self.important_ratio, 0, 1)


@dataclass(frozen=True)
class CDPrunerConfig(_BeforeLLM):
    """CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for
    Token Pruning in MLLMs", NeurIPS 2025, arXiv 2506.10967; code github.com/Theia-4869/CDPruner):
    before the language model, keep the `keep` visual tokens chosen by greedy MAP inference of a
    determinantal point process whose kernel is conditioned on the instruction:
    L = diag(q) · S · diag(q), S the cosine similarity of the visual embeddings, q = exp(α · r)
    with α = θ / (2(1 − θ)) (q = r when θ = 1) and r each token's relevance — its mean cosine
    similarity to the instruction's embeddings, min–max normalised per sample. Fast greedy MAP
    (incremental Cholesky, O(n · keep²) per sample). Default 64 tokens, θ = 0.5."""

    keep: int = 64
    theta: float = 0.5
    positions: str = "compact"

    def __post_init__(self) -> None:
        _choice("positions", self.positions, POSITIONS)
        _count("keep", self.keep)
        _number("theta", self.theta, 0, 1, low_open=True)


@dataclass(frozen=True)
class PoolingConfig(_BeforeLLM):
    """Average pooling of the visual grid (a simple baseline that benchmark studies of 2025 find
    strong; LLaVA-OneVision pools its video frames 2 × 2 the same way): before the
    language model, each image's square grid of visual tokens is average-pooled (adaptive windows)
    to an h × w grid of `tokens` = h · w tokens, h ≤ w the most nearly square factors of `tokens`
    (at most 2:1). Each pooled token takes the position of its window's centre token. Text-agnostic;
    needs one square grid per sample (LLaVA-1.5 with one image)."""

    tokens: int = 64
    positions: str = "compact"

    def __post_init__(self) -> None:
        _choice("positions", self.positions, POSITIONS)
        _count("tokens", self.tokens)
        if pool_grid(self.tokens) is None:
            raise ValueError(f"tokens={self.tokens!r} has no h × w grid with h ≤ w ≤ 2h; e.g. 64 (8 × 8), "
                             f"128 (8 × 16), 192 (12 × 16)")


def pool_grid(tokens: int) -> tuple[int, int] | None:
    """The most nearly square h × w = tokens with h ≤ w ≤ 2h (None if there is none)."""
    h = math.isqrt(tokens)
    while h >= 1 and tokens % h:
        h -= 1
    w = tokens // h
    return (h, w) if w <= 2 * h else None
