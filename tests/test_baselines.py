"""Baselines on a hand-made attention pattern whose answer is known."""
import pytest
import torch

from helpers import N_VISUAL, batch, tiny_llava

import sparsevlm
from sparsevlm import FastVConfig, PDropConfig, RandomConfig, SparseVLMConfig, ToMeConfig, VisionZipConfig
from sparsevlm.methods import PruneInput, build
from sparsevlm.methods.tome import tome_sample
from sparsevlm.methods.visionzip import zip_sample


def planted_input():
    """sys, 5 visual tokens (positions 1-5), 2 text tokens. Every query looks for key e0, which
    only visual token 3 has; the last token looks for e1, which only visual token 5 has."""
    L, Dh = 8, 4
    k = torch.zeros(1, 1, L, Dh)
    k[0, 0, 3, 0] = 10.0
    k[0, 0, 5, 1] = 10.0
    q = torch.zeros(1, 1, L, Dh)
    q[0, 0, :, 0] = 10.0
    q[0, 0, -1] = torch.tensor([0.0, 10.0, 0, 0])
    vis = torch.zeros(1, L, dtype=torch.bool)
    vis[0, 1:6] = True
    cos, sin = torch.ones(1, L, Dh), torch.zeros(1, L, Dh)
    return PruneInput(step=0, layer=2, hidden=torch.randn(1, L, 6), valid=torch.ones(1, L, dtype=torch.bool),
                      vis_mask=vis, queries=q, keys=k, scaling=1.0, position_embeddings=(cos, sin), token_state={})


def kept_visual(decision, inp):
    return (decision.keep & inp.vis_mask)[0].nonzero().flatten().tolist()


@pytest.mark.parametrize("cfg,expected", [
    (FastVConfig(prune_ratio=0.8), [3]),  # most attention from all tokens
    (FastVConfig(prune_ratio=0.8, rater="last"), [5]),  # the last token's choice
    (PDropConfig(pruning_layers=(2,), keep_ratio=0.2), [5]),  # last instruction token
    # 2 kept. Attention received, summed over rows: token 3 ≈ 4 (rows 3-6), token 5 ≈ 1 (row 7),
    # token 1 = 1/2 + 1/3 (rows 1, 2 spread uniformly over what they see), token 2 = 1/3.
    (FastVConfig(prune_ratio=0.6), [3, 5]),
])
def test_kept_tokens_on_a_hand_made_pattern(cfg, expected):
    inp = planted_input()
    dec = build(cfg).prune(inp)
    assert kept_visual(dec, inp) == expected
    assert dec.keep[0, [0, 6, 7]].all()  # system and text tokens are never pruned


def test_random_keeps_exactly_the_budget():
    inp = planted_input()
    dec = build(RandomConfig(pruning_layers=(2,), schedule=(2,))).prune(inp)
    assert len(kept_visual(dec, inp)) == 2


@pytest.mark.parametrize("kwargs,field", [
    (dict(prune_ratio=1.0), "prune_ratio"), (dict(rater="first"), "rater"), (dict(layer=-1), "layer")])
def test_fastv_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        FastVConfig(**kwargs)


def test_pdrop_config_validation():
    with pytest.raises(ValueError, match="^keep_ratio="):
        PDropConfig(keep_ratio=0)
    with pytest.raises(ValueError, match="^pruning_layers="):
        PDropConfig(pruning_layers=(16, 8))


def test_visionzip_keeps_the_cls_favourites_and_merges_the_rest_by_key_similarity():
    # 8 tokens; [CLS] attends most to 6 and 2. Of the rest (0 1 3 4 5 7), the 2 centres are evenly
    # spaced (0 and 4); tokens 1, 3 have keys like 0's, tokens 5, 7 like 4's.
    x = torch.arange(8.0)[:, None].expand(-1, 3)
    cls = torch.tensor([0.0, 0, 5, 0, 0, 0, 9, 0])
    keys = torch.tensor([[1.0, 0]] * 4 + [[0.0, 1]] * 4)
    kept, merged, rep = zip_sample(x, cls, keys, dominant=2, contextual=2)
    assert kept.nonzero().flatten().tolist() == [2, 6]
    assert rep.tolist() == [0, 4]
    torch.testing.assert_close(merged[:, 0], torch.tensor([(0 + 1 + 3) / 3, (4 + 5 + 7) / 3]))


def test_tome_merges_the_most_similar_pairs_first():
    # Keys: 0~1 and 2~3 identical pairs, 4 and 5 orthogonal to everything. Set A = 0 2 4, B = 1 3 5:
    # the two best A->B matches are 0->1 and 2->3, so 4 tokens remain: {0,1}, {2,3}, 4, 5.
    x = torch.tensor([[1.0], [3.0], [10.0], [20.0], [7.0], [8.0]])
    keys = torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    kept, merged, rep = tome_sample(x, keys, keep=4)
    assert kept.nonzero().flatten().tolist() == [4, 5]
    assert rep.tolist() == [1, 3]  # each merged pair sits at its B token
    torch.testing.assert_close(merged, torch.tensor([[2.0], [15.0]]))
    _, merged2, _ = tome_sample(x, keys, keep=1)  # repeated until one is left: the size-weighted mean
    torch.testing.assert_close(merged2, x.mean(0, keepdim=True))


