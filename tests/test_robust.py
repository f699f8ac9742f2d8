"""What users do beyond a plain forward: beams, chunked prefill, captured outputs, labels, copies,
saving, threads, memory, assisted generation, re-sparsifying with a bad config, and the notices for
use_cache=False and right padding. Each test failed before its fix."""
import copy
import gc
import json
import pickle
import threading

import pytest
import torch
import transformers
from packaging import version
from helpers import N_VISUAL, batch, sample, tiny_llava
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration
from transformers.cache_utils import DynamicCache

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.models import config_of
from sparsevlm.models.staged import CACHE
from sparsevlm.raters import select_raters

torch.set_grad_enabled(False)

KEEP_ALL = SparseVLMConfig(mode="schedule", pruning_layers=(1, 3), schedule=(N_VISUAL, 1000), recycle=False)
PRESET = SparseVLMConfig.preset(64, pruning_layers=(1, 2, 4), schedule=(40, 20, 10))
RANK = SparseVLMConfig(pruning_layers=(1, 3), scale=3.0)
VISIONZIP = sparsevlm.VisionZipConfig(dominant=12, contextual=4)
TOME = sparsevlm.ToMeConfig(keep=20)
GREEDY = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
# transformers before 5.23 gives a chunked prefill no image at all, even in one chunk (the dense model ignores it too)
CHUNKS_SEE_IMAGES = version.parse(transformers.__version__) >= version.parse("5.23")


@pytest.fixture(scope="module")
def model():
    return tiny_llava("llama")


@pytest.mark.parametrize("cfg", [VISIONZIP, TOME, PRESET], ids=["visionzip", "tome", "sparsevlm"])
def test_beams_and_return_sequences_for_methods_that_read_the_vision_tower(model, cfg):
    inputs = batch([4, 7], seed=3)
    with sparsevlm.sparsified(model, cfg):
        beams = model.generate(**inputs, **GREEDY, num_beams=3, num_return_sequences=2)
        assert beams.shape[0] == 4
        rep = sparsevlm.report(model)
        assert rep.visual_out.shape[0] == 6 and not rep.dense  # 2 prompts × 3 beams, each pruned
        for b in range(2):  # beams of a batch equal the beams of each sample alone
            alone = model.generate(**sample(inputs, b), **GREEDY, num_beams=3, num_return_sequences=2)
            assert torch.equal(alone[:, -4:], beams[2 * b:2 * b + 2, -4:])
        sampled = model.generate(**inputs, max_new_tokens=3, do_sample=True, num_return_sequences=3)
        assert sampled.shape[0] == 6


def test_a_chunked_prefill_runs_dense_and_says_so(model):
    inputs = batch([5, 9], seed=1)
    two_images = {**inputs, "input_ids": torch.cat([inputs["input_ids"][:, :4], torch.full((2, N_VISUAL), 3),
                                                    inputs["input_ids"][:, 4:]], 1),
                  "attention_mask": torch.cat([inputs["attention_mask"][:, :4], torch.ones(2, N_VISUAL, dtype=torch.long),
                                               inputs["attention_mask"][:, 4:]], 1),
                  "pixel_values": torch.cat([inputs["pixel_values"], inputs["pixel_values"].flip(0)])}
    for x in (inputs, two_images):
        dense = model.generate(**x, **GREEDY, prefill_chunk_size=32)
        with sparsevlm.sparsified(model, PRESET):
            assert torch.equal(model.generate(**x, **GREEDY, prefill_chunk_size=32), dense)
            rep = sparsevlm.report(model)
            assert rep.dense and rep.reason.startswith(
                "generate(prefill_chunk_size=32) splits the prompt" if CHUNKS_SEE_IMAGES
                else "no image tokens in the input")  # what the language model was given
            # a chunk longer than the prompt is one ordinary prefill, and is pruned
            model.generate(**x, **GREEDY, prefill_chunk_size=1000)
            assert sparsevlm.report(model).dense is not CHUNKS_SEE_IMAGES


