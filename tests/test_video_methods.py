"""The video methods (DyCoke, FastVID, VidCom2, HoliTom). Each rule on a hand-made input whose answer
follows from its paper's definition; on tiny video models of three families, keep-all equals dense,
the report equals the plan, a left-padded batch of different videos equals each sample alone, and an
image alone (no frames) is refused."""
from dataclasses import replace

import pytest
import torch
from helpers import assert_batched_equals_alone
from test_families import image_batch, video_batch
from test_qwen_vl import batch as qwen_batch

import sparsevlm
from sparsevlm.methods import DyCokeConfig, FastVIDConfig, HoliTomConfig, PruneInput, VidCom2Config, build
from sparsevlm.methods.dycoke import dycoke_ttm, ttm_references
from sparsevlm.methods.fastvid import anchor_frames, anchor_merge, fastvid_reduce, fastvid_salience, fastvid_segments
from sparsevlm.methods.holitom import cluster_merge, holitom_reduce, holitom_segments, inner_merge, spatial_shares
from sparsevlm.methods.vidcom2 import frame_budgets, vidcom2_select
from sparsevlm.methods.video import allocate, density_peaks
from sparsevlm.toy.families import tiny_vlm

torch.set_grad_enabled(False)


# ---------------------------------------------------------------- the rules, by hand

def test_dycoke_pairs_the_frames_of_each_window_as_its_code_does():
    assert ttm_references(8) == [None, 0, 0, 2, None, 4, 4, 6]


def test_dycoke_drops_a_token_equal_to_its_counterpart_in_its_reference_frame():
    f = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(0))  # 4 frames of 3 tokens
    f[1, 0] = f[0, 0]  # frame 1 is compared with frame 0
    f[2, 1] = f[0, 1]  # frame 2 with frame 0
    f[3, 2] = f[2, 2]  # frame 3 with frame 2,
    f[3, 0] = f[0, 0]  # so repeating frame 0 is no redundancy there
    x = f.flatten(0, 1)
    assert (~dycoke_ttm(x, [3] * 4, keep=9)).nonzero().flatten().tolist() == [3, 7, 11]
    kept = dycoke_ttm(x, [3] * 4, keep=3)  # all TTM can drop: the window's first frame stays whole
    assert kept.nonzero().flatten().tolist() == [0, 1, 2]


def test_vidcom2_gives_the_frame_most_unlike_the_video_the_larger_budget():
    e = torch.eye(8)
    noise = 0.01 * torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    x = torch.cat([e[0].expand(8, 8), -e[0].expand(4, 8)]) + noise  # frames 0, 1 alike; frame 2 the opposite
    budgets = frame_budgets(x, [4, 4, 4], keep=6)  # weights 1 + p − 1/3, p ≈ (0, 0, 1): shares 4/3, 4/3, 10/3
    assert sum(budgets) == 6 and budgets[2] in (3, 4) and budgets[2] > max(budgets[:2])


def test_vidcom2_keeps_a_frames_most_distinctive_token():
    x = torch.cat([torch.eye(4)[0].expand(3, 4), torch.eye(4)[1:2], torch.eye(4)[2].expand(4, 4)])
    kept = vidcom2_select(x, [4, 4], [1, 0])  # frame 0: three alike and one apart
    assert kept.nonzero().flatten().tolist() == [3]


def test_fastvid_cuts_segments_where_consecutive_frames_differ():
    e = torch.eye(4)
    glob = torch.stack([e[0], e[0] + 0.1 * e[1], e[0], e[2], e[2] + 0.05 * e[3], e[2]])  # the scene changes at 3
    assert fastvid_segments(glob, segments=1, threshold=0.9) == [3, 3]  # below the threshold
    assert fastvid_segments(glob, segments=2, threshold=-1) == [3, 3]  # the lowest similarity
    assert fastvid_segments(glob, segments=3, threshold=-1) == [1, 2, 3]  # then the next lowest (the first of a tie)


