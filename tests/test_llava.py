"""SparseVLM inside a real transformers LlavaForConditionalGeneration (tiny, random, in-process)."""
import dataclasses
import sys

import pytest
import torch
from helpers import N_VISUAL, assert_batched_equals_alone, batch, sample, tiny_llava
from transformers import LlamaConfig, LlamaForCausalLM

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.models.staged import CACHE

torch.set_grad_enabled(False)

KEEP_ALL = SparseVLMConfig(mode="schedule", pruning_layers=(1, 3), schedule=(N_VISUAL, 1000), recycle=False)
RANK = SparseVLMConfig(pruning_layers=(1, 3), scale=3.0)
PRESET = SparseVLMConfig.preset(64, pruning_layers=(1, 2, 4), schedule=(40, 20, 10))
PLUS = SparseVLMConfig.plus(64, pruning_layers=(1, 2, 4), schedule=(40, 20, 10), top_heads=2)
RANDOM = sparsevlm.RandomConfig(pruning_layers=(1, 3), schedule=(30, 10))
FASTV = sparsevlm.FastVConfig(layer=1, prune_ratio=0.7)
PDROP = sparsevlm.PDropConfig(pruning_layers=(1, 3), keep_ratio=0.5)
VISIONZIP = sparsevlm.VisionZipConfig(dominant=12, contextual=4)
TOME = sparsevlm.ToMeConfig(keep=20)
GREEDY = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)


