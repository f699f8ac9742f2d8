"""DART, DivPrune, VisPruner, CDPruner and pooling (issue #18): each selection rule on a hand-made
input whose answer follows from the paper's definition, then behind `sparsify` like every method,
and the paper defaults' layers scaled to the model's depth."""
import itertools
import math

import pytest
import torch

import sparsevlm
from helpers import N_VISUAL, batch, tiny_llava
from sparsevlm import CDPrunerConfig, DARTConfig, DivPruneConfig, PDropConfig, PoolingConfig, VisPrunerConfig
from sparsevlm.methods import build
from sparsevlm.methods.before_llm import cosine
from sparsevlm.methods.cdpruner import conditional_kernel, dpp_greedy_map
from sparsevlm.methods.dart import dart_select
from sparsevlm.methods.divprune import divprune_select
from sparsevlm.methods.pooling import pool_sample
from sparsevlm.methods.vispruner import vispruner_select

torch.set_grad_enabled(False)


def unit(*degrees):
    """Unit vectors in the plane at the given angles."""
    rad = torch.tensor(degrees, dtype=torch.float) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], -1)


def test_divprune_is_the_greedy_max_min_set():
    # 0° and 10° are near-duplicates. Nearest-other distances (1 − cos): 0.015, 0.015, 0.826, 1, 1:
    # first 180° (index 3; ties with 270° go to the lower index), then 0° (distance 2 from it),
    # then 90° (min distance 1, tied with 270°, lower index) — never 10°, a duplicate of 0°.
    x = unit(0, 10, 90, 180, 270)
    assert divprune_select(x, 3).nonzero().flatten().tolist() == [0, 2, 3]
    assert divprune_select(x, 4).nonzero().flatten().tolist() == [0, 2, 3, 4]
    assert divprune_select(x, 99).all()


def _det(L, S):
    return torch.det(L[list(S)][:, list(S)].double())


def test_dpp_greedy_map_takes_the_largest_determinant_gain_and_finds_the_map_when_enumerable():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(7, 4, generator=g)
    L = feats @ feats.T + 0.1 * torch.eye(7)
    for k in range(1, 5):  # each greedy step adds the item maximising det(L_S) (checked by enumeration)
        kept = dpp_greedy_map(L, k)
        prev = dpp_greedy_map(L, k - 1) if k > 1 else torch.zeros(7, dtype=torch.bool)
        S = prev.nonzero().flatten().tolist()
        best = max((i for i in range(7) if i not in S), key=lambda i: _det(L, S + [i]).item())
        assert kept.nonzero().flatten().tolist() == sorted(S + [best])
    # Three clusters (directions e1, e2, e3, two near-copies each) with a best item in each
    # (quality q): the enumerated MAP of size 3 takes the best of every cluster, and so does greedy.
    e = torch.eye(3)
    x = torch.stack([e[0], e[0] + 0.1 * e[1], e[1], e[1] + 0.1 * e[2], e[2], e[2] + 0.1 * e[0]])
    q = torch.tensor([2.0, 1.0, 1.0, 1.5, 1.2, 1.0])
    K = q[:, None] * cosine(x, x) * q[None, :]
    best = max(itertools.combinations(range(6), 3), key=lambda S: _det(K, list(S)).item())
    assert dpp_greedy_map(K, 3).nonzero().flatten().tolist() == list(best) == [0, 3, 4]


def test_conditional_kernel_weights_similarity_by_relevance_to_the_instruction():
    x, text = unit(0, 90, 45), unit(0)
    r = torch.tensor([1.0, 0.0, math.cos(math.pi / 4)])  # cosine to the instruction, min–max normalised
    r = (r - r.min()) / (r.max() - r.min() + 1e-6)
    for theta in (0.5, 0.8, 1.0):
        q = r if theta == 1 else torch.exp(theta / (2 * (1 - theta)) * r)
        torch.testing.assert_close(conditional_kernel(x, text, theta), q[:, None] * (x @ x.T) * q[None, :])
    # Relevance decides between two equally diverse candidates: the one nearer the instruction.
    pair = unit(0, 180)  # opposite, so either is as diverse; the instruction points at 180°
    assert dpp_greedy_map(conditional_kernel(pair, unit(180), 0.5), 1).tolist() == [False, True]


def test_vispruner_keeps_cls_favourites_then_removes_duplicates():
    # keep 4, half important: tokens 0 and 1 ([CLS] attention .9, .8). The rest in attention order
    # [2, 3, 4, 5] splits into A = [2, 4], B = [3, 5]; 2 duplicates 3, 4 is near 5; r = 2 drops both A tokens.
    x = torch.cat([unit(10, 20), unit(30, 30, 100, 95)])
    cls = torch.tensor([0.9, 0.8, 0.5, 0.4, 0.3, 0.2])
    assert vispruner_select(x, cls, 4, 0.5).nonzero().flatten().tolist() == [0, 1, 3, 5]
    # keep 5: r = 1 drops only the A token most similar to B (2, an exact duplicate of 3).
    assert vispruner_select(x, cls, 5, 0.4).nonzero().flatten().tolist() == [0, 1, 3, 4, 5]
    assert vispruner_select(x, cls, 2, 1.0).nonzero().flatten().tolist() == [0, 1]


def test_pooling_is_the_exact_average_of_each_window():
    grid = torch.arange(16, dtype=torch.float).reshape(16, 1).repeat(1, 3)  # a 4 × 4 grid, row-major
    pooled, centre = pool_sample(grid, 2, 2)
    want = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]], dtype=torch.float).mean(-1)
    torch.testing.assert_close(pooled[:, 0], want)
    assert centre.tolist() == [0, 2, 8, 10]
    with pytest.raises(ValueError, match="not a square grid"):
        pool_sample(torch.zeros(12, 3), 2, 2)


