"""The course's exercises: `check("04.1", answer)` says right or wrong, and why.

Each exercise belongs to a notebook: its id starts with the notebook's number. Its reference solution
is computed live from the library and the embedded model, never stored, so it cannot go stale.
`make test` runs every solution, its named slips and a wrong answer. Notebooks call `check`; they never
print a solution.

Hints are graded. A first wrong answer gets a nudge; later ones get the recipe. A known slip is named.
A right answer says why in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Exercise:
    id: str
    question: str
    kind: str  # "number" (within `tol`), "int", "choice" (one of `choices`) or "set" (of ints)
    solve: Callable[[], Any]
    hint: str  # the recipe: shown from the second wrong answer on
    tol: float = 0.0
    choices: tuple = ()
    nudge: str = ""  # shown after the first wrong answer
    why: str = ""  # one line, shown with a right answer
    # Common slips: (name, wrong answer computed from the reference), e.g.
    # ("two FLOPs per multiply-add", lambda ref: 2 * ref). A matching answer is told the slip's name.
    slips: tuple = ()


@lru_cache(maxsize=1)
def _toy():
    from . import toy

    model, processor = toy.load()
    return model, processor, toy.eval_split()


def _inputs(rec):
    _, processor, _ = _toy()
    return processor(images=rec["image"], text=rec["prompt"], return_tensors="pt")


# --- 00: quickstart ---------------------------------------------------------------------------

_RECORD_00_1, _PRESET_00_1 = 2, 64  # exercise 00.1: not the notebook's own records[5] under toy.preset(128)


@lru_cache(maxsize=1)
def _quickstart_counts():
    """records[_RECORD_00_1] under toy.preset(_PRESET_00_1): (tokens that are not visual, visual tokens
    entering each layer)."""
    from . import toy
    from .models import report, sparsified

    model, _, records = _toy()
    inputs = _inputs(records[_RECORD_00_1])
    with torch.no_grad(), sparsified(model, toy.preset(_PRESET_00_1)):
        model(**inputs)
        rep = report(model)
    return int(rep.n_tokens[0] - rep.n_visual[0]), [int(v) for v in rep.visual_in[0]]


def _s00_1():
    other, visual_in = _quickstart_counts()
    return other + visual_in[3]


# --- 01: redundancy and question dependence --------------------------------------------------

def _s01_1():
    from .methods import RandomConfig
    from .eval import compare

    model, processor, records = _toy()
    configs = {"dense": None, "random 24": RandomConfig(pruning_layers=(1,), schedule=(24,))}
    t = compare(model, processor, records[:240], configs, progress=False)
    return float(t.loc["random 24", "retained"])


def _s01_2():
    from .eval import focus_mass, question_dependence

    model, processor, records = _toy()
    return float(question_dependence(focus_mass(model, processor, records[400:800], 3)))


# --- 02: raters -------------------------------------------------------------------------------

def _s02_1(drop_last: bool = True):
    """Relevance of the planted example's first text token, its last text token dropped (marked invalid)."""
    from .raters import select_raters
    from .toy import planted_example

    ex = planted_example(seed=0)
    valid = ex["valid"].clone()
    valid[0, -1] = not drop_last
    _, rel = select_raters(ex["embeds"], ex["vis_mask"], valid)
    first_text = int(ex["vis_mask"][0].nonzero().max()) + 1
    return float(rel[0, first_text])


def _s02_1_rescaled(ref):
    """The slip: the six-token relevances rescaled to sum to 1 over the first five."""
    from .raters import select_raters
    from .toy import planted_example

    ex = planted_example(seed=0)
    _, rel = select_raters(ex["embeds"], ex["vis_mask"], ex["valid"])
    first_text = int(ex["vis_mask"][0].nonzero().max()) + 1
    return float(rel[0, first_text] / (1 - rel[0, -1]))


def _s02_2(factor: float = 4.0):
    from .raters import select_raters
    from .toy import planted_example

    ex = planted_example(seed=0)
    embeds = torch.where(ex["vis_mask"][..., None], factor * ex["embeds"], ex["embeds"])
    raters, _ = select_raters(embeds, ex["vis_mask"], ex["valid"])
    first_text = int(ex["vis_mask"][0].nonzero().max()) + 1
    return set((raters[0].nonzero().flatten() - first_text).tolist())


# --- 03: scoring ------------------------------------------------------------------------------

def _every_layer_scores(rec):
    from .config import SparseVLMConfig
    from .models import report, sparsified

    model, _, _ = _toy()
    every = SparseVLMConfig(mode="schedule", pruning_layers=tuple(range(8)), schedule=(10 ** 6,) * 8, recycle=False)
    with torch.no_grad(), sparsified(model, every):
        model(**_inputs(rec))
        return [s["scores"][0] for s in report(model).steps]


def _s03_1():
    _, _, records = _toy()
    return float(_every_layer_scores(records[5])[1].sum())


@lru_cache(maxsize=1)
def _focus_shares_03_2():
    """records[2]: per layer, the focus patches' share of the raters' visual attention, and their
    raw score sum (a share of all the raters' attention)."""
    _, _, records = _toy()
    rec = records[2]
    scores = _every_layer_scores(rec)
    return ([float(s[list(rec["focus"])].sum() / s.sum()) for s in scores],
            [float(s[list(rec["focus"])].sum()) for s in scores])


def _s03_2():
    share, _ = _focus_shares_03_2()
    return max(share)


def _s03_2_undivided(ref):
    share, raw = _focus_shares_03_2()
    return raw[share.index(max(share))]


# --- 04: the rank -----------------------------------------------------------------------------

def _s04_1():
    from .budget import attention_rank

    g = torch.Generator().manual_seed(4)
    p = torch.rand(2, 64, generator=g).softmax(-1)
    P = torch.stack([p[0], p[1], (p[0] + p[1]) / 2])[None]  # (1, 3, 64)
    return int(attention_rank(P, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 64, dtype=torch.bool))[0])


