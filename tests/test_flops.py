import pytest
from helpers import batch, tiny_llava

import sparsevlm
import torch

from sparsevlm.flops import count_flops, dims, layer_flops, paper_table, report_flops


def test_the_papers_llava_table_is_reproduced_from_the_architecture():
    table = paper_table()
    assert list(table.index) == ["dense", 192, 128, 64]
    assert list(table.columns) == ["tflops", "tflops_paper", "ratio"]
    # 4.627 / 2.116 / 1.707 / 1.301 TFLOPs vs the paper's 4.62 / 2.14 / 1.72 / 1.30
    assert ((table["ratio"] - 1).abs() < 0.015).all()
    assert table.loc["dense", "tflops"] == pytest.approx(32 * layer_flops(695, 4096, 11008) / 1e12, abs=1e-3)


def test_report_flops_of_a_pruned_forward():
    model = tiny_llava("llama")
    inputs = batch([6, 2])
    d, m = 64, 128
    cfg = sparsevlm.SparseVLMConfig.preset(64, pruning_layers=(1, 3), schedule=(32, 8), recycle=False)
    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        rep = sparsevlm.report(model)
    n = inputs["attention_mask"].sum(-1)  # 64 visual + text tokens, per sample
    # layers 0-1 see everything, 2-3 see 32 visual tokens, 4-5 see 8
    expected = [2 * layer_flops(k, d, m) + 2 * layer_flops(k - 32, d, m) + 2 * layer_flops(k - 56, d, m)
                for k in n.tolist()]
    assert report_flops(rep, d, m).tolist() == expected
    with sparsevlm.sparsified(model, sparsevlm.SparseVLMConfig(pruning_layers=(1,))):
        model(input_ids=inputs["input_ids"][:1, -3:])  # text only: dense
        dense = sparsevlm.report(model)
    assert report_flops(dense, d, m).item() == 6 * layer_flops(3, d, m)


PRESET = sparsevlm.SparseVLMConfig.preset(64, pruning_layers=(1, 3), schedule=(32, 8))


@pytest.mark.parametrize("text,attn,cfg", [
    ("llama", "sdpa", None), ("llama", "eager", None), ("llama", "sdpa", PRESET), ("llama", "eager", PRESET),
    ("qwen2", "sdpa", PRESET), ("llama", "sdpa", sparsevlm.VisionZipConfig(dominant=10, contextual=4)),
    ("llama", "sdpa", sparsevlm.DARTConfig(pruning_layers=(1,), pivot_image=2, pivot_text=2)),
    ("llama", "sdpa", sparsevlm.DivPruneConfig(keep=16)), ("llama", "sdpa", sparsevlm.VisPrunerConfig(keep=16)),
    ("llama", "sdpa", sparsevlm.CDPrunerConfig(keep=16))],
    ids=["dense-sdpa", "dense-eager", "sparse-sdpa", "sparse-eager", "qwen2-sparse", "visionzip", "dart", "divprune",
         "vispruner", "cdpruner"])
def test_fvcore_torch_and_the_formula_agree(text, attn, cfg):
    model = tiny_llava(text, attn)  # grouped-query attention: 2 key/value heads of 4
    inputs = batch([6])
    if cfg is not None:
        sparsevlm.sparsify(model, cfg)
    fv, tc = count_flops(model, inputs, "fvcore"), count_flops(model, inputs, "torch")
    # the formula per layer, from the token counts the layers saw
    n_text = inputs["input_ids"].shape[1] - 64
    visual = sparsevlm.report(model).visual_in[0] if cfg is not None else torch.full((6,), 64)
    formula = [layer_flops(n_text + int(v), **dims(model)) for v in visual]
    assert fv["per_layer"] == tc["per_layer"] == formula  # exact: the same matrix products
    # outputs are aligned with the input, so the head sees every input position (generate asks for the last only)
    assert fv["lm_head"] == tc["lm_head"] == model.config.text_config.hidden_size * 128 * (n_text + 64)
    if cfg is None:
        assert fv["overhead"] == tc["overhead"] == 0
    else:
        assert fv["overhead"] > 0 and abs(fv["overhead"] - tc["overhead"]) <= 0.1 * fv["overhead"]
    assert fv["total"] == fv["vision"] + fv["layers"] + fv["lm_head"] + fv["overhead"]


def test_count_flops_rejects_unknown_counters():
    with pytest.raises(ValueError, match="^counter='ptflops' is not supported; allowed: 'fvcore', 'torch'"):
        count_flops(tiny_llava(), batch([2]), counter="ptflops")


