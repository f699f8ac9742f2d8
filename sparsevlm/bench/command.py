"""Latency and memory of dense vs sparsified prefill and decoding, measured the same way for every
method: `python -m sparsevlm.bench` or `sparsevlm bench` (`make bench`).

For each method: prefill time (a forward over the prompt with a KV cache and the logits of the last
position only, as `generate` runs it: the time to first token),
per-token decode time (each decoding step of greedy `generate` timed on its own, from one new token's
logits to the next: the median and 25–75 % spread of all steps of all repeats), the KV-cache
bytes after prefill, peak GPU memory of the prefill (CUDA only), and the time the method spends on
its own work (raters, scoring, rank, recycling, re-layout: `Report.overhead_seconds`) as a share of
dense prefill. The image features (vision tower and projector) are timed alone too (`vision_ms`), and
the language model's call is clocked inside each timed prefill (`lm_prefill_ms`: the method's own
work, its stages and the layers), so that `lm_prefill_ratio` — the language model's prefill time
against dense — can be set beside `flops_ratio`, which counts the language model's FLOPs; and the time spent inside the decoder
layers alone (`layers_ms`, each layer's call timed on its own in a second prefill of each turn) gives
`layers_ratio`, what the layers cost at the lengths the method leaves them against dense's: where
`lm_prefill_ratio` exceeds it, the excess is outside the layers (the method's own work, each stage's
mask and rotary embeddings); where it exceeds `flops_ratio`, the layers themselves run fewer tokens
less efficiently than their FLOPs (a property of the machine and the layer's size). Prefill times
are taken in rounds (`prefill_rounds`): each round times every method and the image features once,
in turn, so that the machine's drift over a long run falls on all of them alike; the ratios to dense are taken
round by round (a method against the dense prefill of the same round) and their median reported,
with the 25–75 % spread of `lm_prefill_ratio` over the rounds. Each time is the median of `repeats`
runs after `warmup` runs, with the 25–75 % spread (and, for `lm_prefill_ratio`, a distribution-free
interval of the median: `median_ci`). Results are written as CSV and JSON with the machine, dtype,
attention implementation and library versions (the JSON with every round's ratios).
`--layer-curve` measures instead what the layers alone allow: one decoder layer's time at each
length (`layer_curve`) and the length each method leaves every layer, whence the best time ratio
its layers can reach on this machine (`predicted_layers_ratio`).

Models: the embedded toy (`toy`, CPU-friendly), the embedded video model (`--toy video`, or
`toy-video`: its first evaluation clips, 8 frames of 16 tokens and a newline; SparseVLM with one
budget per clip and one per frame, and the video methods, as `sparsevlm demo --toy video`), an
LLaVA-1.5-7B-shaped model with random weights (`llava-1.5-7b-shaped`; timings depend only on shapes:
needs ~15 GB in bf16, i.e. a GPU) or a Qwen2.5-VL-7B-shaped one (`qwen2.5-vl-7b-shaped`: a 672×672
image, 576 visual tokens, M-RoPE, original positions; VisionZip/ToMe-style do not apply) or a Video-LLaVA-7B-shaped one
(`video-llava-7b-shaped`: the paper's video setting, 8 frames of 257 tokens). `qwen3-vl-8b-shaped`
(a 768×768 image, 576 tokens, DeepStack) and `internvl3.5-8b-shaped` (2×2 tiles and a thumbnail,
1,280 tokens) have the 8B models' shapes; `qwen3.5-9b-shaped` (the same 768×768 image; three
linear-attention layers to one full-attention layer) has Qwen3.5-9B's; `gemma-3-12b-shaped` (an
896×896 image, 256 tokens; five sliding-window layers to one global) has Gemma-3-12B's. With `--text-hidden`
the language model is narrowed (same visual tokens, prompt, layers, pruning layers and vision tower)
so that it runs on a CPU in float32: 1024 for LLaVA, 896 for Qwen2.5-VL, a multiple of 512 for the 8B ones,
of 1024 for Qwen3.5, of 480 for Gemma 3.
"""
from __future__ import annotations
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

from ..flops import dims, prefill_flops
from ..methods import BASELINES
from ..outputs import machine, write_results
from ..recipes import VIDEO_BASELINES, methods_for, rank_config, video_methods_for
from ..report import dense_report_for
from ..utils import device_problem, positive_int
from .inputs import DTYPES, MODELS, model_and_inputs
from .layers import CURVE_TOKENS, layer_curve, predicted_layers_ratio, tokens_per_layer
from .profile import profile_table
from .stats import median_ci, median_spread
from .timing import measure, prefill_rounds