def _s04_2():
    from .budget import rank_keep_count
    from .config import SparseVLMConfig

    return int(rank_keep_count(torch.tensor([_RANK_04_2]), torch.tensor([_VISUAL_04_2]), scale=SparseVLMConfig().scale)[0])


_RANK_04_2, _VISUAL_04_2 = 3, 36  # exercise 04.2: three independent raters, 36 visual tokens left


# --- 05: recycling ----------------------------------------------------------------------------

def _s05_1():
    from .recycle import recycle

    g = torch.Generator().manual_seed(5)
    hidden, scores = torch.randn(1, _PRUNED_05_1, 16, generator=g), torch.rand(1, _PRUNED_05_1, generator=g)
    out = recycle(hidden, scores, torch.ones(1, _PRUNED_05_1, dtype=torch.bool))
    return int(out.valid.sum())


_PRUNED_05_1 = 40  # exercise 05.1: tokens pruned at the layer


def _recycled_05_1():
    from .config import SparseVLMConfig

    return int(SparseVLMConfig().recycle_ratio * _PRUNED_05_1) + 1


def _s05_2(merge: str = "sum", members=None):
    """Norm of the merged token of one cluster of 5 unit-norm, mutually orthogonal tokens (width 8)."""
    from .recycle import merge_clusters

    x = torch.eye(5, 8)[None] if members is None else members
    return float(merge_clusters(x, torch.zeros(1, 5, dtype=torch.long), 1, merge).norm())


# --- 06: progressive pruning ---------------------------------------------------------------------

