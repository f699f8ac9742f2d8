"""LLaVA-NeXT, LLaVA-OneVision, Video-LLaVA and LLaVA-NeXT-Video (images and video): tiny random
models built in-process. The same
properties as LLaVA-1.5: keep-all equals dense, batched equals each sample alone (images of
different sizes, so different visual counts), the report accounts for every visual token, the
shorter KV caches decode, unsparsify restores the dense model exactly."""
import inspect

import pytest
import torch
import transformers
from helpers import assert_batched_equals_alone

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.toy.families import IMAGE, VIDEO, tiny_vlm

torch.set_grad_enabled(False)

KEEP_ALL = SparseVLMConfig(mode="schedule", pruning_layers=(1, 2), schedule=(1000, 1000), recycle=False)
METHODS = [SparseVLMConfig(pruning_layers=(1, 2), scale=2.0), SparseVLMConfig.preset(64, pruning_layers=(1, 2, 3),
                                                                                       schedule=(30, 20, 10)),
           sparsevlm.FastVConfig(layer=1, prune_ratio=0.6), sparsevlm.PDropConfig(pruning_layers=(1, 2), keep_ratio=0.5),
           sparsevlm.RandomConfig(pruning_layers=(1, 2), schedule=(25, 12)),
           sparsevlm.DARTConfig(pruning_layers=(1,), reduction_ratio=0.6, pivot_image=2, pivot_text=2),
           sparsevlm.DivPruneConfig(keep=12), sparsevlm.CDPrunerConfig(keep=12)]
IDS = ["rank", "preset", "fastv", "pdrop", "random", "dart", "divprune", "cdpruner"]
GREEDY = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)


def tiny(family: str):
    return tiny_vlm(family)


def rows_to_batch(rows, extra):
    """Left-pad token rows into one batch; `extra` holds the pixel tensors."""
    L = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, **extra}


def image_batch(model, text_lens, seed=0):
    """One image per row, sizes alternating 16×32 and 32×16 (different numbers of visual tokens)."""
    g = torch.Generator().manual_seed(seed)
    B = len(text_lens)
    pixels = torch.randn(B, 3, 3, 16, 16, generator=g)
    sizes = torch.tensor([[16, 32], [32, 16]] * B)[:B]
    counts = [len(f) for f in model.model.get_image_features(pixels, sizes, return_dict=True).pooler_output]
    rows = [[1, 7, 8] + [IMAGE] * n + torch.randint(10, 128, (t,), generator=g).tolist() for n, t in zip(counts, text_lens)]
    full = rows_to_batch(rows, {"pixel_values": pixels, "image_sizes": sizes})
    alone = [rows_to_batch([r], {"pixel_values": pixels[b:b + 1], "image_sizes": sizes[b:b + 1]})
             for b, r in enumerate(rows)]
    return full, alone, counts


