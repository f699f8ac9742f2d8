"""Accuracy harness: answer a dataset's questions (dense or with a pruning method) and return one
row per question as a pandas DataFrame."""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .flops import dims, report_flops
from .models import report, sparsified
from .report import dense_report_for


def _batches(processor, dataset, batch_size: int, device, progress: bool = False, desc: str = "", config=None):
    """(records, model inputs) for consecutive batches of `dataset` (`record_inputs`)."""
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, disable=not progress, unit="batch"):
        items = dataset[start:start + batch_size]
        yield items, record_inputs(processor, items, config).to(device)


def record_inputs(processor, records, config=None):
    """Batched, left-padded model inputs for evaluation records: images through the processor, clips
    (records with a "video", uint8 frames) through `toy.video.clip_inputs`, laid out for the model of
    `config`."""
    if "video" in records[0]:
        from .toy.video import clip_inputs

        return clip_inputs(processor, [r["video"] for r in records], [r["prompt"] for r in records], config)
    # one list per sample: Gemma 3's processor refuses a flat list when the batch has several prompts
    return processor(images=[[r["image"]] for r in records], text=[r["prompt"] for r in records],
                     return_tensors="pt", padding=True)


def world() -> tuple[int, int]:
    """(rank, number of processes) when launched by `torchrun` or `accelerate launch` (they set
    WORLD_SIZE and RANK), else (0, 1). Starts the process group the first time (gloo: only Python
    objects are exchanged, so it serves CPU and GPU runs alike)."""
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    close_process_group_at_exit()
    return dist.get_rank(), size


