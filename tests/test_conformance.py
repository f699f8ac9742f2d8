"""What transformers' model and generation tests check, on every family, sparsified (#32).

Each behaviour runs twice: keep-all must equal the dense model, and a pruning schedule must run
or say why in `report(model).reason`. The behaviours: output flags (argument and config), static,
offloaded and compiled caches, packed rows, left and right padding (logits everywhere, the loss,
generation), `inputs_embeds` generation, `logits_to_keep`, a save/load round trip, assisted decoding
and beam search with several returned sequences. Written from reading transformers'
`test_modeling_common.py` and `generation/test_utils.py`; nothing is copied from them."""
import contextlib

import pytest
import torch
from helpers import batch as llava_batch
from helpers import packed_row, right_padded, tiny_llava
from helpers import sample as llava_sample
from test_families import image_batch, video_batch
from test_gemma3 import batch as gemma3_batch
from test_internvl import batch as internvl_batch
from test_qwen3_vl import batch as qwen3_batch
from test_qwen_vl import batch as qwen_batch
from transformers import CompileConfig

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.toy.families import tiny_vlm

torch.set_grad_enabled(False)

FAMILIES = ["llava", "next", "onevision", "video-llava", "next-video", "qwen2-vl", "qwen2.5-vl", "internvl", "qwen3-vl",
            "qwen3.5", "gemma3"]
#: pruning layers where (1, 2) cannot be: Qwen3.5 prunes after full-attention layers only (1 and 3 of the tiny model)
LAYERS = {"qwen3.5": (1, 3)}
GREEDY = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)


def keep_all(family):
    return SparseVLMConfig(mode="schedule", pruning_layers=LAYERS.get(family, (1, 2)), schedule=(1000, 1000),
                           recycle=False, positions="original" if family.startswith("qwen") else "compact")


def pruning(family):
    return SparseVLMConfig(mode="schedule", pruning_layers=LAYERS.get(family, (1, 2)), schedule=(6, 3), recycle=True,
                           positions="original" if family.startswith("qwen") else "compact")


def inputs_of(family, model):
    """A left-padded batch of two prompts with visual tokens (video where the family reads it)."""
    if family == "llava":
        full = llava_batch([4, 7], seed=3)
        return full, [llava_sample(full, b) for b in range(2)]
    if family == "gemma3":  # one image, then two; token types mark the image tokens
        return gemma3_batch([1, 2], [4, 6], seed=3)[:2]
    if family == "internvl":  # tiles: 2 and 3 per image, a second image in the second prompt
        return internvl_batch([[2], [3, 1]], [4, 6], seed=3)[:2]
    if family in ("qwen3-vl", "qwen3.5"):  # a video: one run per frame pair, after its timestamp
        return qwen3_batch([(2, 8, 8), (4, 8, 8)], [4, 6], video=True, seed=3)
    if family.startswith("qwen"):
        return qwen_batch([(1, 8, 8), (2, 8, 8)], [4, 6], video=family == "qwen2.5-vl", seed=3)
    make = video_batch if family in ("video-llava", "next-video") else image_batch
    full, alone, _ = make(model, [4, 6], seed=3)
    return full, alone


@pytest.fixture(scope="module", params=FAMILIES)
def case(request):
    family = request.param
    model = tiny_llava() if family == "llava" else tiny_vlm(family)
    model.generation_config.pad_token_id = 0
    full, alone = inputs_of(family, model)
    return family, model, full, alone


def test_output_flags_as_arguments_or_on_the_config_run_dense(case):
    family, model, full, _ = case
    dense = model(**full, output_attentions=True, output_hidden_states=True)
    with sparsevlm.sparsified(model, pruning(family)):
        out = model(**full, output_attentions=True)
        assert "output_attentions" in sparsevlm.report(model).reason
        torch.testing.assert_close(out.attentions, dense.attentions)  # (none under sdpa, as dense)
        text = model.config.get_text_config()
        text.output_hidden_states = True
        try:
            out = model(**full)
        finally:
            text.output_hidden_states = False
        assert "output_hidden_states" in sparsevlm.report(model).reason
        torch.testing.assert_close(out.hidden_states[-1], dense.hidden_states[-1])


