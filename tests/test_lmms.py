"""lmms-eval (issue #17): the `sparsevlm` model registered through lmms-eval's entry points, run end
to end on a local task built from the embedded split (no hub), with the same accuracy as
`sparsevlm eval` on the same questions; likelihood scoring; data-parallel runs with two processes;
bad `model_args` as one clear error. Needs the `[eval]` extra (lmms-eval), which `make test` installs."""
import json
import os
import subprocess
import sys
from pathlib import Path

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
