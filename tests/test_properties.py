"""Seeded property test: random tiny LLaVA models (Llama, Qwen2 or Mistral text models, grouped-query
attention, 3–6 layers, 4–25 visual tokens per image, eager or sdpa) and random batches (1–4 rows,
left padding, 0–2 images per row), every method with random settings, both position modes; and
random batches on LLaVA-NeXT, OneVision and Qwen2-VL/2.5-VL (images of several sizes, videos).

For every case: no NaN where outputs exist; the report accounts for every token; each sample of
the batch equals the sample alone (kept tokens and last logits); keeping every token equals the
dense model at every position, padding included; `unsparsify` restores the dense logits bit for bit;
beam search with several returned sequences runs, and its first sample equals that sample alone.
In turn, each case also runs right-padded, with a static cache, or packed into one row."""
import random

import pytest
import torch
from helpers import packed_row, right_padded
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig,
                          Qwen2Config)

import sparsevlm
from sparsevlm import FastVConfig, PDropConfig, RandomConfig, SparseVLMConfig, ToMeConfig, VisionZipConfig

torch.set_grad_enabled(False)

IMAGE = 3
N_MODELS, CASES_PER_MODEL = 50, 10  # 500 cases
METHODS = ("sparsevlm", "random", "fastv", "pdrop", "visionzip", "tome")


