"""Qwen3.5 (and Qwen3.5-MoE): a hybrid text model, linear attention (a gated delta net: a convolution and a
recurrent state) and full attention alternating, on tiny random models built in-process. Scores come from
full-attention layers only; pruning after a linear-attention layer is refused. A linear-attention layer
after pruning runs over the kept tokens: its state equals the dense model's own layers run over them."""
import pytest
import torch
from helpers import (assert_batched_equals_alone, assert_beams_return_several, assert_keep_all_is_dense,
                     assert_report_is_planned_counts, assert_serves_variant)
from test_qwen3_vl import batch
from transformers import DynamicCache

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.toy.families import IMAGE, QWEN3_5_LAYERS, tiny_vlm

torch.set_grad_enabled(False)

ORIGINAL = dict(positions="original")
FULL = (1, 3)  # the tiny model's full-attention layers (QWEN3_5_LAYERS): linear, full, linear, full, linear
KEEP_ALL = SparseVLMConfig(mode="schedule", pruning_layers=FULL, schedule=(1000, 1000), recycle=False, **ORIGINAL)
METHODS = [SparseVLMConfig(pruning_layers=FULL, scale=1.0, **ORIGINAL),
           SparseVLMConfig.preset(64, pruning_layers=FULL, schedule=(12, 6), **ORIGINAL),
           sparsevlm.FastVConfig(layer=1, prune_ratio=0.6, **ORIGINAL),
           sparsevlm.PDropConfig(pruning_layers=FULL, keep_ratio=0.5, **ORIGINAL),
           sparsevlm.RandomConfig(pruning_layers=FULL, schedule=(10, 5), **ORIGINAL),
           sparsevlm.DivPruneConfig(keep=8, **ORIGINAL), sparsevlm.CDPrunerConfig(keep=8, **ORIGINAL)]
IDS = ["rank", "preset", "fastv", "pdrop", "random", "divprune", "cdpruner"]
GRIDS = {"images": ([(1, 8, 12), (1, 12, 8), (1, 8, 8)], False), "video": ([(2, 8, 8), (4, 8, 8), (2, 8, 12)], True)}


@pytest.fixture(scope="module")
def model():
    return tiny_vlm("qwen3.5")


def test_the_tiny_model_is_hybrid(model):
    text = model.model.language_model
    assert model.config.text_config.layer_types == QWEN3_5_LAYERS
    assert [hasattr(layer, "linear_attn") for layer in text.layers] == [True, False, True, False, True]
    assert [i for i, kind in enumerate(QWEN3_5_LAYERS) if kind == "full_attention"] == list(FULL)