@pytest.mark.parametrize("text", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("positions", ["compact", "original"])
@pytest.mark.parametrize("relayout", [False, True], ids=["as-planned", "relayout"])
def test_keep_all_equals_the_dense_model(text, attn, positions, relayout):
    """As planned, keep-all leaves the sequence as it is. `relayout` hides that plan from the staged
    decoder, so that it gathers, renumbers and masks every stage as a pruning schedule would."""
    model = tiny_llava(text, attn)
    inputs = batch([7])
    dense_logits = model(**inputs).logits
    dense_ids = model.generate(**inputs, **GREEDY)
    with sparsevlm.sparsified(model, KEEP_ALL.replace(positions=positions)):
        if relayout:
            method = model._sparsevlm.method
            planned = method.plan
            method.plan = lambda *a: dataclasses.replace(planned(*a), same={})
        logits = model(**inputs).logits
        ids = model.generate(**inputs, **GREEDY)
        rep = sparsevlm.report(model)
    torch.testing.assert_close(logits, dense_logits, atol=1e-5, rtol=0)
    assert torch.equal(ids, dense_ids)
    assert not rep.dense and rep.visual_out[0].tolist() == [N_VISUAL] * 6
    assert rep.steps[0]["kept"][0] == list(range(N_VISUAL))


@pytest.mark.parametrize("cfg", [sparsevlm.VisionZipConfig(dominant=N_VISUAL, contextual=0),
                                 sparsevlm.ToMeConfig(keep=N_VISUAL)], ids=["visionzip", "tome"])
def test_pre_llm_methods_keeping_all_equal_the_dense_model(cfg):
    model = tiny_llava("llama", "sdpa")
    inputs = batch([5, 8])
    dense_logits, dense_ids = model(**inputs).logits, model.generate(**inputs, **GREEDY)
    with sparsevlm.sparsified(model, cfg):
        # compact positions renumber the left-padded row from 0 (a forward without position_ids
        # numbers padding too); RoPE is relative, so only float rounding differs
        torch.testing.assert_close(model(**inputs).logits, dense_logits, atol=1e-4, rtol=0)
        assert torch.equal(model.generate(**inputs, **GREEDY), dense_ids)
        assert sparsevlm.report(model).visual_in[:, 0].tolist() == [N_VISUAL] * 2


def test_unsparsify_restores_the_original_and_sparsify_is_idempotent(llama):
    inputs = batch([4])
    cls = type(llama.model.language_model)
    before = llama(**inputs).logits

    def hooks():
        return sum(len(m._forward_hooks) for m in llama.modules())

    rope_module = sys.modules[type(llama.model.language_model.layers[0].self_attn).__module__]
    rope = rope_module.apply_rotary_pos_emb  # (wrapped already if another test left a model sparsified)
    original = getattr(rope, "_sparsevlm_original", rope)
    base = hooks()  # transformers' own output-capture hooks
    sparsevlm.sparsify(llama, RANK)
    once = llama(**inputs).logits
    assert hooks() == base  # queries and keys come from the attention's own rotary embedding: no hook
    assert rope_module.apply_rotary_pos_emb._sparsevlm_original is original
    sparsevlm.sparsify(llama, RANK)
    assert hooks() == base and rope_module.apply_rotary_pos_emb._sparsevlm_original is original  # wrapped once
    assert type(llama.model.language_model).__mro__[2] is cls  # wrapped once, not twice
    assert torch.equal(llama(**inputs).logits, once)
    assert once.shape == before.shape  # outputs stay aligned with the input positions
    present = sparsevlm.report(llama).present
    assert 0 < present.sum() < present.numel() and (once[~present] == 0).all()  # pruned positions: zeros
    sparsevlm.unsparsify(llama)
    assert type(llama.model.language_model) is cls and not hasattr(llama, "_sparsevlm")
    assert hooks() == base and rope_module.apply_rotary_pos_emb is rope
    assert torch.equal(llama(**inputs).logits, before)
    sparsevlm.unsparsify(llama)  # harmless when not sparsified


def test_the_rotary_embedding_stays_wrapped_while_any_model_is_sparsified():
    """Queries and keys are taken from the attention module's `apply_rotary_pos_emb` (wrapped while a
    model using that module is sparsified): two models share the wrapper, and the original comes
    back when the last one is unsparsified; a dense model of the same module runs unchanged."""
    a, b, dense = tiny_llava(seed=1), tiny_llava(seed=2), tiny_llava(seed=3)
    module = sys.modules[type(a.model.language_model.layers[0].self_attn).__module__]
    before = module.apply_rotary_pos_emb
    original = getattr(before, "_sparsevlm_original", before)
    inputs = batch([4])
    expected = dense(**inputs).logits
    sparsevlm.sparsify(a, PRESET)
    sparsevlm.sparsify(b, PRESET)
    assert module.apply_rotary_pos_emb._sparsevlm_original is original
    assert torch.equal(dense(**inputs).logits, expected)  # nothing captured outside a pruning layer
    sparsevlm.unsparsify(a)
    assert module.apply_rotary_pos_emb._sparsevlm_original is original  # b still uses it
    b(**inputs)
    assert sparsevlm.report(b).steps
    sparsevlm.unsparsify(b)
    assert module.apply_rotary_pos_emb is before


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("cfg", [RANK, PRESET, PRESET.replace(positions="original"), PLUS, RANDOM, FASTV, PDROP,
                                 VISIONZIP, TOME, sparsevlm.ToMeConfig(keep=20, positions="original")],
                         ids=["rank", "preset", "original", "plus", "random", "fastv", "pdrop", "visionzip", "tome",
                              "tome-original"])
def test_batched_equals_each_sample_alone(attn, cfg):
    model = tiny_llava("llama", attn)
    inputs = batch([9, 3, 6], seed=5)
    sparsevlm.sparsify(model, cfg)
    logits = model(**inputs).logits[:, -1]
    rep = sparsevlm.report(model)
    ids = model.generate(**inputs, **GREEDY)[:, -5:]
    for b in range(3):
        one = sample(inputs, b)
        torch.testing.assert_close(model(**one).logits[0, -1], logits[b], atol=1e-4, rtol=1e-4)
        rep1 = sparsevlm.report(model)
        for step, step1 in zip(rep.steps, rep1.steps):
            assert step["kept"][b] == step1["kept"][0]
            assert step["recycled"][b] == step1["recycled"][0]
        assert torch.equal(rep.visual_out[b], rep1.visual_out[0])
        assert torch.equal(model.generate(**one, **GREEDY)[0, -5:], ids[b])


@pytest.mark.parametrize("text,plus", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", False)],
                         ids=["sparsevlm", "sparsevlm+", "qwen2", "qwen3-qk-norm"])
def test_kept_tokens_are_the_top_scores_of_the_models_own_attention(text, plus):
    """Captured queries/keys with RoPE reproduce the eager attention weights the model computes
    (for Qwen3, after its q/k norm)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_llava(text, "eager")
    inputs = batch([8], seed=2)
    out = model(**inputs, output_attentions=True)
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(2,), schedule=(20,), recycle=False)
    if plus:
        cfg = cfg.replace(rope_correction=True, top_heads=2, positions="original")
    sparsevlm.sparsify(model, cfg)
    model(**inputs)
    rep = sparsevlm.report(model)
    vis = (inputs["input_ids"][0] == 3).nonzero().flatten()
    attn = out.attentions[2][0][:, rep.raters[0]][:, :, vis]  # (H, R, V) at layer 2
    if plus:  # divide by the logit all-ones q/k get at each distance, keep the 2 strongest heads
        L, Dh = inputs["input_ids"].shape[1], 16
        cos, sin = model.model.language_model.rotary_emb(torch.zeros(1, L, Dh), torch.arange(L)[None])
        ones, _ = apply_rotary_pos_emb(torch.ones(1, 1, L, Dh), torch.ones(1, 1, L, Dh), cos, sin)
        gravity = (ones[0, 0] @ ones[0, 0].T / Dh ** 0.5)[rep.raters[0]][:, vis]
        attn = attn / gravity
        attn = attn[attn.sum((1, 2)).topk(2).indices]
    scores = attn.mean(0).mean(0)
    assert rep.steps[0]["kept"][0] == sorted(scores.topk(20).indices.tolist())
    torch.testing.assert_close(rep.steps[0]["scores"][0], scores)  # the report's grid of scores


def test_kv_cache_shrinks_after_each_pruning_layer(llama):
    inputs = batch([6])
    sparsevlm.sparsify(llama, PRESET)
    out = llama(**inputs, use_cache=True)
    rep = sparsevlm.report(llama)
    L = inputs["input_ids"].shape[1]
    lengths = [layer.keys.shape[-2] for layer in getattr(out, CACHE).layers]
    text = L - N_VISUAL
    vis_after = rep.visual_out[0].tolist()
    assert lengths[:2] == [L, L]  # layers 0-1 see everything, layer 1's output is pruned
    assert lengths[2] == text + vis_after[1] and lengths[5] == text + vis_after[4]
    assert lengths[2] > lengths[3] > lengths[5]
    sparsevlm.unsparsify(llama)


def test_report_accounts_for_every_token(llama):
    inputs = batch([5, 8], seed=3)
    sparsevlm.sparsify(llama, RANK)
    llama(**inputs)
    rep = sparsevlm.report(llama)
    for step in rep.steps:
        layer = step["layer"]
        for b in range(2):
            # tokens after the layer = kept originals + recycled, for every sample
            assert rep.visual_out[b, layer] == step["keep"][b] + step["recycled"][b]
            kept_originals = len(step["kept"][b])
            assert kept_originals <= step["keep"][b]  # earlier recycled tokens may also be kept
            assert step["keep"][b] <= rep.visual_in[b, layer]
    assert rep.steps[0]["keep"].tolist() == [min(int(3.0 * r), N_VISUAL - 1) for r in rep.steps[0]["rank"].tolist()]
    torch.testing.assert_close(rep.equivalent_tokens, rep.visual_out.double().mean(-1))
    assert all(len(r) > 0 for r in rep.raters)
    sparsevlm.unsparsify(llama)


def test_sampling_and_greedy_agree_when_sampling_is_forced(llama):
    inputs = batch([5, 2], seed=4)
    sparsevlm.sparsify(llama, PRESET)
    greedy = llama.generate(**inputs, **GREEDY)
    sampled = llama.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=True, top_k=1)
    assert torch.equal(greedy, sampled)
    torch.manual_seed(0)
    free = llama.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=True, temperature=5.0)
    assert free.shape == greedy.shape and not torch.equal(free, greedy)
    sparsevlm.unsparsify(llama)


def test_text_only_input_runs_dense_and_says_so(llama):
    inputs = batch([4])
    text_only = {"input_ids": inputs["input_ids"][:, -4:], "attention_mask": inputs["attention_mask"][:, -4:]}
    dense = llama(**text_only).logits
    sparsevlm.sparsify(llama, RANK)
    assert torch.equal(llama(**text_only).logits, dense)
    rep = sparsevlm.report(llama)
    assert rep.dense and rep.reason == "no image tokens in the input"
    sparsevlm.unsparsify(llama)


def test_beam_search_reorders_the_shorter_caches_consistently(llama):
    inputs = batch([4, 7], seed=2)
    beams = dict(GREEDY, num_beams=3)
    dense = llama.generate(**inputs, **beams)
    with sparsevlm.sparsified(llama, KEEP_ALL):
        assert torch.equal(llama.generate(**inputs, **beams), dense)
    with sparsevlm.sparsified(llama, PRESET):
        ids = llama.generate(**inputs, **beams)[:, -5:]
        for b in range(2):
            assert torch.equal(llama.generate(**sample(inputs, b), **beams)[0, -5:], ids[b])


@pytest.mark.parametrize("text", ["llama", "qwen2"])
def test_a_static_cache_runs_dense_and_says_so(llama, text):
    """A Qwen2 language model is handed a mask per attention type with a static cache (#32.2)."""
    model = llama if text == "llama" else tiny_llava(text)
    inputs = batch([4, 6])
    static = dict(GREEDY, cache_implementation="static")
    dense = model.generate(**inputs, **static)
    with sparsevlm.sparsified(model, PRESET):
        assert torch.equal(model.generate(**inputs, **static), dense)
        rep = sparsevlm.report(model)
        assert rep.dense and rep.reason.startswith("the KV cache is pre-allocated (StaticCache)")
        assert not torch.equal(model.generate(**inputs, **GREEDY), dense)  # the default cache is pruned


def test_budget_larger_than_the_visual_tokens_keeps_them_all(llama):
    cfg = SparseVLMConfig.preset(192, pruning_layers=(1, 2, 3), recycle=False)
    with sparsevlm.sparsified(llama, cfg.replace(schedule_of=None)):  # absolute 300/200/110 > 64
        llama(**batch([4]))
        assert sparsevlm.report(llama).visual_out[0].tolist() == [N_VISUAL] * 6
    with sparsevlm.sparsified(llama, cfg):  # the preset's ratios of 576: 300/576 of 64 tokens, ...
        llama(**batch([4]))
        assert sparsevlm.report(llama).visual_out[0].tolist() == [N_VISUAL, 33, 22, 12, 12, 12]


def test_errors_name_what_is_supported(llama):
    text_model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(TypeError, match="LlamaForCausalLM is not supported; supported: LlavaForConditionalGeneration"):
        sparsevlm.sparsify(text_model)
    with pytest.raises(TypeError, match="cfg of type dict is not a method config; supported: SparseVLMConfig"):
        sparsevlm.sparsify(llama, {"scale": 2})
    with pytest.raises(ValueError, match=r"layers \[6, 15, 19\] do not exist; this model has layers 0..5"):
        sparsevlm.sparsify(llama, SparseVLMConfig())
    assert not hasattr(llama, "_sparsevlm")
    with pytest.raises(ValueError, match="model is not sparsified"):
        sparsevlm.report(llama)
    model = tiny_llava("llama", layers=2)  # an attention whose q/k the library does not know: refused, not guessed
    attn = model.model.language_model.layers[0].self_attn
    attn.__class__ = type("CustomAttention", (type(attn),), {"__module__": "my_models.modeling_custom"})
    with pytest.raises(TypeError, match="attention CustomAttention is not one whose queries and keys this library"):
        sparsevlm.sparsify(model, SparseVLMConfig(pruning_layers=(0,)))


def test_the_llava_1_5_7b_architecture_is_accepted_without_weights():
    """llava-hf/llava-1.5-7b-hf's shapes, built on the meta device (no download, no memory)."""
    from transformers import LlavaForConditionalGeneration

    from sparsevlm.bench import llava_1_5_7b_config

    cfg = llava_1_5_7b_config()
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(cfg)
    sparsevlm.sparsify(model)  # the paper's rank mode: layers 2, 6, 15, 19
    assert model._sparsevlm.method.pruning_layers == (2, 6, 15, 19)
    sparsevlm.unsparsify(model)
    assert not hasattr(model.model.language_model, "_sparsevlm")


def test_random_baseline_keeps_the_scheduled_count_and_depends_on_its_seed(llama):
    inputs = batch([5, 3], seed=6)
    sparsevlm.sparsify(llama, RANDOM)
    llama(**inputs)
    rep = sparsevlm.report(llama)
    assert rep.visual_out[:, 1].tolist() == [30, 30] and rep.visual_out[:, 3].tolist() == [10, 10]
    kept = rep.steps[1]["kept"]
    assert set(kept[0]) <= set(rep.steps[0]["kept"][0])  # progressive: later layers keep a subset
    sparsevlm.sparsify(llama, sparsevlm.RandomConfig(pruning_layers=(1, 3), schedule=(30, 10), seed=1))
    llama(**inputs)
    assert sparsevlm.report(llama).steps[1]["kept"] != kept
    sparsevlm.unsparsify(llama)
    with pytest.raises(ValueError, match="^schedule="):
        sparsevlm.RandomConfig(pruning_layers=(1, 3), schedule=(30,))


def test_budget_per_span_gives_each_image_its_share(llama):
    """Two images in one prompt: one budget for both (the reference), or split by image."""
    inputs = batch([5], seed=3)
    ids = inputs["input_ids"][0]
    two = {"input_ids": torch.cat([ids[:4], ids[4:4 + N_VISUAL], torch.tensor([20, 21]), ids[4:]])[None],
           "pixel_values": torch.cat([inputs["pixel_values"], inputs["pixel_values"].flip(-1)])}
    two["attention_mask"] = torch.ones_like(two["input_ids"])
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=(20,), recycle=False)
    kept = {}
    for per in ("sample", "span"):
        with sparsevlm.sparsified(llama, cfg.replace(budget_per=per)):
            llama(**two)
            kept[per] = torch.tensor(sparsevlm.report(llama).steps[0]["kept"][0])
    assert len(kept["sample"]) == len(kept["span"]) == 20
    assert [(kept["span"] < N_VISUAL).sum().item(), (kept["span"] >= N_VISUAL).sum().item()] == [10, 10]
    assert (kept["sample"] < N_VISUAL).sum().item() != 10  # one shared budget: the images compete
    with sparsevlm.sparsified(llama, cfg.replace(budget_per="span")):  # one image: the same as per sample
        llama(**inputs)
        one_span = sparsevlm.report(llama).steps[0]["kept"]
    with sparsevlm.sparsified(llama, cfg):
        llama(**inputs)
        assert sparsevlm.report(llama).steps[0]["kept"] == one_span


def test_decoding_reads_nothing_back_from_the_device(llama):
    """Each host read of a device value stalls a GPU pipeline; a decode step of the shorter caches
    makes none (each stage's mask is built without asking whether sdpa could skip it)."""
    from torch.profiler import profile

    inputs = batch([4, 7])
    with sparsevlm.sparsified(llama, PRESET):
        out = llama(**inputs, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)], 1)
        with profile() as prof:
            llama(input_ids=nxt, attention_mask=mask, use_cache=True, **{CACHE: getattr(out, CACHE)})
    assert [e.name for e in prof.events() if e.name == "aten::_local_scalar_dense"] == []