def test_vision_signals_equal_the_towers_own_attention():
    from sparsevlm.models.llava import vision_attention, vision_signals
    model = tiny_llava("llama", "eager")
    pixels = batch([3])["pixel_values"]
    attn = vision_attention(model)
    captured = {}
    hooks = [p.register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o))
             for n, p in (("q", attn.q_proj), ("k", attn.k_proj))]
    with torch.no_grad():
        out = model.model.vision_tower(pixel_values=pixels, output_attentions=True)
    for h in hooks:
        h.remove()
    cls, keys = vision_signals(attn, captured, "default")
    torch.testing.assert_close(cls, out.attentions[-1].mean(1)[:, 0, 1:], atol=1e-6, rtol=0)
    assert keys.shape == (1, N_VISUAL, model.config.vision_config.hidden_size)


ALL_METHODS = [SparseVLMConfig.preset(128, pruning_layers=(1, 2, 4)), RandomConfig(pruning_layers=(1, 3), schedule=(30, 10)),
               FastVConfig(layer=1, prune_ratio=0.7), PDropConfig(pruning_layers=(1, 3), keep_ratio=0.5),
               VisionZipConfig(dominant=12, contextual=4), ToMeConfig(keep=20),
               sparsevlm.DARTConfig(pruning_layers=(1,), pivot_image=2, pivot_text=2), sparsevlm.DivPruneConfig(keep=20),
               sparsevlm.VisPrunerConfig(keep=20), sparsevlm.CDPrunerConfig(keep=20), sparsevlm.PoolingConfig(tokens=20)]


@pytest.mark.parametrize("cfg", ALL_METHODS, ids=lambda c: type(c).__name__)
def test_planned_counts_are_what_the_model_reports(cfg):
    model = tiny_llava("llama", "sdpa")
    with sparsevlm.sparsified(model, cfg), torch.no_grad():
        model(**batch([5, 7]))
        rep = sparsevlm.report(model)
    ins, outs = sparsevlm.planned_counts(cfg, N_VISUAL, 6)
    assert rep.visual_in.tolist() == [ins, ins] and rep.visual_out.tolist() == [outs, outs]