def test_captured_attentions_and_hidden_states_come_back_as_from_the_dense_model():
    model = tiny_llava("llama", "eager")  # sdpa returns no attention weights
    inputs = batch([6])
    dense = model(**inputs, output_attentions=True, output_hidden_states=True)
    with sparsevlm.sparsified(model, PRESET):
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
        assert sparsevlm.report(model).dense
    assert len(out.attentions) == len(dense.attentions) == 6 and len(out.hidden_states) == 7
    for a, b in zip(out.attentions + out.hidden_states, dense.attentions + dense.hidden_states):
        assert torch.equal(a, b)


@pytest.mark.parametrize("flag", ["output_attentions", "output_hidden_states"])
def test_output_flags_set_on_the_config_run_dense_as_the_arguments_do(flag):
    """transformers reads an output flag from the config when the forward is not given it (#32.1)."""
    model = tiny_llava("llama", "eager")
    inputs = batch([6])
    setattr(model.config.text_config, flag, True)
    dense = model(**inputs)
    with sparsevlm.sparsified(model, PRESET):
        out = model(**inputs)
        rep = sparsevlm.report(model)
        assert rep.dense and rep.reason.startswith("output_attentions/output_hidden_states were requested")
        model(**inputs, **{flag: False})  # the argument wins over the config
        assert not sparsevlm.report(model).dense
    name = flag.removeprefix("output_")
    assert getattr(out, name) is not None and len(getattr(out, name)) == len(getattr(dense, name))
    for a, b in zip(getattr(out, name), getattr(dense, name)):
        assert torch.equal(a, b)


def test_outputs_are_aligned_with_the_input_and_labels_give_the_loss_of_the_kept_positions(model):
    inputs = batch([6, 9], seed=4)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    labels[:, 1:][inputs["attention_mask"][:, :-1] == 0] = -100  # padding predicts nothing, in either model
    dense = model(**inputs, labels=labels)
    with sparsevlm.sparsified(model, KEEP_ALL):
        keep_all = model(**inputs, labels=labels)
    torch.testing.assert_close(keep_all.loss, dense.loss, atol=1e-5, rtol=0)
    with sparsevlm.sparsified(model, PRESET):
        out = model(**inputs, labels=labels)
        present = sparsevlm.report(model).present
    assert out.logits.shape == dense.logits.shape and (out.logits[~present] == 0).all()
    # by hand: next-token cross-entropy where the predicting position survived and the label counts
    logp = out.logits[:, :-1].log_softmax(-1)
    target = labels[:, 1:]
    use = present[:, :-1] & (target != -100)
    expected = -logp[use].gather(-1, target[use][:, None]).mean()
    torch.testing.assert_close(out.loss, expected)
    assert (~present[:, :-1] & (target != -100)).any()  # some labels were left out


def test_near_tie_raters_do_not_depend_on_the_batch():
    """Text tokens with identical embeddings tie exactly with the mean: none is above it, alone or batched,
    so the mean rule falls back to the last text token in both (see sparsevlm.raters)."""
    torch.manual_seed(0)
    D, V, pad = 64, 10, 5
    for n_text in range(3, 40):
        vis, text = torch.randn(V, D), torch.randn(1, D).expand(n_text, D)
        x = torch.cat([vis, text])[None]
        vis_mask = torch.zeros(1, V + n_text, dtype=torch.bool)
        vis_mask[0, :V] = True
        alone, _ = select_raters(x, vis_mask, torch.ones_like(vis_mask))
        xb = torch.cat([torch.cat([torch.zeros(pad, D), vis, text])[None], torch.randn(1, pad + V + n_text, D)])
        vb = torch.zeros(2, pad + V + n_text, dtype=torch.bool)
        vb[0, pad:pad + V] = vb[1, :V] = True
        valid = torch.ones_like(vb)
        valid[0, :pad] = False
        batched, _ = select_raters(xb, vb, valid)
        assert alone[0].nonzero().flatten().tolist() == [V + n_text - 1]  # the last text token only
        assert batched[0].nonzero().flatten().tolist() == [pad + V + n_text - 1]


def _caches():
    gc.collect()
    return sum(type(o) is DynamicCache for o in gc.get_objects())