def test_a_decode_steps_sdpa_mask_is_the_padding_mask_that_create_causal_mask_builds(llama, monkeypatch):
    """One new token under sdpa attends to every valid cached token: the staged decoder passes the
    padding mask (B, 1, 1, kv) instead of building it; it must equal transformers' mask at every
    stage of every step (left padding, both position modes)."""
    from transformers.masking_utils import create_causal_mask

    from sparsevlm.models import staged

    checked = []
    stage = staged.SparseTextModel._stage

    def compare(self, hidden, mask2d, positions, cache, layer_idx, skip=True, rope=True, **kw):
        out = stage(self, hidden, mask2d, positions, cache, layer_idx, skip, rope, **kw)
        if not skip and hidden.shape[1] == 1:
            ref = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask2d,
                                     position_ids=staged._layer_ids(positions), layer_idx=layer_idx,
                                     allow_is_causal_skip=False, **{CACHE: cache})
            assert torch.equal(ref, out[0])
            checked.append(layer_idx)
        return out

    monkeypatch.setattr(staged.SparseTextModel, "_stage", compare)
    inputs = batch([4, 7])
    for cfg in (PRESET, PRESET.replace(positions="original")):
        with sparsevlm.sparsified(llama, cfg):
            llama.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert len(checked) == 2 * 2 * (1 + len(PRESET.pruning_layers))  # 2 configs, 2 decode steps, every stage


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("positions", ["compact", "original"])
def test_one_sample_after_pruning_builds_no_mask_and_reads_no_packed_sequences(attn, positions, monkeypatch):
    """A stage of one sample after pruning has no padding: under sdpa no mask is built (its causal
    flag instead), under eager the plain causal mask. The positions are kept from the mask: without a
    cache, transformers reads gaps in them (original positions after pruning) as packed sequences and
    would cut the attention there. Outputs equal the cached prefill's, which never looks for packing."""
    from sparsevlm.models import staged

    model = tiny_llava("llama", attn)
    inputs = sample(batch([6], seed=3), 0)
    masks = []
    stage = staged.SparseTextModel._stage

    def keep(self, hidden, mask2d, positions, cache, layer_idx, *a, **kw):
        out = stage(self, hidden, mask2d, positions, cache, layer_idx, *a, **kw)
        masks.append(out[0])
        return out

    monkeypatch.setattr(staged.SparseTextModel, "_stage", keep)
    with sparsevlm.sparsified(model, PRESET.replace(positions=positions)):
        cached = model(**inputs, use_cache=True).logits
        assert len(masks) == 1 + len(PRESET.pruning_layers)
        if attn == "sdpa":
            assert all(m is None for m in masks)  # the first stage too, as the dense model decides
        else:
            assert all(m.shape[-1] == m.shape[-2] for m in masks[1:])
        plain = model(**inputs, use_cache=False).logits
    torch.testing.assert_close(plain, cached, atol=1e-5, rtol=1e-5)


def test_dart_reads_the_keys_before_rope_of_a_text_model_with_a_key_norm():
    """Qwen3's keys before RoPE come out of `k_norm` per head, (B, L, H_kv, Dh); DART reads them with
    the heads concatenated, as from a `k_proj` (it once failed on them). Batched equals alone."""
    model = tiny_llava("qwen3")
    inputs = batch([4, 7], seed=5)
    with sparsevlm.sparsified(model, sparsevlm.DARTConfig(pruning_layers=(1,), reduction_ratio=0.6)):
        assert_batched_equals_alone(model, inputs, [sample(inputs, b) for b in range(2)])