def test_density_peaks_are_the_centres_of_dense_groups():
    x = torch.tensor([[0.0, 0], [0.1, 0], [-0.1, 0], [0, 0.1], [5, 5], [5.1, 5], [4.9, 5]])
    assert density_peaks(x, 2, knn=3).tolist() == [0, 4]


def test_fastvid_anchors_absorb_their_group_with_weight_beta():
    x = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1]])
    merged, group = anchor_merge(x, torch.tensor([0, 2]), beta=0.6)
    assert group.tolist() == [0, 0, 1]
    torch.testing.assert_close(merged[0], 0.6 * x[0] + 0.4 * x[:2].mean(0))
    torch.testing.assert_close(merged[1], x[2])  # alone: w = max(1/2, 0.6) of itself and its own mean


def fastvid_scene(frames: int, noise: float = 1e-4) -> torch.Tensor:
    """Frames of 6 tokens: 4 background tokens (e0 with a small distinct tilt) and 2 objects (e4, e5),
    the same in every frame up to `noise`. Shapes: -> (6 · frames, 8)."""
    e = torch.eye(8)
    frame = torch.stack([e[0] + 0.1 * e[1], e[0] + 0.1 * e[2], e[0] + 0.1 * e[3], e[0] - 0.1 * e[1], e[4], e[5]])
    return (frame + noise * torch.randn(frames, 6, 8, generator=torch.Generator().manual_seed(3))).flatten(0, 1)


def test_fastvid_salience_ranks_the_objects_before_the_background():
    frame = fastvid_scene(1)
    assert fastvid_salience(frame).topk(2).indices.sort().values.tolist() == [4, 5]
    assert (frame @ frame.mean(0)).topk(2).indices.max() < 4  # the mean's dot product would keep background


def test_fastvid_anchor_frames_count_back_from_a_segments_last_frame():
    assert anchor_frames(4, 4) == [3] and anchor_frames(1, 4) == [0]
    assert anchor_frames(5, 4) == [0, 4] and anchor_frames(9, 4) == [0, 4, 8]
    assert anchor_frames(3, 1) == [0, 1, 2]


def test_fastvid_anchors_come_from_the_anchor_frame_and_group_the_whole_segment():
    """One segment of 4 frames, 3 of 6 tokens each: 2 salient (the objects) stay; the segment's 4
    anchors are the last frame's 4 background tokens, each grouping its place in all 4 frames."""
    x = fastvid_scene(4)
    cfg = FastVIDConfig(segments=1, threshold=-1, context=0.5)  # 3 per frame: ⌊1.5⌋ = 1 anchor, 2 salient
    kept, merged, rep = fastvid_reduce(x, [6] * 4, keep=12, cfg=cfg)
    assert kept.nonzero().flatten().tolist() == [4, 5, 10, 11, 16, 17, 22, 23]
    assert rep.tolist() == [18, 19, 20, 21]
    for j in range(4):  # w = max(1 / (4 + 1), 0.6)
        torch.testing.assert_close(merged[j], 0.6 * x[18 + j] + 0.4 * x[j::6][:4].mean(0))
    kept, merged, rep = fastvid_reduce(x, [6] * 4, keep=16, cfg=replace(cfg, anchor_every=2))  # 4 each: 2 anchors
    assert rep.tolist() == [6, 7, 8, 9, 18, 19, 20, 21]  # frames 1 and 3 hold 4 anchors each
    torch.testing.assert_close(merged[0], 0.6 * x[6] + 0.4 * x[0::6][:4].mean(0))  # each groups the whole pool


def test_fastvid_meets_the_budget_when_the_anchor_frame_cannot_hold_the_anchors():
    x = fastvid_scene(4)
    cfg = FastVIDConfig(segments=1, threshold=-1, context=1.0)  # no salient tokens; 12 anchors, 6 in frame 3
    kept, merged, rep = fastvid_reduce(x, [6] * 4, keep=12, cfg=cfg)
    assert int(kept.sum()) + len(merged) == 12
    assert set(range(18, 24)) <= set(rep.tolist()) | set(kept.nonzero().flatten().tolist())


