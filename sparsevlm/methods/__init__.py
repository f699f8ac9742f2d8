"""Pruning methods behind one interface: a config selects the method.

One file per method, its config (a frozen dataclass, validated on construction) beside its
decision, as NVIDIA's kvpress keeps its presses; shared machinery in `base.py` (the contract,
"keep the best-scoring tokens") and `before_llm.py` (methods that reduce the tokens before the
language model). SparseVLM's own config is `sparsevlm.config`, read by its step modules too."""
from __future__ import annotations

import math
import numbers

import torch

from ..budget import equivalent_tokens, layer_counts
from ..config import SparseVLMConfig
from .base import Decision, Method, PruneInput
from .cdpruner import CDPruner, CDPrunerConfig
from .dart import DART, DARTConfig
from .divprune import DivPrune, DivPruneConfig
from .dycoke import DyCoke, DyCokeConfig
from .fastvid import FastVID, FastVIDConfig
from .fastv import FastV, FastVConfig
from .pdrop import PDrop, PDropConfig
from .pooling import Pooling, PoolingConfig
from .random import RandomConfig, RandomTokens
from .sparsevlm import SparseVLM
from .holitom import HoliTom, HoliTomConfig
from .tome import ToMe, ToMeConfig
from .vidcom2 import VidCom2, VidCom2Config
from .vispruner import VisPruner, VisPrunerConfig
from .visionzip import VisionZip, VisionZipConfig

#: every method, SparseVLM first and the baselines in the order comparisons list them; a new method
#: is one file (its config and its class: name, config, `beside`) and its place here
ALL: tuple[type[Method], ...] = (SparseVLM, RandomTokens, FastV, PDrop, VisionZip, ToMe, DART, DivPrune, VisPruner,
                                 CDPruner, Pooling, DyCoke, FastVID, VidCom2, HoliTom)
METHODS: dict[type, type[Method]] = {m.config: m for m in ALL}  # config class -> method class
BASELINES = tuple(m.name for m in ALL[1:])
#: the baselines for images: all but the video methods, which reduce frames
IMAGE_BASELINES = tuple(m.name for m in ALL[1:] if not m.needs_frames)
COUNTINGS = ("output", "input")


def build(cfg, num_layers: int | None = None) -> Method:
    """The method object for a config, on a model with `num_layers` decoder layers (its paper
    default layers are scaled to that depth; for 32 layers when not given)."""
    try:
        return METHODS[type(cfg)](cfg, num_layers)
    except KeyError:
        names = ", ".join(c.__name__ for c in METHODS)
        raise TypeError(f"cfg of type {type(cfg).__name__} is not a method config; supported: {names}") from None


def planned_counts(cfg, n_visual: int, num_layers: int):
    """Visual tokens entering and leaving each decoder layer under `cfg`, for a prompt with
    `n_visual` visual tokens, without running a model (what the report will show for budgets that
    do not depend on the input). Returns two lists of num_layers ints: counts_in, counts_out."""
    method = build(cfg, num_layers)
    n = torch.tensor([n_visual])
    after = {}
    points = ([-1] if method.prunes_input else []) + list(method.pruning_layers)
    for step, layer in enumerate(points):
        n = method.counts_after(step, n, torch.tensor([n_visual]))
        after[layer] = n
    ins, outs = layer_counts(torch.tensor([n_visual]), num_layers, after)
    return ins[0].tolist(), outs[0].tolist()


def planned_tokens(cfg, n_visual: int, num_layers: int, counting: str = "output") -> float:
    """Equivalent visual tokens of `cfg` (mean over layers, counting each layer's output or input)."""
    if counting not in COUNTINGS:
        raise ValueError(f"counting={counting!r} is not supported; allowed: {', '.join(map(repr, COUNTINGS))}")
    ins, outs = planned_counts(cfg, n_visual, num_layers)
    return float(equivalent_tokens(torch.tensor([outs if counting == "output" else ins]))[0])