def test_dart_keeps_pivots_and_what_is_least_like_them():
    # Visual tokens 0..5, text 6, 7 after the image. Pivots: visual 0 and text 7 (largest key norms).
    # Per pivot int(6 · 0.5 / 2) = 1 pick: pivot 0 ([1, 0]) takes 3 ([-1, 0], least similar); pivot 7
    # ([0, -1]) takes 2 ([0, 1]) of the rest. Token 1 duplicates pivot 0 and goes.
    hidden = torch.tensor([[1, 0], [1, 0], [0, 1], [-1, 0], [.7, .7], [1, .1], [0, 0], [0, -1]], dtype=torch.float)
    norm = torch.tensor([9, 1, 1, 1, 1, 1, 2, 5], dtype=torch.float)
    v_idx, t_idx = torch.arange(6)[None], torch.tensor([[6, 7]])
    cfg = DARTConfig(reduction_ratio=0.5, pivot_image=1, pivot_text=1)
    kept = dart_select(hidden[None], norm[None], v_idx, torch.ones(1, 6, dtype=torch.bool), t_idx,
                       torch.ones(1, 2, dtype=torch.bool), cfg)
    assert kept[0].nonzero().flatten().tolist() == [0, 2, 3]
    assert build(cfg).counts_after(0, torch.tensor([6])).tolist() == [3]


NEW = [DARTConfig(pruning_layers=(1,), reduction_ratio=0.7, pivot_image=2, pivot_text=2), DivPruneConfig(keep=20),
       VisPrunerConfig(keep=20), CDPrunerConfig(keep=20), PoolingConfig(tokens=16)]
NEW_IDS = ["dart", "divprune", "vispruner", "cdpruner", "pooling"]


@pytest.mark.parametrize("cfg", NEW, ids=NEW_IDS)
def test_behind_sparsify_batched_equals_alone_and_counts_are_planned(cfg):
    model = tiny_llava("qwen2")
    inputs = batch([5, 12, 3])
    with sparsevlm.sparsified(model, cfg):
        out = model(**inputs).logits
        rep = sparsevlm.report(model)
        for b in range(3):
            alone = {k: v[b:b + 1] for k, v in inputs.items()}
            n_pad = int((alone["attention_mask"] == 0).sum())
            alone = {k: (v[:, n_pad:] if v.dim() == 2 else v) for k, v in alone.items()}
            torch.testing.assert_close(model(**alone).logits[0, -1], out[b, -1], atol=1e-4, rtol=1e-4)
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    ins, outs = sparsevlm.planned_counts(cfg, N_VISUAL, 6)
    assert rep.visual_out.tolist() == [outs] * 3 and not rep.dense


@pytest.mark.parametrize("cfg", NEW, ids=NEW_IDS)
def test_match_budget_drives_each_knob(cfg):
    for target in (16, 25, 36):
        matched = sparsevlm.match_budget(cfg, target, N_VISUAL, 6)
        assert abs(sparsevlm.planned_tokens(matched, N_VISUAL, 6) - target) <= 1, (matched, target)


@pytest.mark.parametrize("cls,kwargs,field", [
    (DARTConfig, dict(reduction_ratio=1.0), "reduction_ratio"), (DARTConfig, dict(pruning_layers=(1, 2)), "pruning_layers"),
    (DARTConfig, dict(pivot_image=0, pivot_text=0), "pivot_image"), (DivPruneConfig, dict(keep=0), "keep"),
    (VisPrunerConfig, dict(important_ratio=1.5), "important_ratio"), (CDPrunerConfig, dict(theta=0), "theta"),
    (PoolingConfig, dict(tokens=7), "tokens"), (PoolingConfig, dict(positions="none"), "positions")])
def test_config_validation(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_paper_default_layers_follow_the_models_depth():
    assert build(PDropConfig()).pruning_layers == (8, 16, 24)
    assert build(PDropConfig(), 24).pruning_layers == (6, 12, 18)
    assert build(PDropConfig(), 28).pruning_layers == (7, 14, 21)
    assert build(sparsevlm.FastVConfig(), 24).pruning_layers == (2,)
    assert build(PDropConfig(pruning_layers=(1, 3)), 24).pruning_layers == (1, 3)  # named layers stay
    cfg = sparsevlm.match_budget(PDropConfig(), 64, n_visual=144, num_layers=24)  # failed before (#18)
    assert abs(sparsevlm.planned_tokens(cfg, 144, 24) - 64) <= 1
    model = tiny_llava("llama")  # 6 layers: 8/16/24 of 32 -> 2/3/5
    with sparsevlm.sparsified(model, PDropConfig()):
        model(**batch([4]))
        assert [s["layer"] for s in sparsevlm.report(model).steps] == [2, 3, 5]


def test_dpp_greedy_map_keeps_exactly_k_past_the_kernels_rank():
    """144 items of width 16 (rank 16), and 20 copies of 5 items: past the rank no item has a gain;
    the count is still min(k, n), and the first picks are the plain greedy's (#32.7)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(144, 16, generator=g)
    for k in (10, 16, 64, 144, 200):
        assert int(dpp_greedy_map(x @ x.T, k).sum()) == min(k, 144)
    assert dpp_greedy_map(x @ x.T, 16)[dpp_greedy_map(x @ x.T, 10)].all()  # greedy: earlier picks stay
    rep = torch.cat([x[:5]] * 20)
    assert int(dpp_greedy_map(rep @ rep.T, 12).sum()) == 12
