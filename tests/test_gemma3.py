"""Gemma 3 (`Gemma3ForConditionalGeneration`): tiny random models built in-process. Images are 16
tokens (256 on the real model) between START and END; prompts in one batch hold different numbers
of images. Sliding layers see 6 tokens back, so windows and image blocks overlap pruned tokens.
The guarantees of every family: keep-all equals dense, batched equals each sample alone, beams, the
report equals `planned_counts`, per-image budgets, unsparsify exact, refusals that leave the model as
it was. And Gemma 3's own: after pruning, each layer's mask is the dense model's mask restricted to
the kept tokens at their original positions (sliding windows and bidirectional image blocks)."""
import pytest
import torch
from helpers import (assert_batched_equals_alone, assert_beams_return_several, assert_refused_and_unchanged,
                     assert_report_is_planned_counts, assert_scores_are_the_models_attention)
from transformers import Gemma3Config
from transformers.models.gemma3 import modeling_gemma3 as mg

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.models.gemma3 import image_blocks
from sparsevlm.toy.families import END, GEMMA3_LAYERS, IMAGE, START, tiny_gemma3

torch.set_grad_enabled(False)

PER_IMAGE = 16
KEEP_ALL = SparseVLMConfig(mode="schedule", pruning_layers=(1, 2), schedule=(1000, 1000), recycle=False,
                           positions="original")
METHODS = [SparseVLMConfig(pruning_layers=(1, 2), scale=2.0, positions="original"),
           SparseVLMConfig.preset(64, pruning_layers=(1, 2, 3), schedule=(30, 20, 10), positions="original"),
           SparseVLMConfig(pruning_layers=(1, 2), scale=2.0),
           sparsevlm.FastVConfig(layer=1, prune_ratio=0.6),
           sparsevlm.PDropConfig(pruning_layers=(1, 2), keep_ratio=0.5),
           sparsevlm.RandomConfig(pruning_layers=(1, 2), schedule=(25, 12)),
           sparsevlm.DivPruneConfig(keep=12), sparsevlm.CDPrunerConfig(keep=12)]
IDS = ["rank", "preset", "rank-compact", "fastv", "pdrop", "random", "divprune", "cdpruner"]
GREEDY = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)


def batch(images, text_lens, seed=0):
    """A left-padded batch: sample b holds `images[b]` images, each START, 16 image tokens, END, with
    text between them; then `text_lens[b]` text tokens. Token types mark the image tokens, as
    Gemma 3's processor does. Returns the batch, each sample alone, and each sample's visual tokens."""
    g = torch.Generator().manual_seed(seed)
    rows, pixels = [], []
    for n, t in zip(images, text_lens):
        row = [1, 7]
        for _ in range(n):
            row += torch.randint(10, 128, (2,), generator=g).tolist() + [START] + [IMAGE] * PER_IMAGE + [END]
        rows.append(row + torch.randint(10, 128, (t,), generator=g).tolist())
        pixels.append(torch.randn(n, 3, 32, 32, generator=g))
    L = max(map(len, rows))
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    full = {"input_ids": ids, "attention_mask": mask, "token_type_ids": (ids == IMAGE).long(),
            "pixel_values": torch.cat(pixels)}
    alone = [{"input_ids": torch.tensor([r]), "attention_mask": torch.ones(1, len(r), dtype=torch.long),
              "token_type_ids": (torch.tensor([r]) == IMAGE).long(), "pixel_values": p} for r, p in zip(rows, pixels)]
    return full, alone, [PER_IMAGE * n for n in images]


@pytest.fixture(scope="module")
def model():
    return tiny_gemma3()


def test_an_image_is_256_tokens_on_the_real_model_and_16_on_the_tiny_one(model):
    assert sparsevlm.models.gemma3.FAMILY.visual_tokens(Gemma3Config()) == 256
    features = model.model.get_image_features(torch.randn(2, 3, 32, 32), return_dict=True).pooler_output
    assert features.shape[:2] == (2, 16)
    types = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 0]])
    assert image_blocks(types).tolist() == [[0, 1, 1, 0, 2, 2, 2, 0]]  # the runs transformers makes blocks of
    assert (mg.get_block_sequence_ids_for_mask(types) + 1).tolist() == image_blocks(types).tolist()