def video_batch(model, text_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(text_lens)
    frames = torch.randn(B, 4, 3, 16, 16, generator=g)
    features = model.model.get_video_features(frames[:1], return_dict=True).pooler_output  # (frames or 1, n, D)
    if isinstance(features, tuple):  # LLaVA-NeXT-Video on older transformers (5.19): one (frames, n, D) per video
        (features,) = features
    n = features.numel() // features.shape[-1]
    rows = [[1, 7] + [VIDEO] * n + torch.randint(10, 128, (t,), generator=g).tolist() for t in text_lens]
    full = rows_to_batch(rows, {"pixel_values_videos": frames})
    alone = [rows_to_batch([r], {"pixel_values_videos": frames[b:b + 1]}) for b, r in enumerate(rows)]
    return full, alone, [n] * B


def plain_image_batch(model, text_lens, seed=0):
    """One image per row, the tower's own size (Video-LLaVA: one grid of patches per image)."""
    g = torch.Generator().manual_seed(seed)
    B = len(text_lens)
    pixels = torch.randn(B, 3, 16, 16, generator=g)
    n = model.model.get_image_features(pixels[:1], return_dict=True).pooler_output.shape[1]
    rows = [[1, 7, 8] + [IMAGE] * n + torch.randint(10, 128, (t,), generator=g).tolist() for t in text_lens]
    # Video-LLaVA's images were `pixel_values_images` before transformers 5.23
    key = "pixel_values" if "pixel_values" in inspect.signature(model.forward).parameters else "pixel_values_images"
    full = rows_to_batch(rows, {key: pixels})
    alone = [rows_to_batch([r], {key: pixels[b:b + 1]}) for b, r in enumerate(rows)]
    return full, alone, [n] * B


def dense_beams_work(model, inputs) -> bool:
    """Whether the dense model beam-searches `inputs` (transformers 5.19 fails on LLaVA-NeXT-Video's
    videos: "torch.cat(): expected a non-empty list of Tensors")."""
    try:
        model.generate(**inputs, max_new_tokens=1, num_beams=2)
    except ValueError as e:
        if "non-empty list of Tensors" in str(e):
            return False
        raise
    return True


BATCHES = [("next", image_batch), ("onevision", image_batch), ("onevision", video_batch),
           ("video-llava", video_batch), ("video-llava", plain_image_batch), ("next-video", video_batch),
           ("next-video", image_batch)]
BATCH_IDS = ["next-images", "onevision-images", "onevision-video", "video-llava-video", "video-llava-images",
             "next-video-video", "next-video-images"]
READ_THE_TOWER = ["next", "onevision", "video-llava", "next-video"]  # all but LLaVA-1.5 refuse such methods


@pytest.fixture(scope="module")
def models():
    return {name: tiny(name) for name in READ_THE_TOWER}


@pytest.mark.parametrize("family,make", BATCHES, ids=BATCH_IDS)
def test_keep_all_equals_dense_and_unsparsify_restores_it(models, family, make):
    model = models[family]
    inputs, _, counts = make(model, [5, 8])
    dense, dense_ids = model(**inputs).logits, model.generate(**inputs, **GREEDY)
    valid = inputs["attention_mask"].bool()
    with sparsevlm.sparsified(model, KEEP_ALL):
        torch.testing.assert_close(model(**inputs).logits[valid], dense[valid], atol=1e-4, rtol=1e-4)
        rep = sparsevlm.report(model)
        assert not rep.dense and rep.n_visual.tolist() == counts  # newline tokens are visual tokens
        assert torch.equal(model.generate(**inputs, **GREEDY), dense_ids)
    assert torch.equal(model(**inputs).logits, dense)


@pytest.mark.parametrize("cfg", METHODS, ids=IDS)
@pytest.mark.parametrize("family,make", BATCHES, ids=BATCH_IDS)
def test_batched_equals_each_sample_alone(models, family, make, cfg):
    model = models[family]
    inputs, alone, counts = make(model, [6, 3], seed=1)
    with sparsevlm.sparsified(model, cfg):
        rep = assert_batched_equals_alone(model, inputs, alone)
    assert not rep.dense and rep.n_visual.tolist() == counts
    assert (rep.visual_out[:, -1] < torch.tensor(counts)).all()  # pruned


def test_an_image_and_a_video_in_one_prompt_are_one_visual_set(models):
    model = models["onevision"]
    img, _, n_img = image_batch(model, [3])
    vid, _, n_vid = video_batch(model, [4])
    ids = img["input_ids"][0].tolist() + vid["input_ids"][0, 1:].tolist()
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "pixel_values": img["pixel_values"], "image_sizes": img["image_sizes"],
              "pixel_values_videos": vid["pixel_values_videos"]}
    with sparsevlm.sparsified(model, METHODS[1].replace(schedule_of=None)):  # absolute counts: 30, 20, 10
        model.generate(**inputs, **GREEDY)
        rep = sparsevlm.report(model)
    assert rep.n_visual.tolist() == [n_img[0] + n_vid[0]] and len(rep.steps[-1]["kept"][0]) == 10  # one budget


@pytest.mark.parametrize("family", READ_THE_TOWER)
def test_methods_that_read_the_vision_tower_are_refused(models, family):
    model = models[family]
    why = ("encodes images and video frames with two towers" if family == "video-llava"
           else "builds its features from high-resolution crops")
    with pytest.raises(ValueError, match=f"reads the vision tower's .*{type(model).__name__} {why}"):
        sparsevlm.sparsify(model, sparsevlm.VisionZipConfig())
    with pytest.raises(ValueError, match=f"reads the vision tower's .*{type(model).__name__} {why}"):
        sparsevlm.sparsify(model, sparsevlm.VisPrunerConfig())
    with pytest.raises(ValueError, match=f"pools one square grid .* {type(model).__name__} {why}"):
        sparsevlm.sparsify(model, sparsevlm.PoolingConfig())
    assert not hasattr(model, "_sparsevlm")


@pytest.mark.parametrize("family,make", BATCHES, ids=BATCH_IDS)
def test_beams_sampling_and_several_returned_sequences(models, family, make):
    model = models[family]
    inputs, alone, _ = make(model, [5, 3], seed=2)
    beams = dict(max_new_tokens=3, min_new_tokens=3, num_beams=3, num_return_sequences=2)
    if not dense_beams_work(model, inputs):
        pytest.skip(f"transformers {transformers.__version__} cannot beam-search this input with the dense model "
                    f"(LLaVA-NeXT-Video's videos on 5.19); 5.22 and later run it")
    with sparsevlm.sparsified(model, METHODS[1]):
        ids = model.generate(**inputs, **beams)
        assert ids.shape[0] == 4 and torch.equal(model.generate(**alone[0], **beams)[:, -3:], ids[:2, -3:])
        assert model.generate(**inputs, do_sample=True, max_new_tokens=3, num_return_sequences=2).shape[0] == 4
        forced = dict(max_new_tokens=3, min_new_tokens=3)  # sampling from the top token only is greedy
        assert torch.equal(model.generate(**inputs, do_sample=True, top_k=1, **forced),
                           model.generate(**inputs, do_sample=False, **forced))


