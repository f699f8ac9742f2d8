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


# --- 01: redundancy and question dependence --------------------------------------------------

def _s01_1():
    from .methods import RandomConfig
    from .eval import compare

    model, processor, records = _toy()
    configs = {"dense": None, "random 16": RandomConfig(pruning_layers=(1,), schedule=(16,))}
    t = compare(model, processor, records[:240], configs, progress=False)
    return float(t.loc["random 16", "retained"])


def _s01_2():
    from .eval import focus_mass, question_dependence

    model, processor, records = _toy()
    per_layer = {layer: question_dependence(focus_mass(model, processor, records[:400], layer)) for layer in range(8)}
    return max(per_layer, key=per_layer.get)


# --- 02: raters -------------------------------------------------------------------------------

def _s02_1():
    from .raters import select_raters
    from .toy import planted_example

    ex = planted_example(seed=0)
    _, rel = select_raters(ex["embeds"], ex["vis_mask"], ex["valid"])
    return float(rel[0].sum())


def _s02_2():
    from .raters import select_raters
    from .toy import planted_example

    ex = planted_example(seed=0)
    embeds = torch.where(ex["vis_mask"][..., None], 4 * ex["embeds"], ex["embeds"])
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


def _s03_2():
    _, _, records = _toy()
    rec = records[5]
    share = [float(s[list(rec["focus"])].sum() / s.sum()) for s in _every_layer_scores(rec)]
    return max(range(len(share)), key=share.__getitem__)


# --- 04: the rank -----------------------------------------------------------------------------

def _s04_1():
    from .budget import attention_rank

    g = torch.Generator().manual_seed(4)
    p = torch.rand(2, 64, generator=g).softmax(-1)
    P = torch.stack([p[0], p[1], (p[0] + p[1]) / 2])[None]  # (1, 3, 64)
    return int(attention_rank(P, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 64, dtype=torch.bool))[0])


def _s04_2():
    from .budget import rank_keep_count
    from .toy import TOY_RANK_SCALE

    return int(rank_keep_count(torch.tensor([3]), torch.tensor([64]), scale=TOY_RANK_SCALE)[0])


# --- 05: recycling ----------------------------------------------------------------------------

def _s05_1():
    from .recycle import recycle

    g = torch.Generator().manual_seed(5)
    hidden, scores = torch.randn(1, 40, 16, generator=g), torch.rand(1, 40, generator=g)
    out = recycle(hidden, scores, torch.ones(1, 40, dtype=torch.bool))
    return int(out.valid.sum())


def _s05_2():
    from .recycle import merge_clusters

    x = torch.ones(1, 5, 8)
    assign = torch.zeros(1, 5, dtype=torch.long)
    summed, mean = merge_clusters(x, assign, 1, "sum"), merge_clusters(x, assign, 1, "mean")
    return float(summed.norm() / mean.norm())


# --- 07: FLOPs --------------------------------------------------------------------------------

def _s07_1():
    from .flops import layer_flops

    return float(layer_flops(695, 4096, 11008)) / 1e9


def _s07_2():
    from .config import SparseVLMConfig
    from .methods import planned_tokens

    return planned_tokens(SparseVLMConfig.preset(64), 576, 32, "input")


# --- 08: ablations ----------------------------------------------------------------------------

def _ablate(**overrides):
    from . import toy
    from .eval import evaluate

    model, processor, records = _toy()
    return evaluate(model, processor, records[:240], toy.preset(128, **overrides), batch_size=64, progress=False)


def _s08_1():
    base = _ablate()["correct"].mean()
    changes = {"no recycling": {"recycle": False}, "original positions": {"positions": "original"},
               "raters = last token": {"rater_rule": "last"}, "raters = all text": {"rater_rule": "all"}}
    drop = {name: base - _ablate(**kw)["correct"].mean() for name, kw in changes.items()}
    return max(drop, key=drop.get)


def _s08_2():
    from .eval import paired_bootstrap

    return paired_bootstrap(_ablate(rater_rule="all"), _ablate())["verdict"]


# --- 09: baselines ----------------------------------------------------------------------------

def _s09_1():
    from . import toy
    from .methods import matched_baselines

    return float(matched_baselines(toy.preset(64), 64, 8)["fastv"].prune_ratio)


def _s09_2():
    from . import toy
    from .eval import evaluate, paired_bootstrap
    from .methods import matched_baselines

    model, processor, records = _toy()
    cfg = toy.preset(192)
    a = evaluate(model, processor, records, cfg, batch_size=64, progress=False)
    b = evaluate(model, processor, records, matched_baselines(cfg, 64, 8)["pdrop"], batch_size=64, progress=False)
    return {"a better": "sparsevlm", "b better": "pdrop", "tie": "tie"}[paired_bootstrap(a, b)["verdict"]]


# --- 10: latency and memory ---------------------------------------------------------------------

def _s10_1():
    import json

    import pandas as pd

    from .bench import RESULTS, predicted_layers_ratio

    doc = json.loads((RESULTS / "layers_llava-1.5-7b-shaped-h1024_cpu.json").read_text())
    curve = pd.DataFrame(doc["results"]).set_index("tokens")
    return predicted_layers_ratio(curve, [695] * 2 + [183] * 30, [695] * 32)


def _s10_2():
    from . import toy
    from .bench import kv_cache_mb
    from .models import sparsified
    from .models.staged import CACHE

    model, _, records = _toy()
    with torch.no_grad(), sparsified(model, toy.preset(64)):
        return kv_cache_mb(getattr(model(**_inputs(records[0]), use_cache=True), CACHE))


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


