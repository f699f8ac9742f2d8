"""The embedded default: deterministic data, a shipped checkpoint that loads offline and
reproduces its recorded accuracy."""
import json

import numpy as np
import pytest
import torch

from sparsevlm import toy
from sparsevlm.toy.data import CELLS, QUESTION_TYPES, ask, cell_patches, make_dataset, vocabulary


def test_generator_is_deterministic_and_seed_dependent():
    s1, i1 = make_dataset(20, seed=3)
    s2, i2 = make_dataset(20, seed=3)
    s3, i3 = make_dataset(20, seed=4)
    assert s1 == s2 and np.array_equal(i1, i2)
    assert s1 != s3 and not np.array_equal(i1, i3)


def test_answers_are_right_and_focus_covers_the_asked_object():
    samples, _ = make_dataset(200, seed=0)
    assert {s.qtype for s in samples} == set(QUESTION_TYPES)
    words = set(vocabulary())
    for s in samples:
        assert set(s.question.split()) | {s.answer} <= words
        objs = s.objects
        if s.qtype == "count_all":
            assert s.answer == str(len(objs)) and len(s.focus) == 4 * len(objs)
        if s.qtype == "where":
            cell = CELLS.index(s.answer)
            assert set(cell_patches(cell)) == set(s.focus)
        if s.qtype == "color_of":
            shape = s.question.split()[-1]
            assert [o.color for o in objs if o.shape == shape] == [s.answer]
        if s.qtype == "exists":
            _, _, _, color, shape = s.question.split()
            assert s.answer == ("yes" if any(o.color == color and o.shape == shape for o in objs) else "no")


def test_questions_an_image_cannot_carry_are_refused():
    from sparsevlm.toy.data import Obj
    objs = (Obj("red", "circle", 0), Obj("red", "circle", 1), Obj("blue", "circle", 5))
    rng = np.random.default_rng(0)
    assert ask(objs, "color_of", rng) is None  # no unique shape
    assert ask(objs, "shape_of", rng)[1] == "circle"  # blue is unique
    with pytest.raises(ValueError, match="qtype='size'"):
        ask(objs, "size", rng)


@pytest.fixture(scope="module")
def shipped():
    model, processor = toy.load()
    return model, processor, toy.eval_split()