def test_budget_per_span_gives_each_onevision_video_frame_its_share(models):
    """A OneVision video is 4 frames of 2×2 pooled tokens and a newline (counted with the last frame):
    with budget_per="span" each frame keeps its share of 9, in proportion to its 4, 4, 4, 5 tokens,
    in a batch of two (the second sample: 10 text tokens more)."""
    model = models["onevision"]
    inputs, _, counts = video_batch(model, [4, 14])
    assert counts == [17, 17]
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=(9,), recycle=False, budget_per="span")
    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        kept = sparsevlm.report(model).steps[0]["kept"]
    for k in kept:
        frames = (torch.tensor(k) // 4).clamp(max=3)
        assert torch.bincount(frames, minlength=4).tolist() == [2, 2, 2, 3]


@pytest.mark.parametrize("family,per", [("video-llava", 17), ("next-video", 4)])
def test_budget_per_span_gives_each_video_frame_its_share(models, family, per):
    """Video-LLaVA: each of 4 frames is its 4×4 patches and its [CLS] token (17); LLaVA-NeXT-Video:
    each frame pooled 2×2 (4), no newline. With budget_per="span" each frame keeps an equal share."""
    model = models[family]
    inputs, _, counts = video_batch(model, [4, 14])
    assert counts == [4 * per] * 2
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=(8,), recycle=False, budget_per="span")
    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        kept = sparsevlm.report(model).steps[0]["kept"]
    for k in kept:
        assert torch.bincount(torch.tensor(k) // per, minlength=4).tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("family", ["onevision", "video-llava", "next-video"])
def test_a_dense_report_counts_video_tokens_as_visual(models, family):
    """Dense rows (eval, bench, lmms-eval) are accounted by `dense_report_for`: a video's tokens are
    visual tokens there too, as in a sparsified model's report (they once counted image tokens only)."""
    from sparsevlm.report import dense_report_for

    model = models[family]
    inputs, _, counts = video_batch(model, [3, 5])
    with sparsevlm.sparsified(model, KEEP_ALL):
        model(**inputs)
        assert sparsevlm.report(model).n_visual.tolist() == counts
    assert dense_report_for(model, inputs).n_visual.tolist() == counts


@pytest.mark.parametrize("family", ["llava", "next", "onevision", "video-llava", "next-video", "qwen2-vl", "qwen2.5-vl"])
def test_transformers_finds_a_sparsified_class_by_its_name(family):
    """Loaders look up weight renamings by class name (#32.6): a sparsified model keeps its classes' names."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    from helpers import tiny_llava

    model = tiny_llava() if family == "llava" else tiny_vlm(family)
    names, dense = [type(m).__name__ for m in model.modules()], [repr(t) for t in get_model_conversion_mapping(model)]
    cfg = SparseVLMConfig(pruning_layers=(1, 2), positions="original" if family.startswith("qwen") else "compact")
    with sparsevlm.sparsified(model, cfg):
        assert [type(m).__name__ for m in model.modules()] == names
        assert [repr(t) for t in get_model_conversion_mapping(model)] == dense


def test_cdpruner_keeps_what_was_asked_beyond_its_kernels_rank(models):
    """A 32×32 image is 88 tokens on the tiny LLaVA-NeXT, more than its hidden size (64), and its newline
    tokens repeat: CDPruner's kernel has no rank left for `keep` items past 64. It still keeps
    min(keep, n) per sample, as planned, and keep ≥ n is keep-all (#32.7)."""
    model = models["next"]
    g = torch.Generator().manual_seed(0)
    pixels, sizes = torch.randn(2, 5, 3, 16, 16, generator=g), torch.tensor([[32, 32], [32, 32]])
    counts = [len(f) for f in model.model.get_image_features(pixels, sizes, return_dict=True).pooler_output]
    assert counts == [88, 88] and model.config.text_config.hidden_size == 64
    rows = [[1, 7, 8] + [IMAGE] * n + torch.randint(10, 128, (t,), generator=g).tolist() for n, t in zip(counts, [5, 8])]
    inputs = rows_to_batch(rows, {"pixel_values": pixels, "image_sizes": sizes})
    alone = [rows_to_batch([r], {"pixel_values": pixels[b:b + 1], "image_sizes": sizes[b:b + 1]})
             for b, r in enumerate(rows)]
    dense = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    with sparsevlm.sparsified(model, sparsevlm.CDPrunerConfig(keep=88)):
        torch.testing.assert_close(model(**inputs).logits[valid], dense[valid], atol=1e-4, rtol=1e-4)
        assert sparsevlm.report(model).visual_out[:, -1].tolist() == [88, 88]
    with sparsevlm.sparsified(model, sparsevlm.CDPrunerConfig(keep=70)):
        rep = assert_batched_equals_alone(model, inputs, alone)
    assert rep.visual_out[:, -1].tolist() == [70, 70]
