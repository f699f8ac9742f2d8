"""lmms-eval (issue #17): the `sparsevlm` model registered through lmms-eval's entry points, run end
to end on a local task built from the embedded split (no hub), with the same accuracy as
`sparsevlm eval` on the same questions; likelihood scoring; data-parallel runs with two processes;
bad `model_args` as one clear error; video documents (a clip's frames) on the embedded video model,
equal to `sparsevlm eval --toy video`. Needs the `[eval]` extra (lmms-eval), which `make test` installs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: `make test` installs the [eval] extra")

import sparsevlm  # noqa: E402
from sparsevlm import toy  # noqa: E402
from sparsevlm.eval import evaluate  # noqa: E402

LIMIT = 48
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from sparsevlm.lmms import write_toy_task

    return write_toy_task(tmp_path_factory.mktemp("lmms_task"), limit=LIMIT)


def lmms_run(task, out, model_args, tasks="sparsevlm_toy", launcher=(), batch_size=16):
    """Run lmms-eval's command line; returns (results dict, stderr)."""
    cmd = [*launcher] if launcher else [sys.executable]
    cmd += ["-m", "lmms_eval", "eval", "--model", "sparsevlm", "--model_args", model_args, "--tasks", tasks,
            "--include_path", str(task), "--batch_size", str(batch_size), "--output_path", str(out),
            "--log_samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    files = sorted(Path(out).rglob("*_results.json"))
    return (json.loads(files[-1].read_text()) if files and proc.returncode == 0 else None), proc


def test_the_model_is_found_through_lmms_evals_entry_points():
    from lmms_eval.models import get_model

    from sparsevlm.lmms import SparseVLMEval

    assert get_model("sparsevlm") is SparseVLMEval


@pytest.mark.parametrize("method,cfg", [("dense", None), ("sparsevlm,budget=128", "preset 128")])
def test_lmms_eval_end_to_end_equals_sparsevlm_eval(task, tmp_path, method, cfg):
    results, proc = lmms_run(task, tmp_path, f"pretrained=toy,method={method}")
    assert results is not None, proc.stderr[-3000:]
    got = results["results"]["sparsevlm_toy"]["exact_match,none"]
    model, processor = toy.load()
    want = evaluate(model, processor, toy.eval_split(limit=LIMIT), toy.preset(128) if cfg else None, batch_size=16,
                    progress=False)["correct"].mean()
    assert got == pytest.approx(want, abs=1e-9)
    extra = results["throughput"]  # the sparsification report beside the scores
    assert extra["avg_sparsevlm_visual_tokens"] == 64
    if cfg is None:
        assert extra["avg_sparsevlm_equivalent_tokens"] == 64 and extra["avg_sparsevlm_flops_ratio"] == 1
    else:
        assert extra["avg_sparsevlm_equivalent_tokens"] < 30 and extra["avg_sparsevlm_flops_ratio"] < 0.8


def _instances(n: int):
    from lmms_eval.api.instance import Instance

    from sparsevlm.lmms import _answers_by_type, doc_to_visual

    recs = toy.eval_split(limit=n)
    docs = [{k: r[k] for k in ("image_id", "type", "question", "answer")} for r in recs]
    reqs = []
    for i, d in enumerate(docs):
        for c in _answers_by_type()[d["type"]]:
            reqs.append(Instance(request_type="loglikelihood", arguments=(d["question"], f" {c}", doc_to_visual, i,
                                                                          "toy", "test"), idx=0, metadata={"task": "toy", "doc_id": i, "repeats": 1}))
    return {"toy": {"test": docs}}, reqs


def test_likelihoods_dense_equal_keep_all_and_batched_equal_alone():
    from sparsevlm.lmms import SparseVLMEval

    lm = SparseVLMEval(method="dense", batch_size=8)
    lm.task_dict, reqs = _instances(6)
    dense = lm.likelihoods(reqs)
    keep_all = sparsevlm.SparseVLMConfig(mode="schedule", pruning_layers=(1, 2, 4), schedule=(64, 64, 64),
                                         recycle=False)
    with sparsevlm.sparsified(lm.model, keep_all):
        lm.cfg = keep_all
        kept = lm.likelihoods(reqs)
    torch.testing.assert_close(torch.tensor([s for s, _ in kept]), torch.tensor([s for s, _ in dense]), atol=1e-4,
                               rtol=0)
    pruned = SparseVLMEval(method="sparsevlm", budget=64, batch_size=8)
    pruned.task_dict = lm.task_dict
    batched = pruned.likelihoods(reqs)
    pruned.batch_size_per_gpu = 1
    alone = pruned.likelihoods(reqs)
    torch.testing.assert_close(torch.tensor([s for s, _ in batched]), torch.tensor([s for s, _ in alone]), atol=1e-4,
                               rtol=0)
    from lmms_eval.api.instance import unwrap_generation_output  # what lmms-eval does with the answers

    assert [unwrap_generation_output(r)[0] for r in pruned.loglikelihood(reqs[:3])] == [(-s, g) for s, g in batched[:3]]


def test_multiple_choice_task_runs_through_lmms_eval(task, tmp_path):
    results, proc = lmms_run(task, tmp_path, "pretrained=toy,method=sparsevlm,budget=64", tasks="sparsevlm_toy_choice")
    assert results is not None, proc.stderr[-3000:]
    assert 0.5 < results["results"]["sparsevlm_toy_choice"]["acc,none"] <= 1


@pytest.mark.parametrize("model_args,message", [
    ("pretrained=toy,method=fastest", "method=fastest: unknown method; allowed: dense, sparsevlm"),
    ("pretrained=toy,budget=100", "budget=100: no preset; allowed: 192, 128, 96, 64"),
    ("pretrained=toy,colour=red", "colour: unknown; allowed: pretrained"),
    ("pretrained=toy,budget=64,tokens=20", "budget=64,tokens=20: give one of the two"),
    ("pretrained=/nonexistent/folder", "pretrained=/nonexistent/folder"),
])
def test_bad_model_args_are_one_clear_error(model_args, message):
    from sparsevlm.lmms import SparseVLMEval
    from lmms_eval import utils

    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        SparseVLMEval(**utils.simple_parse_args_string(model_args))


def test_an_unsupported_family_and_a_task_without_images_are_refused(tmp_path):
    from sparsevlm.lmms import SparseVLMEval

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        SparseVLMEval(pretrained=str(tmp_path / "bert"))
    lm = SparseVLMEval(method="sparsevlm", budget=64)
    lm.task_dict = {"t": {"test": [{"question": "q"}]}}
    from lmms_eval.api.instance import Instance

    req = Instance(request_type="generate_until", arguments=("q", {}, lambda d: [], 0, "t", "test"), idx=0,
                   metadata={"task": "t", "doc_id": 0, "repeats": 1})
    with pytest.raises(ValueError, match="task 't', document 0: no image"):
        lm.generate_until([req])


def test_sparsevlm_eval_on_two_processes_equals_one(tmp_path):
    """`torchrun --nproc_per_node 2 -m sparsevlm.cli eval` (gloo on this CPU): the same per-question
    answers as one process."""
    common = ["eval", "--method", "sparsevlm", "--budget", "64", "--limit", str(LIMIT), "--batch-size", "8", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "sparsevlm.cli", *common, "--out", str(tmp_path / "one.csv")],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29517", "-m", "sparsevlm.cli", *common, "--out", str(tmp_path / "two.csv")],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    import pandas as pd

    a, b = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert len(a) == len(b) == LIMIT
    assert a["prediction"].tolist() == b["prediction"].tolist() and a["question"].tolist() == b["question"].tolist()
    assert two.stdout.count("equivalent tokens") == 1  # one report, from the first process
    assert "answered by 2 processes" in two.stdout and "processes" not in one.stdout


def test_lmms_eval_under_accelerate_on_two_processes_equals_one(task, tmp_path):
    args = "pretrained=toy,method=sparsevlm,budget=64"
    one, proc = lmms_run(task, tmp_path / "one", args, batch_size=8)
    assert one is not None, proc.stderr[-3000:]
    # accelerate's "multi-GPU" launcher is torch.distributed's; with no GPU the processes talk over gloo
    # (its --cpu launcher would need MPI)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                "29519"]
    two, proc = lmms_run(task, tmp_path / "two", args, launcher=launcher, batch_size=8)
    assert two is not None, proc.stderr[-3000:]
    assert "Running on rank 1" in proc.stdout + proc.stderr  # two processes really answered
    assert two["results"]["sparsevlm_toy"] == one["results"]["sparsevlm_toy"]

    def answers(folder):
        rows = [json.loads(line) for f in Path(folder).rglob("*sparsevlm_toy.jsonl") for line in f.read_text().splitlines()]
        return {r["doc_id"]: r["filtered_resps"] for r in rows}

    assert answers(tmp_path / "one") == answers(tmp_path / "two") and len(answers(tmp_path / "one")) == LIMIT


# --------------------------------------------------------------------- video documents (issue #35)
VIDEO_LIMIT = 24


@pytest.fixture(scope="module")
def video_task(tmp_path_factory):
    from sparsevlm.lmms import write_toy_video_task

    return write_toy_video_task(tmp_path_factory.mktemp("lmms_video_task"), limit=VIDEO_LIMIT)


@pytest.mark.parametrize("method", ["dense", "sparsevlm,budget=64", "dycoke,budget=128"])
def test_lmms_eval_on_video_documents_equals_sparsevlm_eval_toy_video(video_task, method, capsys, tmp_path):
    """lmms-eval's evaluator (in this process: the command line calls the same `simple_evaluate`) on the
    local video task, each document one clip's 8 frames: the same answer to every question, the same
    accuracy and the same equivalent tokens as `sparsevlm eval --toy video` on the same questions."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from sparsevlm.cli import main

    tasks = TaskManager(include_path=str(video_task), include_defaults=False)
    got = simple_evaluate(model="sparsevlm", model_args=f"pretrained=toy-video,method={method}", batch_size=8,
                          tasks=["sparsevlm_toy_video"], task_manager=tasks, log_samples=True, verbosity="WARNING")
    name, *budget = method.split(",")
    argv = ["eval", "--toy", "video", "--method", name, *(["--budget", budget[0].split("=")[1]] if budget else []),
            "--limit", str(VIDEO_LIMIT), "--batch-size", "8", "--quiet", "--out", str(tmp_path / "rows.csv")]
    assert main(argv) == 0, capsys.readouterr().err
    import pandas as pd

    want = pd.read_csv(tmp_path / "rows.csv", keep_default_na=False, dtype=str)
    samples = sorted(got["samples"]["sparsevlm_toy_video"], key=lambda s: s["doc_id"])
    answers = [s["filtered_resps"][0].strip().split(" ")[0] for s in samples]
    assert len(answers) == VIDEO_LIMIT and answers == want["prediction"].tolist()
    assert [s["doc"]["question"] for s in samples] == want["question"].tolist()
    accuracy = got["results"]["sparsevlm_toy_video"]["exact_match,none"]
    assert accuracy == pytest.approx((want["prediction"] == want["answer"]).mean(), abs=1e-12)
    extra = got["throughput"]  # the report beside the scores: one clip is 8 frames × 16 tokens + a newline
    assert extra["avg_sparsevlm_visual_tokens"] == 129
    assert extra["avg_sparsevlm_equivalent_tokens"] == pytest.approx(want["equivalent_tokens"].astype(float).mean())
    assert (extra["avg_sparsevlm_flops_ratio"] == 1) == (name == "dense")


def _video_requests(n: int, task: str = "vid", **meta):
    """Likelihood requests for the first `n` questions of the video split, one per answer its type allows."""
    from lmms_eval.api.instance import Instance

    from sparsevlm.lmms import video_doc_to_visual

    doc = json.loads(Path(toy.VIDEO_CHECKPOINT, "eval_split.json").read_text())
    choices: dict[str, set] = {}
    for q in doc["questions"]:
        choices.setdefault(q["type"], set()).add(q["answer"])
    docs = [{k: q[k] for k in ("clip_id", "type", "question", "answer")} for q in doc["questions"][:n]]
    reqs = [Instance(request_type="loglikelihood", arguments=(d["question"], f" {c}", video_doc_to_visual, i, task,
                                                              "test"),
                     idx=0, metadata={"task": task, "doc_id": i, "repeats": 1, **meta})
            for i, d in enumerate(docs) for c in sorted(choices[d["type"]])]
    return {task: {"test": docs}}, reqs


def test_video_likelihoods_batched_equal_alone_and_pick_the_eval_answer():
    """Likelihood scoring reads clips too: pruned, batched equals each request alone; dense, the one
    continuation greedy decoding produces is the answer `sparsevlm eval --toy video` gives."""
    from sparsevlm.eval import evaluate_toy_video
    from sparsevlm.lmms import SparseVLMEval

    lm = SparseVLMEval(pretrained="toy-video", method="sparsevlm", budget=64, batch_size=8)
    lm.task_dict, reqs = _video_requests(3, task_type="video")
    batched = lm.likelihoods(reqs)
    lm.batch_size_per_gpu = 1
    alone = lm.likelihoods(reqs)
    torch.testing.assert_close(torch.tensor([s for s, _ in batched]), torch.tensor([s for s, _ in alone]), atol=1e-4,
                               rtol=0)
    dense = SparseVLMEval(pretrained="toy-video", method="dense", batch_size=8)
    dense.task_dict = lm.task_dict
    scores = dense.likelihoods(reqs)  # dense: the continuation's words rate no tokens, so greedy is eval's answer
    rows = evaluate_toy_video(None, limit=3, progress=False, model=dense.model, processor=dense.processor)
    for i, want in enumerate(rows["prediction"]):
        assert [r.args[1].strip() for r, (_, g) in zip(reqs, scores) if r.args[3] == i and g] == [want]


def test_video_documents_are_read_as_lmms_eval_passes_them():
    """`sample_frames` keeps evenly spaced frames (as lmms-eval's llava_onevision); a video file, an image
    for the video model, a video for the image model: each refused naming the document and what is allowed."""
    from lmms_eval.api.instance import Instance

    from sparsevlm.lmms import SparseVLMEval, video_doc_to_visual

    lm = SparseVLMEval(pretrained="toy-video", method="dense")
    lm.task_dict, reqs = _video_requests(1, task_type="video", sample_frames=4)
    video, frames = lm._visuals(reqs[0])
    clip = np.stack([np.asarray(f) for f in video_doc_to_visual(lm.task_dict["vid"]["test"][0])])
    assert video and frames.shape == (4, *clip.shape[1:]) and (frames == clip[[0, 2, 4, 7]]).all()

    def request(visual, **meta):
        return Instance(request_type="generate_until", arguments=("q", {}, lambda d: visual, 0, "t", "test"), idx=0,
                        metadata={"task": "t", "doc_id": 0, "repeats": 1, **meta})

    lm.task_dict = {"t": {"test": [{"question": "q"}]}}
    with pytest.raises(ValueError, match="task 't', document 0: a video file \\(clip.mp4\\).*task_type: video"):
        lm.generate_until([request(["clip.mp4"], task_type="video")])
    with pytest.raises(ValueError, match="document 0: an image; pretrained=toy-video reads videos"):
        lm.generate_until([request(list(clip[:1]))])
    image = SparseVLMEval(method="dense")
    image.task_dict = lm.task_dict
    with pytest.raises(ValueError, match="document 0: a video; LlavaForConditionalGeneration reads no video"):
        image.generate_until([request(list(clip), task_type="video")])


# --------------------------------------------------------------------- the newer families (issue #34)
def _family_processor(family: str):
    """The family's own processor at the tiny model's sizes (`toy.families.tiny_vlm`): a tokenizer of
    WORDS with the family's special tokens at the model's ids (word-level; Qwen3.5's byte-level BPE),
    its image processor and, but for Gemma 3, its video processor (torchvision's)."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    from sparsevlm.toy.families import QWEN_CHAT, WORDS

    if family in ("qwen3-vl", "qwen3.5"):
        named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
    elif family == "gemma3":  # the image soft token, a spare id, <start_of_image> and <end_of_image>
        named = {"image_token": "<image_soft_token>", "video_token": "<unused>", "boi_token": "<start_of_image>",
                 "eoi_token": "<end_of_image>"}
    else:  # InternVL: the image context token, the video token, <img> and </img>
        named = {"context_image_token": "<IMG_CONTEXT>", "video_token": "<video>", "start_image_token": "<img>",
                 "end_image_token": "</img>"}
    vocab = ["<pad>", "<s>", "</s>", *named.values(), "<unk>", *WORDS]  # ids 3, 4, 5, 6 as the tiny models'
    special = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", padding_side="left",
                   extra_special_tokens=named)
    if family == "qwen3.5":  # transformers loads a qwen3_5 checkpoint's tokenizer as its byte-level BPE
        bpe_vocab, merges = _byte_level_bpe(vocab[:8], WORDS)
        tokenizer = tf.Qwen3_5Tokenizer(vocab=bpe_vocab, merges=merges, **special)
    else:
        tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    if family == "gemma3":  # 32-pixel images, 16 tokens each
        chat = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image> "
                "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}")
        return tf.Gemma3Processor(image_processor=tf.Gemma3ImageProcessor(size={"height": 32, "width": 32}),
                                  tokenizer=tokenizer, image_seq_length=16, chat_template=chat)
    if family in ("qwen3-vl", "qwen3.5"):  # Qwen3.5 reads images with Qwen3-VL's processor
        size = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=64 * 64)
        return tf.Qwen3VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**size), tokenizer=tokenizer,
                                   video_processor=tf.Qwen3VLVideoProcessor(**size), chat_template=QWEN_CHAT)
    tiles = dict(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=4)
    chat = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT> "
            "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}")
    return tf.InternVLProcessor(image_processor=tf.GotOcr2ImageProcessor(**tiles), tokenizer=tokenizer,
                                video_processor=tf.InternVLVideoProcessor(size={"height": 32, "width": 32}),
                                image_seq_length=16, chat_template=chat)