def test_nothing_outlives_generate(model):
    inputs = batch([5])
    with sparsevlm.sparsified(model, PRESET):
        before = _caches()
        model.generate(**inputs, **GREEDY)
        assert _caches() == before  # the shortened KV cache is collectable once generate returns
        out = model.generate(**inputs, **GREEDY, return_dict_in_generate=True)
        cont = model.generate(out.sequences, attention_mask=torch.ones_like(out.sequences),
                              **{CACHE: getattr(out, CACHE)}, **GREEDY)  # a kept cache still decodes with its stages
        assert cont.shape[1] == out.sequences.shape[1] + 4


def test_a_deep_copy_is_an_independent_sparsified_model_and_pickling_says_what_to_do(model):
    inputs = batch([5, 3], seed=2)
    sparsevlm.sparsify(model, PRESET)
    logits = model(**inputs).logits
    twin = copy.deepcopy(model)
    assert config_of(twin) == PRESET and sparsevlm.report(model) is not None
    torch.testing.assert_close(twin(**inputs).logits, logits)
    mine = sparsevlm.report(model)
    twin(**sample(inputs, 1))
    assert sparsevlm.report(model) is mine  # the copy's hooks write into its own state
    sparsevlm.unsparsify(twin)
    assert config_of(model) == PRESET
    with pytest.raises(TypeError, match=r"cannot be pickled .* save model.state_dict\(\)"):
        pickle.dumps(model)
    sparsevlm.unsparsify(model)


def test_save_pretrained_saves_the_dense_model_under_its_own_class_name(model, tmp_path):
    inputs = batch([5])
    dense = model(**inputs).logits
    with sparsevlm.sparsified(model, PRESET):
        model.save_pretrained(tmp_path)
        assert type(model) is not LlavaForConditionalGeneration and config_of(model) == PRESET  # still sparsified
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(loaded) is LlavaForConditionalGeneration
    torch.testing.assert_close(loaded(**inputs).logits, dense)


@pytest.mark.parametrize("positions", ["compact", "original"])
def test_a_cropped_cache_decodes_as_if_the_cropped_tokens_never_came(model, positions):
    # Assisted decoding crops rejected draft tokens from every layer's cache, even some that the
    # prefill verified with the prompt: the shorter stages' masks and positions must follow.
    inputs = batch([4, 7], seed=3)
    mask = inputs["attention_mask"]
    draft = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with sparsevlm.sparsified(model, PRESET.replace(positions=positions)):
        cache = DynamicCache(config=model.config.text_config)

        def step(ids, m):
            return model(input_ids=ids, attention_mask=m, use_cache=True, **{CACHE: cache}).logits

        prefill = model(**inputs, use_cache=True, **{CACHE: cache}).logits
        grown = torch.cat([mask, torch.ones_like(draft)], 1)
        first = step(draft, grown)
        cache.crop(-3)  # the draft is rejected ...
        torch.testing.assert_close(step(draft, grown), first, atol=1e-5, rtol=0)  # ... and the same tokens again
        cache.crop(-5)  # the draft and the prompt's last two tokens
        again = step(inputs["input_ids"][:, -2:], mask)
    torch.testing.assert_close(again, prefill[:, -2:], atol=1e-5, rtol=0)


def test_assisted_generation_decides_as_without_an_assistant():
    # Its first forward holds the prompt and the first draft: the prompt alone is pruned, the draft
    # decoded after it, so the draft rates nothing and the answer is the one without an assistant.
    target, assistant = tiny_llava("llama"), tiny_llava("llama", seed=1)  # a poor assistant: many rejections
    inputs = sample(batch([6], seed=4), 0)
    dense = target.generate(**inputs, **GREEDY)
    for kwargs in (dict(assistant_model=assistant), dict(prompt_lookup_num_tokens=2)):
        assert torch.equal(target.generate(**inputs, **kwargs, **GREEDY), dense)  # transformers' own guarantee
        for cfg in (KEEP_ALL, PRESET, RANK, VISIONZIP):  # (VisionZip: prunes the input, reads the tower)
            with sparsevlm.sparsified(target, cfg):
                alone = target.generate(**inputs, **GREEDY)
                rep = sparsevlm.report(target)
                assert torch.equal(target.generate(**inputs, **kwargs, **GREEDY), alone)
                assisted = sparsevlm.report(target)  # the prompt's prefill: its tokens, raters and decisions
                assert torch.equal(assisted.n_tokens, rep.n_tokens) and assisted.raters == rep.raters
                assert [step["kept"] for step in assisted.steps] == [step["kept"] for step in rep.steps]
            if cfg is KEEP_ALL:
                assert torch.equal(alone, dense)
    with sparsevlm.sparsified(assistant, PRESET):  # a sparsified assistant, cropped as the target accepts
        assert torch.equal(target.generate(**inputs, assistant_model=assistant, **GREEDY), dense)


