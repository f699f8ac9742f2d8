"""Configuration of SparseVLM: one frozen dataclass, validated on construction; and what every
method's config shares (the reference's schedules and layers, scaling them to a model's depth, the
validators). Each baseline's config sits beside its method, in `sparsevlm/methods/<name>.py`.

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
#: SparseVLM's rank mode on LLaVA-1.5-7B (the paper's): pruning layers and keep-per-rank scale
RANK_LAYERS = (2, 6, 15, 19)
RANK_SCALE = 13.5


# ---------------------------------------------------------------- validators
# Every config checks its fields with these in `__post_init__`. Each raises ValueError naming the
# field and what is allowed.

def check_choice(name: str, value, allowed) -> None:
    """`value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def check_number(name: str, value, low: float, high: float = math.inf, low_open: bool = False,
                 high_open: bool = False) -> None:
    """A real, finite number (not a bool or a string) in the given range."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < low or value > high or (low_open and value == low) or (
            high_open and value == high):
        lo, hi = "(" if low_open or low == -math.inf else "[", ")" if high_open or high == math.inf else "]"
        where = "" if (low, high) == (-math.inf, math.inf) else f" in {lo}{low:g}, {high:g}{hi}"
        raise ValueError(f"{name}={value!r} must be a finite number{where}")


def check_flag(name: str, value) -> None:
    """`value` is True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")


def counts_of(value) -> tuple | None:
    """`value` as a tuple of non-negative integers, or None when it is not one (a bare number, a string)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return None
    out = tuple(value)
    return out if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in out) else None


def check_count(name: str, value, low: int = 1) -> None:
    """`value` is an integer (not a bool) of at least `low`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


def check_layers(name: str, layers) -> tuple[int, ...]:
    """`layers` as a tuple: non-empty, strictly increasing layer indices >= 0."""
    out = counts_of(layers)
    if not out or any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"{name}={layers!r} must be a non-empty, strictly increasing tuple of layer indices >= 0")
    return out


def check_schedule_of(value, used: bool = True) -> None:
    """`schedule_of` is None, or the visual tokens a schedule was written for (only where `used`)."""
    if value is None:
        return
    if not used:
        raise ValueError(f"schedule_of={value!r} is only used with mode='schedule'")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"schedule_of={value!r} must be None (absolute counts) or an integer >= 1 (the visual "
                         f"tokens the schedule was written for)")


def check_schedule(schedule, layers: tuple[int, ...]) -> tuple[int, ...]:
    """`schedule` as a tuple: one keep count >= 0 per pruning layer."""
    sched = counts_of(schedule)
    if sched is None or len(sched) != len(layers):
        raise ValueError(f"schedule={schedule!r} must hold {len(layers)} integers >= 0, one per pruning layer {layers}")
    return sched


# ---------------------------------------------------------------- the configs' shared base

class MethodConfig:
    """What every method's config declares: the base of each frozen config dataclass.

    The model adapters and `layers_for` read only these three; everything else belongs to the method.
    A subclass overrides them with dataclass fields, or with properties derived from its fields.
    """

    #: The decoder layers after which the method prunes by default, written for 32 layers
    #: (`scale_layers` fits them to a model); () for a method that prunes before the language model only.
    DEFAULT_LAYERS: tuple[int, ...] = ()
    #: Positions of the tokens that remain: "compact" renumbers them, "original" keeps each
    #: token's position in the full prompt (`POSITIONS`).
    positions: str = "compact"
    #: How a sample's keep count is shared among its images or frames: "sample" or "span" (`BUDGET_PER`).
    budget_per: str = "sample"

    @property
    def pruning_layers(self) -> tuple[int, ...] | None:
        """The decoder layers after which the method prunes (0-based), or None for its
        `DEFAULT_LAYERS` scaled to the model (`layers_for`); () prunes before the language model only."""
        return ()


@dataclass(frozen=True)
class SparseVLMConfig(MethodConfig):
    """How SparseVLM prunes. `SparseVLMConfig()` is the paper's rank-based mode.

    Every field is checked in `__post_init__`; a wrong value raises `ValueError` naming the field.
    """

    # "rank": keep count from the rank of the raters x visual attention (paper §3.4, first
    # reference version); "schedule": fixed keep counts per pruning layer (reference v1.5+).
    mode: str = "rank"
    # Decoder layers after which visual tokens are pruned (0-based, strictly increasing).
    pruning_layers: tuple[int, ...] = RANK_LAYERS
    # Rank mode. rank_form "keep" (reference): keep min(int(scale·rank + bias), n − 1) tokens.
    # rank_form "delete" (paper, Eq. 6): delete int(scale·(n − rank)) tokens; scale is λ in (0, 1].
    scale: float = RANK_SCALE
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
        check_choice("mode", self.mode, MODES)
        check_choice("budget_per", self.budget_per, BUDGET_PER)
        check_choice("rank_form", self.rank_form, RANK_FORMS)
        check_choice("rater_rule", self.rater_rule, RATER_RULES)
        check_choice("merge", self.merge, MERGES)
        check_choice("positions", self.positions, POSITIONS)
        layers = check_layers("pruning_layers", self.pruning_layers)
        object.__setattr__(self, "pruning_layers", layers)
        if self.mode == "schedule":
            if self.schedule is None:
                raise ValueError("schedule=None: mode='schedule' needs one keep count per pruning layer")
            object.__setattr__(self, "schedule", check_schedule(self.schedule, layers))
        elif self.schedule is not None:
            raise ValueError(f"schedule={self.schedule!r} is only used with mode='schedule' (mode={self.mode!r})")
        check_schedule_of(self.schedule_of, self.mode == "schedule")
        if self.rank_form == "delete" and self.mode == "rank":  # the paper's λ
            check_number("scale", self.scale, 0, 1, low_open=True)
        else:
            check_number("scale", self.scale, 0, low_open=True)
        check_number("bias", self.bias, -math.inf)
        if self.top_heads is not None and (not isinstance(self.top_heads, int) or isinstance(self.top_heads, bool)
                                           or self.top_heads < 1):
            raise ValueError(f"top_heads={self.top_heads!r} must be None (all heads) or an integer >= 1")
        check_flag("recycle", self.recycle)
        check_flag("rope_correction", self.rope_correction)
        check_number("recycle_ratio", self.recycle_ratio, 0, 1, low_open=True)
        check_number("cluster_ratio", self.cluster_ratio, 0, 1, low_open=True)

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
    def rank(cls, n_visual: int = 576, num_layers: int = 32, **overrides) -> "SparseVLMConfig":
        """The paper's rank mode (`SparseVLMConfig()`: layers 2/6/15/19, scale 13.5, for 576 visual
        tokens and 32 layers) on a model with `n_visual` tokens per image and `num_layers` layers:
        layers → ceil(l · num_layers / 32) (`scale_layers`), scale × n_visual / 576 (the keep per
        unit of rank, in proportion to the tokens). Other fields may be overridden."""
        if not isinstance(num_layers, int) or num_layers < 1 or not isinstance(n_visual, int) or n_visual < 1:
            raise ValueError(f"n_visual={n_visual!r}, num_layers={num_layers!r}: need integers >= 1 to scale the "
                             f"rank mode")
        fields_ = {"pruning_layers": scale_layers(RANK_LAYERS, num_layers), "scale": RANK_SCALE * n_visual / 576}
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