def test_holitom_segments_maximise_the_tokens_merged_away():
    static = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 1, 0]]).bool()  # 4 frames, 3 places
    assert holitom_segments(static) == [(0, 1), (2, 3)]  # 3 + 2 tokens
    assert holitom_segments(torch.tensor([[1, 1, 0], [1, 1, 0]]).bool()) == [(0, 2)]  # 2 · 2 > 2
    assert holitom_segments(torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()) == [(0, 1), (2, 2)]  # 3 > 2 · 1
    assert holitom_segments(torch.tensor([[1, 1, 0], [1, 1, 0]]).bool(), max_window=2) == [(0, 1), (2, 2)]


def test_holitom_merges_a_static_token_into_its_segments_first_frame():
    f = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(2))
    f[1, 0] = f[2, 0] = f[0, 0]  # place 0 never changes
    x, cfg = f.flatten(0, 1), HoliTomConfig(threshold=0.8)
    kept, merged, rep = holitom_reduce(x, [2, 2, 2], keep=4, cfg=cfg)
    assert kept.tolist() == [False, True, False, True, False, True] and rep.tolist() == [0]
    torch.testing.assert_close(merged[0], x[0])
    kept, merged, rep = holitom_reduce(x, [2, 2, 2], keep=5, cfg=cfg)  # one token to go: two frames merge
    assert kept.tolist() == [False, True, False, True, True, True] and rep.tolist() == [0]


def holitom_scene() -> torch.Tensor:
    """3 frames of 4 tokens: places 0-2 a static background (e0 with distinct tilts), place 3 an
    object that changes every frame (e4, e5, e6). Shapes: -> (12, 8)."""
    e = torch.eye(8)
    background = [e[0] + 0.1 * e[1], e[0] + 0.1 * e[2], e[0] + 0.3 * e[3]]
    return torch.stack([v for f in range(3) for v in [*background, e[4 + f]]])