@pytest.mark.parametrize("cache", ["static", pytest.param("offloaded", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="an offloaded cache moves layers to and from CUDA: runs on a GPU machine"))])
def test_static_and_offloaded_caches(case, cache):
    family, model, full, _ = case
    if cache == "offloaded":
        model, full = model.cuda(), {k: v.cuda() for k, v in full.items()}
    dense = model.generate(**full, **GREEDY, cache_implementation=cache)
    with sparsevlm.sparsified(model, keep_all(family)):
        assert torch.equal(model.generate(**full, **GREEDY, cache_implementation=cache), dense)
    with sparsevlm.sparsified(model, pruning(family)):
        out = model.generate(**full, **GREEDY, cache_implementation=cache)
        rep = sparsevlm.report(model)
        if cache == "static":  # pre-allocated layers cannot hold fewer tokens: dense, and said
            assert rep.dense and "pre-allocated" in rep.reason and torch.equal(out, dense)
        else:  # an offloaded dynamic cache holds the shorter stages as the plain one does
            assert not rep.dense and torch.equal(out, model.generate(**full, **GREEDY))


def test_compiled_decoding_runs_dense_from_its_eager_prefill(case):
    family, model, full, _ = case
    compiled = CompileConfig(fullgraph=True, backend="eager")
    compiled._compile_all_devices = True  # transformers compiles on GPUs only unless told
    args = dict(**GREEDY, cache_implementation="static", compile_config=compiled)
    torch._dynamo.reset()
    dense = model.generate(**full, **args)
    for cfg in (keep_all(family), pruning(family)):
        with sparsevlm.sparsified(model, cfg):
            torch._dynamo.reset()
            assert torch.equal(model.generate(**full, **args), dense)
            assert "pre-allocated" in sparsevlm.report(model).reason


def test_packed_rows_run_dense_and_say_why(case):
    """Prompts packed in one row, told apart by positions that restart (no padding mask)."""
    family, model, _, alone = case
    packed = packed_row(model, alone)
    dense = model(**packed).logits
    for cfg in (keep_all(family), pruning(family)):
        with sparsevlm.sparsified(model, cfg):
            assert torch.equal(model(**packed).logits, dense)
            assert "packed" in sparsevlm.report(model).reason


def test_padding_left_and_right_keep_all_is_dense_everywhere(case):
    family, model, full, _ = case
    for inputs in (full, right_padded(full)):
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        dense = model(**inputs, labels=labels)
        with sparsevlm.sparsified(model, keep_all(family)):
            out = model(**inputs, labels=labels)
            assert not sparsevlm.report(model).dense
        torch.testing.assert_close(out.logits, dense.logits)  # padding positions included
        torch.testing.assert_close(out.loss, dense.loss)  # the first real label, predicted from padding, counts


def test_right_padded_generation_runs_dense_when_pruning(case):
    family, model, full, _ = case
    right = right_padded(full)
    dense = model.generate(**right, **GREEDY)
    with sparsevlm.sparsified(model, keep_all(family)):
        assert torch.equal(model.generate(**right, **GREEDY), dense)
    with sparsevlm.sparsified(model, pruning(family)):
        assert torch.equal(model.generate(**right, **GREEDY), dense)
        assert "right-padded" in sparsevlm.report(model).reason
        model.generate(**full, **GREEDY)  # left padding prunes
        assert not sparsevlm.report(model).dense