def test_a_model_split_across_devices_is_refused_and_offloading_is_not():
    model = tiny_llava("llama")
    model.hf_device_map = {"model.vision_tower": 0, "model.language_model.layers.0": 0,
                           "model.language_model.layers.1": 1, "lm_head": 1}  # as from_pretrained(device_map=...)
    with pytest.raises(ValueError, match=r"model runs on several devices \(0, 1; its device_map splits it\)"):
        sparsevlm.sparsify(model, PRESET)
    assert config_of(model) is None
    model.hf_device_map = {"model": "cpu", "model.language_model.layers.1": "disk", "lm_head": "cpu"}  # offloaded
    assert config_of(sparsevlm.sparsify(model, PRESET)) == PRESET


def test_one_model_serves_several_threads(model):
    batches = [batch([4, 8], seed=s) for s in range(3)]
    sparsevlm.sparsify(model, PRESET)
    expected = [(model.generate(**x, **GREEDY), sparsevlm.report(model).visual_out) for x in batches]
    failures = []

    def worker(i):
        try:
            for _ in range(4):
                x = batches[i]
                ids = model.generate(**x, **GREEDY)
                if not (torch.equal(ids, expected[i][0]) and torch.equal(sparsevlm.report(model).visual_out,
                                                                          expected[i][1])):
                    failures.append(i)
        except Exception as e:  # noqa: BLE001 - the test reports it
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sparsevlm.unsparsify(model)
    assert failures == []


def test_a_bad_config_leaves_a_sparsified_model_as_it_was(model):
    inputs = batch([5])
    sparsevlm.sparsify(model, PRESET)
    logits = model(**inputs).logits
    bad = PRESET.replace(pruning_layers=(1, 2, 40))
    with pytest.raises(ValueError, match=r"layers \[40\] do not exist"):
        sparsevlm.sparsify(model, bad)
    assert config_of(model) == PRESET
    assert torch.equal(model(**inputs).logits, logits)
    with pytest.raises(ValueError, match=r"layers \[40\] do not exist"):
        with sparsevlm.sparsified(model, bad):
            pass
    assert config_of(model) == PRESET
    sparsevlm.unsparsify(model)


def test_use_cache_false_warns_and_right_padding_is_noted(model):
    inputs = batch([5])
    with sparsevlm.sparsified(model, PRESET):
        with pytest.warns(UserWarning, match=r"use_cache=False.*prunes again at every step"):
            model.generate(**inputs, max_new_tokens=2, use_cache=False)
        left = batch([4, 8], seed=7)
        right = {k: v.clone() for k, v in left.items()}
        for b in range(2):  # the same rows, padding moved to the right
            n = int(left["attention_mask"][b].sum())
            for k in ("input_ids", "attention_mask"):
                right[k][b] = torch.cat([left[k][b, -n:], left[k][b, :-n]])
        left_logits = model(**left).logits
        assert sparsevlm.report(model).notes == []
        right_logits = model(**right).logits
        assert "right padding" in sparsevlm.report(model).notes[0]
        assert "note: right padding" in sparsevlm.report(model).summary()
        n = int(left["attention_mask"][0].sum())
        torch.testing.assert_close(right_logits[0, n - 1], left_logits[0, -1], atol=1e-4, rtol=1e-4)