def test_holitom_density_peaks_merge_with_weight_beta():
    """The code merges a cluster as β · its peak + (1 − β) · the mean of the tokens that joined it."""
    c, a, b = torch.tensor([1.0, 0]), torch.tensor([0.0, 1]), torch.tensor([0.0, 3])
    torch.testing.assert_close(cluster_merge(c, [a, b], 0.6), torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(cluster_merge(c, [], 0.6), c)
    x = holitom_scene()
    kept, merged, rep = holitom_reduce(x, [4, 4, 4], keep=4, cfg=HoliTomConfig(beta=0.6))
    assert len(rep) == 1 and int(rep) in (0, 1, 2)  # the background's 3 static places form one cluster
    others = [j for j in range(3) if j != int(rep)]
    torch.testing.assert_close(merged[0], 0.6 * x[int(rep)] + 0.4 * x[others].mean(0))


def test_holitom_keeps_every_frames_changing_tokens_as_the_codes_ceil_does():
    """The static background (3 places, one segment) and one changing token per frame, 4 to keep:
    shares by size alone would give frame 2's object nothing; the code's ceil keeps one per frame."""
    assert allocate(4, [3, 1, 1, 1], [3, 1, 1, 1]) == [2, 1, 1, 0]
    assert spatial_shares(4, [3, 1, 1, 1], [False, True, True, True]) == [1, 1, 1, 1]
    assert spatial_shares(2, [3, 1, 1, 1], [False, True, True, True]) == [1, 1, 0, 0]  # too tight: by size
    kept, merged, rep = holitom_reduce(holitom_scene(), [4, 4, 4], keep=4, cfg=HoliTomConfig())
    assert kept.nonzero().flatten().tolist() == [3, 7, 11]


def test_holitom_keeps_a_frames_dominant_changing_tokens_and_drops_the_rest():
    """2 frames in which every place changes: each keeps one token. The code's default (D = 0) keeps
    the dominant one, here the object that its frame's mean describes worst, and merges nothing."""
    e = torch.eye(8)
    x = torch.stack([e[0] + 0.1 * e[1], e[0] + 0.1 * e[2], e[0] + 0.1 * e[3], e[4],
                     e[5] + 0.1 * e[1], e[5] + 0.1 * e[2], e[5] + 0.1 * e[3], e[6]])
    kept, merged, rep = holitom_reduce(x, [4, 4], keep=2, cfg=HoliTomConfig())
    assert kept.nonzero().flatten().tolist() == [3, 7] and len(merged) == 0
    kept, merged, rep = holitom_reduce(x, [4, 4], keep=2, cfg=HoliTomConfig(contextual=1.0))  # D = 1: DPC-kNN
    assert not kept.any() and 3 not in rep.tolist() and 7 not in rep.tolist()


def test_holitom_inner_merging_averages_pairwise_into_the_kept_token_most_like_it():
    """sys, 5 visual tokens (1-5), 2 text tokens. The last token attends to tokens 1 and 4 only: they
    stay. Token 2 is most like 1, tokens 3 and 5 most like 4; merging in order: 4 takes 3, then 5."""
    L, e = 8, torch.eye(4)
    q, k = torch.zeros(1, 1, L, 4), torch.zeros(1, 1, L, 4)
    q[0, 0, -1] = e[0] + e[1]
    k[0, 0, 1], k[0, 0, 4] = 5 * e[0], 5 * e[1]
    h = torch.zeros(1, L, 4)
    h[0, 1:6] = torch.stack([e[0], e[0] + 0.1 * e[2], e[1] + 0.1 * e[2], e[1], e[1] + 0.2 * e[3]])
    vis = (torch.arange(L) >= 1) & (torch.arange(L) <= 5)
    inp = PruneInput(step=1, layer=1, hidden=h, valid=torch.ones(1, L, dtype=torch.bool), vis_mask=vis[None],
                     queries=q, keys=k, scaling=1.0, position_embeddings=(), token_state={})
    dec = inner_merge(inp, torch.tensor([2]))
    assert dec.keep[0].tolist() == [True] + [False] * 5 + [True, True]
    assert dec.inserted_from[0].tolist() == [1, 4] and dec.inserted_valid.all()
    torch.testing.assert_close(dec.inserted[0, 0], (h[0, 1] + h[0, 2]) / 2)
    torch.testing.assert_close(dec.inserted[0, 1], ((h[0, 4] + h[0, 3]) / 2 + h[0, 5]) / 2)


def test_allocate_shares_in_proportion_under_caps():
    assert allocate(6, [1, 1, 4], [4, 4, 2]) == [2, 2, 2]  # the capped frame's surplus is shared again
    assert allocate(7, [1, 1, 1], [4, 4, 4]) == [3, 2, 2]  # largest remainders, ties to the first
    assert allocate(20, [1, 1], [3, 4]) == [3, 4]


@pytest.mark.parametrize("cls", [DyCokeConfig, FastVIDConfig, VidCom2Config, HoliTomConfig])
def test_a_bad_budget_is_refused(cls):
    for retention in (0, 1.5, True):
        with pytest.raises(ValueError, match="^retention="):
            cls(retention=retention)


# ---------------------------------------------------------------- budgets

@pytest.mark.parametrize("cfg", [DyCokeConfig(), FastVIDConfig(), VidCom2Config(), HoliTomConfig(inner_ratio=0.5)],
                         ids=lambda c: type(c).__name__)
def test_match_budget_sets_retention(cfg):
    for target in (10, 20, 30):
        matched = sparsevlm.match_budget(cfg, target, 68, 4)
        assert abs(sparsevlm.planned_tokens(matched, 68, 4) - target) <= 1


def test_images_alone_have_no_frames():
    method = build(DyCokeConfig())
    assert method.dense_reason({"visual": [17, 0, 20], "spans": [4, 1, 1]}) == (
        "DyCoke reduces video frames; sample(s) [2] hold one visual span (an image), no frames to compare")
    assert method.dense_reason({"visual": [17], "spans": [4]}) is None
    vis = torch.zeros(1, 8, dtype=torch.bool)
    vis[0, 1:6] = True  # one run of visual tokens: one image
    inp = PruneInput(step=0, layer=-1, hidden=torch.randn(1, 8, 4), valid=torch.ones(1, 8, dtype=torch.bool),
                     vis_mask=vis, queries=None, keys=None, scaling=None, position_embeddings=(), token_state={})
    with pytest.raises(ValueError, match=r"^DyCoke reduces video frames; sample\(s\) \[0\] hold one visual span"):
        build(DyCokeConfig(retention=0.5)).prune(inp)


# ---------------------------------------------------------------- on tiny video models

ORIGINAL = dict(positions="original")
RULES = {"dycoke": DyCokeConfig(retention=0.5), "fastvid": FastVIDConfig(retention=0.4, segments=2),
         "vidcom2": VidCom2Config(retention=0.3), "holitom": HoliTomConfig(retention=0.4, threshold=0.0),
         "holitom-inner": HoliTomConfig(retention=0.5, threshold=0.0, inner_ratio=0.5, inner_layer=1)}


@pytest.fixture(scope="module")
def models():
    return {name: tiny_vlm(name) for name in ("onevision", "video-llava", "qwen2-vl")}


def videos(models, family, seed):
    """A left-padded batch of two videos and each alone; Qwen2-VL's are 4 and 6 frames long."""
    if family == "qwen2-vl":
        return qwen_batch([(2, 8, 8), (3, 8, 8)], [6, 3], video=True, seed=seed)
    full, alone, _ = video_batch(models[family], [6, 3], seed=seed)
    return full, alone


def placed(cfg, family, **changes):
    """`cfg` for `family` (Qwen2-VL's M-RoPE keeps original positions), with `changes`."""
    return replace(cfg, **(ORIGINAL if family == "qwen2-vl" else {}), **changes)


@pytest.mark.parametrize("family", ["onevision", "video-llava", "qwen2-vl"])
def test_keep_all_equals_dense(models, family):
    model = models[family]
    inputs, _ = videos(models, family, seed=0)
    dense = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    for cfg in RULES.values():
        inner = {"inner_ratio": 0.0} if isinstance(cfg, HoliTomConfig) else {}
        keep_all = placed(cfg, family, retention=1.0, **inner)
        with sparsevlm.sparsified(model, keep_all):
            torch.testing.assert_close(model(**inputs).logits[valid], dense[valid], atol=1e-5, rtol=1e-5)
            rep = sparsevlm.report(model)
        assert not rep.dense and (rep.visual_out == rep.n_visual[:, None]).all()


CASES = [(f, r) for f in ("video-llava", "qwen2-vl") for r in RULES] + [("onevision", r) for r in ("dycoke", "holitom")]


@pytest.mark.parametrize("family,rule", CASES, ids=[f"{f}-{r}" for f, r in CASES])
def test_batched_equals_each_sample_alone_and_the_report_is_the_plan(models, family, rule):
    model, cfg = models[family], placed(RULES[rule], family)
    inputs, alone = videos(models, family, seed=1)
    with sparsevlm.sparsified(model, cfg):
        rep = assert_batched_equals_alone(model, inputs, alone)
    for b, n in enumerate(rep.n_visual.tolist()):
        ins, outs = sparsevlm.planned_counts(cfg, n, 4)
        assert rep.visual_in[b].tolist() == ins and rep.visual_out[b].tolist() == outs
    assert (rep.visual_out[:, -1] < rep.n_visual).all()


def test_an_image_alone_runs_dense_and_says_why(models):
    model = models["onevision"]
    inputs, _, _ = image_batch(model, [3, 5])
    with sparsevlm.sparsified(model, DyCokeConfig()):
        model(**inputs)
        rep = sparsevlm.report(model)
    assert rep.dense and rep.reason.startswith("DyCoke reduces video frames; sample(s) [0, 1]")


def test_a_family_that_reads_no_video_refuses_them():
    model = tiny_vlm("next")
    why = "^FastVID reduces video frames; LlavaNextForConditionalGeneration reads no video"
    with pytest.raises(ValueError, match=why):
        sparsevlm.sparsify(model, FastVIDConfig())
    assert not hasattr(model, "_sparsevlm")
