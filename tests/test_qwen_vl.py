"""Qwen2-VL and Qwen2.5-VL (M-RoPE), images and video: tiny random models built in-process.
Keep-all equals dense, batched equals each sample alone (images of different grids), surviving
tokens keep their 3D positions, decoding continues from the model's positions, the report accounts
for every visual token, unsparsify is exact, and what cannot work is refused."""
import pytest
import torch
from helpers import assert_batched_equals_alone, assert_keep_all_is_dense, assert_scores_are_the_models_attention

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.toy.families import END, IMAGE, START, VIDEO, tiny_vlm

torch.set_grad_enabled(False)

ORIGINAL = dict(positions="original")
KEEP_ALL = SparseVLMConfig(mode="schedule", pruning_layers=(1, 2), schedule=(1000, 1000), recycle=False, **ORIGINAL)
METHODS = [SparseVLMConfig(pruning_layers=(1, 2), scale=1.0, **ORIGINAL),
           SparseVLMConfig.preset(64, pruning_layers=(1, 2), schedule=(12, 6), **ORIGINAL),
           SparseVLMConfig.plus(64, pruning_layers=(1, 2), schedule=(12, 6), top_heads=2),
           sparsevlm.FastVConfig(layer=1, prune_ratio=0.6, **ORIGINAL),
           sparsevlm.PDropConfig(pruning_layers=(1, 2), keep_ratio=0.5, **ORIGINAL),
           sparsevlm.RandomConfig(pruning_layers=(1, 2), schedule=(10, 5), **ORIGINAL),
           sparsevlm.DARTConfig(pruning_layers=(1,), reduction_ratio=0.6, pivot_image=2, pivot_text=2, **ORIGINAL),
           sparsevlm.DivPruneConfig(keep=8, **ORIGINAL), sparsevlm.CDPrunerConfig(keep=8, **ORIGINAL)]
IDS = ["rank", "preset", "plus", "fastv", "pdrop", "random", "dart", "divprune", "cdpruner"]
GREEDY = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
PATCH = 3 * 2 * 4 * 4  # channels × temporal patch × patch²


def tiny(family: str, attn: str = "sdpa"):
    return tiny_vlm(family, attn)