def _stage_run(cfg, layer: int | None = None):
    """A sparsified prefill of records[5] with a cache: the report, the cache's length per layer and the
    position ids handed to decoder `layer`."""
    from .models import report, sparsified
    from .models.compat import CACHE

    model, _, records = _toy()
    seen = {}
    hook = None if layer is None else model.model.language_model.layers[layer].register_forward_pre_hook(
        lambda _m, _a, kw: seen.update(positions=kw["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad(), sparsified(model, cfg):
            out = model(**_inputs(records[5]), use_cache=True)
            rep = report(model)
    finally:
        if hook is not None:
            hook.remove()
    cache = getattr(out, CACHE)
    return rep, [cache.get_seq_length(i) for i in range(rep.num_layers)], seen.get("positions")


def _s06_1():
    from . import toy

    return sum(_stage_run(toy.preset(96))[1])


def _s06_1_output_count():
    """Slip: each layer counted with the tokens that leave it (a pruning layer's shorter output)."""
    from . import toy

    rep = _stage_run(toy.preset(96))[0]
    return int(rep.num_layers * (rep.n_tokens[0] - rep.n_visual[0]) + rep.visual_out[0].sum())


def _s06_1_no_merged():
    """Slip: the merged tokens left out (the same schedule without recycling)."""
    from . import toy

    return sum(_stage_run(toy.preset(96, recycle=False))[1])


def _s06_1_visual_only():
    """Slip: the text tokens left out."""
    from . import toy

    return int(_stage_run(toy.preset(96))[0].visual_in[0].sum())


def _s06_2_layer1_merged():
    """How many merged tokens the pruning after layer 1 made (toy.preset(64), records[5])."""
    from . import toy

    return int(_stage_run(toy.preset(64))[0].steps[0]["recycled"][0])


def _s06_2():
    from . import toy

    model, _, records = _toy()
    rep, _, positions = _stage_run(toy.preset(64), layer=3)
    first = int((_inputs(records[5])["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    # A stage lays out the visual tokens it keeps, then the tokens it merged: the first new merged token
    # follows the visual tokens leaving layer 2 less that step's merged ones.
    slot = first + int(rep.visual_out[0, 2]) - int(rep.steps[1]["recycled"][0])
    return int(positions[0, slot])


# --- 07: FLOPs --------------------------------------------------------------------------------

def _s07_1():
    from .flops import layer_flops

    return float(layer_flops(695, 4096, 11008)) / 1e9


def _planned_07_2(counting):
    """Equivalent tokens of the 128 preset's layers with schedule (288, 144, 72) and no recycling."""
    from .config import SparseVLMConfig
    from .methods import planned_tokens

    cfg = SparseVLMConfig.preset(128).replace(schedule=(288, 144, 72), recycle=False)
    return planned_tokens(cfg, 576, 32, counting)


def _s07_2():
    return _planned_07_2("input")


# --- 08: ablations ----------------------------------------------------------------------------

def _ablate(preset=128, **overrides):
    """Per-question results of toy.preset(preset, **overrides) on records[:240] (cached)."""
    return _ablated(preset, tuple(sorted(overrides.items())))


@lru_cache(maxsize=None)
def _ablated(preset, overrides):
    from . import toy
    from .eval import evaluate

    model, processor, records = _toy()
    return evaluate(model, processor, records[:240], toy.preset(preset, **dict(overrides)), batch_size=64,
                    progress=False)


def _gain(**overrides):
    """Accuracy of the change minus the 128-preset defaults' on the 240 questions."""
    return float(_ablate(**overrides)["correct"].mean() - _ablate()["correct"].mean())


def _s08_1():
    return _gain(positions="original", rater_rule="all")


def _s08_2():
    from .eval import paired_bootstrap

    return paired_bootstrap(_ablate(64, rater_rule="all"), _ablate(64))["verdict"]


def _unpaired_08_2():
    """The verdict of the slip: two accuracies' own intervals compared, overlap read as a tie."""
    from .eval import accuracy_ci

    (a_low, a_high), (b_low, b_high) = accuracy_ci(_ablate(64, rater_rule="all")), accuracy_ci(_ablate(64))
    return "a better" if a_low > b_high else "b better" if a_high < b_low else "tie"


# --- 09: baselines ----------------------------------------------------------------------------

def _s09_1(layer: int = 2):
    from . import toy
    from .methods import FastVConfig, match_budget, planned_tokens

    target = planned_tokens(toy.preset(128), 64, 8)
    return float(match_budget(FastVConfig(layer=layer), target, 64, 8).prune_ratio)


@lru_cache(maxsize=1)
def _s09_pair():
    from . import toy
    from .eval import evaluate

    model, processor, records = _toy()
    return tuple(evaluate(model, processor, records, toy.preset(n), batch_size=64, progress=False)["correct"].to_numpy()
                 for n in (64, 128))


def _s09_2(reverse: bool = False):
    a, b = _s09_pair()[::-1] if reverse else _s09_pair()
    return int((a & ~b).sum())


# --- 10: latency and memory ---------------------------------------------------------------------

def _toy_layers_ratio(tokens) -> float:
    """Σ t(n_ℓ) / Σ t(80) on the committed toy layer curve (results/layers_toy_cpu.json)."""
    import json

    import pandas as pd

    from .bench import RESULTS, predicted_layers_ratio

    doc = json.loads((RESULTS / "layers_toy_cpu.json").read_text())
    curve = pd.DataFrame(doc["results"]).set_index("tokens")
    return predicted_layers_ratio(curve, tokens, [80] * len(tokens))


def _s10_1():
    return _toy_layers_ratio([80] * 2 + [24] * 6)


def _kv_7b(counting: str = "input") -> float:
    """MiB of LLaVA-1.5-7B's bfloat16 KV cache under SparseVLMConfig.preset(64), 119 text + 576 visual
    tokens: the dense cache measured on the meta device, scaled by the tokens each layer caches."""
    from .bench import kv_cache_mb, llava_1_5_7b_config, random_llava
    from .config import SparseVLMConfig
    from .methods import planned_counts
    from .models.compat import CACHE

    text = random_llava(llava_1_5_7b_config(), "meta", torch.bfloat16).model.language_model
    with torch.no_grad():
        x = torch.empty(1, 695, text.config.hidden_size, device="meta", dtype=torch.bfloat16)
        dense = kv_cache_mb(getattr(text(inputs_embeds=x, use_cache=True), CACHE))
    ins, outs = planned_counts(SparseVLMConfig.preset(64), 576, 32)
    return dense * sum(119 + v for v in (ins if counting == "input" else outs)) / (32 * 695)


def _s10_2():
    return _kv_7b()


# --- 11: the real LLaVA-1.5-7B -------------------------------------------------------------------

def _s11_clip():
    """(tokens, width, MLP width, layers) of LLaVA-1.5-7B's vision tower, from its config."""
    from .bench import llava_1_5_7b_config

    v = llava_1_5_7b_config().vision_config
    return (v.image_size // v.patch_size) ** 2 + 1, v.hidden_size, v.intermediate_size, v.num_hidden_layers


def _s11_clip_layer():
    n, d, m, _ = _s11_clip()
    return (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) / 1e9


def _s11_1():
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from .bench import llava_1_5_7b_config

    with torch.device("meta"):  # the architecture's own count, without weights
        model = transformers.LlavaForConditionalGeneration(llava_1_5_7b_config())
    with FlopCounterMode(display=False) as counter:
        model.model.get_image_features(torch.empty(1, 3, 336, 336, device="meta"))
    return counter.get_total_flops() / 2 / 1e9  # FlopCounterMode counts 2 per multiply-add


# --- 12: beyond LLaVA-1.5 ------------------------------------------------------------------------

def _s12_1():
    import transformers

    from .bench import llava_next_7b_config

    with torch.device("meta"):  # the architecture's own count, without weights
        model = transformers.LlavaNextForConditionalGeneration(llava_next_7b_config())
    pixels = torch.empty(1, 10, 3, 336, 336, device="meta")
    out = model.model.get_image_features(pixels, torch.tensor([[336, 672]]), return_dict=True)
    return int(out.pooler_output[0].shape[0])


def _s12_2(schedule_of=576):
    from .config import SparseVLMConfig
    from .methods import planned_counts

    _, outs = planned_counts(SparseVLMConfig.preset(128).replace(schedule_of=schedule_of), 2928, 32)
    return int(outs[2])


# --- 13: video ----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _video():
    from . import toy
    from .recipes import video_methods_for

    model, processor = toy.load_video()
    return model, processor, toy.video_eval_split(limit=1)[0], video_methods_for(model, (64,))


def _kept_per_frame(name: str) -> list[int]:
    """Original visual tokens of the video split's first question kept in each frame by the first step of
    `name` (a row of video_methods_for at the 64 preset); the newline token counts with the last frame."""
    from .eval import record_inputs
    from .models import report, sparsified
    from .models.llava import frame_layout
    from .toy.video import FRAMES

    model, processor, rec, configs = _video()
    side, _, _ = frame_layout(model.config)
    with torch.no_grad(), sparsified(model, configs[name]):
        model(**record_inputs(processor, [rec], model.config))
        kept = torch.tensor(report(model).steps[0]["kept"][0])
    return torch.bincount(kept.div(side * side, rounding_mode="floor").clamp(max=FRAMES - 1), minlength=FRAMES).tolist()


def _s13_1():
    counts = _kept_per_frame("sparsevlm-frame 64")
    if counts.count(min(counts)) > 1:
        raise RuntimeError(f"exercise 13.1 has no single answer: {counts}")
    return counts.index(min(counts))


def _split_13_1(newline: bool = True, later_first: bool = False) -> int:
    """A slip of 13.1, by hand: the frame with the fewest seats when the newline is left out (every frame
    its side² tokens) or ties go to the later frame."""
    from .models.llava import frame_layout
    from .toy.video import FRAMES

    model, _, _, configs = _video()
    side, _, has_newline = frame_layout(model.config)
    cfg, sizes = configs["sparsevlm-frame 64"], [side * side] * FRAMES
    sizes[-1] += int(newline and has_newline)
    k = max(1, round(cfg.schedule[0] * sum(sizes) / cfg.schedule_of))
    exact = [k * v / sum(sizes) for v in sizes]
    seats = [int(e) for e in exact]
    for f in sorted(range(FRAMES), key=lambda f: (-(exact[f] - seats[f]), -f if later_first else f))[:k - sum(seats)]:
        seats[f] += 1
    return min(range(FRAMES), key=lambda f: (seats[f], -f if later_first else f))


def _sizes_13() -> list[int]:
    """Tokens per frame of a clip of the video model: side² each, the newline with the last frame."""
    from .models.llava import frame_layout
    from .toy.video import FRAMES

    side, _, newline = frame_layout(_video()[0].config)
    return [side * side] * (FRAMES - 1) + [side * side + int(newline)]


def _s13_2():
    from .methods.dycoke import ttm_references

    counts, sizes = _kept_per_frame("dycoke 64"), _sizes_13()
    never = [f for f, r in enumerate(ttm_references(len(sizes))) if r is None]
    return sum(sizes[f] - counts[f] for f in never)


def _dycoke_13_2(extra_comparable: int = 0, kept: int | None = None) -> int:
    """13.2 by hand: V − K − the tokens the comparisons can drop, with a slip's other count of either."""
    from .methods.dycoke import ttm_references
    from .methods.video import kept_count

    sizes, cfg = _sizes_13(), _video()[3]["dycoke 64"]
    comparable = sum(min(sizes[f], sizes[r]) for f, r in enumerate(ttm_references(len(sizes))) if r is not None)
    k = kept_count(sum(sizes), cfg.retention) if kept is None else kept
    return max(0, sum(sizes) - k - comparable - extra_comparable)


def _sparsevlm_k_13_2() -> int:
    """The slip's K: SparseVLM's keep count after its first pruning layer at the 64 preset."""
    cfg = _video()[3]["sparsevlm 64"]
    return max(1, round(cfg.schedule[0] * sum(_sizes_13()) / cfg.schedule_of))


EXERCISES = {e.id: e for e in [
    Exercise("00.1", f"In the sparsified prefill of records[{_RECORD_00_1}] under toy.preset({_PRESET_00_1}), how many "
             "tokens in all (system, visual and text) enter layer 3?", "int", _s00_1,
             "rep.visual_in[0] gives the visual tokens entering each layer; add the tokens that are never pruned: "
             "the prompt's length minus its visual tokens",
             nudge=f"rerun the notebook's cells with records[{_RECORD_00_1}] and toy.preset({_PRESET_00_1}); only "
                   "visual tokens are pruned, the text and system tokens reach every layer",
             why="n_3 = the text and system tokens + the visual tokens left after layers 1 and 2 (notation: n_l)",
             slips=(("counted only the visual tokens", lambda ref: _quickstart_counts()[1][3]),
                    ("one layer early: that is what enters layer 2", lambda ref: sum(_quickstart_counts()[:1])
                     + _quickstart_counts()[1][2]))),
    Exercise("01.1", "Random pruning to 24 tokens after layer 1: what share of dense accuracy is retained on "
             "records[:240]? (a fraction, ±0.01)", "number", _s01_1,
             "run compare() on records[:240] with 'dense' and RandomConfig(pruning_layers=(1,), schedule=(24,)), and "
             "read the `retained` column (accuracy divided by dense accuracy)", tol=0.01,
             nudge="24 is not in the table: run the comparison yourself, as in the first code cell, with schedule=(24,)",
             why="retained = accuracy / dense accuracy; 24 random tokens sit between the 32 and 16 rows"),
    Exercise("01.2", "On the other half of the split, records[400:800], what is the question dependence at layer 3 "
             "(±0.01)?", "number", _s01_2,
             "question_dependence(focus_mass(model, processor, records[400:800], 3))", tol=0.01,
             nudge="the printed values are for records[:400]; recompute on the other 400 questions",
             why="layer 3's grounded head serves the last prompt token, not the raters, so the dependence there is "
                 "modest on both halves"),
    Exercise("02.1", "Drop the planted example's last text token (mark it invalid in `valid`). What relevance does "
             "text token 0 get now? (±1e-3)", "number", _s02_1,
             "valid = ex['valid'].clone(); valid[0, -1] = False; then sparsevlm.select_raters(ex['embeds'], "
             "ex['vis_mask'], valid) and read the relevance at the first text position (65)", tol=1e-3,
             nudge="each visual token's softmax now runs over five text tokens: recompute every softmax, then average",
             why="every softmax renormalises over the tokens left, so token 0 gains by a different factor for each "
                 "visual token; the relevances still sum to 1",
             slips=(("the relevance before dropping", lambda ref: _s02_1(drop_last=False)),
                    ("rescaled the averaged relevances instead of recomputing each softmax", _s02_1_rescaled))),
    Exercise("02.2", "Multiply every visual embedding of the planted example by 4. Which text tokens are raters "
             "now? (a set of positions 0-5, counted from the first text token after the image)", "set", _s02_2,
             "recompute with sparsevlm.select_raters on torch.where(vis_mask[..., None], 4 * embeds, embeds) and "
             "subtract the first text position",
             nudge="scaling V multiplies every logit by 4: each softmax over the text gets sharper",
             why="with logits four times larger, each softmax goes almost wholly to its top text token, so the set above the mean changes",
             slips=(("positions counted from the start of the sequence", lambda ref: {x + 65 for x in ref}),
                    ("the raters before scaling", lambda ref: _s02_2(1.0)))),
    Exercise("03.1", "For records[5] at layer 1, what share of the raters' attention falls on visual tokens at "
             "all? (the sum of the scores, ±0.005)", "number", _s03_1,
             "take rep.steps[0]['scores'][0] for records[5] at layer 1 (a keep-all schedule) and sum it", tol=0.005,
             nudge="an attention row sums to 1 over every key; keep the visual columns only",
             why="the rest of each rater's row goes to the system and text tokens",
             slips=(("the scores were normalised first; they then always sum to 1", lambda ref: 1.0),)),
    Exercise("03.2", "For records[2] (where is the green triangle), over the 8 layers, what is the largest share of "
             "the raters' visual attention that falls on the question's focus patches? (±0.005)", "number", _s03_2,
             "score every layer with a keep-all schedule at layers 0-7, as the notebook does for records[5]; per "
             "layer divide the focus patches' scores by the sum of all visual scores; take the maximum", tol=0.005,
             nudge="the printed shares are for records[5]; repeat that cell with records[2]",
             why="as for records[5], the best layer is the one whose head 0 the recipe grounded",
             slips=(("not divided by the sum of the visual scores", _s03_2_undivided),)),
    Exercise("04.1", "Three raters whose attention rows over 64 visual tokens are p1, p2 and (p1 + p2) / 2: "
             "what is the rank of the 3 × 64 matrix?", "int", _s04_1,
             "build the 3 × 64 matrix from two softmax rows and check with sparsevlm.attention_rank",
             nudge="a row that is a combination of the others adds no dimension",
             why="the third row is the mean of the first two, so only two directions remain",
             slips=(("counted the rows: the rank is at most 3, not always 3", lambda ref: 3),)),
    Exercise("04.2", f"The reference's rank mode (scale 13.5, bias 0) at a layer where {_VISUAL_04_2} visual tokens "
             f"remain, with {_RANK_04_2} raters whose rows are linearly independent: how many tokens are kept?", "int",
             _s04_2, "the rank is 3; apply min(int(scale·rank + bias), V − 1) with V = 36",
             nudge="the rank of independent rows is their number; then mind the cap",
             why="int(13.5 × 3) = 40 exceeds the tokens present, so the cap V − 1 decides",
             slips=(("capped at V instead of V − 1", lambda ref: _VISUAL_04_2),
                    ("forgot the cap", lambda ref: int(13.5 * _RANK_04_2)))),
    Exercise("05.1", f"Recycling {_PRUNED_05_1} pruned tokens with the default ratios: how many merged tokens come out?",
             "int", _s05_1, "G = int(recycle_ratio·U) + 1 tokens are recycled, then C = int(cluster_ratio·G) + 1 "
             "clusters, one merged token each",
             nudge="two counts in a row: first the recycled tokens, then the clusters they form",
             why="U pruned tokens give G = int(0.3·U) + 1 recycled ones, and those form C = int(0.1·G) + 1 clusters",
             slips=(("counted the recycled tokens, not the clusters", lambda ref: _recycled_05_1()),
                    ("applied the cluster ratio to the pruned tokens, not the recycled ones",
                     lambda ref: int(0.1 * _PRUNED_05_1) + 1))),
    Exercise("05.2", "A cluster of 5 tokens of norm 1, mutually orthogonal (say the rows of torch.eye(5, 8)): what "
             "is the norm of the token the paper's merge (merge='sum') makes? (±1e-6)", "number", _s05_2,
             "sparsevlm.recycle.merge_clusters(torch.eye(5, 8)[None], torch.zeros(1, 5, dtype=torch.long), 1, 'sum') "
             "and take its norm; or Pythagoras on the sum", tol=1e-6,
             nudge="orthogonal members do not agree: their norms add like the sides of a right angle, not in a line",
             why="the squared norms of orthogonal vectors add, so 5 unit members sum to norm √5; agreeing members "
                 "would give 5, and the mean shrinks either by the cluster size",
             slips=(("identical members: orthogonal ones do not add in a line", lambda ref: 5.0),
                    ("the reference's mean, not the paper's sum", lambda ref: _s05_2("mean")))),
    Exercise("06.1", "toy.preset(96) on records[5]'s prompt (16 text and 64 visual tokens), prefilled with "
             "use_cache=True: how many token entries do the 8 layers' KV caches hold in all (the sum over layers "
             "of the tokens each caches)?", "int", _s06_1,
             "layer ℓ caches the n_ℓ tokens that enter it: text plus the visual tokens left by the earlier pruning "
             "layers, kept plus merged; add n_ℓ over the 8 layers",
             nudge="a pruning layer still sees, and caches, every token that enters it; the shorter sequence "
                   "starts one layer later. Did you count the merged tokens?",
             why="each layer caches its input, n_ℓ = (L − V) + N_in(ℓ); merged tokens are cached like kept ones",
             slips=(("a pruning layer counted with its output, not its input", lambda ref: _s06_1_output_count()),
                    ("the recycled (merged) tokens left out", lambda ref: _s06_1_no_merged()),
                    ("the text tokens left out", lambda ref: _s06_1_visual_only()))),
    Exercise("06.2", "toy.preset(64) on records[5], compact positions: what position id does the first merged "
             "token made at the pruning after layer 2 get in layer 3?", "int", _s06_2,
             "count the tokens before it in layer 3's sequence: the text before the image, then the visual "
             "tokens kept at this step (toy.preset(64).schedule); compact positions number them from 0",
             nudge="in compact mode a token's position is the number of tokens before it in the shorter "
                   "sequence, and merged tokens sit right after the kept visual ones",
             why="compact positions renumber 0, 1, …; a merged token follows the kept visual tokens",
             slips=(("positions counted from 1", lambda ref: ref + 1),
                    ("the position right after the original image", lambda ref: 8 + 64),
                    ("the merged tokens of layer 1 added on top of the kept ones",
                     lambda ref: ref + _s06_2_layer1_merged()))),
    Exercise("07.1", "Prefill cost of one LLaVA-1.5-7B decoder layer (d = 4096, m = 11008) on n = 695 tokens, by "
             "the paper's formula, in GFLOPs (multiply-adds, ±0.5)", "number", _s07_1,
             "F(n) = 4·n·d² + 2·n²·d + 3·n·d·m with n = 695, d = 4096, m = 11008, divided by 1e9; "
             "sparsevlm.flops.layer_flops(695, 4096, 11008) computes the same", tol=0.5,
             nudge="one layer, not the whole prefill: put n, d and m into the formula F(n) at the top of the "
                   "notebook, and count one multiply-add as one FLOP",
             why="the gated MLP (3·n·d·m) is about two thirds of it; attention's n² term is small at this length",
             slips=(("two FLOPs per multiply-add", lambda r: 2 * r),
                    ("an ungated MLP (2·n·d·m instead of 3·n·d·m)", lambda r: r - 695 * 4096 * 11008 / 1e9))),
    Exercise("07.2", "LLaVA-1.5-7B (576 visual tokens, 32 layers) pruned after layers 2, 6 and 15 to 288, 144 and 72 "
             "visual tokens, no recycling (SparseVLMConfig.preset(128).replace(schedule=(288, 144, 72), "
             "recycle=False)): its equivalent tokens counted at each layer's *input* (±0.01)", "number", _s07_2,
             "layers 0–2 take 576, layers 3–6 take 288, 7–15 take 144, 16–31 take 72: their mean; "
             "sparsevlm.planned_counts(cfg, 576, 32) lists them and planned_tokens(..., 'input') checks it",
             tol=0.01,
             nudge="count the tokens entering each layer: layer 0 gets all 576, layer ℓ gets what left layer ℓ − 1",
             why="a layer pays for the tokens that enter it, so FLOPs follow the input count",
             slips=(("output vs input counting", lambda r: _planned_07_2("output")),)),
    Exercise("08.1", "From the 128-preset defaults, use original positions and raters = all text, both at once. "
             "On the 240 questions, what is its accuracy minus the defaults' accuracy? (a fraction, ±0.002)",
             "number", _s08_1,
             "ablation(positions='original', rater_rule='all')['accuracy'] minus the defaults' accuracy (the "
             "grid's first row); a negative answer means the change costs accuracy", tol=0.002,
             nudge="measure the two changes together on the same 240 questions, then subtract the defaults' "
                   "accuracy; the grid's one-knob rows do not give it",
             why="the knobs interact: the sum of their one-knob differences is far from it, so measure combinations",
             slips=(("the defaults minus the change: the sign is flipped", lambda r: -r),
                    ("the change's accuracy itself, not its difference to the defaults",
                     lambda r: r + float(_ablate()["correct"].mean())),
                    ("adding the two one-knob differences",
                     lambda r: _gain(positions="original") + _gain(rater_rule="all")))),
    Exercise("08.2", "At the 64 preset, raters = all text against the paper's mean rule on the 240 questions: at "
             "95 % (paired bootstrap), is it 'a better' (all text), 'b better' (mean) or 'tie'?", "choice",
             _s08_2,
             "a = evaluate(model, processor, SUBSET, make_config(preset=64, rater_rule='all'), progress=False), "
             "b the same with make_config(preset=64); then paired_bootstrap(a, b)['verdict']",
             choices=("a better", "b better", "tie"),
             nudge="evaluate both rules at the 64 preset on the same questions and pair them question by "
                   "question; the grid above is at the 128 preset",
             why="pairing cancels the questions both rules answer alike, so its interval is narrower than the "
                 "two accuracies' own intervals",
             slips=(("overlapping intervals read as a tie (an unpaired comparison)", lambda r: _unpaired_08_2()),)),
    Exercise("09.1", "matched_baselines puts FastV after layer 1. Pruning after layer 2 instead "
             "(FastVConfig(layer=2)), what prune ratio matches the toy 128 preset's equivalent tokens (counted at "
             "each layer's output)? (±1e-3)", "number", _s09_1,
             "solve (2 · 64 + 6 · k) / 8 = E for the kept count k, with E = "
             "sparsevlm.planned_tokens(toy.preset(128), 64, 8); the ratio is 1 − k / 64 "
             "(sparsevlm.match_budget(FastVConfig(layer=2), E, 64, 8) does the same)", tol=1e-3,
             nudge="equivalent tokens are the mean over the 8 layers of the visual tokens each layer outputs; "
                   "layers 0 and 1 output all 64, layers 2–7 the kept ones",
             why="two layers at all 64 tokens spend most of the budget, so the six after keep only a few: the later "
                 "FastV prunes, the harder it must prune",
             slips=(("the share kept, not the share pruned", lambda ref: 1 - ref),
                    ("FastV after layer 1, as matched_baselines builds it", lambda ref: _s09_1(layer=1)))),
    Exercise("09.2", "SparseVLM at the toy 64 and 128 presets, all 800 questions: on how many is the 64 preset right "
             "and the 128 preset wrong?", "int", _s09_2,
             "(correct['sparsevlm 64'] & ~correct['sparsevlm 128']).sum()",
             nudge="compare the two rows of `correct` question by question (True = right)",
             why="a paired comparison rests on the questions where the two disagree: the accuracy difference is "
                 "(this count − the reverse count) / 800",
             slips=(("the other direction: right at 128, wrong at 64", lambda ref: _s09_2(reverse=True)),
                    ("every question where the two disagree", lambda ref: ref + _s09_2(reverse=True)))),
    Exercise("10.1", "On the committed toy layer curve (results/layers_toy_cpu.json), a method keeps all 80 tokens "
             "in layers 0–1 and 24 (16 text + 8 visual) in layers 2–7: at best, what share of dense's layer time "
             "do its layers take? (±0.005)", "number", _s10_1,
             "read t(n) off the curve at each layer's length (linear between measured lengths), add up the 8 "
             "layers, divide by 8 · t(80); bench.predicted_layers_ratio does the same", tol=0.005,
             nudge="a layer's time is t(n) ≈ t₀ + c·n, not proportional to n: read each layer's time off the curve",
             why="the fixed part t₀ stays in every layer, so 24 of 80 tokens still cost most of a layer's time",
             slips=(("tokens, not time (as if the fixed part t₀ were 0)", lambda ref: (2 * 80 + 6 * 24) / (8 * 80)),
                    ("the pruned layers only (layers 0–1 run in full too)",
                     lambda ref: _toy_layers_ratio([24])))),
    Exercise("10.2", "LLaVA-1.5-7B in bfloat16, a prompt of 119 text and 576 visual tokens: dense prefill leaves "
             "the KV cache measured above on the meta device. How many MiB does SparseVLMConfig.preset(64) "
             "leave? (±0.1)", "number", _s10_2,
             "each layer caches keys and values of the tokens entering it: sum 119 + counts_in over the 32 layers "
             "(sparsevlm.planned_counts(SparseVLMConfig.preset(64), 576, 32)), times the dense cache's MiB per "
             "token per layer", tol=0.1,
             nudge="the cache shrinks layer by layer: count the tokens each of the 32 layers caches",
             why="a pruning layer caches its input, and every later layer only the tokens kept",
             slips=(("output vs input counting (a pruning layer caches the tokens entering it)",
                     lambda ref: _kv_7b("output")),
                    ("float32's 4 bytes (the model runs in bfloat16: 2)", lambda ref: 2 * ref),
                    ("keys only (the cache holds keys and values)", lambda ref: ref / 2),
                    ("MB, not MiB (kv_cache_mb divides by 2**20)", lambda ref: ref * 2 ** 20 / 1e6))),
    Exercise("11.1", "One 336×336 image through LLaVA-1.5-7B's vision tower (all 24 of its layers run) and its "
             "projector: how many GFLOPs, one multiply-add counted as one FLOP as the paper does? (±0.5)", "number",
             _s11_1,
             "24 × (4·n·d² + 2·n²·d + 2·n·d·m) with n = 577, d = 1024, m = 4096 from meta.config.vision_config, plus "
             "576 × (1024·4096 + 4096·4096) for the projector (the patch embedding adds less than the tolerance); "
             "or run meta.model.get_image_features under torch.utils.flop_counter.FlopCounterMode and halve its count",
             tol=0.5,
             nudge="each CLIP layer has four attention projections, the scores and weighted sum over every token "
                   "(the [CLS] token too), and an MLP of two matrices; the projector then maps each patch's "
                   "feature to the language model's width",
             why="the tower works on all 577 tokens in each layer; pruning inside the language model leaves this "
                 "cost untouched, so its share grows as a preset shrinks the rest",
             slips=(("two FLOPs per multiply-add", lambda ref: 2 * ref),
                    ("a gated MLP of three matrices, as in the language model",
                     lambda ref: ref + _s11_clip()[3] * _s11_clip()[0] * _s11_clip()[1] * _s11_clip()[2] / 1e9),
                    ("23 layers: LLaVA reads the second-to-last layer's features, but all 24 run",
                     lambda ref: ref - _s11_clip_layer()),
                    ("the projector left out", lambda ref: ref - 576 * (1024 * 4096 + 4096 * 4096) / 1e9))),
    Exercise("12.1", "LLaVA-NeXT-7B (anyres, 336-pixel tiles): how many visual tokens does an image 336 pixels high "
             "and 672 wide become?", "int", _s12_1,
             "24² for the whole image's view, plus the best grid of tiles (here 1 × 2: a 24 × 48 feature grid, "
             "nothing cut for this aspect ratio), plus one newline token per row of that grid",
             nudge="the count has three parts: a view of the whole image, the tiles' feature grid, and the "
                   "image_newline tokens",
             why="anyres encodes a 336-pixel view of the whole image and every tile, so the count grows with the image",
             slips=(("the whole image's view left out", lambda ref: ref - 24 ** 2),
                    ("the newline tokens left out", lambda ref: ref - 24))),
    Exercise("12.2", "SparseVLMConfig.preset(128), as ratios (schedule_of = 576), on LLaVA-NeXT's 2,928-token "
             "image: how many visual tokens leave layer 2, the kept ones and the recycled ones together?", "int",
             _s12_2,
             "keep round(303 · 2928 / 576), then recycle the pruned ones as in exercise 05.1 (int(0.3 · n) + 1 "
             "tokens into int(0.1 · m) + 1 clusters); sparsevlm.planned_counts gives the counts per layer",
             nudge="the preset keeps 303 of 576 at layer 2: scale that share to 2,928 tokens, then add the "
                   "cluster centres that recycling makes of the pruned ones",
             why="a ratio keeps the same share of a longer image; recycling adds a few merged tokens on top",
             slips=(("only the kept tokens: the recycled ones are missing", lambda ref: round(303 * 2928 / 576)),
                    ("the preset as absolute counts (schedule_of=None)", lambda ref: _s12_2(None)))),
    Exercise("13.1", "SparseVLM with one budget per frame (the 'sparsevlm-frame 64' row of video_methods_for(model, "
             "(64,))) on a clip of the video model: after its first pruning layer, which frame (0-7) keeps the "
             "fewest tokens?", "int", _s13_1,
             "K = max(1, round(schedule[0] · V / schedule_of)); V_f = 16 for frames 0-6 and 17 for frame 7 (the "
             "newline); K_f = floor(K · V_f / V), then one more seat to each of the largest remainders, ties to "
             "the earlier frame (sparsevlm.select.split_budget)",
             nudge="the 64 preset keeps far fewer tokens than there are frames × 2: work out K first, then share "
                   "it by largest remainders as the notebook does for the 128 preset",
             why="the newline gives frame 7 the largest remainder; the other seats go to the earlier frames of the "
                 "tie, so the last frame of the tie is left with one seat fewer",
             slips=(("the newline left out: every frame 16 tokens", lambda ref: _split_13_1(newline=False)),
                    ("ties given to the later frame", lambda ref: _split_13_1(later_first=True)))),
    Exercise("13.2", "DyCoke at the video model's 64 preset (the 'dycoke 64' row of video_methods_for(model, "
             "(64,)), matched to SparseVLM's equivalent tokens) on a clip: how many tokens do frames 0 and 4, "
             "which DyCoke never compares, lose together?", "int", _s13_2,
             "K = max(1, round(retention · V)); the comparisons can drop at most Σ min(V_f, V_ref(f)) over the "
             "compared frames 1, 2, 3, 5, 6, 7; the rest of the V − K drops falls on frames 0 and 4",
             nudge="count what the comparisons alone can remove: each compared frame drops only tokens that have a "
                   "counterpart at the same place in its reference frame",
             why="the 64 preset asks for more drops than the comparisons offer, so DyCoke must cut the frames it "
                 "keeps whole at higher budgets",
             slips=(("the newline compared too (frame 7 has 17 tokens, frame 6 only 16)",
                     lambda ref: _dycoke_13_2(extra_comparable=1)),
                    ("K read off SparseVLM's first pruning layer, not the matched budget",
                     lambda ref: _dycoke_13_2(kept=_sparsevlm_k_13_2())))),
]}


@lru_cache(maxsize=None)
def solution(exercise: str):
    """The reference answer of an exercise, computed now (used by the tests; notebooks never print it)."""
    return _get(exercise).solve()


def _get(exercise: str) -> Exercise:
    if exercise not in EXERCISES:
        raise ValueError(f"exercise={exercise!r} does not exist; allowed: {', '.join(EXERCISES)}")
    return EXERCISES[exercise]


def _plain(answer):
    """A numpy scalar, a 0-d array or a 0-d tensor as the Python number it holds."""
    if hasattr(answer, "item") and getattr(answer, "ndim", None) == 0:
        return answer.item()
    return answer


def _int(answer):
    answer = _plain(answer)
    if isinstance(answer, float) and answer.is_integer():
        return int(answer)
    return answer


def _same(ex: Exercise, answer, value) -> bool:
    if ex.kind == "number":
        return abs(float(answer) - value) <= ex.tol
    if ex.kind == "set":
        return {int(x) for x in answer} == set(value)
    return answer == value


def _verdict(ex: Exercise, answer, ref) -> tuple[bool, str]:
    answer = _int(answer) if ex.kind == "int" else _plain(answer)
    if ex.kind == "number":
        try:
            value = float(answer)
        except (TypeError, ValueError):
            return False, f"expected a number, got {answer!r}"
        if abs(value - ref) <= ex.tol:
            return True, ""
        return False, f"{value:g} is too {'high' if value > ref else 'low'}"
    if ex.kind == "int":
        if isinstance(answer, bool) or not isinstance(answer, int):
            return False, f"expected a whole number, got {answer!r}"
        return answer == ref, "" if answer == ref else f"{answer} is too {'high' if answer > ref else 'low'}"
    if ex.kind == "choice":
        if answer not in ex.choices:
            return False, f"{answer!r} is not one of {', '.join(map(repr, ex.choices))}"
        return answer == ref, "" if answer == ref else f"not {answer!r}"
    try:
        given = {int(x) for x in answer}
    except (TypeError, ValueError):
        return False, f"expected a set of whole numbers, got {answer!r}"
    if given == ref:
        return True, ""
    missing, extra = len(ref - given), len(given - ref)
    return False, f"{missing} missing, {extra} that should not be there"


def slip(ex: Exercise, answer, ref) -> str | None:
    """The name of the common slip that `answer` matches, if any."""
    answer = _int(answer) if ex.kind == "int" else _plain(answer)
    for name, wrong in ex.slips:
        value = wrong(ref)
        try:
            if value != ref and _same(ex, answer, value):
                return name
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
            return None
    return None


_ATTEMPTS: dict[str, int] = {}


def check(exercise: str, answer=None, quiet: bool = False) -> bool | None:
    """Say whether `answer` solves `exercise` ("04.1", ...): why when right; when wrong, a nudge
    the first time and the recipe after. A known slip is named. None (the default) means not
    answered yet. Returns True / False (None if unanswered)."""
    ex = _get(exercise)
    if answer is None:
        if not quiet:
            print(f"{ex.id}: not answered yet — {ex.question}")
        return None
    ref = solution(exercise)
    ok, why = _verdict(ex, answer, ref)
    if ok:
        _ATTEMPTS.pop(ex.id, None)
        if not quiet:
            print(f"{ex.id}: right. {ex.why}".rstrip())
        return True
    named = slip(ex, answer, ref)
    tries = _ATTEMPTS[ex.id] = _ATTEMPTS.get(ex.id, 0) + 1
    hint = ex.nudge if tries == 1 and ex.nudge else ex.hint
    if not quiet:
        said = f"that is the slip '{named}'" if named else why
        print(f"{ex.id}: wrong — {said}. Hint: {hint}.")
    return False


__all__ = ["check", "solution", "slip", "EXERCISES", "Exercise"]