def test_other_families_are_counted_layer_by_layer():
    """Qwen2-VL (M-RoPE, GQA) and LLaVA-NeXT: formula = counters on every decoder layer, pruned."""
    from test_families import image_batch
    from test_families import tiny as tiny_family
    from test_qwen_vl import batch as qwen_batch
    from test_qwen_vl import tiny as tiny_qwen

    next_model = tiny_family("next")
    cases = [(tiny_qwen("qwen2-vl"), qwen_batch([(1, 8, 12)], [5])[0], ("torch", "fvcore")),
             (next_model, image_batch(next_model, [5])[0], ("torch",))]
    cfg = sparsevlm.SparseVLMConfig.preset(64, pruning_layers=(1, 2), schedule=(12, 6), positions="original")
    for model, inputs, counters in cases:
        with sparsevlm.sparsified(model, cfg):
            model(**inputs)
            rep = sparsevlm.report(model)
            n_text = int(inputs["attention_mask"].sum() - rep.n_visual[0])
            formula = [layer_flops(n_text + int(v), **dims(model)) for v in rep.visual_in[0]]
            assert formula[2] < formula[0]
            for counter in counters:
                counted = count_flops(model, dict(inputs), counter)
                assert counted["per_layer"] == formula and counted["vision"] > 0, (type(model).__name__, counter)
            if counters == ("torch",):
                with pytest.raises(ValueError, match="fvcore cannot trace LlavaNextForConditionalGeneration"):
                    count_flops(model, dict(inputs), "fvcore")


def test_qwen3_vl_deepstack_and_internvl_are_counted_layer_by_layer():
    """Qwen3-VL adds DeepStack features (one D-wide vector per visual token) after text layers 0-2;
    InternVL's tiles are 16 tokens each. Pruning after layers 0 and 1 (before DeepStack is done):
    the formula equals torch's counter on every decoder layer, dense and pruned. The formula has no
    DeepStack term on purpose: the add is element-wise, which neither the counters nor the paper's
    formula count (as norms and activations). It is n_visual·D adds a DeepStack layer, under 1e-4 of
    that layer's multiply-adds on Qwen3-VL-8B (below)."""
    from test_internvl import batch as internvl_batch
    from test_qwen3_vl import batch as qwen3_batch

    from sparsevlm.bench import qwen3_vl_8b_config
    from sparsevlm.toy.families import tiny_internvl, tiny_vlm

    qwen3 = tiny_vlm("qwen3-vl")
    cases = [(qwen3, qwen3_batch([(1, 8, 12)], [5])[0]), (tiny_internvl("qwen3"), internvl_batch([[3]], [5])[0])]
    cfg = sparsevlm.SparseVLMConfig.preset(64, pruning_layers=(0, 1), schedule=(12, 6), positions="original")
    for model, inputs in cases:
        dense = count_flops(model, dict(inputs), "torch")
        with sparsevlm.sparsified(model, cfg):
            model(**inputs)
            rep = sparsevlm.report(model)
            pruned = count_flops(model, dict(inputs), "torch")
        n_text = int(inputs["attention_mask"].sum() - rep.n_visual[0])
        formula = [layer_flops(n_text + int(v), **dims(model)) for v in rep.visual_in[0]]
        seen = rep.visual_in[0].tolist()  # pruned while DeepStack still adds (12 and 6 kept, plus recycled tokens)
        assert seen[0] == int(rep.n_visual[0]) > seen[1] > seen[2] == seen[3]
        assert pruned["per_layer"] == formula and pruned["vision"] == dense["vision"] > 0, type(model).__name__
        assert dense["per_layer"] == [layer_flops(n_text + int(rep.n_visual[0]), **dims(model))] * 4
        assert pruned["overhead"] > 0 and dense["overhead"] == 0
    assert len(qwen3.config.vision_config.deepstack_visual_indexes) == 3  # the tiny model does use DeepStack
    t = qwen3_vl_8b_config().text_config  # one 768×768 image (576 tokens) and 119 text tokens
    head = t.head_dim * t.num_key_value_heads
    assert 576 * t.hidden_size / layer_flops(695, t.hidden_size, t.intermediate_size, head) < 1e-4


