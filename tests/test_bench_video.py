"""`sparsevlm bench --toy video` (issue #35 item 3): the bench times prefill on the embedded video
model, dense against SparseVLM (one budget per clip and one per frame) and the video methods, on the
video split's own clips. Tiny runs: what is checked is what the files hold, never a timing."""
import json

import pandas as pd
import pytest

from sparsevlm import toy
from sparsevlm.cli import main


@pytest.fixture(scope="module")
def clips():
    """The video split's first 8 questions, rendered once (re-rendering all 125 clips costs seconds)."""
    return toy.video_eval_split(limit=8)


@pytest.fixture(autouse=True)
def rendered_once(clips, monkeypatch):
    """The bench reads the split through `toy.video_eval_split`: here it gets the clips rendered above."""
    def first(path=toy.VIDEO_CHECKPOINT, limit=None):
        assert limit is not None and limit <= len(clips)
        return clips[:limit]

    monkeypatch.setattr(toy, "video_eval_split", first)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bench_toy_video_writes_its_rows_with_the_clips_accounting(capsys, tmp_path, clips):
    code, out, err = run(capsys, "bench", "--toy", "video", "--methods", "sparsevlm", "dycoke", "--budgets", "64",
                         "--repeats", "1", "--warmup", "0", "--new-tokens", "1", "--out", str(tmp_path))
    assert code == 0, err
    doc = json.loads((tmp_path / "bench_toy-video_cpu.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert list(rows) == ["dense", "sparsevlm 64", "sparsevlm-frame 64", "dycoke 64"]
    assert doc["machine"]["model"] == "toy-video" and {"torch", "transformers", "cpu", "threads"} <= set(doc["machine"])
    # the first question of the video split: its prompt, with one clip of 8 frames × 16 tokens and a newline
    from sparsevlm.eval import evaluate, record_inputs
    from sparsevlm.recipes import clip_tokens, method_config

    model, processor = toy.load_video()
    assert doc["machine"]["prompt_tokens"] == record_inputs(processor, clips[:1], model.config)["input_ids"].shape[1]
    assert rows["dense"]["equivalent_tokens"] == clip_tokens(model) == 129
    for name, method in (("sparsevlm 64", "sparsevlm"), ("dycoke 64", "dycoke")):  # as `sparsevlm eval --toy video`
        cfg = method_config(model, method, 64, n_visual=clip_tokens(model))
        want = evaluate(model, processor, clips[:1], cfg, progress=False)
        assert rows[name]["equivalent_tokens"] == pytest.approx(want["equivalent_tokens"][0])
        assert rows[name]["flops_ratio"] < 1 and rows[name]["kv_cache_mb"] < rows["dense"]["kv_cache_mb"]
    assert rows["sparsevlm-frame 64"]["equivalent_tokens"] == pytest.approx(rows["sparsevlm 64"]["equivalent_tokens"],
                                                                            abs=1)
    for r in rows.values():  # times from one round: present and positive, not compared
        assert r["prefill_ms"] > 0 and r["lm_prefill_ms"] > 0 and r["decode_ms_per_token"] > 0
    assert doc["machine"]["vision_ms"] > 0 and rows["dense"]["lm_prefill_ratio"] == 1
    assert pd.read_csv(tmp_path / "bench_toy-video_cpu.csv").shape[0] == 4


def test_bench_toy_video_runs_the_video_methods_by_default():
    """Without --methods: dense, SparseVLM per clip and per frame and every video baseline at each budget,
    the rows `sparsevlm demo --toy video` compares."""
    from sparsevlm.bench.command import _video_rows
    from sparsevlm.recipes import VIDEO_BASELINES

    model, _ = toy.load_video()
    rows = _video_rows(model, [128, 64], None, log=lambda *a: None)
    per_budget = ["sparsevlm", "sparsevlm-frame", *VIDEO_BASELINES]
    assert list(rows) == ["dense"] + [f"{m} {b}" for b in (128, 64) for m in per_budget]
    assert rows["sparsevlm 64"].budget_per == "sample" and rows["sparsevlm-frame 64"].budget_per == "span"
    assert list(_video_rows(model, [64], ["dycoke"], log=lambda *a: None)) == ["dense", "dycoke 64"]


def test_bench_toy_video_batches_different_clips(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "--toy", "video", "--methods", "vidcom2", "--budgets", "64", "--repeats", "1",
                       "--warmup", "0", "--new-tokens", "1", "--batch", "2", "--out", str(tmp_path))
    assert code == 0, err
    doc = json.loads((tmp_path / "bench_toy-video_b2_cpu.json").read_text())
    dense = doc["results"][0]
    assert doc["machine"]["batch"] == 2 and dense["method"] == "dense" and dense["equivalent_tokens"] == 129


@pytest.mark.parametrize("argv,message", [
    (["--toy", "video", "--model", "llava-1.5-7b-shaped"], "--toy video runs an embedded model; --model "
                                                          "llava-1.5-7b-shaped names another: give one of them"),
    (["--toy", "movie"], "invalid choice: 'movie'"),
])
def test_bench_toy_refusals_name_the_argument(capsys, argv, message):
    try:
        code = main(["bench", *argv])
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    assert code != 0 and message in capsys.readouterr().err