def run(model_name: str = "toy", device: str = "cpu", dtype: str = "float32", attn: str = "sdpa",
        budgets=(192, 128, 64), repeats: int = 5, warmup: int = 2, new_tokens: int = 8, out: str | None = None,
        methods: list[str] | None = None, log=print, text_hidden: int | None = None,
        profile: bool = False, batch: int = 1, curve: bool = False) -> pd.DataFrame:
    """Benchmark dense, SparseVLM and the baselines; write `bench_<model>_<device>.csv/.json` to `out`
    (`bench_llava-1.5-7b-shaped-h<text_hidden>_<device>` for a narrowed language model;
    `..._b<batch>_<device>` when timing `batch` prompts at once: the toy's first `batch` evaluation
    questions, padded as in real batches, or the synthetic prompt repeated). With
    `profile`, count instead the aten calls and host reads of one prefill per method at batch 1 and
    8 (and SparseVLM's rank mode besides the presets): `profile_<model>_<device>.csv/.json`. With
    `curve`, time instead one decoder layer at lengths up to the prompt's (`layer_curve`) and record
    the length each method leaves every layer, logging the layers' time ratio this predicts beside the
    FLOPs ratio: `layers_<model>_<device>.csv/.json` (the curve; the JSON holds the lengths too)."""
    _check(model_name, device, dtype, repeats, warmup, new_tokens, batch, text_hidden, profile, curve)
    model, inputs, batches = model_and_inputs(model_name, device, dtype, attn, text_hidden, batch)
    n_visual = int(dense_report_for(model, inputs).n_visual[0])  # image and video tokens
    if model_name == "toy-video":  # as `sparsevlm demo --toy video`: SparseVLM per clip and per frame
        rows = _video_rows(model, budgets, methods, log)
    else:
        rows = methods_for(model, budgets, n_visual=n_visual, log=log, methods=methods or None,
                           video=any("video" in k for k in inputs))
    info = machine(device, DTYPES[dtype], attn)
    # the machine's load when the run starts (1, 5, 15 minutes): on a shared machine, times stretch with it
    info.update(model=model_name, load_average=[round(x, 2) for x in os.getloadavg()])
    # the files' name: bench_/profile_/layers_ + this + _<device>
    stem = f"{Path(model_name).name}{f'-h{text_hidden}' if text_hidden else ''}"
    folder = None if out is None else Path(out)
    if profile:
        if "sparsevlm" in (methods or ["sparsevlm"]):
            rows = {**rows, "sparsevlm rank": rank_config(model, n_visual if model_name == "toy-video" else None)}
        if batches is None:  # the same prompt 8 times
            batches = {1: inputs, 8: {k: v.repeat(8, *[1] * (v.dim() - 1)) for k, v in inputs.items()}}
        table = profile_table(model, {1: batches[1], 8: batches[8]}, rows, repeats, warmup, log)
        info.update(prompt_tokens=int(inputs["input_ids"].shape[1]), n_visual=n_visual)
        _finish(table.set_index(["method", "batch"]), info, folder, f"profile_{stem}_{torch.device(device).type}", log)
        table.attrs["machine"] = info
        return table
    info.update(text_hidden=model.config.text_config.hidden_size)
    if curve:
        return _run_curve(model, inputs, rows, repeats, warmup, info, folder,
                          f"layers_{stem}_{torch.device(device).type}", log)
    name = f"bench_{stem}{f'_b{batch}' if batch > 1 else ''}_{torch.device(device).type}"
    return _run_timing(model, inputs, rows, repeats, warmup, new_tokens, batch, info, folder, name, log)


def _video_rows(model, budgets, methods, log) -> dict:
    """The embedded video model's rows: dense, SparseVLM with one keep count per clip and one per frame
    (`sparsevlm-frame`), and the video baselines (`methods`, default `VIDEO_BASELINES`) matched to them."""
    chosen = [m for m in (methods or VIDEO_BASELINES) if m != "sparsevlm"]
    rows = video_methods_for(model, budgets, methods=chosen, log=log)
    if methods and "sparsevlm" not in methods:
        rows = {k: v for k, v in rows.items() if not k.startswith("sparsevlm")}
    return rows