EXERCISES = {e.id: e for e in [
    Exercise("01.1", "Random pruning to 16 tokens after layer 1: what share of dense accuracy is retained on "
             "records[:240]? (a fraction, ±0.01)", "number", _s01_1,
             "read the `retained` column of the table for random 16", tol=0.01),
    Exercise("01.2", "At which decoder layer (0-7) is the raters' attention most question-dependent on "
             "records[:400]?", "int", _s01_2,
             "take the layer with the largest value of `per_layer`; then compare it with the layers the model card "
             "says the training recipe grounds"),
    Exercise("02.1", "The relevance of a sample's text tokens always sums to the same number. Which? (±1e-4)",
             "number", _s02_1, "each visual token's softmax over the text sums to 1; what does averaging over "
             "visual tokens do to that?", tol=1e-4),
    Exercise("02.2", "Multiply every visual embedding of the planted example by 4. Which text tokens are raters "
             "now? (a set of positions 0-5, counted from the first text token after the image)", "set", _s02_2,
             "scaling V sharpens every softmax over the text (a lower temperature); recompute with "
             "sparsevlm.select_raters"),
    Exercise("03.1", "For records[5] at layer 1, what share of the raters' attention falls on visual tokens at "
             "all? (the sum of the scores, ±0.005)", "number", _s03_1,
             "an attention row sums to 1 over every key; sum the visual columns only", tol=0.005),
    Exercise("03.2", "For records[5], at which layer (0-7) do the raters put the largest share of their visual "
             "attention on the question's focus patches?", "int", _s03_2,
             "divide each layer's scores by their sum and add up the focus patches"),
    Exercise("04.1", "Three raters whose attention rows over 64 visual tokens are p1, p2 and (p1 + p2) / 2: "
             "what is the rank of the 3 × 64 matrix?", "int", _s04_1,
             "a row that is a combination of the others adds no dimension; check with sparsevlm.attention_rank"),
    Exercise("04.2", "Toy rank mode (scale 1.5, bias 0), 64 visual tokens, 3 raters with linearly independent "
             "rows: how many tokens are kept?", "int", _s04_2,
             "the rank is 3; apply the reference's keep rule min(int(scale·rank + bias), V − 1)"),
    Exercise("05.1", "Recycling 40 pruned tokens with the default ratios: how many merged tokens come out?",
             "int", _s05_1, "first int(0.3·n) + 1 tokens are recycled, then int(0.1·m) + 1 clusters"),
    Exercise("05.2", "A cluster of 5 identical tokens: how many times larger is the norm of the paper's summed "
             "token than the reference's mean token? (±1e-6)", "number", _s05_2,
             "sum = size × mean", tol=1e-6),
    Exercise("07.1", "Prefill cost of one LLaVA-1.5-7B decoder layer (d = 4096, m = 11008) on n = 695 tokens, by "
             "the paper's formula, in GFLOPs (multiply-adds, ±0.5)", "number", _s07_1,
             "4·n·d² + 2·n²·d + 3·n·d·m", tol=0.5),
    Exercise("07.2", "Equivalent tokens of LLaVA-1.5-7B's 64-token preset counted at each layer's *input* "
             "(±0.01)", "number", _s07_2,
             "a pruning layer processes its input tokens; use sparsevlm.planned_tokens(..., 'input')", tol=0.01),
    Exercise("08.1", "From the 128-token defaults, which one-knob change costs the most accuracy on the 240 "
             "questions: 'no recycling', 'original positions', 'raters = last token' or 'raters = all text'?",
             "choice", _s08_1, "run ablation() with each change and compare acc_all with the defaults",
             choices=("no recycling", "original positions", "raters = last token", "raters = all text")),
    Exercise("08.2", "Raters = all text against the paper's mean rule at the 128 preset, 240 questions: is the "
             "difference significant at 95 % (paired bootstrap)? Answer 'a better' (all text), 'b better' "
             "(mean) or 'tie'.", "choice", _s08_2,
             "sparsevlm.eval.paired_bootstrap on the two per-question results",
             choices=("a better", "b better", "tie")),
    Exercise("09.1", "What FastV prune ratio does matched_baselines choose to match the toy 64 preset? (±1e-3)",
             "number", _s09_1, "sparsevlm.matched_baselines(toy.preset(64), 64, 8)['fastv']", tol=1e-3),
    Exercise("09.2", "At the 192 preset, SparseVLM against PyramidDrop on all 800 questions: 'sparsevlm', "
             "'pdrop' or 'tie' at 95 % (paired bootstrap)?", "choice", _s09_2,
             "evaluate both on the same questions, then sparsevlm.eval.paired_bootstrap",
             choices=("sparsevlm", "pdrop", "tie")),
    Exercise("10.1", "On the committed LLaVA-1.5-7B-shaped layer curve (bench.RESULTS / "
             "'layers_llava-1.5-7b-shaped-h1024_cpu.json'), a method keeps all 695 tokens in layers 0–1 and 183 "
             "(119 text + 64 visual) in layers 2–31: at best, what share of dense's layer time do its layers take? "
             "(±0.005)", "number", _s10_1,
             "read t(n) off the curve for each layer (linear between its lengths), add up, divide by 32 · t(695); "
             "bench.predicted_layers_ratio does the same", tol=0.005),
    Exercise("10.2", "Dense prefill of records[0] leaves a 0.625 MB KV cache (8 layers × 80 tokens × keys and "
             "values of width 128 in float32). How many MB does SparseVLM's toy.preset(64) leave? (±0.001)",
             "number", _s10_2,
             "each layer caches the keys and values of the tokens that reach it: 2 × tokens × 128 × 4 bytes per "
             "layer (report(model).visual_in says how many visual tokens each layer sees), or sum the cache's "
             "tensors", tol=0.001),
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
        except (TypeError, ValueError):
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