def random_model(rng: random.Random):
    side = rng.choice([2, 3, 4, 5])  # visual tokens per image: side²
    heads = rng.choice([2, 4])
    layers = rng.randint(3, 6)
    torch.manual_seed(rng.randrange(2 ** 31))
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=4 * side, patch_size=4)
    common = dict(vocab_size=64, hidden_size=8 * heads, intermediate_size=32, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=rng.choice([1, heads // 2, heads]),
                  max_position_embeddings=256, pad_token_id=0, initializer_range=0.3)
    family = rng.choice(["llama", "qwen2", "mistral"])
    text = {"llama": lambda: LlamaConfig(**common), "qwen2": lambda: Qwen2Config(**common, use_sliding_window=False),
            "mistral": lambda: MistralConfig(**common, sliding_window=None)}[family]()
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-1,
                      vision_feature_select_strategy="default", image_seq_length=side * side)
    attn = rng.choice(["eager", "sdpa"])
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = attn
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = 0
    return model, side * side, layers


def random_batch(rng: random.Random, n_visual: int, side: int):
    """Left-padded rows with 0–2 images each (at least one image in the batch)."""
    rows, images = [], []
    while not images:
        rows, images = [], []
        for _ in range(rng.randint(1, 4)):
            ids = [1] + [rng.randrange(4, 64) for _ in range(rng.randint(0, 3))]
            n_img = rng.choice([0, 1, 1, 1, 2])
            for _ in range(n_img):
                ids += [IMAGE] * n_visual + [rng.randrange(4, 64) for _ in range(rng.randint(0, 3))]
            ids += [rng.randrange(4, 64) for _ in range(rng.randint(1, 6))]
            rows.append((ids, n_img))
            images += [torch.randn(3, 4 * side, 4 * side, generator=torch.Generator().manual_seed(rng.randrange(999)))
                       for _ in range(n_img)]
    L = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([[0] * (L - len(ids)) + ids for ids, _ in rows])
    mask = torch.tensor([[0] * (L - len(ids)) + [1] * len(ids) for ids, _ in rows])
    inputs = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": torch.stack(images)}
    alone, first = [], 0
    for ids, n_img in rows:
        one = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if n_img:
            one["pixel_values"] = inputs["pixel_values"][first:first + n_img]
        first += n_img
        alone.append(one)
    return inputs, alone


def random_layers(rng, layers, k=None):
    k = k or rng.randint(1, min(3, layers - 1))
    return tuple(sorted(rng.sample(range(layers - 1), k)))


def random_config(rng, method, n_visual, layers, positions):
    """(a config with random settings, a config of the same method that keeps every token)."""
    if method == "sparsevlm":
        where = random_layers(rng, layers)
        kind = rng.choice(["rank", "schedule", "plus"])
        keep_all = SparseVLMConfig(mode="schedule", pruning_layers=where, schedule=(1000,) * len(where),
                                   recycle=False, positions=positions)
        counts = tuple(sorted((rng.randint(1, 2 * n_visual) for _ in where), reverse=True))
        if kind == "rank":
            cfg = SparseVLMConfig(pruning_layers=where, scale=rng.uniform(0.5, 4), recycle=rng.random() < 0.7,
                                  rater_rule=rng.choice(["mean", "mean", "all", "last"]), positions=positions)
        elif kind == "schedule":
            cfg = SparseVLMConfig(mode="schedule", pruning_layers=where, schedule=counts,
                                  recycle=rng.random() < 0.7, positions=positions)
        else:
            cfg = SparseVLMConfig.plus(64, pruning_layers=where, schedule=counts, top_heads=rng.choice([None, 1]),
                                       positions=positions)
        return cfg, keep_all
    if method == "random":
        where = random_layers(rng, layers)
        counts = tuple(sorted((rng.randint(1, 2 * n_visual) for _ in where), reverse=True))
        return (RandomConfig(pruning_layers=where, schedule=counts, seed=rng.randrange(100), positions=positions),
                RandomConfig(pruning_layers=where, schedule=(1000,) * len(where), positions=positions))
    if method == "fastv":
        layer = rng.randrange(layers - 1)
        return (FastVConfig(layer=layer, prune_ratio=rng.uniform(0.1, 0.9), rater=rng.choice(["all", "last"]),
                            positions=positions), FastVConfig(layer=layer, prune_ratio=0.0, positions=positions))
    if method == "pdrop":
        where = random_layers(rng, layers)
        return (PDropConfig(pruning_layers=where, keep_ratio=rng.uniform(0.2, 0.9), positions=positions),
                PDropConfig(pruning_layers=where, keep_ratio=1.0, positions=positions))
    if method == "visionzip":
        return (VisionZipConfig(dominant=rng.randint(1, n_visual), contextual=rng.randint(0, 3), positions=positions),
                VisionZipConfig(dominant=1000, contextual=0, positions=positions))
    return ToMeConfig(keep=rng.randint(1, n_visual), positions=positions), ToMeConfig(keep=1000, positions=positions)


def check_input_forms(model, inputs, alone, cfg, keep_all, label, which: int):
    """One of three input forms per case, in turn (on the dense `model`): right padding (keep-all is
    dense at every position; pruning gives each row's last logits as left padding does), a static cache
    (dense, and said), prompts packed in one row (keep-all and pruning: dense, and said)."""
    beams = dict(max_new_tokens=2, min_new_tokens=2, do_sample=False)
    if which == 2 and len(alone) == 1:  # one prompt is not packed
        which = 0
    if which == 0:
        right = right_padded(inputs)
        dense = model(**right).logits
        with sparsevlm.sparsified(model, keep_all):
            torch.testing.assert_close(model(**right).logits, dense, atol=2e-4, rtol=2e-4, msg=label)
        with sparsevlm.sparsified(model, cfg):
            left, out = model(**inputs).logits, model(**right).logits
            last = right["attention_mask"].sum(-1) - 1
            torch.testing.assert_close(out[torch.arange(len(last)), last], left[:, -1], atol=2e-4, rtol=2e-4, msg=label)
    elif which == 1:
        dense = model.generate(**inputs, **beams, cache_implementation="static")
        with sparsevlm.sparsified(model, cfg):
            assert torch.equal(model.generate(**inputs, **beams, cache_implementation="static"), dense), label
            assert "pre-allocated" in sparsevlm.report(model).reason, label
    else:
        packed = packed_row(model, alone)
        dense = model(**packed).logits
        for c in (keep_all, cfg):
            with sparsevlm.sparsified(model, c):
                assert torch.equal(model(**packed).logits, dense), label
                rep = sparsevlm.report(model)
                assert rep.dense and ("packed" in rep.reason or "no image" in rep.reason), label


def check_case(model, inputs, alone, cfg, keep_all, label):
    dense = model(**inputs).logits
    sparsevlm.sparsify(model, cfg)
    out = model(**inputs).logits
    rep = sparsevlm.report(model)
    assert not rep.dense, label
    present = rep.present
    assert torch.isfinite(out[present]).all(), label
    n_visual = (inputs["input_ids"] == IMAGE).sum(-1)
    assert torch.equal(rep.n_visual, n_visual), label
    before_llm = rep.steps and rep.steps[0]["layer"] == -1  # VisionZip/ToMe-style: pruned before layer 0
    assert (rep.visual_in[:, 0] <= n_visual).all() if before_llm else torch.equal(rep.visual_in[:, 0], n_visual), label
    assert torch.equal(rep.visual_out[:, :-1], rep.visual_in[:, 1:]), label
    last_kept = [len(k) for k in rep.steps[-1]["kept"]] if rep.steps else n_visual.tolist()
    # every valid position with an output is a text token or an original visual token still present;
    # padding positions have outputs only when nothing moved (then all of them)
    valid = inputs["attention_mask"].bool()
    assert present[~valid].all() or not present[~valid].any(), label
    assert (present & valid).sum(-1).tolist() == [int(t - v) + k for t, v, k in zip(rep.n_tokens, n_visual, last_kept)], label
    for b, one in enumerate(alone):
        logits = model(**one).logits
        rep1 = sparsevlm.report(model)
        if "pixel_values" not in one:
            assert rep1.dense, label
            continue
        for step, step1 in zip(rep.steps, rep1.steps):
            assert step["kept"][b] == step1["kept"][0], f"{label} sample {b} layer {step['layer']}"
        assert torch.equal(rep.visual_out[b], rep1.visual_out[0]), label
        torch.testing.assert_close(logits[0, -1], out[b, -1], atol=2e-4, rtol=2e-4, msg=label)
    beams = dict(max_new_tokens=2, min_new_tokens=2, do_sample=False, num_beams=2, num_return_sequences=2)
    ids = model.generate(**inputs, **beams)
    assert ids.shape == (2 * len(alone), inputs["input_ids"].shape[1] + 2), label
    assert torch.equal(model.generate(**alone[0], **beams)[:, -2:], ids[:2, -2:]), label
    sparsevlm.sparsify(model, keep_all)  # every position, padding included, as the dense model has it
    torch.testing.assert_close(model(**inputs).logits, dense, atol=2e-4, rtol=2e-4, msg=label)
    sparsevlm.unsparsify(model)
    assert torch.equal(model(**inputs).logits, dense), label


@pytest.mark.parametrize("model_seed", range(N_MODELS))
def test_random_models_and_batches(model_seed):
    rng = random.Random(1000 + model_seed)
    model, n_visual, layers = random_model(rng)
    side = int(n_visual ** 0.5)
    for case in range(CASES_PER_MODEL):
        i = model_seed * CASES_PER_MODEL + case
        method, positions = METHODS[i % len(METHODS)], ("compact", "original")[(i // len(METHODS)) % 2]
        inputs, alone = random_batch(rng, n_visual, side)
        cfg, keep_all = random_config(rng, method, n_visual, layers, positions)
        check_case(model, inputs, alone, cfg, keep_all, f"model {model_seed} case {case}: {cfg!r}")
        check_input_forms(model, inputs, alone, cfg, keep_all, f"model {model_seed} case {case}: {cfg!r}", i % 3)


FAMILIES, FAMILY_CASES = ["next", "onevision", "video-llava", "next-video", "qwen2-vl", "qwen2.5-vl"], 40  # 240 cases


@pytest.mark.parametrize("family", FAMILIES)
def test_random_batches_on_other_families(family):
    """The same properties on LLaVA-NeXT, OneVision, Video-LLaVA, LLaVA-NeXT-Video (images, video) and
    Qwen2-VL/2.5-VL (M-RoPE, images, video), with the methods each family supports and the position
    modes it allows."""
    from test_families import dense_beams_work, image_batch, plain_image_batch, video_batch
    from test_qwen_vl import batch as qwen_batch

    from sparsevlm.toy.families import IMAGE as FAMILY_IMAGE
    from sparsevlm.toy.families import VIDEO as FAMILY_VIDEO
    from sparsevlm.toy.families import tiny_vlm

    rng = random.Random(2000 + FAMILIES.index(family))
    model = tiny_vlm(family)
    layers = model.config.text_config.num_hidden_layers
    qwen = family.startswith("qwen")
    for case in range(FAMILY_CASES):
        video = family != "next" and rng.random() < 0.4
        lens = [rng.randint(1, 6) for _ in range(rng.randint(1, 3))]
        if qwen:
            grids = [(rng.choice([2, 4]) if video else 1, 2 * rng.randint(2, 5), 2 * rng.randint(2, 5)) for _ in lens]
            inputs, alone = qwen_batch(grids, lens, video, seed=case)
        else:
            images = plain_image_batch if family == "video-llava" else image_batch
            inputs, alone, _ = (video_batch if video else images)(model, lens, seed=case)
        n_visual = int(((inputs["input_ids"] == FAMILY_IMAGE) | (inputs["input_ids"] == FAMILY_VIDEO)).sum(-1).min())
        method = rng.choice(["sparsevlm", "random", "fastv", "pdrop"])
        positions = "original" if qwen else rng.choice(["compact", "original"])
        cfg, keep_all = random_config(rng, method, n_visual, layers, positions)
        label = f"{family} case {case}: {cfg!r}"
        dense = model(**inputs).logits
        beams_work = dense_beams_work(model, inputs)  # (not LLaVA-NeXT-Video's videos on transformers 5.19)
        with sparsevlm.sparsified(model, cfg):
            out = model(**inputs).logits
            rep = sparsevlm.report(model)
            assert not rep.dense and torch.isfinite(out[rep.present]).all(), label
            assert torch.equal(rep.visual_out[:, :-1], rep.visual_in[:, 1:]), label
            for b, one in enumerate(alone):
                logits = model(**one).logits
                rep1 = sparsevlm.report(model)
                assert [s["kept"][b] for s in rep.steps] == [s["kept"][0] for s in rep1.steps], label
                torch.testing.assert_close(logits[0, -1], out[b, -1], atol=2e-4, rtol=2e-4, msg=label)
            beams = dict(max_new_tokens=2, min_new_tokens=2, do_sample=False, num_beams=2, num_return_sequences=2)
            if beams_work:
                ids = model.generate(**inputs, **beams)
                assert torch.equal(model.generate(**alone[0], **beams)[:, -2:], ids[:2, -2:]), label
        with sparsevlm.sparsified(model, keep_all):
            torch.testing.assert_close(model(**inputs).logits, dense, atol=2e-4, rtol=2e-4, msg=label)
        assert torch.equal(model(**inputs).logits, dense), label
        check_input_forms(model, inputs, alone, cfg, keep_all, label, case % 3)