@pytest.mark.parametrize("kind", ["images", "video"])
def test_keep_all_equals_dense_and_unsparsify_restores_it(model, kind):
    grids, video = GRIDS[kind]
    inputs, _ = batch(grids, [5, 3, 7], video)
    assert_keep_all_is_dense(model, inputs, KEEP_ALL, [t * h * w // 4 for t, h, w in grids], atol=1e-4)


@pytest.mark.parametrize("cfg", METHODS, ids=IDS)
@pytest.mark.parametrize("kind", ["images", "video"])
def test_batched_equals_each_sample_alone(model, kind, cfg):
    """Left padding: a linear-attention layer zeroes the padding tokens' inputs, so a row's state is its own."""
    grids, video = GRIDS[kind]
    inputs, alone = batch(grids, [6, 2, 4], video, seed=1)
    with sparsevlm.sparsified(model, cfg):
        rep = assert_batched_equals_alone(model, inputs, alone)
    assert not rep.dense and (rep.visual_out[:, -1] < rep.n_visual).all()


def _dense_text_inputs(model, inputs):
    """What the multimodal model hands its text model on a dense forward (recorded): embeddings and
    M-RoPE positions."""
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        model(**inputs)
    finally:
        hook.remove()
    return seen


def _states(cache, layer):
    return cache.layers[layer].conv_states[0], cache.layers[layer].recurrent_states[0]


def test_linear_layers_after_pruning_equal_the_dense_layers_run_over_the_kept_tokens(model):
    """Pruning after layer 1 keeps 5 of 24 visual tokens. The model's own layers, run with their own cache
    over every token through layer 1, then over the kept tokens alone (their original positions), give the
    same logits, the same convolution and recurrent states in linear layers 2 and 4, the same keys in full
    layer 3; and one decoding step on each cache gives the same next logits (the states continue)."""
    inputs, _ = batch([(1, 8, 12)], [4], seed=5)
    seen = _dense_text_inputs(model, inputs)
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=(5,), recycle=False, **ORIGINAL)
    with sparsevlm.sparsified(model, cfg):
        out = model(**inputs, use_cache=True)
        kept = torch.tensor(sparsevlm.report(model).steps[0]["kept"][0])
        sparse = out.past_key_values  # (its states as the prefill left them: decoding updates them in place)
        lengths = [sparse.get_seq_length(i) for i in FULL]
        states = {i: [t.clone() for t in _states(sparse, i)] for i in (0, 2, 4)}
        keys = sparse.layers[3].keys.clone()
        token = out.logits[:, -1:].argmax(-1)  # the next token: its position follows the model's M-RoPE delta
        after = (inputs["attention_mask"].shape[1] + model.model.rope_deltas).view(1, 1, 1).expand(3, 1, 1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], 1)
        step = model(input_ids=token, attention_mask=mask, position_ids=after, cache=out.past_key_values).logits[0, -1]
    text = model.model.language_model
    vis = inputs["input_ids"][0] == IMAGE
    rows = torch.cat([(~vis).nonzero().flatten(), vis.nonzero().flatten()[kept]]).sort().values
    hidden, positions = seen["inputs_embeds"], seen["position_ids"][-3:]  # (the text row is not rotary's)
    cache = DynamicCache(config=text.config)
    for i, layer in enumerate(text.layers):  # one sample, no padding: no masks (sdpa: causal)
        hidden = layer(hidden, attention_mask=None, position_embeddings=text.rotary_emb(hidden, positions),
                       cache=cache, use_cache=True)
        if i == 1:  # the kept tokens go on alone, at their original positions
            hidden, positions = hidden[:, rows], positions[..., rows]
    torch.testing.assert_close(out.logits[0, rows], model.lm_head(text.norm(hidden))[0], atol=1e-4, rtol=1e-4)
    assert lengths == [inputs["input_ids"].shape[1], len(rows)]
    for layer in (0, 2, 4):
        for ours, own in zip(states[layer], _states(cache, layer)):
            torch.testing.assert_close(ours, own, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(keys, cache.layers[3].keys, atol=1e-5, rtol=1e-4)
    dense = DynamicCache(config=text.config)  # (and they differ from the dense model's over every token)
    model(**inputs, cache=dense, use_cache=True)
    assert not torch.allclose(states[2][1], _states(dense, 2)[1], atol=1e-3)
    hidden = model.get_input_embeddings()(token)
    for layer in text.layers:
        hidden = layer(hidden, attention_mask=None, position_embeddings=text.rotary_emb(hidden, after),
                       cache=cache, use_cache=True)
    torch.testing.assert_close(step, model.lm_head(text.norm(hidden))[0, -1], atol=1e-4, rtol=1e-4)


def test_scores_are_the_full_attention_layers_own_attention():
    """SparseVLM after full-attention layer 3 on an eager model: each visual token's score is the dense
    model's own attention weights there (its gated queries and keys after q_norm/k_norm and RoPE; mean over
    heads and raters), and the kept tokens its top 5. The model records attention at full layers only."""
    eager = tiny_vlm("qwen3.5", attn="eager")
    inputs, _ = batch([(1, 8, 12)], [5], seed=3)
    out = eager(**inputs, output_attentions=True)
    assert len(out.attentions) == len(FULL)  # (1 and 3: linear attention has no weights)
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(3,), schedule=(5,), recycle=False, **ORIGINAL)
    with sparsevlm.sparsified(eager, cfg):
        eager(**inputs)
        rep = sparsevlm.report(eager)
    vis = (inputs["input_ids"][0] == IMAGE).nonzero().flatten()
    scores = out.attentions[1][0][:, rep.raters[0]][:, :, vis].mean(0).mean(0)
    torch.testing.assert_close(rep.steps[0]["scores"][0], scores)
    assert rep.steps[0]["kept"][0] == sorted(scores.topk(5).indices.tolist())