def close_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits (once registered). Left open,
    gloo's threads can still be running at interpreter shutdown, and a process then aborts
    ("terminate called without an active exception") after its work is done."""
    import atexit

    import torch.distributed as dist

    def close():
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    if not getattr(close_process_group_at_exit, "registered", False):
        atexit.register(close)
        close_process_group_at_exit.registered = True


def _everyone(rows: list, rank: int, size: int) -> list:
    """Every process's rows, in dataset order (process r answered questions r, r + size, ...)."""
    import torch.distributed as dist

    parts = [None] * size
    dist.all_gather_object(parts, rows)
    return [parts[i % size][i // size] for i in range(sum(map(len, parts)))]


def evaluate(model, processor, dataset, cfg=None, batch_size: int = 32, max_new_tokens: int = 2,
             progress: bool = True, desc: str | None = None) -> pd.DataFrame:
    """Greedy answers for `dataset`: a sequence of dicts with "image", "prompt", "answer" and
    "type". With `cfg`, the model runs sparsified with it for the duration of the call.

    Returns one row per question: type, question, answer, prediction, correct, visual_tokens (per
    layer, each layer's output), equivalent_tokens (mean of those, the reference's count),
    equivalent_tokens_input (counting each layer's input) and flops (the language model's prefill
    multiply-adds by the paper's formula, from the tokens each layer processed).

    Under `torchrun` / `accelerate launch` (`world`), each process answers every size-th question
    and every process returns all rows, in order: the same table as one process (batched = each
    sample alone), so `compare`, `sparsevlm eval` and `demo` run data-parallel unchanged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    rank, size = world()
    if size > 1:
        dataset = dataset[rank::size]
    rows = []
    device = next(model.parameters()).device
    fdims = dims(model)
    with torch.no_grad(), (sparsified(model, cfg) if cfg is not None else nullcontext()):
        for items, inputs in _batches(processor, dataset, batch_size, device, progress, desc or _name(cfg), model.config):
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1]:]
            texts = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
            if cfg is not None:
                rep = report(model)
            else:
                rep = dense_report_for(model, inputs)
            counts, eq, eq_in = rep.visual_out.tolist(), rep.equivalent_tokens.tolist(), rep.equivalent_tokens_input.tolist()
            flops = report_flops(rep, **fdims).tolist()
            for i, it in enumerate(items):
                pred = texts[i].strip().split(" ")[0] if texts[i].strip() else ""
                rows.append({"type": it["type"], "question": it.get("question", it["prompt"]), "answer": it["answer"],
                             "prediction": pred, "correct": pred == it["answer"], "visual_tokens": counts[i],
                             "equivalent_tokens": eq[i], "equivalent_tokens_input": eq_in[i], "flops": flops[i]})
    return pd.DataFrame(_everyone(rows, rank, size) if size > 1 else rows)


def evaluate_toy_video(cfg=None, limit: int | None = None, batch_size: int = 32, progress: bool = True,
                       model=None, processor=None) -> pd.DataFrame:
    """The embedded video model (`toy.load_video`, or `model`, `processor`) on the first `limit`
    questions of its shipped evaluation split (`toy.video_eval_split`, 500 questions on 125 clips),
    dense or sparsified with `cfg`: `evaluate`'s table, one row per question."""
    from .toy import load_video, video_eval_split

    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit!r} must be >= 1 (or None for the whole split)")
    if model is None:
        model, processor = load_video()
    elif processor is None:
        raise ValueError("pass processor with model (the video model's processor)")
    return evaluate(model, processor, video_eval_split(limit=limit), cfg, batch_size=batch_size, progress=progress)


def accuracy_by_type(df: pd.DataFrame) -> pd.Series:
    """Accuracy per question type, plus "all"."""
    acc = df.groupby("type")["correct"].mean()
    acc["all"] = df["correct"].mean()
    return acc


def _name(cfg) -> str:
    return "dense" if cfg is None else type(cfg).__name__


def _keep_all(layer: int, **overrides):
    """SparseVLM that prunes nothing, after `layer`: its report carries that layer's scores and the raters."""
    from .config import SparseVLMConfig

    return SparseVLMConfig(mode="schedule", pruning_layers=(layer,), schedule=(10 ** 9,), recycle=False, **overrides)


def focus_mass(model, processor, dataset, layer: int, batch_size: int = 64) -> pd.DataFrame:
    """Share of the raters' attention (SparseVLM's significance scores, renormalised over the
    visual tokens) that falls on each question's focus patches, at decoder layer `layer`.
    `dataset` records need "focus" (patch indices) and "image_id" besides "image" and "prompt".

    Returns one row per question: image_id, type, focus, scores (per patch), mass.
    """
    rows = []
    with torch.no_grad(), sparsified(model, _keep_all(layer)):
        for items, inputs in _batches(processor, dataset, batch_size, next(model.parameters()).device,
                                      config=model.config):
            model(**inputs, use_cache=False)
            scores = report(model).steps[0]["scores"]  # (B, n_visual)
            scores = scores / scores.sum(-1, keepdim=True)
            for i, it in enumerate(items):
                rows.append({"image_id": it["image_id"], "type": it["type"], "focus": list(it["focus"]),
                             "scores": scores[i], "mass": scores[i, list(it["focus"])].sum().item()})
    return pd.DataFrame(rows)


def question_dependence(masses: pd.DataFrame) -> float:
    """Over pairs of questions on the same image about disjoint regions: the share of ordered pairs
    (q, r) in which q's raters put more attention on q's focus than r's raters do."""
    wins = total = 0
    for _, group in masses.groupby("image_id"):
        rows = list(group.itertuples())
        for q in rows:
            for r in rows:
                if q.Index == r.Index or not q.focus or set(q.focus) & set(r.focus):
                    continue
                total += 1
                wins += q.mass > r.scores[q.focus].sum().item()
    return wins / total if total else float("nan")


def compare(model, processor, dataset, configs: dict, batch_size: int = 64, progress: bool = True,
            reference: str | None = None, per_question: bool = False):
    """Evaluate several methods (name -> config, None = dense) on the same questions.

    Returns one row per method: equivalent tokens both ways, mean prefill FLOPs (formula),
    accuracy overall with its 95 % bootstrap interval (acc_low, acc_high) and per type, and,
    relative to the dense row (when there is one), accuracy retained and FLOPs saved. With
    `reference` (a name in `configs`), every row also gets its accuracy difference to that row with
    a paired-bootstrap 95 % interval (diff, diff_low, diff_high) and a verdict ("better", "worse",
    or "tie" when the interval contains 0). With `per_question`, returns (table, {name: the
    `evaluate` DataFrame of that method}) for paired comparisons of your own.
    """
    if reference is not None and reference not in configs:
        raise ValueError(f"reference={reference!r} is not one of the configs: {', '.join(map(repr, configs))}")
    rows, frames = [], {}
    for name, cfg in configs.items():
        df = evaluate(model, processor, dataset, cfg, batch_size=batch_size, progress=progress, desc=name)
        frames[name] = df
        low, high = accuracy_ci(df)
        rows.append({"method": name, "equivalent_tokens": df["equivalent_tokens"].mean(),
                     "equivalent_tokens_input": df["equivalent_tokens_input"].mean(), "flops": df["flops"].mean(),
                     **{f"acc_{k}": v for k, v in accuracy_by_type(df).items()}, "acc_low": low, "acc_high": high})
    table = pd.DataFrame(rows).set_index("method")
    if "dense" in table.index:
        table["retained"] = table["acc_all"] / table.loc["dense", "acc_all"]
        table["flops_saved"] = 1 - table["flops"] / table.loc["dense", "flops"]
    if reference is not None:
        for name, df in frames.items():
            r = paired_bootstrap(df, frames[reference])
            table.loc[name, ["diff", "diff_low", "diff_high"]] = r["diff"], r["low"], r["high"]
            table.loc[name, "verdict"] = {"a better": "better", "b better": "worse", "tie": "tie"}[r["verdict"]]
    return (table, frames) if per_question else table


def paired_bootstrap(a, b, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy difference a − b on the same questions, with a paired bootstrap confidence interval.

    `a`, `b`: per-question correctness (bool arrays, or `evaluate` DataFrames) in the same order.
    Questions are resampled with replacement `n_boot` times (seeded: the same call gives the same
    interval); the interval is the central `level` share of the resampled differences. A
    difference whose interval contains 0 is a tie at that level.
    Returns diff, low, high and verdict ("a better", "b better" or "tie").
    """
    a = np.asarray(a["correct"] if isinstance(a, pd.DataFrame) else a, dtype=float)
    b = np.asarray(b["correct"] if isinstance(b, pd.DataFrame) else b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("a and b must be per-question results of the same questions; "
                         f"got shapes {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} must be between 0 and 1")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    boots = d[idx].mean(1)
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    verdict = "a better" if low > 0 else "b better" if high < 0 else "tie"
    return {"diff": float(d.mean()), "low": float(low), "high": float(high), "verdict": verdict}


def accuracy_ci(correct, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap confidence interval of one accuracy (per-question correctness, or an `evaluate`
    DataFrame)."""
    c = np.asarray(correct["correct"] if isinstance(correct, pd.DataFrame) else correct, dtype=float)
    r = paired_bootstrap(c, np.zeros_like(c), n_boot, seed, level)
    return r["low"], r["high"]


def rater_words(model, processor, dataset, rule: str = "mean", batch_size: int = 64) -> list[list[str]]:
    """The raters SparseVLM picks for every question of `dataset`, as tokens (from the report of a
    keep-everything run: raters do not depend on the budget)."""
    out = []
    with torch.no_grad(), sparsified(model, _keep_all(0, rater_rule=rule)):
        for _, inputs in _batches(processor, dataset, batch_size, next(model.parameters()).device,
                                  config=model.config):
            model(**inputs, use_cache=False)
            for i, pos in enumerate(report(model).raters):
                out.append(processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][i, pos].tolist()))
    return out


