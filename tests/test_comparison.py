"""The committed comparison of every method at matched budgets (results/baselines_toy_cpu.*): it is
what `sparsevlm demo --results` writes today (configs, and a few rows regenerated question by
question), and notebook 09 reads it rather than recomputing its 34 rows."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsevlm import toy
from sparsevlm.bench import RESULTS, methods_for
from sparsevlm.eval import compare, read_comparison
from sparsevlm.recipes import video_methods_for

COMMITTED = RESULTS / "baselines_toy_cpu.json"
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "09_baselines.ipynb"
# A cheap, deterministic part of the whole (~2 min): one row per kind of method, every budget.
REGENERATED = ["dense", "sparsevlm 64", "pdrop 192", "visionzip 128", "fastv 64", "pooling 128"]


@pytest.fixture(scope="module")
def committed():
    return read_comparison(COMMITTED)


def test_committed_configs_are_todays(committed):
    """Every row's config is the one `methods_for` builds now: a changed preset or matching fails here."""
    table, correct, doc = committed
    model, _ = toy.load()
    configs = methods_for(model, (192, 128, 64))
    assert {name: repr(cfg) for name, cfg in configs.items()} == doc["configs"]
    assert list(table.index) == list(configs) == list(correct)
    assert doc["command"] == "sparsevlm demo --quiet --presets 192 128 64 --results results"
    assert {"python", "torch", "transformers", "threads", "device"} <= set(doc["machine"])
    assert all(len(c) == doc["questions"] == len(toy.eval_split()) for c in correct.values())
    assert (table["acc_all"] == [c.mean() for c in correct.values()]).all()


def test_a_few_rows_regenerate_exactly(committed):
    table, correct, _ = committed
    torch.use_deterministic_algorithms(True)
    model, processor = toy.load()
    configs = methods_for(model, (192, 128, 64))
    live, frames = compare(model, processor, toy.eval_split(), {k: configs[k] for k in REGENERATED},
                           progress=False, per_question=True)
    for name in REGENERATED:
        assert (frames[name]["correct"].to_numpy() == correct[name]).all(), name
    cols = [c for c in live.columns if c in table.columns]
    np.testing.assert_allclose(live[cols].to_numpy(float), table.loc[REGENERATED, cols].to_numpy(float), rtol=1e-9)


def test_the_csv_holds_the_json_table(committed):
    import pandas as pd

    table = committed[0]
    csv = pd.read_csv(COMMITTED.with_suffix(".csv"), index_col="method")
    assert list(csv.index) == list(table.index) and list(csv.columns) == list(table.columns)
    np.testing.assert_allclose(csv.to_numpy(float), table.to_numpy(float), rtol=1e-9)


def test_notebook_09_reads_the_committed_comparison():
    src = "\n".join("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code")
    assert "read_comparison(" in src and COMMITTED.name in src


def test_demo_results_writes_the_comparison(tmp_path):
    from sparsevlm.cli import main

    assert main(["demo", "--quiet", "--limit", "8", "--presets", "64", "--methods", "fastv",
                 "--results", str(tmp_path), "--out", str(tmp_path / "demo")]) == 0
    table, correct, doc = read_comparison(tmp_path / "baselines_toy_cpu.json")
    assert list(table.index) == ["dense", "sparsevlm 64", "fastv 64"]
    assert doc["command"] == f"sparsevlm demo --quiet --limit 8 --presets 64 --methods fastv --results {tmp_path}"
    assert all(len(c) == 8 for c in correct.values())
    assert (tmp_path / "baselines_toy_cpu.csv").is_file()


ABLATIONS = RESULTS / "ablations_toy_cpu.json"
ABLATIONS_NOTEBOOK = NOTEBOOK.parent / "08_ablations.ipynb"


def test_notebook_08s_committed_ablations_regenerate():
    """Notebook 08 reads its context and one-knob rows from results/ablations_toy_cpu.* (and checks the
    configs equal today's). A few rows, rebuilt from their committed configs, give the same answer on
    every one of the 240 questions: a stale file fails here."""
    import sparsevlm

    table, correct, doc = read_comparison(ABLATIONS)
    assert doc["questions"] == 240 and doc["command"] == "run notebooks/08_ablations.ipynb with REGENERATE = True"
    assert {"no recycling", "raters = all text", "sparsevlm 128"} <= set(doc["configs"])
    src = "\n".join("".join(c["source"]) for c in json.loads(ABLATIONS_NOTEBOOK.read_text())["cells"])
    assert "read_comparison(" in src and ABLATIONS.name in src
    names = {k: getattr(sparsevlm, k) for k in dir(sparsevlm) if k.endswith("Config")}
    rows = ["dense", "no recycling", "fastv 64"]
    configs = {name: eval(doc["configs"][name], names) for name in rows}  # our own committed reprs
    torch.use_deterministic_algorithms(True)
    model, processor = toy.load()
    live, frames = compare(model, processor, toy.eval_split()[:240], configs, progress=False, per_question=True)
    for name in rows:
        assert (frames[name]["correct"].to_numpy() == correct[name]).all(), name
    np.testing.assert_allclose(live["acc_all"].to_numpy(), table.loc[rows, "acc_all"].to_numpy(), rtol=1e-9)


VIDEO = RESULTS / "video_toy_cpu.json"
VIDEO_COMMAND = "sparsevlm demo --quiet --toy video --presets 192 128 64 --results results"


def test_the_committed_video_comparison_is_todays():
    """results/video_toy_cpu.*: every row's config is today's; a few rows, regenerated on the first 24
    questions, give the committed answer on each and the same equivalent tokens."""
    table, correct, doc = read_comparison(VIDEO)
    model, processor = toy.load_video()
    configs = video_methods_for(model, (192, 128, 64))
    assert {name: repr(cfg) for name, cfg in configs.items()} == doc["configs"]
    assert list(table.index) == list(configs) == list(correct) and doc["command"] == VIDEO_COMMAND
    assert all(len(c) == doc["questions"] == 500 for c in correct.values())
    np.testing.assert_allclose(table["acc_all"], [c.mean() for c in correct.values()], rtol=1e-9)
    rows = ["dense", "sparsevlm 64", "sparsevlm-frame 128", "fastv 192", "fastvid 128", "holitom 64"]
    torch.use_deterministic_algorithms(True)
    live, frames = compare(model, processor, toy.video_eval_split(limit=24), {k: configs[k] for k in rows},
                           progress=False, per_question=True)
    for name in rows:
        assert (frames[name]["correct"].to_numpy() == correct[name][:24]).all(), name
    np.testing.assert_allclose(live["equivalent_tokens"].to_numpy(), table.loc[rows, "equivalent_tokens"].to_numpy(),
                               rtol=0.05)