def test_qwen3_5_linear_and_full_attention_layers_are_counted_layer_by_layer():
    """Qwen3.5's hybrid layers: linear attention (projections, a depthwise convolution, the chunked gated delta
    rule) and full attention with gated queries. `config_layer_flops` equals torch's counter on every layer,
    dense and pruned after full-attention layers 1 and 3, on prompts of one and two 64-token chunks."""
    from types import SimpleNamespace

    from test_qwen3_vl import batch as qwen3_batch

    from sparsevlm.flops import config_layer_flops
    from sparsevlm.toy.families import tiny_vlm

    model = tiny_vlm("qwen3.5")
    t = model.config.text_config
    cfg = sparsevlm.SparseVLMConfig.preset(64, pruning_layers=(1, 3), schedule=(12, 6), positions="original")
    for grid in [(1, 8, 12), (1, 16, 16)]:  # 24 and 64 visual tokens: 33 and 73 tokens in all
        inputs = qwen3_batch([grid], [5])[0]
        n = inputs["input_ids"].shape[1]
        dense = count_flops(model, dict(inputs), "torch")
        assert dense["per_layer"] == [config_layer_flops(t, i, n) for i in range(5)]
        with sparsevlm.sparsified(model, cfg):
            model(**inputs)
            rep = sparsevlm.report(model)
            pruned = count_flops(model, dict(inputs), "torch")
        n_text = n - int(rep.n_visual[0])
        seen = [n_text + int(v) for v in rep.visual_in[0]]
        assert pruned["per_layer"] == [config_layer_flops(t, i, k) for i, k in enumerate(seen)]
        # what eval, the bench and lmms-eval report: `dims` gives the config, each layer counted by its type
        assert report_flops(rep, **dims(model)).item() == sum(pruned["per_layer"])
        assert layer_flops(n, **dims(model)) == sum(dense["per_layer"]) / 5
        assert pruned["per_layer"][4] < dense["per_layer"][4]  # a linear layer after pruning runs over fewer tokens
    linear, full = config_layer_flops(t, 0, 33), config_layer_flops(t, 1, 33)
    assert linear != full and config_layer_flops(t, 0, 64) == config_layer_flops(t, 0, 33) + 31 * (
        config_layer_flops(t, 0, 34) - config_layer_flops(t, 0, 33))  # linear in n within one chunk: no n² term
    chunked = SimpleNamespace(layer_types=["chunked_attention"] * 4, num_hidden_layers=4)
    with pytest.raises(ValueError, match="^layer 0 is 'chunked_attention'; counted: 'full_attention', 'sliding_"):
        config_layer_flops(chunked, 0, 8)


def test_gemma3_sliding_and_global_layers_are_counted_layer_by_layer():
    """Gemma 3's layers: sliding-window and global attention, 4 heads of 16 on a hidden size of 64.
    `config_layer_flops` equals torch's counter on every layer, dense and pruned after layers 1 (sliding)
    and 2 (global): the kernels form all n² scores of a sliding layer, as of a global one."""
    from test_gemma3 import batch as gemma3_batch

    from sparsevlm.flops import config_layer_flops
    from sparsevlm.toy.families import tiny_gemma3

    model = tiny_gemma3()
    t = model.config.text_config
    inputs = gemma3_batch([2], [5])[0]
    n = inputs["input_ids"].shape[1]
    dense = count_flops(model, dict(inputs), "torch")
    assert dense["per_layer"] == [config_layer_flops(t, i, n) for i in range(4)]
    cfg = sparsevlm.SparseVLMConfig.preset(64, pruning_layers=(1, 2), schedule=(12, 6), positions="original")
    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        rep = sparsevlm.report(model)
        pruned = count_flops(model, dict(inputs), "torch")
    seen = [n - int(rep.n_visual[0]) + int(v) for v in rep.visual_in[0]]
    assert seen[0] == seen[1] == n > seen[2] > seen[3]
    assert pruned["per_layer"] == [config_layer_flops(t, i, k) for i, k in enumerate(seen)]
    assert pruned["vision"] == dense["vision"] > 0 and pruned["overhead"] > 0 == dense["overhead"]
    assert config_layer_flops(t, 0, n) == config_layer_flops(t, 2, n)  # (one formula for both kinds)


@pytest.mark.parametrize("family", ["qwen3-vl-moe", "qwen3.5-moe"])
def test_a_mixture_of_experts_counts_the_experts_a_token_is_routed_to(family):
    """A token passes through its k routed experts and a shared expert, not `intermediate_size` (a
    dense MLP's width, which an MoE config may also carry): that is the width counted, at every layer."""
    from sparsevlm.flops import config_layer_flops, dims, mlp_width
    from sparsevlm.toy.families import tiny_vlm

    t = tiny_vlm(family).config.text_config
    shared = getattr(t, "shared_expert_intermediate_size", None) or 0
    assert mlp_width(t) == t.num_experts_per_tok * t.moe_intermediate_size + shared
    assert dims(tiny_vlm(family))["intermediate"] == mlp_width(t)
    n = torch.tensor([10, 20])
    per_layer = torch.stack([config_layer_flops(t, i, n) for i in range(t.num_hidden_layers)])
    assert (per_layer[:, 1] > per_layer[:, 0]).all()
