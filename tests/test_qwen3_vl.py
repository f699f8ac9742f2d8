"""Qwen3-VL (and Qwen3-VL-MoE): M-RoPE with interleaved sections, video frames between timestamps,
and DeepStack, on tiny random models built in-process. DeepStack's features follow their tokens:
keep-all equals dense with pruning layers before the DeepStack layers, and a pruned prefill equals
the model's own text forward over the kept tokens."""
import pytest
import torch
from helpers import (assert_batched_equals_alone, assert_beams_return_several, assert_keep_all_is_dense,
                     assert_report_is_planned_counts, assert_serves_variant)

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.toy.families import END, IMAGE, START, VIDEO, tiny_vlm

torch.set_grad_enabled(False)

ORIGINAL = dict(positions="original")
# pruning after layers 0 and 1: DeepStack still adds features after layers 1 and 2
KEEP_ALL = SparseVLMConfig(mode="schedule", pruning_layers=(0, 1), schedule=(1000, 1000), recycle=False, **ORIGINAL)
METHODS = [SparseVLMConfig(pruning_layers=(0, 2), scale=1.0, **ORIGINAL),
           SparseVLMConfig.preset(64, pruning_layers=(0, 1), schedule=(12, 6), **ORIGINAL),
           sparsevlm.FastVConfig(layer=1, prune_ratio=0.6, **ORIGINAL),
           sparsevlm.PDropConfig(pruning_layers=(0, 2), keep_ratio=0.5, **ORIGINAL),
           sparsevlm.RandomConfig(pruning_layers=(1, 2), schedule=(10, 5), **ORIGINAL),
           sparsevlm.DivPruneConfig(keep=8, **ORIGINAL), sparsevlm.CDPrunerConfig(keep=8, **ORIGINAL)]
IDS = ["rank", "preset", "fastv", "pdrop", "random", "divprune", "cdpruner"]
GREEDY = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
PATCH = 3 * 2 * 4 * 4  # channels × temporal patch × patch²
STAMP = 40  # a frame's timestamp: text tokens STAMP + frame before its run of video tokens