def test_generation_from_inputs_embeds(case):
    """Keep-all equals dense from embeddings; pruning decides as from token ids wherever the dense
    model computes the same from both (Qwen's dense models do not: their M-RoPE positions need ids).
    "The same": the first step's logits (tokens alone may agree by chance: they do on the tiny Qwen3.5)."""
    family, model, full, _ = case
    embeds = dict(full, inputs_embeds=model.get_input_embeddings()(full["input_ids"]))
    del embeds["input_ids"]
    if family == "gemma3":  # transformers refuses it: Gemma 3's generation takes no inputs_embeds
        for cfg in (None, keep_all(family), pruning(family)):
            with sparsevlm.sparsified(model, cfg) if cfg else contextlib.nullcontext():
                with pytest.raises(ValueError, match="passed `inputs_embeds` to `.generate"):
                    model.generate(**embeds, **GREEDY)
        return
    scored = dict(**GREEDY, output_scores=True, return_dict_in_generate=True)
    own, from_ids = model.generate(**embeds, **scored), model.generate(**full, **scored)
    dense, same = own.sequences, torch.allclose(own.scores[0], from_ids.scores[0])
    assert same != family.startswith("qwen")
    with sparsevlm.sparsified(model, keep_all(family)):
        assert torch.equal(model.generate(**embeds, **GREEDY), dense)
    with sparsevlm.sparsified(model, pruning(family)):
        from_ids = model.generate(**full, **GREEDY)[:, full["input_ids"].shape[1]:]
        kept = sparsevlm.report(model).steps[-1]["kept"]
        from_embeds = model.generate(**embeds, **GREEDY)
        assert not sparsevlm.report(model).dense
        if same:
            assert torch.equal(from_embeds, from_ids) and sparsevlm.report(model).steps[-1]["kept"] == kept


def test_logits_to_keep_gives_the_last_logits(case):
    family, model, full, _ = case
    for cfg in (keep_all(family), pruning(family)):
        with sparsevlm.sparsified(model, cfg):
            last = model(**full).logits[:, -1:]
            torch.testing.assert_close(model(**full, logits_to_keep=1).logits, last)


def test_save_and_load_round_trip(case, tmp_path):
    family, model, full, _ = case
    with sparsevlm.sparsified(model, pruning(family)):
        before = model(**full).logits
        model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with sparsevlm.sparsified(loaded, pruning(family)):
        torch.testing.assert_close(loaded(**full).logits, before)


def test_assisted_decoding_decides_as_without_an_assistant(case):
    family, model, _, alone = case
    one = alone[0]  # transformers assists batch 1 only
    if family == "qwen3.5":  # transformers refuses it for a stateful model (linear attention cannot roll back)
        def stateful():
            return pytest.raises(ValueError, match="assisted generation is not supported with stateful models")

        with stateful():
            model.generate(**one, **GREEDY, prompt_lookup_num_tokens=2)
        for cfg in (keep_all(family), pruning(family)):
            with sparsevlm.sparsified(model, cfg), stateful():
                model.generate(**one, **GREEDY, prompt_lookup_num_tokens=2)
        return
    for cfg in (keep_all(family), pruning(family)):
        with sparsevlm.sparsified(model, cfg):
            plain = model.generate(**one, **GREEDY)
            kept = sparsevlm.report(model).steps[-1]["kept"]
            assert torch.equal(model.generate(**one, **GREEDY, prompt_lookup_num_tokens=2), plain)
            assert sparsevlm.report(model).steps[-1]["kept"] == kept


def test_beams_with_several_returned_sequences(case):
    family, model, full, _ = case
    beams = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    dense = model.generate(**full, **beams)
    with sparsevlm.sparsified(model, keep_all(family)):
        assert torch.equal(model.generate(**full, **beams), dense)
    with sparsevlm.sparsified(model, pruning(family)):
        out = model.generate(**full, **beams)
        assert out.shape[0] == 4 and not sparsevlm.report(model).dense


def test_the_cache_holds_the_whole_prompt_at_every_layer_under_keep_all(case):
    """transformers' `test_past_key_values_format` expects this; pruning differs by design (shorter
    layers after a pruning layer), as docs/pages/behaviour.md says. Layers that count tokens only: a linear-
    attention layer (Qwen3.5) caches a state of fixed size, whatever the tokens."""
    family, model, full, _ = case
    L = full["input_ids"].shape[1]
    with sparsevlm.sparsified(model, keep_all(family)):
        cache = model(**full, use_cache=True).past_key_values
        counted = [i for i, layer in enumerate(cache.layers) if hasattr(layer, "get_seq_length")]
        assert [cache.get_seq_length(i) for i in counted] == [L] * len(counted)
    with sparsevlm.sparsified(model, pruning(family)):
        cache = model(**full, use_cache=True).past_key_values
        lengths = {i: cache.get_seq_length(i) for i in counted}
        first = pruning(family).pruning_layers[0]
        assert all(n == L for i, n in lengths.items() if i <= first) and lengths[counted[-1]] < L