def test_keep_all_equals_dense_and_unsparsify_restores_it(model):
    inputs, _, counts = batch([1, 2], [5, 8])
    dense, dense_ids = model(**inputs).logits, model.generate(**inputs, **GREEDY)
    valid = inputs["attention_mask"].bool()
    for positions in ("original", "compact"):
        with sparsevlm.sparsified(model, KEEP_ALL.replace(positions=positions)):
            torch.testing.assert_close(model(**inputs).logits[valid], dense[valid], atol=1e-4, rtol=1e-4)
            rep = sparsevlm.report(model)
            assert not rep.dense and rep.n_visual.tolist() == counts == [16, 32]
            assert torch.equal(model.generate(**inputs, **GREEDY), dense_ids)
    assert torch.equal(model(**inputs).logits, dense)


@pytest.mark.parametrize("cfg", METHODS, ids=IDS)
def test_batched_equals_each_sample_alone(model, cfg):
    inputs, alone, counts = batch([1, 2], [6, 3], seed=1)
    with sparsevlm.sparsified(model, cfg):
        rep = assert_batched_equals_alone(model, inputs, alone)
    assert not rep.dense and rep.n_visual.tolist() == counts
    assert (rep.visual_out[:, -1] < torch.tensor(counts)).all()  # pruned


@pytest.mark.parametrize("cfg", [METHODS[1].replace(schedule_of=None), *METHODS[3:]], ids=IDS[1:2] + IDS[3:])
def test_the_report_is_planned_counts(model, cfg):
    inputs, _, counts = batch([2, 3], [4, 7], seed=2)
    assert_report_is_planned_counts(model, inputs, counts, cfg)


def test_beams_sampling_and_several_returned_sequences(model):
    inputs, alone, _ = batch([1, 2], [5, 3], seed=2)
    assert_beams_return_several(model, inputs, alone[0], METHODS[1])
    with sparsevlm.sparsified(model, METHODS[1]):
        assert model.generate(**inputs, do_sample=True, max_new_tokens=3, num_return_sequences=2).shape[0] == 4


@pytest.mark.parametrize("method", ["sparsevlm", "random"])
def test_budget_per_span_gives_each_image_its_share(model, method):
    """A span is one image: 12 tokens over 3 images keep 4 each, wherever the scores are."""
    inputs, _, counts = batch([3, 2], [4, 9], seed=3)
    cfg = (SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=(12,), recycle=False, budget_per="span")
           if method == "sparsevlm" else sparsevlm.RandomConfig(pruning_layers=(1,), schedule=(12,), budget_per="span"))
    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        kept = sparsevlm.report(model).steps[0]["kept"]
    assert counts == [48, 32]
    assert torch.bincount(torch.tensor(kept[0]) // PER_IMAGE).tolist() == [4, 4, 4]
    assert torch.bincount(torch.tensor(kept[1]) // PER_IMAGE).tolist() == [6, 6]


def test_what_cannot_work_is_refused_and_the_model_stays_as_it_was(model):
    name = type(model).__name__
    refused = [(sparsevlm.VisionZipConfig(), f"VisionZip reads the vision tower's .*{name}'s SigLIP"),
               (sparsevlm.ToMeConfig(), f"reads the vision tower's .*{name}'s SigLIP"),
               (sparsevlm.VisPrunerConfig(), f"VisPruner reads the vision tower's .*{name}'s SigLIP"),
               (sparsevlm.PoolingConfig(), f"Pooling pools one square grid .*{name} may give one picture"),
               (sparsevlm.DyCokeConfig(), f"DyCoke reduces video frames; {name} reads no video"),
               (SparseVLMConfig(pruning_layers=(1, 4)), "layers \\[4\\] do not exist")]
    assert_refused_and_unchanged(model, batch([1], [3])[0], METHODS[0], refused)


@pytest.mark.parametrize("change, why", [({"attn_logit_softcapping": 50.0}, "caps its attention logits"),
                                         ({"use_bidirectional_attention": True}, "attends in both directions")])
def test_text_models_whose_scores_or_masks_differ_are_refused(change, why):
    model = tiny_gemma3()
    for k, v in change.items():
        setattr(model.config.text_config, k, v)
    with pytest.raises(TypeError, match=f"Gemma3TextModel {why}"):
        sparsevlm.sparsify(model)
    assert not hasattr(model, "_sparsevlm")


def test_the_command_line_knows_the_model_type_and_loads_a_checkpoint(model, tmp_path):
    """`--model PATH` loads a Gemma 3 folder (transformers' image-text-to-text auto class), which sparsifies."""
    from sparsevlm.recipes import load_model

    assert "gemma3" in sparsevlm.models.model_types()
    model.save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path), "cpu", "float32", with_processor=False)
    inputs, _, _ = batch([1], [4])
    assert type(loaded) is type(model) and torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    with sparsevlm.sparsified(loaded, METHODS[0]):
        loaded(**inputs)
        assert not sparsevlm.report(loaded).dense


