"""Tiny random LLaVA models built in-process (no download) and inputs with image tokens."""
import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config,
                          Qwen3Config)

IMAGE_TOKEN = 3
N_VISUAL = 64  # 32 px images, 4 px patches


def tiny_llava(text: str = "llama", attn: str = "sdpa", kv_heads: int = 2, layers: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=4, projection_dim=32)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
                  pad_token_id=0, initializer_range=0.2)
    text_config = {"llama": lambda: LlamaConfig(**common),
                   "qwen2": lambda: Qwen2Config(**common, use_sliding_window=False),
                   "qwen3": lambda: Qwen3Config(**common, head_dim=16, use_sliding_window=False)}[text]()
    cfg = LlavaConfig(vision_config=vision, text_config=text_config, image_token_id=IMAGE_TOKEN,
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    cfg._attn_implementation = attn
    model = LlavaForConditionalGeneration(cfg).eval()
    model.config.text_config._attn_implementation = attn
    model.config.vision_config._attn_implementation = attn
    model.generation_config.pad_token_id = 0
    return model


def prompt_ids(text_len: int, seed: int, sys_len: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(10, 128, (sys_len,), generator=g)
    text = torch.randint(10, 128, (text_len,), generator=g)
    return torch.cat([torch.tensor([1]), system, torch.full((N_VISUAL,), IMAGE_TOKEN), text])


def batch(text_lens, seed: int = 0):
    """Left-padded batch of prompts with different lengths, one image each."""
    ids = [prompt_ids(n, seed + i) for i, n in enumerate(text_lens)]
    L = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), L, dtype=torch.long)
    attention_mask = torch.zeros(len(ids), L, dtype=torch.long)
    for b, x in enumerate(ids):
        input_ids[b, L - len(x):] = x
        attention_mask[b, L - len(x):] = 1
    g = torch.Generator().manual_seed(seed + 100)
    pixel_values = torch.randn(len(ids), 3, 32, 32, generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def sample(inputs, b):
    """Sample b of a left-padded batch, unpadded."""
    keep = inputs["attention_mask"][b].bool()
    return {"input_ids": inputs["input_ids"][b:b + 1, keep], "attention_mask": inputs["attention_mask"][b:b + 1, keep],
            "pixel_values": inputs["pixel_values"][b:b + 1]}


def right_padded(inputs):
    """The same rows with their padding moved to the right."""
    out = dict(inputs)
    mask = inputs["attention_mask"]
    n = mask.sum(-1)
    order = (torch.arange(mask.shape[1]) + (mask.shape[1] - n)[:, None]) % mask.shape[1]  # valid tokens first
    for k in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if k in inputs:
            out[k] = inputs[k].gather(1, order)
    return out


def packed_row(model, alone):
    """Unpadded prompts packed into one row without a padding mask, told apart by positions that
    restart: 1D, or for M-RoPE transformers' text row before the three rows of each prompt."""
    row_keys = ("input_ids", "mm_token_type_ids", "token_type_ids")  # (token_type_ids: Gemma 3)
    packed = {k: torch.cat([a[k] for a in alone if k in a], dim=1 if k in row_keys else 0)
              for k in dict.fromkeys(k for a in alone for k in a) if k != "attention_mask"}
    if "mm_token_type_ids" in packed:  # Qwen2-VL and Qwen2.5-VL
        rows = []
        for a in alone:
            grids = {k: a[k] for k in ("image_grid_thw", "video_grid_thw") if k in a}
            mrope, _ = model.model.get_rope_index(a["input_ids"], a["mm_token_type_ids"], **grids)
            rows.append(torch.cat([torch.arange(a["input_ids"].shape[1])[None, None], mrope]))
        packed["position_ids"] = torch.cat(rows, -1)
    else:
        packed["position_ids"] = torch.cat([torch.arange(a["input_ids"].shape[1]) for a in alone])[None]
    return packed


def assert_batched_equals_alone(model, inputs, alone, new_tokens: int = 4):
    """The sparsified `model` on a batch equals each sample alone: last logits, the kept tokens at
    every pruning step, and the greedy continuation. Returns the batch's report."""
    import sparsevlm

    greedy = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    logits = model(**inputs).logits[:, -1]
    rep = sparsevlm.report(model)
    ids = model.generate(**inputs, **greedy)[:, -new_tokens:]
    for b, one in enumerate(alone):
        torch.testing.assert_close(model(**one).logits[0, -1], logits[b], atol=1e-4, rtol=1e-4)
        rep1 = sparsevlm.report(model)
        assert [s["kept"][b] for s in rep.steps] == [s["kept"][0] for s in rep1.steps]
        assert torch.equal(model.generate(**one, **greedy)[0, -new_tokens:], ids[b])
    return rep


def embedded_batch(n: int = 8):
    """The embedded model and its first `n` evaluation questions, padded into one batch."""
    from sparsevlm import toy

    model, processor = toy.load()
    recs = toy.eval_split(limit=n)
    inputs = processor(images=[r["image"] for r in recs], text=[r["prompt"] for r in recs], return_tensors="pt",
                       padding=True)
    return model, inputs


def planned_configs(model) -> dict:
    """One config of every method whose counts are planned before the first layer (on the embedded model)."""
    import sparsevlm
    from sparsevlm.bench import preset_config

    return {"preset 128": preset_config(model, 128), "preset 64 span": preset_config(model, 64).replace(
        budget_per="span"), "random": sparsevlm.RandomConfig(pruning_layers=(1, 2, 4), schedule=(30, 12, 6)),
            "fastv": sparsevlm.FastVConfig(layer=1, prune_ratio=0.7),
            "pdrop": sparsevlm.PDropConfig(pruning_layers=(1, 3, 5)),
            "dart": sparsevlm.DARTConfig(pruning_layers=(1,)),
            # before the language model: one read of every sample's counts, then per-sample work
            "visionzip": sparsevlm.VisionZipConfig(dominant=12, contextual=4), "tome": sparsevlm.ToMeConfig(keep=16),
            "divprune": sparsevlm.DivPruneConfig(keep=16), "vispruner": sparsevlm.VisPrunerConfig(keep=16),
            "cdpruner": sparsevlm.CDPrunerConfig(keep=16), "pooling": sparsevlm.PoolingConfig(tokens=16)}


def run_skipped_cells(notebook: str, stand_ins: dict, skipped: int, scope: dict, only_skipped: bool = False) -> dict:
    """Run a notebook's `nbval-skip` cells (weights, a GPU: CI skips them) with each text in `stand_ins`
    replaced (a local checkpoint for the hub name, the CPU for "cuda", ...), after its other code cells
    unless `only_skipped`; `skipped` is how many such cells the stand-ins were written for. Every
    stand-in must be used, and no "cuda" or bfloat16 may be left. Returns the cells' namespace."""
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / notebook).read_text())
    code = [("nbval-skip" in c.get("metadata", {}).get("tags", []), "".join(c["source"]))
            for c in nb["cells"] if c["cell_type"] == "code"]
    assert sum(skip for skip, _ in code) == skipped, f"the stand-ins were written for {skipped} skipped cells"
    unused = set(stand_ins)
    for skip, source in code:
        if skip:
            for old, new in stand_ins.items():
                unused -= {old} if old in source else set()
                source = source.replace(old, new)
            assert '"cuda"' not in source and "bfloat16" not in source, source
        if skip or not only_skipped:
            exec(compile(source, notebook, "exec"), scope)
    assert not unused, f"stand-ins not found in {notebook}: {sorted(unused)}"
    return scope