@pytest.mark.parametrize("cfg", [METHODS[1].replace(schedule_of=None), *METHODS[2:]], ids=IDS[1:])
def test_the_report_is_planned_counts(model, cfg):
    grids = [(1, 8, 12), (2, 8, 8)]
    inputs, _ = batch(grids, [4, 7], video=True, seed=2)
    assert_report_is_planned_counts(model, inputs, [t * h * w // 4 for t, h, w in grids], cfg)


@pytest.mark.parametrize("kind", ["images", "video"])
def test_beams_with_several_returned_sequences(model, kind):
    """Beam search reorders the linear layers' states as it reorders the full layers' shorter caches."""
    grids, video = GRIDS[kind]
    inputs, alone = batch(grids[:2], [5, 3], video, seed=2)
    assert_beams_return_several(model, inputs, alone[0], METHODS[1])


def test_budget_per_span_gives_each_frame_its_share(model):
    """A span is one video frame (its own run, after its timestamp): 4 frames of 16 tokens keep 3 each."""
    span = dict(mode="schedule", pruning_layers=(1,), recycle=False, budget_per="span", **ORIGINAL)
    video, _ = batch([(4, 8, 8)], [5], video=True)
    with sparsevlm.sparsified(model, SparseVLMConfig(schedule=(12,), **span)):
        model(**video)
        kept = torch.tensor(sparsevlm.report(model).steps[0]["kept"][0])
    assert torch.bincount(kept // 16, minlength=4).tolist() == [3, 3, 3, 3]


def test_pruning_then_unsparsify_is_exact(model):
    inputs, _ = batch([(2, 8, 8), (1, 8, 12)], [3, 5], video=True, seed=7)
    dense = model(**inputs).logits
    with sparsevlm.sparsified(model, METHODS[1]):
        assert not torch.allclose(model(**inputs).logits[:, -1], dense[:, -1])
    assert torch.equal(model(**inputs).logits, dense) and not hasattr(model, "_sparsevlm")


def test_what_cannot_work_is_refused(model):
    """Pruning after a linear-attention layer (no queries and keys to score with), the paper's default layers
    among them, is refused naming the model and the method, with the full-attention layers to use instead."""
    name = type(model).__name__
    with pytest.raises(ValueError, match=rf"^pruning_layers \[0, 2\]: SparseVLM cannot prune {name} after layers "
                                         rf"\[0, 2\] \(linear attention: .*\); choose other layers, e\.g\. the first "
                                         rf"full-attention layer at or after each: pruning_layers=\(1, 3\) "
                                         rf"\(full attention: \[1, 3\]\)$"):
        sparsevlm.sparsify(model, SparseVLMConfig(pruning_layers=(0, 2), **ORIGINAL))
    with pytest.raises(ValueError, match=f"FastV cannot prune {name} after layers \\[2\\]"):
        sparsevlm.sparsify(model, sparsevlm.FastVConfig(layer=2, **ORIGINAL))
    with pytest.raises(ValueError, match=f"cannot prune {name} after layers \\[2, 4\\]"):
        sparsevlm.sparsify(model, sparsevlm.PDropConfig(**ORIGINAL))  # (8, 16, 24 scaled to 5 layers: 2, 3, 4)
    with pytest.raises(ValueError, match=f"positions='compact': {name} uses M-RoPE"):
        sparsevlm.sparsify(model, SparseVLMConfig(pruning_layers=FULL, positions="compact"))
    with pytest.raises(ValueError, match=f"{name}'s vision tower has no \\[CLS\\] token"):
        sparsevlm.sparsify(model, sparsevlm.VisPrunerConfig(positions="original"))
    with pytest.raises(ValueError, match=f"pools one square grid .* {name} merges"):
        sparsevlm.sparsify(model, sparsevlm.PoolingConfig(positions="original"))
    assert not hasattr(model, "_sparsevlm") and sparsevlm.models.default_positions(model) == "original"


@pytest.mark.parametrize("cfg", [KEEP_ALL, METHODS[1], METHODS[5]], ids=["keep-all", "preset", "divprune"])
def test_the_moe_model_is_served_by_the_same_adapter(cfg):
    inputs, alone = batch([(2, 8, 8), (1, 8, 12)], [5, 3], video=True, seed=8)
    assert_serves_variant(tiny_vlm("qwen3.5-moe"), inputs, alone, cfg, keep_all=cfg is KEEP_ALL)


def test_the_real_architecture_is_accepted_on_the_meta_device():
    """Qwen3.5-9B's shapes (`bench.qwen3_5_9b_config`), no weights: 32 layers, full attention at every 4th;
    the paper's SparseVLM layers are refused with the full-attention layers at or after them."""
    import transformers

    from sparsevlm.bench import qwen3_5_9b_config
    from sparsevlm.models.qwen3_5 import attention_layers

    with torch.device("meta"):
        real = transformers.Qwen3_5ForConditionalGeneration(qwen3_5_9b_config())
    assert {"qwen3_5", "qwen3_5_moe"} <= set(sparsevlm.models.model_types())
    assert attention_layers(real.config.text_config) == [3, 7, 11, 15, 19, 23, 27, 31]
    with pytest.raises(ValueError, match=r"pruning_layers=\(3, 7, 15, 19\)"):
        sparsevlm.sparsify(real, SparseVLMConfig(**ORIGINAL))  # (2, 6, 15, 19)
    with sparsevlm.sparsified(real, SparseVLMConfig(pruning_layers=(3, 7, 15, 19), **ORIGINAL)):
        assert real._sparsevlm.family is sparsevlm.models.qwen3_5.FAMILY
    assert not hasattr(real, "_sparsevlm")


def test_the_9b_shaped_bench_builds_its_prompt_and_moves_the_presets_layers():
    """`sparsevlm bench --model qwen3.5-9b-shaped` on the meta device: 9.4 billion parameters; a 768×768 image
    is 48×48 patches of 16 pixels, 576 tokens after 2×2 merging. The presets' layers 2/6/15 (scaled to 32
    layers: unchanged) move to full-attention layers 3/7/15 in the configs the recipes build, and the baselines
    matched to them follow; DART's own layer 1 has no full-attention layer it could move to unasked: skipped."""
    import transformers

    from sparsevlm.bench import methods_for, qwen3_5_9b_config, synthetic_inputs

    with torch.device("meta"):
        model = transformers.Qwen3_5ForConditionalGeneration(qwen3_5_9b_config())
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == 9.4
    inputs = synthetic_inputs(model, n_text=695 - 576 - 8, device="cpu")
    ids = inputs["input_ids"]
    assert ids.shape == (1, 695) and int((ids == model.config.image_token_id).sum()) == 576
    assert inputs["pixel_values"].shape == (48 * 48, 3 * 2 * 16 * 16)
    assert inputs["image_grid_thw"].tolist() == [[1, 48, 48]]
    skipped = []
    rows = methods_for(model, [128], n_visual=576, log=skipped.append)
    assert list(rows) == ["dense"] + [f"{m} 128" for m in ["sparsevlm", "random", "fastv", "pdrop", "divprune",
                                                             "cdpruner"]]
    layers = {name: cfg.pruning_layers for name, cfg in rows.items() if cfg is not None}
    assert layers == {"sparsevlm 128": (3, 7, 15), "random 128": (3, 7, 15), "fastv 128": (3,),
                      "pdrop 128": (3, 7, 15), "divprune 128": (), "cdpruner 128": ()}
    assert rows["sparsevlm 128"].schedule_of == 576 and all(c.positions == "original" for c in list(rows.values())[1:])
    assert [s.split(":")[0] for s in skipped] == ["visionzip", "tome", "dart", "vispruner", "pooling", "dycoke",
                                                  "fastvid", "vidcom2", "holitom"]
    assert "DART cannot prune Qwen3_5ForConditionalGeneration after layers [1] (linear attention" in skipped[2]
    with pytest.raises(ValueError, match="text_hidden=512: allowed a multiple of 1024 from 1024 to 4096"):
        qwen3_5_9b_config(512)
    narrow = qwen3_5_9b_config(1024).text_config
    assert (narrow.num_attention_heads, narrow.num_key_value_heads, narrow.linear_num_value_heads) == (4, 1, 8)


def test_the_device_is_read_once_more_than_dense_and_never_in_decoding(model):
    """A planned prefill waits for the device once more than the dense one (its counts); the masks of the
    linear layers after pruning read nothing (the padding mask as it is), and decoding reads nothing."""
    from torch.profiler import ProfilerActivity, profile

    from sparsevlm.bench import profile_prefill

    inputs, _ = batch([(1, 8, 12), (1, 12, 8)], [5, 3], seed=4)
    dense = profile_prefill(model, inputs)
    for cfg in METHODS[1:]:
        counts = profile_prefill(model, inputs, cfg)
        assert counts["method_host_reads"] == 1 and counts["host_reads"] == dense["host_reads"] + 1, type(cfg)
    with sparsevlm.sparsified(model, METHODS[1]):
        out = model(**inputs, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)  # positions as generate gives them: the next one, plus the M-RoPE delta
        after = (inputs["attention_mask"].shape[1] + model.model.rope_deltas).view(1, 2, 1).expand(3, 2, 1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], 1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(input_ids=token, attention_mask=mask, position_ids=after, cache=out.past_key_values, use_cache=True)
    assert not [e for e in prof.events() if e.name in ("aten::_local_scalar_dense", "sparsevlm::host_read")]


def test_bench_runs_on_a_checkpoint_folder(capsys, tmp_path):
    """`sparsevlm bench --model PATH` on a saved tiny Qwen3.5 (synthetic 576-token image): the presets' layers
    are moved to full-attention ones, and the FLOPs column counts each layer by its type."""
    import pandas as pd
    from test_cli import run

    tiny_vlm("qwen3.5").save_pretrained(tmp_path / "qwen3.5")
    code, _, err = run(capsys, "bench", "--model", str(tmp_path / "qwen3.5"), "--methods", "sparsevlm", "fastv",
                       "--budgets", "64", "--repeats", "1", "--warmup", "0", "--new-tokens", "1",
                       "--out", str(tmp_path))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "bench_qwen3.5_cpu.csv", index_col=0)
    assert list(table.index) == ["dense", "sparsevlm 64", "fastv 64"]
    assert (table.loc["sparsevlm 64":, "flops_ratio"] < 1).all() and (table["kv_cache_mb"] > 0).all()
    assert (table.loc["sparsevlm 64":, "kv_cache_mb"] < table.loc["dense", "kv_cache_mb"]).all()


def test_the_cache_size_counts_keys_values_and_the_linear_layers_states(model):
    """`bench.kv_cache_mb` on a Qwen3.5 cache: the full-attention layers' keys and values, and each linear
    layer's convolution and recurrent states (what decoding keeps)."""
    from sparsevlm.bench import kv_cache_mb

    inputs, _ = batch([(1, 8, 12)], [5])
    cache = model(**inputs, use_cache=True).past_key_values
    t, L = model.config.text_config, inputs["input_ids"].shape[1]
    attention = 2 * 2 * L * t.num_key_value_heads * t.head_dim  # keys and values of layers 1 and 3
    conv = (2 * t.linear_num_key_heads * t.linear_key_head_dim + t.linear_num_value_heads * t.linear_value_head_dim
            ) * t.linear_conv_kernel_dim
    state = t.linear_num_value_heads * t.linear_key_head_dim * t.linear_value_head_dim
    assert kv_cache_mb(cache) == 4 * (attention + 3 * (conv + state)) / 2 ** 20  # float32