def _layer_io(model, layers):
    """Forward hooks keeping the inputs and outputs of the text model's `layers`."""
    seen, hooks = {}, []
    for i in layers:
        def hook(_mod, args, kwargs, out, i=i):
            seen[i] = (args[0] if args else kwargs["hidden_states"], out)
        hooks.append(model.model.language_model.layers[i].register_forward_hook(hook, with_kwargs=True))
    return seen, hooks


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_after_pruning_each_layer_attends_as_the_dense_model_restricted_to_kept_tokens(positions):
    """Prune after layer 1; layers 2 (global) and 3 (sliding) then run over the kept tokens. Each one's
    output equals the same layer run eagerly over the kept tokens with the dense model's own mask
    (transformers' `create_masks_for_vision_model` on the whole prompt) restricted to them, at their
    original positions. With compact positions the kept tokens are a prompt of their own: the
    model's mask of that prompt, its positions 0, 1, ... (the window counts kept tokens)."""
    model = tiny_gemma3(attn="eager")
    text = model.model.language_model
    inputs, _, _ = batch([2], [5], seed=4)
    L = inputs["input_ids"].shape[1]
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=(9,), recycle=False, positions=positions)
    seen, hooks = _layer_io(model, (2, 3))
    try:
        with sparsevlm.sparsified(model, cfg):
            model(**inputs)
            rep = sparsevlm.report(model)
    finally:
        for h in hooks:
            h.remove()
    vis = (inputs["input_ids"][0] == IMAGE).nonzero().flatten()
    keep = torch.ones(L, dtype=torch.bool)
    keep[vis] = False
    keep[vis[rep.steps[0]["kept"][0]]] = True
    kept = keep.nonzero().flatten()  # the kept sequence's input positions, in order
    assert len(kept) == L - 32 + 9 and seen[2][0].shape[1] == len(kept)

    def masks(types):  # the dense model's masks of a prompt with these token types
        return mg.create_masks_for_vision_model(text.config, torch.zeros(1, types.shape[1], 64), None, None, None,
                                                mg.get_block_sequence_ids_for_mask(types))

    if positions == "original":
        whole = masks(inputs["token_type_ids"])
        dense = {k: m[:, :, kept][:, :, :, kept] for k, m in whole.items()}
        pos = kept[None]
    else:
        dense, pos = masks(inputs["token_type_ids"][:, kept]), torch.arange(len(kept))[None]
    assert not torch.equal(dense["sliding_attention"], dense["full_attention"])  # the window hides kept tokens
    for i in (2, 3):
        kind = GEMMA3_LAYERS[i]
        pe = text.rotary_emb(seen[i][0], pos, kind)
        ref = text.layers[i](seen[i][0], attention_mask=dense[kind], position_embeddings=pe, position_ids=pos)
        torch.testing.assert_close(seen[i][1], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_decoding_on_the_pruned_cache_equals_a_prefill_of_the_longer_prompt(positions):
    """DivPrune keeps the same tokens whatever text follows the images, so the prompt plus 8 decoded
    tokens, given as one prompt, is pruned as the prompt was. Decoding on the shortened cache must
    then give its logits: the new tokens' windows (6 positions, past the last image) and rotary bases
    over the kept tokens are those of the longer prefill."""
    model = tiny_gemma3()
    inputs, _, _ = batch([2], [3], seed=5)
    L = inputs["input_ids"].shape[1]
    new = torch.arange(20, 28)[None]
    with sparsevlm.sparsified(model, sparsevlm.DivPruneConfig(keep=12, positions=positions)):
        cache = model(**inputs, use_cache=True).past_key_values
        for j in range(new.shape[1]):
            step = model(input_ids=new[:, j:j + 1], attention_mask=torch.ones(1, L + j + 1, dtype=torch.long),
                         position_ids=torch.tensor([[L + j]]), cache=cache, use_cache=True)
        longer = dict(inputs, input_ids=torch.cat([inputs["input_ids"], new], 1),
                      attention_mask=torch.ones(1, L + new.shape[1], dtype=torch.long),
                      token_type_ids=torch.cat([inputs["token_type_ids"], 0 * new], 1))
        once = model(**longer).logits[:, -1]
        assert sparsevlm.report(model).visual_out[0, -1] == 12
    torch.testing.assert_close(step.logits[:, -1], once, atol=1e-4, rtol=1e-4)


def test_the_image_block_of_kept_tokens_attends_both_ways_and_inserted_tokens_causally(model):
    """The mask a stage builds after pruning: each kept image token sees the image's other kept
    tokens, before and after it (within the window in sliding layers); text sees only the past."""
    from sparsevlm.models.gemma3 import FAMILY

    text = model.model.language_model
    blocks = torch.tensor([[0, 1, 1, 1, 0, 0]])  # one image, then text; a recycled token (0) at 5
    keys = torch.tensor([[0, 3, 9, 12, 20, 21]])  # original positions after pruning
    hidden = torch.zeros(1, 6, 64)
    valid = torch.ones(1, 6, dtype=torch.bool)
    build = FAMILY.layer_masks(text, hidden, valid, keys, None, False, {"image_block": blocks})
    full, sliding = build("full_attention", 2), build("sliding_attention", 0)
    assert full[0, 0].int().tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
                                         [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    # window 6: a key more than 5 positions before the query is hidden, even within the image
    assert sliding[0, 0].int().tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0],
                                            [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 1]]


def test_scores_are_the_models_own_attention_at_a_global_layer():
    """Layer 2 is global: the text raters' rows are causal in the model too, so the scores are the
    eager dense model's attention (q/k norms and the global rotary base applied as it applies them)."""
    inputs, _, _ = batch([1], [6])
    assert tiny_gemma3().config.text_config.layer_types[2] == "full_attention"
    assert_scores_are_the_models_attention(tiny_gemma3(attn="eager"), inputs, IMAGE, keep=5)


def test_dense_accounting_and_class_names_are_the_models(model):
    """Dense rows are counted as a sparsified model counts them; loaders find the classes by name."""
    from sparsevlm.report import dense_report_for

    inputs, _, counts = batch([2, 1], [3, 5])
    names = [type(m).__name__ for m in model.modules()]
    with sparsevlm.sparsified(model, KEEP_ALL):
        model(**inputs)
        assert sparsevlm.report(model).n_visual.tolist() == counts
        assert [type(m).__name__ for m in model.modules()] == names
    assert dense_report_for(model, inputs).n_visual.tolist() == counts