def test_the_checkpoint_loads_offline_as_a_standard_hf_folder(shipped):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model, processor, records = shipped
    assert type(model) is LlavaForConditionalGeneration and not model.training
    assert model.config.text_config.num_hidden_layers >= 8
    inputs = processor(images=[records[0]["image"]], text=[records[0]["prompt"]], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == toy.TOY_VISUAL
    assert model.config.image_seq_length == toy.TOY_VISUAL  # the config says what the processor does
    again = LlavaForConditionalGeneration.from_pretrained(toy.CHECKPOINT, local_files_only=True)
    assert isinstance(AutoProcessor.from_pretrained(toy.CHECKPOINT, local_files_only=True), type(processor))
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    size = sum(f.stat().st_size for f in toy.CHECKPOINT.iterdir())
    assert size < 25e6


def test_shipped_model_reproduces_its_recorded_dense_accuracy(shipped):
    from sparsevlm.eval import accuracy_by_type, evaluate

    model, processor, records = shipped
    recorded = json.loads((toy.CHECKPOINT / "results.json").read_text())
    df = evaluate(model, processor, records, progress=False)
    assert len(df) == recorded["n_questions"] == len(records)
    assert {k: round(float(v), 4) for k, v in accuracy_by_type(df).items()} == recorded["dense_accuracy"]
    assert set(df.columns) >= {"type", "answer", "prediction", "correct", "visual_tokens", "equivalent_tokens"}


def test_evaluate_reports_tokens_per_question_when_sparsified(shipped):
    from sparsevlm.eval import evaluate

    model, processor, records = shipped
    df = evaluate(model, processor, records[:16], toy.preset(64), batch_size=8, progress=False)
    assert df["visual_tokens"].map(len).eq(model.config.text_config.num_hidden_layers).all()
    # toy 64-preset keeps 7 / 3 / 2 (+ recycled) after layers 1, 2, 4
    assert (df["visual_tokens"].map(lambda c: c[0]) == toy.TOY_VISUAL).all()
    assert (df["equivalent_tokens"] < 16).all() and (df["equivalent_tokens_input"] > df["equivalent_tokens"]).all()
    assert not hasattr(model, "_sparsevlm")  # evaluate() restores the model


def test_background_dropout_hides_only_unnamed_empty_patches():
    from sparsevlm.toy.train import VOCAB, drop_background, image_stats, lm_batch

    mean, std = image_stats(0, n=16)
    samples, images = make_dataset(8, 3, 4)
    ids, mask, _, _, _, focus, words = lm_batch(samples, images, mean, std)
    hidden = mask.bool() & ~drop_background(samples, ids, mask, focus, words, 1.0, torch.Generator().manual_seed(0)).bool()
    image = ids == VOCAB["<image>"]
    first = image.long().argmax(1)  # first image position per row
    assert hidden.any() and not (hidden & ~image).any()  # only image tokens are hidden
    for b, s in enumerate(samples):
        patches = set((hidden[b].nonzero().flatten() - first[b]).tolist())
        protected = {p for o in s.objects for p in cell_patches(o.cell)} | set(s.focus)
        protected |= set(words[b].sum(0).nonzero().flatten().tolist())
        assert not patches & protected
    untouched = drop_background(samples, ids, mask, focus, words, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(untouched, mask)


def test_word_targets_name_what_each_word_names():
    from sparsevlm.toy.data import Obj, Sample
    from sparsevlm.toy.train import VOCAB, word_targets

    objs = (Obj("red", "circle", 0), Obj("red", "square", 5), Obj("blue", "circle", 10))
    s = Sample(0, objs, "where", "where is the red circle", "a1", cell_patches(0))
    words = s.question.split()
    ids = torch.tensor([[VOCAB[w] for w in words + ["?", "answer", ":", "a1"]]])
    patches = lambda cells: {p for c in cells for p in cell_patches(c)}
    for phrases, circle in ((False, {0, 10}), (True, {0})):
        t = word_targets([s], ids, phrases)[0]
        named = {w: set(t[j].nonzero().flatten().tolist()) for j, w in enumerate(words)}
        assert named["red"] == patches({0, 5})  # a colour word: every red object
        assert named["circle"] == patches(circle)  # the phrase "red circle" only with phrases
        assert named["where"] == named["is"] == named["the"] == set()
    absent = Sample(0, objs, "exists", "is there a blue square", "no", ())
    ids = torch.tensor([[VOCAB[w] for w in absent.question.split() + ["?", "answer", ":", "no"]]])
    t = word_targets([absent], ids, True)[0]
    assert t[4].sum() == 0 and t[3].sum() == 4  # no blue square to name; "blue" names the blue circle


@pytest.mark.parametrize("argv,message", [
    (["--focus-layer", "8"], "need 0 <= --ground-layer < --focus-layer < 8"),
    (["--ground-layer", "3", "--focus-layer", "2"], "got --ground-layer 3, --focus-layer 2"),
    (["--init", str(toy.CHECKPOINT), "--focus-layer", "9"], "< 8 (the model's layers)"),
    (["--init", "no/such/folder"], "--init no/such/folder: no readable LLaVA config.json"),
])
def test_train_rejects_bad_grounding_layers_before_training(capsys, tmp_path, argv, message):
    from sparsevlm.toy.train import main

    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_patch_descriptions_name_colour_shape_and_cell():
    from sparsevlm.toy.train import VOCAB, patch_words

    samples, _ = make_dataset(4, seed=7, questions_per_image=1)
    target = patch_words(samples, 4, smoothing=0.0)  # (4, 64, vocab)
    torch.testing.assert_close(target.sum(-1), torch.ones(4, 64))
    for s in samples[:4]:
        occupied = {p: o for o in s.objects for p in cell_patches(o.cell)}
        for p in range(64):
            named = {w for w, i in VOCAB.items() if target[s.image_id, p, i] > 0}
            cell = CELLS[(p // 8) // 2 * 4 + (p % 8) // 2]
            o = occupied.get(p)
            assert named == ({o.color, o.shape, o.shape + "s", cell} if o else {cell})
    smooth = patch_words(samples, 4, smoothing=0.1)
    naming = torch.tensor([w in toy.naming_words() for w in VOCAB])
    assert (smooth[..., ~naming] == 0).all()  # "what", "?", ":" never describe a patch
    assert torch.allclose(smooth[..., naming].min(-1).values, torch.full((4, 64), 0.1 / int(naming.sum())))
    with_objects = patch_words(samples, 4, smoothing=0.0, objects=True)
    occupied = torch.zeros(4, 64, dtype=torch.bool)
    for s in samples[:4]:
        occupied[s.image_id, [p for o in s.objects for p in cell_patches(o.cell)]] = True
    assert ((with_objects[..., VOCAB["objects"]] > 0) == occupied).all()


def test_alignment_stage_trains_the_projector_only(tmp_path):
    import argparse

    from transformers import LlavaForConditionalGeneration
    from sparsevlm.toy.model import build_config
    from sparsevlm.toy.train import align_projector, image_stats

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(build_config(layers=2, hidden=32))
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    before = {n: p.clone() for n, p in model.named_parameters()}
    mean, std = image_stats(0, n=8)
    args = argparse.Namespace(align_steps=3, align_lr=1e-2, tower_batch=4, seed=0, align_objects=True)
    with torch.enable_grad():  # other tests may have switched autograd off in this process
        loss = align_projector(model, args, mean, std, log=lambda m: None)
    assert np.isfinite(loss)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.multi_modal_projector") for n in changed)


def test_shipped_model_raters_are_words_as_recorded(shipped):
    from sparsevlm.eval import rater_precision, rater_words

    model, processor, records = shipped
    recorded = json.loads((toy.CHECKPOINT / "results.json").read_text())["rater_precision"]
    words = rater_words(model, processor, records)
    assert round(rater_precision(words, toy.naming_words()), 4) == recorded
    assert rater_precision([["red", "?"], ["b3"]], toy.naming_words()) == pytest.approx(2 / 3)


def test_compare_gives_intervals_and_paired_verdicts(shipped):
    from sparsevlm.eval import compare

    model, processor, records = shipped
    configs = {"dense": None, "same": None, "64": toy.preset(64)}
    table, frames = compare(model, processor, records[:48], configs, progress=False, reference="dense", per_question=True)
    assert ((table["acc_low"] <= table["acc_all"]) & (table["acc_all"] <= table["acc_high"])).all()
    assert table.loc["same", "verdict"] == "tie" and table.loc["same", "diff"] == 0
    assert set(table["verdict"]) <= {"better", "worse", "tie"}
    assert set(frames) == set(configs) and len(frames["64"]) == 48 and table.attrs == {}
    with pytest.raises(ValueError, match="reference='nope'"):
        compare(model, processor, records[:4], configs, progress=False, reference="nope")