@pytest.mark.parametrize("cfg", ALL_METHODS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("counting", ["output", "input"])
def test_match_budget_finds_each_methods_knob(cfg, counting):
    for target in (24, 32, 40):
        matched = sparsevlm.match_budget(cfg, target, N_VISUAL, 6, counting)
        assert type(matched) is type(cfg)
        assert abs(sparsevlm.planned_tokens(matched, N_VISUAL, 6, counting) - target) <= 1, (matched, target)


def test_match_budget_refuses_what_a_method_cannot_reach():
    # FastV after layer 3 of 6 processes all 64 tokens in layers 0-3: at least 32 equivalent tokens.
    with pytest.raises(ValueError, match=r"^tokens=8 is out of reach for FastVConfig .* reaches 3[23]\.\d\.\.64\.0"):
        sparsevlm.match_budget(FastVConfig(layer=3), 8, N_VISUAL, 6)
    with pytest.raises(ValueError, match="^tokens=100 is out of reach"):
        sparsevlm.match_budget(ToMeConfig(), 100, N_VISUAL, 6)
    with pytest.raises(ValueError, match="mode='rank'"):
        sparsevlm.match_budget(SparseVLMConfig(), 16, N_VISUAL, 32)
    with pytest.raises(ValueError, match="^counting="):
        sparsevlm.planned_tokens(ToMeConfig(), N_VISUAL, 6, counting="both")


@pytest.mark.parametrize("cls,kwargs,field", [
    (VisionZipConfig, dict(dominant=-1), "dominant"), (VisionZipConfig, dict(dominant=0, contextual=0), "dominant"),
    (VisionZipConfig, dict(contextual=2.5), "contextual"), (ToMeConfig, dict(keep=0), "keep"),
    (ToMeConfig, dict(positions="none"), "positions")])
def test_pre_llm_config_validation(cls, kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        cls(**kwargs)


def test_every_method_is_registered_once_and_the_command_line_offers_it():
    """`methods.ALL` is the one list: each class names its config, each exported config has its
    method, and `sparsevlm eval --method` / `sparsevlm bench --methods` offer exactly those names."""
    import argparse

    from sparsevlm import bench
    from sparsevlm.cli import METHOD_NAMES
    from sparsevlm.methods import ALL, BASELINES, METHODS

    names = [m.name for m in ALL]
    assert len(set(names)) == len(names) and names[0] == "sparsevlm" and tuple(names[1:]) == BASELINES
    assert all(METHODS[m.config] is m for m in ALL) and len(METHODS) == len(ALL)
    exported = {getattr(sparsevlm, n) for n in sparsevlm.__all__ if n.endswith("Config")}
    assert exported == set(METHODS)
    # one file per baseline, its config beside its decision (SparseVLM's config is `sparsevlm.config`)
    files = [m.__module__ for m in ALL[1:]]
    assert len(set(files)) == len(files) and all(m.config.__module__ == m.__module__ for m in ALL[1:])
    assert METHOD_NAMES == ("dense", *names)
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    assert next(a for a in p._actions if a.dest == "methods").choices == names


@pytest.mark.parametrize("budget", [192, 64])
def test_matched_baselines_sit_beside_the_schedule_at_its_budget(budget):
    """On LLaVA-1.5's shape: every baseline at the SparseVLM preset's equivalent tokens (within one;
    pooling: its nearest grid), at its positions — except random tokens, on the same layers and
    schedule (without the recycled tokens); FastV after its first pruning layer, PyramidDrop at its layers."""
    from dataclasses import replace

    from sparsevlm.methods import BASELINES, IMAGE_BASELINES, matched_baselines, planned_tokens

    cfg = SparseVLMConfig.preset(budget, positions="original", pruning_layers=(4, 9, 18))  # not the defaults
    target = planned_tokens(cfg, 576, 32)
    assert tuple(sparsevlm.matched_baselines(cfg, 576, 32)) == IMAGE_BASELINES  # (the video methods: video=True)
    got = sparsevlm.matched_baselines(cfg, 576, 32, video=True)
    assert tuple(got) == BASELINES
    for name, c in got.items():
        assert c.positions == "original"
        if name != "random":
            assert abs(planned_tokens(c, 576, 32) - target) <= (8 if name == "pooling" else 1), name
    assert planned_tokens(got["random"], 576, 32) == planned_tokens(replace(cfg, recycle=False), 576, 32) < target
    assert (got["random"].pruning_layers, got["random"].schedule) == (cfg.pruning_layers, cfg.schedule)
    assert got["fastv"].layer == cfg.pruning_layers[0] and got["pdrop"].pruning_layers == cfg.pruning_layers
    assert list(matched_baselines(cfg, 576, 32, methods=["tome", "fastv"])) == ["fastv", "tome"]
    with pytest.raises(ValueError, match=r"methods=\['magic'\]: unknown baselines; allowed: random, fastv"):
        matched_baselines(cfg, 576, 32, methods=["magic"])


def test_every_baseline_is_matched_where_the_visual_tokens_are_no_grid():
    """A Video-LLaVA video is 8 × 257 = 2,056 tokens, a count with no h × w grid: every baseline is
    still matched (pooling to its nearest grid; it once tried keep-all as a grid and failed)."""
    cfg = SparseVLMConfig.preset(128)
    from sparsevlm.methods import BASELINES

    got = sparsevlm.matched_baselines(cfg, 2056, 32, video=True)
    assert tuple(got) == BASELINES
    assert abs(sparsevlm.planned_tokens(got["pooling"], 2056, 32) - sparsevlm.planned_tokens(cfg, 2056, 32)) <= 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_method_runs_in_half_precision_with_its_planned_counts(dtype):
    """What a GPU user runs (`--dtype bfloat16`): the embedded model in half precision, a padded batch,
    every method at the 64 preset and SparseVLM's rank mode — finite logits in the model's dtype, a
    generate call, and the planned methods keep exactly their planned counts. (SparseVLM scores and
    clusters in float32 whatever the model's dtype; merged tokens go back in the model's.)"""
    from sparsevlm import toy
    from sparsevlm.bench import methods_for, rank_config

    model, processor = toy.load(dtype=dtype)
    recs = toy.eval_split(limit=3)
    x = processor(images=[r["image"] for r in recs], text=[r["prompt"] for r in recs], return_tensors="pt", padding=True)
    x["pixel_values"] = x["pixel_values"].to(dtype)
    rows = {n: c for n, c in methods_for(model, (64,)).items() if c is not None} | {"rank": rank_config(model)}
    assert len(rows) == 12
    for name, cfg in rows.items():
        with sparsevlm.sparsified(model, cfg):
            logits = model(**x).logits
            rep = sparsevlm.report(model)
            assert model.generate(**x, max_new_tokens=2, min_new_tokens=2, do_sample=False).shape[1] == x["input_ids"].shape[1] + 2
        assert logits.dtype == dtype and logits.isfinite().all(), name
        if name != "rank":
            _, planned = sparsevlm.planned_counts(cfg, 64, 8)
            assert (rep.visual_out == torch.tensor(planned)).all(), name