def batch(grids, text_lens, video=False, seed=0):
    """One image (or video) per row with its own (t, h, w) patch grid; left padding; and each row alone."""
    g = torch.Generator().manual_seed(seed)
    token, key = (VIDEO, "video") if video else (IMAGE, "image")
    rows, pixels = [], []
    for (t, h, w), n_text in zip(grids, text_lens):
        pixels.append(torch.randn(t * h * w, PATCH, generator=g))
        rows.append([1, 9, START] + [token] * (t * h * w // 4) + [END] + torch.randint(10, 128, (n_text,), generator=g).tolist())

    def pack(rows, pixels, grids):
        L = max(map(len, rows))
        ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
        return {"input_ids": ids, "attention_mask": (torch.arange(L) >= L - torch.tensor([[len(r)] for r in rows])).long(),
                "mm_token_type_ids": (ids == IMAGE).int() + 2 * (ids == VIDEO).int(),
                f"pixel_values{'_videos' if video else ''}": torch.cat(pixels), f"{key}_grid_thw": torch.tensor(grids)}

    return pack(rows, pixels, grids), [pack([r], [p], [gr]) for r, p, gr in zip(rows, pixels, grids)]


GRIDS = {"images": ([(1, 8, 12), (1, 12, 8), (1, 8, 8)], False), "video": ([(2, 8, 8), (4, 8, 8), (2, 8, 12)], True)}


@pytest.fixture(scope="module", params=["qwen2-vl", "qwen2.5-vl"])
def model(request):
    return tiny(request.param)


@pytest.mark.parametrize("kind", ["images", "video"])
def test_keep_all_equals_dense_and_unsparsify_restores_it(model, kind):
    grids, video = GRIDS[kind]
    inputs, _ = batch(grids, [5, 3, 7], video)
    assert_keep_all_is_dense(model, inputs, KEEP_ALL, [t * h * w // 4 for t, h, w in grids])


@pytest.mark.parametrize("cfg", METHODS, ids=IDS)
@pytest.mark.parametrize("kind", ["images", "video"])
def test_batched_equals_each_sample_alone(model, kind, cfg):
    grids, video = GRIDS[kind]
    inputs, alone = batch(grids, [6, 2, 4], video, seed=1)
    with sparsevlm.sparsified(model, cfg):
        rep = assert_batched_equals_alone(model, inputs, alone)
    assert not rep.dense and (rep.visual_out[:, -1] < rep.n_visual).all()


def test_surviving_tokens_keep_their_3d_positions(model):
    """Pruning only removes rows: the kept tokens' rotary positions are those the model gave them."""
    inputs, _ = batch([(1, 4, 6)], [4])
    positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"],
                                              attention_mask=inputs["attention_mask"])
    seen = []
    text = model.model.language_model
    cfg = SparseVLMConfig.preset(64, pruning_layers=(1,), schedule=(3,), recycle=False, positions="original")
    with sparsevlm.sparsified(model, cfg):
        rotary = text.rotary_emb
        hook = rotary.register_forward_hook(
            lambda m, args, kwargs, out: seen.append(args[1] if len(args) > 1 else kwargs["position_ids"]),
            with_kwargs=True)
        model(**inputs)
        hook.remove()
        kept = sparsevlm.report(model).steps[0]["kept"][0]
    vis = (inputs["input_ids"][0] == IMAGE).nonzero().flatten()
    keep_rows = torch.cat([torch.arange(int(vis[0])), vis[kept], torch.arange(int(vis[-1]) + 1, positions.shape[-1])])
    assert torch.equal(seen[0], positions) and torch.equal(seen[1], positions[:, :, keep_rows])


def test_what_cannot_work_is_refused(model):
    name = type(model).__name__
    with pytest.raises(ValueError, match=f"positions='compact': {name} uses M-RoPE"):
        sparsevlm.sparsify(model, SparseVLMConfig(pruning_layers=(1, 2)))  # the default renumbers positions
    with pytest.raises(ValueError, match=f"{name}'s vision tower has no \\[CLS\\] token"):
        sparsevlm.sparsify(model, sparsevlm.ToMeConfig(positions="original"))
    with pytest.raises(ValueError, match=f"{name}'s vision tower has no \\[CLS\\] token"):
        sparsevlm.sparsify(model, sparsevlm.VisPrunerConfig(positions="original"))
    with pytest.raises(ValueError, match=f"pools one square grid .* {name} merges"):
        sparsevlm.sparsify(model, sparsevlm.PoolingConfig(positions="original"))
    assert not hasattr(model, "_sparsevlm")


def test_scores_are_the_models_own_attention():
    inputs, _ = batch([(1, 4, 6)], [6])
    assert_scores_are_the_models_attention(tiny("qwen2-vl", attn="eager"), inputs, IMAGE, keep=3)


@pytest.mark.parametrize("kind", ["images", "video"])
def test_beams_sampling_and_several_returned_sequences(model, kind):
    grids, video = GRIDS[kind]
    inputs, alone = batch(grids[:2], [5, 3], video, seed=2)
    beams = dict(max_new_tokens=3, min_new_tokens=3, num_beams=3, num_return_sequences=2)
    with sparsevlm.sparsified(model, METHODS[1]):
        ids = model.generate(**inputs, **beams)
        assert ids.shape[0] == 4 and torch.equal(model.generate(**alone[0], **beams)[:, -3:], ids[:2, -3:])
        assert model.generate(**inputs, do_sample=True, max_new_tokens=3, num_return_sequences=2).shape[0] == 4
        forced = dict(max_new_tokens=3, min_new_tokens=3)
        assert torch.equal(model.generate(**inputs, do_sample=True, top_k=1, **forced),
                           model.generate(**inputs, do_sample=False, **forced))


def test_budget_per_span_gives_each_video_frame_its_share(model):
    """Under M-RoPE a span is one frame (tokens sharing a temporal position): 4 frames of 16 tokens."""
    inputs, _ = batch([(4, 8, 8)], [5], video=True)
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=(12,), recycle=False, positions="original",
                          budget_per="span")
    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        kept = torch.tensor(sparsevlm.report(model).steps[0]["kept"][0])
    assert torch.bincount(kept // 16, minlength=4).tolist() == [3, 3, 3, 3]