def rater_precision(raters: list[list[str]], naming: set[str]) -> float:
    """Share of all raters (pooled over questions) that are words in `naming` (on the toy model:
    a colour, a shape or a cell — words that name something that can be in the image)."""
    total = sum(map(len, raters))
    return sum(w in naming for r in raters for w in r) / total if total else float("nan")


def write_comparison(table: pd.DataFrame, frames: dict, configs: dict, folder, stem: str, command: str,
                     device="cpu", dtype="float32") -> Path:
    """Keep a `compare(..., per_question=True)` run as a committed result: `stem`.csv (the table) and
    `stem`.json with the machine, the `command` that produced it, each row's config, the table, and
    each row's per-question correctness ("1" right, "0" wrong, in the dataset's order). Returns the
    JSON's path. `read_comparison` reads it back."""
    from .outputs import machine, write_results

    per_question = {name: "".join("1" if c else "0" for c in df["correct"]) for name, df in frames.items()}
    write_results(table, machine(device, dtype, "sdpa"), Path(folder), stem, log=lambda _: None, command=command,
                  questions=len(next(iter(frames.values()))), configs={name: repr(cfg) for name, cfg in configs.items()},
                  per_question=per_question)
    return Path(folder) / f"{stem}.json"


def read_comparison(path) -> tuple[pd.DataFrame, dict, dict]:
    """A comparison kept by `write_comparison`: (table, {row: per-question correctness as a bool
    array}, the whole JSON document: machine, command, configs)."""
    import json

    doc = json.loads(Path(path).read_text())
    table = pd.DataFrame(doc["results"]).set_index("method")
    correct = {name: np.array([c == "1" for c in s]) for name, s in doc["per_question"].items()}
    return table, correct, doc