def match_budget(cfg, tokens: float, n_visual: int, num_layers: int, counting: str = "output",
                 tolerance: float = 1.0):
    """`cfg` with its budget knob set so that its equivalent tokens are as close as possible to
    `tokens` (ties to the smaller budget): the schedule scaled (SparseVLM schedule mode, random),
    the pruning ratio (FastV, PyramidDrop, DART), the token count (VisionZip, split as in `cfg`; ToMe,
    DivPrune, VisPruner, CDPruner, pooling).
    Raises ValueError when `tokens` is further than `tolerance` tokens from everything the method can
    reach (pooling's h × w grids skip some counts: matched_baselines lets it take the nearest)."""
    if not isinstance(n_visual, int) or n_visual < 1:
        raise ValueError(f"n_visual={n_visual!r} must be an integer >= 1")
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers={num_layers!r} must be an integer >= 1")
    if isinstance(tokens, bool) or not isinstance(tokens, numbers.Real) or not math.isfinite(tokens) or tokens < 0:
        raise ValueError(f"tokens={tokens!r} must be a finite number >= 0")
    best, reach = None, []
    for cand in build(cfg, num_layers).budget_candidates(n_visual):
        eq = planned_tokens(cand, n_visual, num_layers, counting)
        reach.append(eq)
        if best is None or abs(eq - tokens) < abs(best[0] - tokens):
            best = (eq, cand)
    if best is None or abs(best[0] - tokens) > tolerance:
        lo, hi = (min(reach), max(reach)) if reach else (float("nan"),) * 2
        raise ValueError(f"tokens={tokens!r} is out of reach for {type(cfg).__name__} with {n_visual} visual tokens "
                         f"and {num_layers} layers; it reaches {lo:.1f}..{hi:.1f} equivalent tokens ({counting} count)")
    return best[1]


def matched_baselines(cfg: SparseVLMConfig, n_visual: int, num_layers: int, counting: str = "output",
                      methods=None, video: bool = False) -> dict:
    """Every image baseline (with `video`, the video methods too; or those named in `methods`) at the
    equivalent tokens of a SparseVLM schedule `cfg`: random tokens on the same schedule, FastV after
    cfg's first pruning layer, PyramidDrop at cfg's pruning layers (its own 8/16/24 on LLaVA-1.5
    cannot go below ~1/4 of the tokens), VisionZip (its 54:10 split), ToMe, DART (its layer, scaled to
    the depth), DivPrune, VisPruner, CDPruner, pooling (the nearest h × w grid), and DyCoke, FastVID,
    VidCom2 and HoliTom (their retention). Returns {name: config}; raises ValueError if one of them
    cannot reach the budget (e.g. DART, pruning once after its second layer, on a very shallow model)."""
    methods = (BASELINES if video else IMAGE_BASELINES) if methods is None else methods
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"methods={unknown!r}: unknown baselines; allowed: {', '.join(BASELINES)}")
    target = planned_tokens(cfg, n_visual, num_layers, counting)

    def matched(base, tolerance=1.0):
        return match_budget(base, target, n_visual, num_layers, counting, tolerance)

    return {m.name: m.beside(cfg, matched) for m in ALL[1:] if m.name in methods}


__all__ = ["build", "Method", "PruneInput", "Decision", "SparseVLM", "RandomTokens", "FastV", "PDrop", "VisionZip",
           "ToMe", "DART", "DivPrune", "VisPruner", "CDPruner", "Pooling", "ALL", "METHODS",
           "RandomConfig", "FastVConfig", "PDropConfig", "VisionZipConfig", "ToMeConfig", "DARTConfig", "DivPruneConfig",
           "VisPrunerConfig", "CDPrunerConfig", "PoolingConfig", "DyCoke", "FastVID", "VidCom2", "HoliTom",
           "DyCokeConfig", "FastVIDConfig", "VidCom2Config", "HoliTomConfig",
           "planned_counts", "planned_tokens", "match_budget", "matched_baselines", "BASELINES",
           "IMAGE_BASELINES"]