def _check(model_name, device, dtype, repeats, warmup, new_tokens, batch, text_hidden, profile, curve) -> None:
    """`run`'s arguments, refused with a ValueError naming the argument before anything is loaded."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"device={device!r}: {problem}")
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0), ("new_tokens", new_tokens, 1),
                             ("batch", batch, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: allowed an integer ≥ {low}")
    if profile and batch != 1:
        raise ValueError(f"batch={batch}: --profile counts batches of 1 and 8 itself; allowed with it: 1")
    if curve and (profile or batch != 1):
        raise ValueError("--layer-curve times one prompt's layers: allowed without --profile and with batch 1")
    if text_hidden is not None and not model_name.endswith("-shaped"):
        raise ValueError(f"text_hidden={text_hidden} narrows the -shaped models only, not model={model_name!r}")


def _finish(table: pd.DataFrame, info: dict, folder: Path | None, stem: str, log, **extra) -> None:
    """Write `table` and `info` as `folder/stem.csv/.json` (with `extra` entries) when there is a folder."""
    if folder is not None:
        write_results(table, info, folder, stem, log, **extra)


def _run_curve(model, inputs, rows, repeats, warmup, info, folder, stem, log) -> pd.DataFrame:
    """`run` with `curve`: one layer's time at each length, and the lengths each method leaves the layers."""
    n_prompt = int(inputs["input_ids"].shape[1])
    table = layer_curve(model, sorted({*(n for n in CURVE_TOKENS if n < n_prompt), n_prompt}), repeats, warmup)
    lengths = {name: tokens_per_layer(model, inputs, cfg) for name, cfg in rows.items()}
    flops = {name: float(prefill_flops(torch.tensor([n]), **dims(model))[0]) for name, n in lengths.items()}
    for name, n in lengths.items():
        log(f"{name:>16}: layers at {predicted_layers_ratio(table, n, lengths['dense']):.3f} of dense's time "
            f"(this curve) for {flops[name] / flops['dense']:.3f} of its FLOPs")
    info.update(prompt_tokens=n_prompt, repeats=repeats, warmup=warmup)
    _finish(table, info, folder, stem, log, tokens_per_layer=lengths)
    table.attrs["tokens_per_layer"] = lengths
    table.attrs["machine"] = info
    return table


def _run_timing(model, inputs, rows, repeats, warmup, new_tokens, batch, info, folder, stem, log) -> pd.DataFrame:
    """`run`'s timing: prefills in rounds, then each method's decoding, memory and accounting."""
    layers, lm = {}, {}  # seconds inside the decoder layers and inside the language model, from the same rounds
    rounds = prefill_rounds(model, inputs, rows, repeats, warmup, layers, lm)  # every method in turn, `repeats` rounds
    vision_ms = statistics.median(rounds["vision"]) * 1e3
    log(f"image features (vision tower + projector): {vision_ms:.2f} ms")
    results = []
    for name, cfg in rows.items():
        p50, p25, p75 = (v * 1e3 for v in median_spread(rounds[name]))
        r = {"prefill_ms": p50, "prefill_ms_p25": p25, "prefill_ms_p75": p75,
             "lm_prefill_ms": statistics.median(lm[name]) * 1e3, "layers_ms": statistics.median(layers[name]) * 1e3,
             **measure(model, inputs, cfg, repeats, new_tokens)}
        results.append({"method": name, **r})
        log(f"{name:>16}: prefill {r['prefill_ms']:.2f} ms, decode {r['decode_ms_per_token']:.2f} ms/token, "
            f"KV {r['kv_cache_mb']:.2f} MB, {r['equivalent_tokens']:.1f} eq. tokens")
    table = pd.DataFrame(results).set_index("method")
    paired, coverage = _ratios(table, rounds, lm, layers)
    info.update(vision_ms=vision_ms, prompt_tokens=int(inputs["input_ids"].shape[1]), batch=batch, repeats=repeats,
                warmup=warmup, new_tokens=new_tokens, prefill_timing="rounds: every method once per round, in turn",
                ratio_ci=f"lm_prefill_ratio_ci_*: {coverage:.1%} interval of the median over the rounds (median_ci)")
    _finish(table, info, folder, stem, log, rounds=paired)
    table.attrs["machine"] = info
    return table