def batch(grids, text_lens, video=False, seed=0):
    """One image (or video) per row with its own (t, h, w) patch grid; left padding; and each row alone.
    A video is one run of visual tokens per frame pair, each after its timestamp, as Qwen3-VL prompts it."""
    g = torch.Generator().manual_seed(seed)
    token, key = (VIDEO, "video") if video else (IMAGE, "image")
    rows, pixels = [], []
    for (t, h, w), n_text in zip(grids, text_lens):
        pixels.append(torch.randn(t * h * w, PATCH, generator=g))
        frames = [([STAMP + f] if video else []) + [START] + [token] * (h * w // 4) + [END] for f in range(t)]
        rows.append([1, 9] + sum(frames, []) + torch.randint(10, 128, (n_text,), generator=g).tolist())

    def pack(rows, pixels, grids):
        L = max(map(len, rows))
        ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
        lengths = torch.tensor([[len(r)] for r in rows])
        return {"input_ids": ids, "attention_mask": (torch.arange(L) >= L - lengths).long(),
                "mm_token_type_ids": (ids == IMAGE).int() + 2 * (ids == VIDEO).int(),
                f"pixel_values{'_videos' if video else ''}": torch.cat(pixels), f"{key}_grid_thw": torch.tensor(grids)}

    return pack(rows, pixels, grids), [pack([r], [p], [gr]) for r, p, gr in zip(rows, pixels, grids)]


GRIDS = {"images": ([(1, 8, 12), (1, 12, 8), (1, 8, 8)], False), "video": ([(2, 8, 8), (4, 8, 8), (2, 8, 12)], True)}


@pytest.fixture(scope="module")
def model():
    return tiny_vlm("qwen3-vl")


@pytest.mark.parametrize("kind", ["images", "video"])
def test_keep_all_equals_dense_and_unsparsify_restores_it(model, kind):
    grids, video = GRIDS[kind]
    inputs, _ = batch(grids, [5, 3, 7], video)
    assert_keep_all_is_dense(model, inputs, KEEP_ALL, [t * h * w // 4 for t, h, w in grids], atol=1e-4)


@pytest.mark.parametrize("cfg", METHODS, ids=IDS)
@pytest.mark.parametrize("kind", ["images", "video"])
def test_batched_equals_each_sample_alone(model, kind, cfg):
    grids, video = GRIDS[kind]
    inputs, alone = batch(grids, [6, 2, 4], video, seed=1)
    with sparsevlm.sparsified(model, cfg):
        rep = assert_batched_equals_alone(model, inputs, alone)
    assert not rep.dense and (rep.visual_out[:, -1] < rep.n_visual).all()


def _dense_text_inputs(model, inputs):
    """What the multimodal model hands its text model on a dense forward: embeddings, M-RoPE positions and
    DeepStack's keywords (the model's own computation, recorded)."""
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        model(**inputs)
    finally:
        hook.remove()
    return seen


def test_deepstack_features_follow_the_tokens_kept_before_the_first_layer(model):
    """DivPrune keeps 8 of 24 visual tokens before layer 0: the pruned prefill equals the model's own text
    forward over the kept tokens alone, each with its own DeepStack features (and differs without them)."""
    inputs, _ = batch([(1, 8, 12)], [5], seed=4)
    seen = _dense_text_inputs(model, inputs)
    with sparsevlm.sparsified(model, sparsevlm.DivPruneConfig(keep=8, **ORIGINAL)):
        logits = model(**inputs).logits[0]
        kept = torch.tensor(sparsevlm.report(model).steps[0]["kept"][0])
    vis = seen["visual_pos_masks"][0]
    rows = torch.cat([(~vis).nonzero().flatten(), vis.nonzero().flatten()[kept]]).sort().values
    text = model.model.language_model

    def own(features):
        out = text(inputs_embeds=seen["inputs_embeds"][:, rows], position_ids=seen["position_ids"][..., rows],
                   visual_pos_masks=vis[None, rows], deepstack_visual_embeds=features)
        return model.lm_head(out.last_hidden_state)[0]

    kept_features = [f[kept] for f in seen["deepstack_visual_embeds"]]
    torch.testing.assert_close(logits[rows], own(kept_features), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits[rows], own(None), atol=1e-2)


def test_deepstack_features_follow_the_tokens_kept_between_deepstack_layers(model):
    """Pruning after layer 0 keeps 5 visual tokens; DeepStack adds features after layers 1 and 2: the
    model's own layers and `_deepstack_process`, run over the kept tokens from layer 1 on, give the same."""
    inputs, _ = batch([(1, 8, 8)], [4], seed=5)
    seen = _dense_text_inputs(model, inputs)
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(0,), schedule=(5,), recycle=False, **ORIGINAL)
    with sparsevlm.sparsified(model, cfg):
        logits = model(**inputs).logits[0]
        kept = torch.tensor(sparsevlm.report(model).steps[0]["kept"][0])
    text = model.model.language_model
    hidden, positions, vis = seen["inputs_embeds"], seen["position_ids"], seen["visual_pos_masks"]
    features = list(seen["deepstack_visual_embeds"])
    rows = torch.cat([(~vis[0]).nonzero().flatten(), vis[0].nonzero().flatten()[kept]]).sort().values
    for i, layer in enumerate(text.layers):  # sdpa with no mask: causal
        hidden = layer(hidden, attention_mask=None, position_embeddings=text.rotary_emb(hidden, positions))
        hidden = text._deepstack_process(hidden, vis, features[i]) if i < len(features) else hidden
        if i == 0:  # the kept tokens go on, each with its own features
            hidden, positions, vis = hidden[:, rows], positions[..., rows], vis[:, rows]
            features = [f if j == 0 else f[kept] for j, f in enumerate(features)]
    torch.testing.assert_close(logits[rows], model.lm_head(text.norm(hidden))[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg", [METHODS[1].replace(schedule_of=None), *METHODS[2:]], ids=IDS[1:])
def test_the_report_is_planned_counts(model, cfg):
    grids = [(1, 8, 12), (2, 8, 8)]
    inputs, _ = batch(grids, [4, 7], video=True, seed=2)
    assert_report_is_planned_counts(model, inputs, [t * h * w // 4 for t, h, w in grids], cfg)


@pytest.mark.parametrize("kind", ["images", "video"])
def test_beams_with_several_returned_sequences(model, kind):
    grids, video = GRIDS[kind]
    inputs, alone = batch(grids[:2], [5, 3], video, seed=2)
    assert_beams_return_several(model, inputs, alone[0], METHODS[1])


def test_budget_per_span_gives_each_frame_and_image_its_share(model):
    """A span is one video frame (its own run, after its timestamp) or one image: 4 frames of 16 tokens
    keep 3 each; images of 16 and 48 tokens in one prompt keep 2 and 6 (in proportion)."""
    span = dict(mode="schedule", pruning_layers=(1,), recycle=False, budget_per="span", **ORIGINAL)
    video, _ = batch([(4, 8, 8)], [5], video=True)
    with sparsevlm.sparsified(model, SparseVLMConfig(schedule=(12,), **span)):
        model(**video)
        kept = torch.tensor(sparsevlm.report(model).steps[0]["kept"][0])
    assert torch.bincount(kept // 16, minlength=4).tolist() == [3, 3, 3, 3]
    g = torch.Generator().manual_seed(6)
    ids = [1, 9, START] + [IMAGE] * 16 + [END, 20, START] + [IMAGE] * 48 + [END, 30, 31]
    images = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "mm_token_type_ids": (torch.tensor([ids]) == IMAGE).int(),
              "pixel_values": torch.randn(256, PATCH, generator=g),
              "image_grid_thw": torch.tensor([[1, 8, 8], [1, 8, 24]])}
    with sparsevlm.sparsified(model, SparseVLMConfig(schedule=(8,), **span)):
        model(**images)
        kept = torch.tensor(sparsevlm.report(model).steps[0]["kept"][0])
    assert [(kept < 16).sum().item(), (kept >= 16).sum().item()] == [2, 6]


def test_pruning_then_unsparsify_is_exact(model):
    inputs, _ = batch([(2, 8, 8), (1, 8, 12)], [3, 5], video=True, seed=7)
    dense = model(**inputs).logits
    with sparsevlm.sparsified(model, METHODS[1]):
        assert not torch.allclose(model(**inputs).logits[:, -1], dense[:, -1])
    assert torch.equal(model(**inputs).logits, dense) and not hasattr(model, "_sparsevlm")


def test_what_cannot_work_is_refused(model):
    name = type(model).__name__
    with pytest.raises(ValueError, match=f"positions='compact': {name} uses M-RoPE"):
        sparsevlm.sparsify(model, SparseVLMConfig(pruning_layers=(1, 2), positions="compact"))
    with pytest.raises(ValueError, match=f"{name}'s vision tower has no \\[CLS\\] token"):
        sparsevlm.sparsify(model, sparsevlm.VisPrunerConfig(positions="original"))
    with pytest.raises(ValueError, match=f"pools one square grid .* {name} merges"):
        sparsevlm.sparsify(model, sparsevlm.PoolingConfig(positions="original"))
    assert not hasattr(model, "_sparsevlm") and sparsevlm.models.default_positions(model) == "original"


@pytest.mark.parametrize("cfg", [KEEP_ALL, METHODS[1], METHODS[5]], ids=["keep-all", "preset", "divprune"])
def test_the_moe_model_is_served_by_the_same_adapter(cfg):
    inputs, alone = batch([(2, 8, 8), (1, 8, 12)], [5, 3], video=True, seed=8)
    assert_serves_variant(tiny_vlm("qwen3-vl-moe"), inputs, alone, cfg, keep_all=cfg is KEEP_ALL)


def test_the_real_architecture_is_accepted_on_the_meta_device():
    """Qwen3-VL's default config (the 8B text model's shapes, DeepStack from tower layers 8, 16, 24), no weights."""
    import transformers

    with torch.device("meta"):
        real = transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig())
    assert {"qwen3_vl", "qwen3_vl_moe"} <= set(sparsevlm.models.model_types())
    with sparsevlm.sparsified(real, SparseVLMConfig(positions="original")):
        assert real._sparsevlm.family is sparsevlm.models.qwen3_vl.FAMILY
    assert not hasattr(real, "_sparsevlm") and len(real.config.vision_config.deepstack_visual_indexes) == 3