def _byte_level_bpe(specials: list[str], words: list[str]) -> tuple[dict, list]:
    """(vocab, merges) of a byte-level BPE that spells each word, alone or after a space ("Ġ" + word),
    character by character then merged left to right: 105 entries for WORDS, within the tiny vocabulary."""
    vocab, merges = {w: i for i, w in enumerate(specials)}, []
    for word in words:
        for piece in (word, "\u0120" + word):
            for ch in piece:
                vocab.setdefault(ch, len(vocab))
            for j in range(1, len(piece)):
                if (piece[:j], piece[j]) not in merges:
                    merges.append((piece[:j], piece[j]))
                    vocab.setdefault(piece[:j + 1], len(vocab))
    return vocab, merges


NEEDS_TORCHVISION = ("needs torchvision (the Qwen3-VL, Qwen3.5 and InternVL processors hold transformers' video "
                     "processors) "
                     "beside lmms-eval: .venv has no torchvision; `make test-video` runs it in .venv-video, which has both")


@pytest.mark.parametrize("family", ["qwen3-vl", "internvl", "qwen3.5", "gemma3"])
def test_the_lmms_model_runs_the_newer_families_through_the_family_seam(family, tmp_path):
    """A tiny random checkpoint of each family with its own processor: the lmms-eval model loads it
    (the family found by `models.family_of`; nothing in lmms.py names a family), answers images of
    three sizes batched as each alone, scores likelihoods batched as alone, and prunes: SparseVLM keeps
    fewer tokens than the image has. Images of three sizes: three grids on the Qwens, 1, 2+1 and 4+1
    tiles on InternVL; Gemma 3 resizes every image to 16 tokens."""
    from transformers.utils import is_torchvision_available

    if family != "gemma3" and not is_torchvision_available():
        pytest.skip(NEEDS_TORCHVISION)
    from PIL import Image
    from lmms_eval.api.instance import Instance

    from sparsevlm import report
    from sparsevlm.lmms import SparseVLMEval
    from sparsevlm.models import family_of
    from sparsevlm.toy.families import tiny_vlm

    tiny_vlm(family).save_pretrained(tmp_path / family)
    _family_processor(family).save_pretrained(tmp_path / family)
    lm = SparseVLMEval(pretrained=str(tmp_path / family), method="sparsevlm", budget=64, batch_size=3)
    assert family_of(lm.model).MODEL_TYPES and lm.model.config.model_type in family_of(lm.model).MODEL_TYPES
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
              for h, w in ((32, 32), (32, 64), (32, 128))]
    lm.task_dict = {"t": {"test": [{"i": i} for i in range(3)]}}

    def request(kind, i, second):
        return Instance(request_type=kind, arguments=("what color is it ?", second, lambda d: [images[d["i"]]], i, "t",
                                                      "test"), idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})

    gen = [request("generate_until", i, {"max_new_tokens": 3, "until": ["\n"]}) for i in range(3)]
    scored = [request("loglikelihood", i, f" {w}") for i in range(3) for w in ("red", "circle")]
    batched = lm.generate_until(gen)
    rep = report(lm.model)  # the batch of the three images
    assert len(set(rep.n_visual.tolist())) == (1 if family == "gemma3" else 3)
    assert (rep.equivalent_tokens < rep.n_visual).all()
    batched_scores = lm.likelihoods(scored)
    lm.batch_size_per_gpu = 1
    assert lm.generate_until(gen) == batched
    torch.testing.assert_close(torch.tensor([s for s, _ in lm.likelihoods(scored)]),
                               torch.tensor([s for s, _ in batched_scores]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["onevision", "video-llava", "qwen2.5-vl"])
def test_the_lmms_model_reads_video_documents_on_checkpoints(family, tmp_path):
    """A video task on a tiny random checkpoint with its own processor (`toy.families.tiny_processor`):
    the clip goes in through the processor's `videos=`, batched answers equal each alone, likelihoods
    too, and SparseVLM keeps fewer of the clip's tokens than it has."""
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        pytest.skip(NEEDS_TORCHVISION.replace("the Qwen3-VL, Qwen3.5 and InternVL processors hold",
                                              "these processors read videos with"))
    from lmms_eval.api.instance import Instance

    from sparsevlm import report
    from sparsevlm.lmms import SparseVLMEval
    from sparsevlm.toy.families import tiny_processor, tiny_vlm

    tiny_vlm(family).save_pretrained(tmp_path / family)
    tiny_processor(family).save_pretrained(tmp_path / family)
    lm = SparseVLMEval(pretrained=str(tmp_path / family), method="sparsevlm", budget=64, batch_size=2)
    rng = np.random.default_rng(0)
    clips = [(rng.random((4, 32, 32, 3)) * 255).astype(np.uint8) for _ in range(2)]
    lm.task_dict = {"v": {"test": [{"i": i} for i in range(2)]}}

    def request(kind, i, second):
        return Instance(request_type=kind, arguments=("what color is it ?", second, lambda d: list(clips[d["i"]]), i,
                                                      "v", "test"),
                        idx=0, metadata={"task": "v", "doc_id": i, "repeats": 1, "task_type": "video"})

    gen = [request("generate_until", i, {"max_new_tokens": 3}) for i in range(2)]
    scored = [request("loglikelihood", i, f" {w}") for i in range(2) for w in ("red", "circle")]
    batched = lm.generate_until(gen)
    rep = report(lm.model)
    video = lm.model.config.video_token_id
    assert rep.n_visual.tolist() == [int((ids == video).sum()) for ids in lm._inputs(
        [lm._prompt("q", c, True) for c in clips], clips, video=True)["input_ids"]]
    assert (rep.equivalent_tokens < rep.n_visual).all()
    batched_scores = lm.likelihoods(scored)
    lm.batch_size_per_gpu = 1
    assert lm.generate_until(gen) == batched
    torch.testing.assert_close(torch.tensor([s for s, _ in lm.likelihoods(scored)]),
                               torch.tensor([s for s, _ in batched_scores]), atol=1e-4, rtol=0)