def assert_scores_are_the_models_attention(model, inputs, image_token: int, keep: int, positions="original"):
    """One SparseVLM step after layer 2 on an eager model: each visual token's score is the dense
    model's own attention from the raters (mean over heads and raters), and the kept tokens its top
    `keep`."""
    import sparsevlm
    from sparsevlm import SparseVLMConfig

    out = model(**inputs, output_attentions=True)
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(2,), schedule=(keep,), recycle=False, positions=positions)
    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        rep = sparsevlm.report(model)
    vis = (inputs["input_ids"][0] == image_token).nonzero().flatten()
    scores = out.attentions[2][0][:, rep.raters[0]][:, :, vis].mean(0).mean(0)
    torch.testing.assert_close(rep.steps[0]["scores"][0], scores)
    assert rep.steps[0]["kept"][0] == sorted(scores.topk(keep).indices.tolist())


def assert_keep_all_is_dense(model, inputs, keep_all, n_visual: list, atol: float = 1e-5):
    """Keep-all equals the dense model (logits at valid positions, greedy generation, the visual
    counts in the report), and unsparsify restores it bit for bit."""
    import sparsevlm

    greedy = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    dense, dense_ids = model(**inputs).logits, model.generate(**inputs, **greedy)
    valid = inputs["attention_mask"].bool()
    with sparsevlm.sparsified(model, keep_all):
        torch.testing.assert_close(model(**inputs).logits[valid], dense[valid], atol=atol, rtol=atol)
        rep = sparsevlm.report(model)
        assert not rep.dense and rep.n_visual.tolist() == n_visual
        assert torch.equal(model.generate(**inputs, **greedy), dense_ids)
    assert torch.equal(model(**inputs).logits, dense)