def _ratios(table: pd.DataFrame, rounds: dict, lm: dict, layers: dict) -> tuple[dict, float]:
    """Add the ratios to dense to `table`; return them round by round, and the coverage of `median_ci`."""
    dense = table.loc["dense"]
    table["flops_ratio"] = table["tflops"] / dense["tflops"]
    # Ratios to dense round by round (each round times dense and the method minutes apart at most, so
    # that the machine's drift cancels), then their median and 25–75 % spread over the rounds.
    paired = {name: {"prefill_ratio": [m / d for m, d in zip(rounds[name], rounds["dense"])],
                     # the language model's share, clocked inside the same prefill: comparable with
                     # flops_ratio (language-model FLOPs)
                     "lm_prefill_ratio": [m / d for m, d in zip(lm[name], lm["dense"])],
                     # what the decoder layers alone cost at the lengths the method leaves them: lm_prefill_ratio
                     # above it is the rest (own work, stages); it above flops_ratio, the layers themselves
                     "layers_ratio": [m / d for m, d in zip(layers[name], layers["dense"])]}
              for name in table.index}
    for column in ("prefill_ratio", "lm_prefill_ratio", "layers_ratio"):
        table[column] = [statistics.median(paired[name][column]) for name in table.index]
    spread = [median_spread(paired[name]["lm_prefill_ratio"]) for name in table.index]
    table["lm_prefill_ratio_p25"], table["lm_prefill_ratio_p75"] = [s[1] for s in spread], [s[2] for s in spread]
    ci = [median_ci(paired[name]["lm_prefill_ratio"]) for name in table.index]  # of the median, over the rounds
    table["lm_prefill_ratio_ci_low"], table["lm_prefill_ratio_ci_high"] = [c[0] for c in ci], [c[1] for c in ci]
    table["overhead_share"] = table["overhead_ms"].astype(float) / dense["prefill_ms"]
    return paired, ci[0][2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", metavar="{" + ",".join(MODELS) + ",PATH}",
                   help="toy: the embedded model (default); llava-1.5-7b-shaped / qwen2.5-vl-7b-shaped / "
                        "video-llava-7b-shaped (an 8-frame video) / qwen3-vl-8b-shaped / internvl3.5-8b-shaped / "
                        "qwen3.5-9b-shaped / gemma-3-12b-shaped: random "
                        "weights in those models' shapes (need a GPU unless --text-hidden narrows them); PATH: a "
                        "local checkpoint folder of a supported family (synthetic ~700-token prompt)")
    p.add_argument("--toy", default=None, choices=["image", "video"],
                   help="which embedded model: image (as --model toy) or video (data/toy-video, its own clips; "
                        "dense, SparseVLM per clip and per frame, and the video methods at each budget)")
    p.add_argument("--text-hidden", type=int, default=None,
                   help="-shaped models only: narrow the language model to this width (same tokens, layers and "
                        "vision tower): a multiple of 128 up to 4096 for LLaVA (1024 fits a CPU), of 896 up to "
                        "3584 for Qwen2.5-VL, of 512 up to 4096 for the 8B models, of 1024 up to 4096 for "
                        "Qwen3.5-9B, of 480 up to 3840 for Gemma-3-12B (default: the full width)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights and activations (default float32)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation (default sdpa)")
    p.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64], choices=[192, 128, 96, 64],
                   help="SparseVLM presets (LLaVA-1.5 equivalent tokens; scaled on the toy) (default 192 128 64)")
    p.add_argument("--methods", nargs="+", default=None, choices=["sparsevlm", *BASELINES],
                   help="only these methods besides dense (default: all)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per method (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--new-tokens", type=positive_int, default=8, help="tokens decoded to time decoding (default 8)")
    p.add_argument("--out", default="results", help="folder for the CSV/JSON (default results)")
    p.add_argument("--batch", type=int, default=1,
                   help="time this many prompts at once (toy: its first N evaluation questions, padded; the "
                        "-shaped models and checkpoints: the synthetic prompt N times); results get a _bN suffix")
    p.add_argument("--profile", action="store_true",
                   help="count aten calls and host reads of one prefill per method at batch 1 and 8 (torch "
                        "profiler), and the method's own share of them and of the time, instead of timing")
    p.add_argument("--layer-curve", action="store_true",
                   help="time one decoder layer at lengths up to the prompt's and record the length each method "
                        "leaves every layer, instead of timing prefills: what the layers alone allow on this "
                        "machine (layers_<model>_<device>.csv/.json)")


def chosen_model(args) -> str:
    """The model `--model` and `--toy` name together: `--toy video` is the embedded video model (`toy-video`)."""
    if args.toy is None:
        return args.model
    if args.model != "toy":
        raise ValueError(f"--toy {args.toy} runs an embedded model; --model {args.model} names another: "
                         f"give one of them")
    return "toy" if args.toy == "image" else "toy-video"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsevlm.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        run(chosen_model(a), a.device, a.dtype, a.attn, a.budgets, a.repeats, a.warmup, a.new_tokens, a.out,
            a.methods, text_hidden=a.text_hidden, profile=a.profile, batch=a.batch, curve=a.layer_curve)
    except ValueError as e:  # bad input: one line, as `sparsevlm bench` says it
        p.exit(1, f"{p.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
