"""The embedded video model (data/toy-video): its evaluation split re-renders to the stored digest,
the checkpoint loads offline through the library's adapter, dense answers reproduce results.json,
and SparseVLM runs on its clips (keep-all equals dense; per-frame budgets as planned)."""
import json
import shutil

import numpy as np
import pytest
import torch

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.eval import evaluate_toy_video
from sparsevlm.toy import VIDEO_CHECKPOINT, load_video, video_eval_split
from sparsevlm.toy.video import (CELLS_PER_FRAME, FRAMES, VIDEO_QUESTION_TYPES, clip_inputs, make_clips,
                                 patch_repeats, tokens_per_video)

torch.set_grad_enabled(False)
RESULTS = json.loads((VIDEO_CHECKPOINT / "results.json").read_text())


@pytest.fixture(scope="module")
def video():
    return load_video()


@pytest.fixture(scope="module")
def records():
    return video_eval_split()


def test_split_re_renders_to_its_digest_and_covers_every_type(records, tmp_path):
    assert len(records) == RESULTS["n_questions"] >= 400
    assert {r["type"] for r in records} == set(VIDEO_QUESTION_TYPES)
    assert all(r["video"].shape == (FRAMES, 96, 96, 3) for r in records[:8])
    doc = json.loads((VIDEO_CHECKPOINT / "eval_split.json").read_text())
    doc["seed"] += 1  # other clips: the digest no longer matches
    (tmp_path / "eval_split.json").write_text(json.dumps(doc))
    with pytest.raises(RuntimeError, match="differ from the shipped split"):
        video_eval_split(tmp_path)


def test_clips_are_seeded_and_mostly_static():
    a, va = make_clips(3, seed=5)
    b, vb = make_clips(3, seed=5)
    assert np.array_equal(va, vb) and [s.question for s in a] == [s.question for s in b]
    assert 0.8 < patch_repeats(va) < 1.0  # most patches repeat; the events change some


def test_checkpoint_loads_offline_as_a_onevision_model(video, tmp_path):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    model, processor = video
    assert type(model) is LlavaOnevisionForConditionalGeneration and not model.training
    assert tokens_per_video(model.config) == FRAMES * CELLS_PER_FRAME + 1
    again = AutoProcessor.from_pretrained(VIDEO_CHECKPOINT, local_files_only=True)
    assert again.tokenizer.convert_tokens_to_ids("<video>") == model.config.video_token_id
    shutil.copytree(VIDEO_CHECKPOINT, tmp_path / "copy")  # any folder with the files loads
    assert type(load_video(tmp_path / "copy")[0]) is LlavaOnevisionForConditionalGeneration


def test_dense_answers_reproduce_results_json(video, records):
    model, processor = video
    n = 24
    df = evaluate_toy_video(limit=n, batch_size=12, progress=False, model=model, processor=processor)
    assert df["question"].tolist() == [r["question"] for r in records[:n]]
    assert "".join("1" if c else "0" for c in df["correct"]) == RESULTS["correct"][:n]
    assert RESULTS["correct"].count("1") / RESULTS["n_questions"] == pytest.approx(RESULTS["dense_accuracy"]["all"],
                                                                                    abs=1e-4)


def _inputs(video, records, n=2):
    model, processor = video
    return clip_inputs(processor, [r["video"] for r in records[:n]], [r["prompt"] for r in records[:n]], model.config)


def test_keep_all_sparsevlm_on_clips_equals_dense(video, records):
    model = video[0]
    inputs = _inputs(video, records[1:])
    dense = model(**inputs).logits[:, -1]
    keep_all = SparseVLMConfig(mode="schedule", pruning_layers=(1, 2, 4), schedule=(10 ** 6,) * 3, recycle=False)
    with sparsevlm.sparsified(model, keep_all):
        torch.testing.assert_close(model(**inputs).logits[:, -1], dense, atol=1e-4, rtol=1e-4)
        assert sparsevlm.report(model).n_visual.tolist() == [tokens_per_video(model.config)] * 2


def test_a_per_frame_budget_keeps_each_frames_share_as_planned(video, records):
    model = video[0]
    inputs = _inputs(video, records[4:])
    n_visual, layers = tokens_per_video(model.config), model.config.text_config.num_hidden_layers
    cfg = SparseVLMConfig(mode="schedule", pruning_layers=(1, 2), schedule=(48, 24), recycle=False, budget_per="span")
    with sparsevlm.sparsified(model, cfg):
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        rep = sparsevlm.report(model)
    ins, outs = sparsevlm.planned_counts(cfg, n_visual, layers)
    assert rep.visual_in.tolist() == [ins] * 2 and rep.visual_out.tolist() == [outs] * 2
    for kept in rep.steps[0]["kept"]:  # 48 over 8 frames of 16 tokens (the newline counted with the last)
        frames = (torch.tensor(kept) // CELLS_PER_FRAME).clamp(max=FRAMES - 1)
        assert torch.bincount(frames, minlength=FRAMES).tolist() == [6] * FRAMES


def test_event_labels_name_only_what_the_frames_so_far_show():
    """A hand-made clip: a circle moves from a1 to a2 at frame 3, a square turns blue at frame 5, a
    triangle appears at frame 2. Each token's role may use its own frame and the ones before."""
    from sparsevlm.toy.train import EVENT_ROLES, event_focus, event_labels
    from sparsevlm.toy.video import Clip, Track, VideoSample, token

    F = FRAMES
    circle = Track("circle", (0,) * 3 + (1,) * (F - 3), ("red",) * F)
    square = Track("square", (5,) * F, ("red",) * 5 + ("blue",) * (F - 5))
    triangle = Track("triangle", (None,) * 2 + (10,) * (F - 2), (None,) * 2 + ("green",) * (F - 2))
    clip = Clip((circle, square, triangle), mover=0, changer=1, appearers=(2,))
    sample = VideoSample(0, clip, "moves", "which shape moves", "circle", ())
    hidden = torch.ones(F * CELLS_PER_FRAME + 2, dtype=torch.long)  # nothing hidden; the newline last
    labels = event_labels([[(sample, {})]], [([(sample, {})], hidden)])[0]
    role = lambda f, cell: EVENT_ROLES[int(labels[token(f, cell)])]  # noqa: E731
    assert [role(f, 0) for f in range(F)] == ["static"] * 3 + ["vacated"] * (F - 3)
    assert [role(f, 1) for f in range(F)] == ["empty"] * 3 + ["moved"] * (F - 3)
    assert [role(f, 5) for f in range(F)] == ["static"] * 5 + ["changed"] * (F - 5)
    assert [role(f, 10) for f in range(F)] == ["empty"] * 2 + ["appeared"] * (F - 2)
    assert role(4, 15) == "empty"
    assert event_focus(sample) == tuple(token(f, 1) for f in range(3, F))
    changes = VideoSample(0, clip, "changes", "which shape changes color", "square", (1, 2))
    assert event_focus(changes) == tuple(token(f, 5) for f in range(5, F))
    other = VideoSample(0, clip, "count_appear", "how many objects appear", "1", (7,))
    assert event_focus(other) == (7,)