def assert_refused_and_unchanged(model, inputs, first, refused):
    """Each (config, message pattern) of `refused` raises a ValueError matching it, on a model
    sparsified with `first` (whose patch stays untouched) and on the plain model (left plain); the
    plain model's logits on `inputs` are unchanged at the end."""
    import pytest

    import sparsevlm

    name, before = type(model).__name__, model(**inputs).logits
    sparsevlm.sparsify(model, first)
    state, cls = model._sparsevlm, type(model)
    for cfg, why in refused:
        with pytest.raises(ValueError, match=why):
            sparsevlm.sparsify(model, cfg)
        assert model._sparsevlm is state and type(model) is cls  # the previous patch is untouched
    sparsevlm.unsparsify(model)
    for cfg, why in refused:
        with pytest.raises(ValueError, match=why):
            sparsevlm.sparsify(model, cfg)
        assert not hasattr(model, "_sparsevlm") and type(model).__name__ == name
    assert torch.equal(model(**inputs).logits, before)


def assert_report_is_planned_counts(model, inputs, n_visual: list, cfg):
    """A forward pass under `cfg` reports, per sample, the visual tokens `planned_counts` plans for
    its `n_visual` tokens."""
    import sparsevlm

    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        rep = sparsevlm.report(model)
    for b, n in enumerate(n_visual):
        ins, outs = sparsevlm.planned_counts(cfg, n, model.config.text_config.num_hidden_layers)
        assert rep.visual_in[b].tolist() == ins and rep.visual_out[b].tolist() == outs


def assert_beams_return_several(model, inputs, first_alone, cfg):
    """Beam search with two returned sequences per sample, pruned: the first sample's two equal its
    beams alone (`first_alone`: its inputs without the batch)."""
    import sparsevlm

    beams = dict(max_new_tokens=3, min_new_tokens=3, num_beams=3, num_return_sequences=2)
    with sparsevlm.sparsified(model, cfg):
        ids = model.generate(**inputs, **beams)
        assert not sparsevlm.report(model).dense
        assert ids.shape[0] == 4 and torch.equal(model.generate(**first_alone, **beams)[:, -3:], ids[:2, -3:])


def assert_serves_variant(model, inputs, alone, cfg, keep_all: bool):
    """A variant of a family (an MoE model) through the same adapter: keep-all equals dense on the
    valid positions, a pruning `cfg` gives batched = each alone, and the model is dense again after."""
    import sparsevlm

    dense = model(**inputs).logits
    with sparsevlm.sparsified(model, cfg):
        if keep_all:
            valid = inputs["attention_mask"].bool()
            torch.testing.assert_close(model(**inputs).logits[valid], dense[valid], atol=1e-4, rtol=1e-4)
        else:
            assert_batched_equals_alone(model, inputs, alone)
        assert not sparsevlm.report(model).dense
    assert torch.equal(model(**inputs).logits, dense)
