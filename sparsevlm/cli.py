"""sparsevlm — SparseVLM and its baselines on LLaVA models, from the command line.

Every subcommand runs on the embedded toy model by default (offline, CPU) and on a local checkpoint
folder with --model PATH: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Video-LLaVA, LLaVA-NeXT-Video,
Qwen2-VL or Qwen2.5-VL.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from .recipes import (BUDGETS, DTYPES, LLAVA_PROMPT, METHOD_NAMES, TOYS, VIDEO_BASELINES, CliError, check_device,
                      check_prompt, clip_tokens, load_model, method_config, model_folder, model_shape)
from .utils import positive_int


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`sparsevlm demo: error: ...`) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def check_out(path: str | None, folder: bool) -> None:
    """Refuse an --out that cannot be written, before the run (not after it)."""
    if path is None:
        return
    target = Path(path) if folder else Path(path).parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / ".sparsevlm-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CliError(f"--out {path}: cannot write there ({e.strerror or e.__class__.__name__})") from None
    if not folder and Path(path).is_dir():
        raise CliError(f"--out {path}: is a folder; give a file name")


def add_model_args(p, methods: bool = True) -> None:
    """--model, --device, --dtype and (with `methods`) --method and --budget / --tokens."""
    p.add_argument("--model", metavar="PATH", default=None,
                   help="local checkpoint folder of LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Video-LLaVA, "
                        "LLaVA-NeXT-Video, Qwen2-VL or Qwen2.5-VL (default: the embedded toy model)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="model dtype (default float32)")
    if methods:
        p.add_argument("--method", default="sparsevlm", choices=METHOD_NAMES,
                       help="pruning method (default sparsevlm); baselines are matched to the budget's "
                            "equivalent tokens")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--budget", type=int, choices=BUDGETS, default=None,
                       help="LLaVA-1.5 preset in equivalent visual tokens of 576, scaled to the model "
                            "(default: SparseVLM's rank mode; 192 for baselines)")
        g.add_argument("--tokens", type=float, default=None,
                       help="target equivalent visual tokens per image instead of a preset; where the count "
                            "depends on the image (LLaVA-NeXT, OneVision, Qwen-VL, InternVL), T of LLaVA-1.5's 576: "
                            "each image keeps the share T/576")


def _records(args):
    """Evaluation records: a JSONL file of {image, question, answer[, type]}, or else the toy split
    stored beside the model (the embedded one, or one written by `python -m sparsevlm.toy.train`)."""
    from . import toy

    if getattr(args, "toy", "image") == "video":
        for flag, value in (("--model", args.model), ("--data", args.data)):
            if value is not None:
                raise CliError(f"--toy video runs the embedded video model on its own split; {flag} names other "
                               f"{'weights' if flag == '--model' else 'questions'}: give one of them")
        return toy.video_eval_split(limit=args.limit)
    if args.data is None:
        folder = model_folder(args.model) if args.model is not None else toy.CHECKPOINT
        if not (folder / "eval_split.json").is_file():
            raise CliError(f"--model {args.model}: the folder has no eval_split.json (the toy questions), and its "
                           f"prompt format and images may differ from the toy's; give questions with --data JSONL")
        return toy.eval_split(folder, limit=args.limit)
    path = Path(args.data)
    if not path.is_file():
        raise CliError(f"--data {args.data}: no such file")
    check_prompt(args.prompt)
    records = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            image = _image(str(path.parent / r["image"]))
            records.append({"image": image, "prompt": args.prompt.format(question=r["question"]),
                            "question": r["question"], "answer": r["answer"], "type": r.get("type", "all")})
        except (ValueError, KeyError) as e:
            raise CliError(f"--data {args.data}: line {i + 1} is not a record with image, question, answer ({e})") from None
    if not records:
        raise CliError(f"--data {args.data}: the file holds no records")
    return records[:args.limit] if args.limit is not None else records


def _image(path: str, flag: str = "--image"):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise CliError(f"{flag} {path}: no such file")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError):
        raise CliError(f"{flag} {path}: not a readable image file") from None


def _frames(paths: list[str]):
    """The frames of --video, each an image file, all of one size."""
    frames = [_image(f, "--video") for f in paths]
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) > 1:
        raise CliError(f"--video: the frames differ in size ({', '.join(f'{h}×{w}' for h, w in sorted(sizes))}); "
                       f"a video's frames share one size")
    return frames


# ---------------------------------------------------------------- subcommands

def kept_figure(model, processor, inputs, rep, title: str):
    """The kept tokens of sample 0's first image (or, without images, its first video, frame by
    frame) over what the model saw: the whole image for LLaVA-1.5 and Qwen2/2.5-VL, the whole-image
    view (before the high-resolution crops) for LLaVA-NeXT and OneVision, each frame of a video."""
    import numpy as np
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from .models.llava import frame_layout
    from .plots import draw_kept, model_view, qwen_frames

    vision = model.config.vision_config
    video = "pixel_values" not in inputs
    pixels = inputs["pixel_values_videos" if video else "pixel_values"]
    grid_thw = inputs.get("video_grid_thw" if video else "image_grid_thw")
    if grid_thw is not None:  # Qwen2/2.5-VL: flattened patches of every image (or video) of the batch
        t, h, w = (int(v) for v in grid_thw[0])
        part = getattr(processor, "video_processor" if video else "image_processor", None)
        mean, std = (part.image_mean, part.image_std) if part is not None else (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        frames = qwen_frames(pixels[:t * h * w], grid_thw[0], vision, mean, std)
        m = vision.spatial_merge_size
        return draw_kept(frames, rep, title=title + (" (frame by frame)" if video else ""), grid=(h // m, w // m))
    if video:  # OneVision, Video-LLaVA, LLaVA-NeXT-Video: (B, frames, 3, H, W), each frame a grid of tokens
        side, lead, _ = frame_layout(model.config)
        frames = np.stack([model_view(processor, f) for f in pixels[0]])
        return draw_kept(frames, rep, title=title + " (frame by frame)", grid=side, lead=lead)
    if pixels.dim() == 4:
        return draw_kept(model_view(processor, pixels[0]), rep, title=title)
    return draw_kept(model_view(processor, pixels[0, 0]), rep, title=title + " (whole-image view)",
                     grid=vision.image_size // vision.patch_size)


def demo(args) -> int:
    """The main job: held-out questions dense, with SparseVLM at each preset and with every baseline
    at the same equivalent tokens; one table and plots in an output folder."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from .eval import compare, world
    from .recipes import methods_for

    check_out(args.out, folder=True)
    from .recipes import video_methods_for

    records = _records(args)  # before loading: a missing split should not wait for a large model
    model, processor = load_model(args.model, args.device, args.dtype, toy_kind=args.toy)
    args.methods = args.methods or list(VIDEO_BASELINES if args.toy == "video" else METHOD_NAMES[2:])
    configs = (video_methods_for(model, args.presets, args.methods) if args.toy == "video"
               else methods_for(model, args.presets, methods=["sparsevlm", *args.methods]))
    table, frames = compare(model, processor, records, configs, progress=not args.quiet, per_question=True)  # data-parallel under torchrun
    if world()[0] > 0:  # the other processes helped answer; the first one times, plots and writes
        return 0
    if args.results is not None:  # the committed comparison (notebook 09 reads it; tests/test_comparison.py checks it)
        return _demo_results(args, table, frames, configs, len(records))
    out, figures = _demo_files(args, model, processor, records, table, configs)
    n_visual, layers = model_shape(model)
    n_visual = clip_tokens(model) if args.toy == "video" else n_visual
    print(f"{len(records)} questions, {n_visual} visual tokens per {args.toy if args.model is None else 'image'}, {layers} layers; presets are LLaVA-1.5's "
          f"(576 tokens, 32 layers) scaled to this model" + (" (see data/toy-llava/MODEL_CARD.md)" if args.model is None else ""))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(out.to_string(float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {Path(args.out)}/: {figures}")
    return 0


def _demo_results(args, table, frames, configs, n_records: int) -> int:
    """`demo --results`: keep the comparison with the command that made it, instead of timing and plotting."""
    import torch

    from .eval import write_comparison

    video = args.toy == "video"
    command = " ".join(["sparsevlm demo --quiet", *(["--toy video"] if video else []),
                        *([f"--model {args.model}"] if args.model else []),
                        *([f"--limit {args.limit}"] if args.limit else []),
                        f"--presets {' '.join(map(str, args.presets))}",
                        *([f"--methods {' '.join(args.methods)}"]
                          if args.methods != list(VIDEO_BASELINES if video else METHOD_NAMES[2:]) else []),
                        f"--results {args.results}"])
    stem = f"{'video' if video else 'baselines'}_{Path(args.model).name if args.model else 'toy'}_{torch.device(args.device).type}"
    path = write_comparison(table, frames, configs, args.results, stem, command, args.device, args.dtype)
    print(f"{n_records} questions, {len(configs)} rows; wrote {path.with_suffix('.csv')} and .json")
    return 0


def _demo_files(args, model, processor, records, table, configs):
    """`demo`'s table (with each method's measured prefill time), its CSVs and figures in --out.
    Returns (the table, the names of the files written)."""
    import pandas as pd
    import torch

    from . import report, sparsified
    from .bench import prefill_time
    from .eval import record_inputs
    from .plots import tradeoff

    # Measured prefill time of one batch of 32 questions per method (median of 5, after 2 warm-ups)
    inputs = record_inputs(processor, records[:32], model.config).to(args.device)
    table["prefill_ms"] = [prefill_time(model, inputs, cfg) * 1e3 for cfg in configs.values()]
    out = pd.DataFrame({
        "budget": [k.split()[1] if " " in k else "-" for k in table.index],
        "equivalent_tokens": table["equivalent_tokens"], "accuracy": table["acc_all"],
        "acc_low": table["acc_low"], "acc_high": table["acc_high"], "retained": table["retained"],
        "gflops": table["flops"] / 1e9, "flops_saved": table["flops_saved"],
        "prefill_ms": table["prefill_ms"]}, index=table.index)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "per_type.csv")
    out.to_csv(folder / "table.csv")
    tradeoff(table, "equivalent_tokens", xlabel="equivalent visual tokens").savefig(folder / "accuracy_vs_tokens.png", dpi=120)
    tradeoff(table.assign(gflops=table["flops"] / 1e9), "gflops",
             xlabel="prefill GFLOPs (language model)").savefig(folder / "accuracy_vs_flops.png", dpi=120)
    rec = records[0]
    one = record_inputs(processor, [rec], model.config).to(args.device)
    figures = "table.csv, per_type.csv, accuracy_vs_tokens.png, accuracy_vs_flops.png"
    with sparsified(model, configs[f"sparsevlm {args.presets[-1]}"]), torch.no_grad():
        model(**one)
        fig = kept_figure(model, processor, one, report(model), f"SparseVLM {args.presets[-1]}: {rec.get('question', '')}")
    if fig is None:
        print(f"kept_tokens.png not drawn: {type(model).__name__}'s visual tokens are not a grid over one view")
    else:
        fig.savefig(folder / "kept_tokens.png", dpi=120)
        figures += ", kept_tokens.png"
    return out, figures


def evaluate_cmd(args) -> int:
    """Accuracy of one method on the embedded split (or --data), per question type."""
    import pandas as pd

    from .eval import accuracy_by_type, evaluate, world

    check_out(args.out, folder=False)
    records = _records(args)
    model, processor = load_model(args.model, args.device, args.dtype, toy_kind=args.toy)
    cfg = method_config(model, args.method, args.budget, args.tokens,
                        n_visual=clip_tokens(model) if args.toy == "video" else None)
    df = evaluate(model, processor, records, cfg, batch_size=args.batch_size, progress=not args.quiet)
    acc = accuracy_by_type(df)
    size = world()[1]
    print(f"method: {args.method} ({cfg!r})" + (f"; {len(df)} questions answered by {size} processes" if size > 1 else ""))
    print(f"equivalent tokens {df['equivalent_tokens'].mean():.2f} (input count {df['equivalent_tokens_input'].mean():.2f}), "
          f"prefill {df['flops'].mean() / 1e9:.4f} GFLOPs per question")
    print(pd.DataFrame({"accuracy": acc, "questions": df.groupby("type").size().reindex(acc.index).fillna(len(df))})
          .to_string(float_format=lambda x: f"{x:.3f}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def bench_cmd(args) -> int:
    """Latency and memory (see sparsevlm.bench)."""
    from . import bench

    check_device(args.device)
    check_out(args.out, folder=True)
    bench.run(bench.command.chosen_model(args), args.device, args.dtype, args.attn, args.budgets, args.repeats,
              args.warmup, args.new_tokens, args.out, args.methods, text_hidden=args.text_hidden, profile=args.profile,
              batch=args.batch, curve=args.layer_curve)
    return 0


def flops_cmd(args) -> int:
    """FLOPs: the paper's LLaVA-1.5-7B table, and formula vs fvcore vs torch on one question."""
    import pandas as pd
    import torch

    from . import report, sparsified
    from .flops import count_flops, dims, paper_table, report_flops
    from .report import dense_report_for

    print("LLaVA-1.5-7B prefill TFLOPs (formula from the architecture and the presets) vs the paper:")
    print(paper_table().to_string())
    model, processor = load_model(args.model, args.device, args.dtype)
    cfg = method_config(model, args.method, args.budget, args.tokens)
    rec = _records(args)[0]
    inputs = processor(images=rec["image"], text=rec["prompt"], return_tensors="pt").to(args.device)
    rows = {}
    with sparsified(model, cfg) if cfg is not None else nullcontext(), torch.no_grad():
        if cfg is not None:
            model(**inputs)
            rep = report(model)
        else:
            rep = dense_report_for(model, inputs)
        formula = float(report_flops(rep, **dims(model))[0])
        for counter in ("fvcore", "torch"):
            try:
                c = count_flops(model, dict(inputs), counter)
            except ValueError as e:  # fvcore's tracer cannot follow some families (LLaVA-NeXT, OneVision)
                if counter == "torch":
                    raise
                print(f"\n{str(e).split('; ')[0]}: counted with torch's FlopCounterMode only")
                continue
            rows[counter] = {"layers": c["layers"], "vision": c["vision"], "lm_head": c["lm_head"],
                             "overhead": c["overhead"], "total": c["total"]}
    rows["formula"] = {"layers": formula}
    print(f"\nOne question, {args.method}: multiply-adds (fvcore also counts LayerNorm in the vision tower)")
    print(pd.DataFrame(rows).T.to_string(float_format=lambda x: f"{x:,.0f}"))
    return 0


def show(args) -> int:
    """Answer one question about an image (or a video, given as its frames), dense and sparsified,
    and draw the kept tokens (a video's frame by frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from . import report, sparsified, toy

    check_out(args.out, folder=False)
    if args.model:
        check_prompt(args.prompt)
    visual = {"videos": [_frames(args.video)]} if args.video else {"images": _image(args.image)}
    if not args.model and args.image and visual["images"].shape[:2] != (toy.IMAGE, toy.IMAGE):
        h, w = visual["images"].shape[:2]
        raise CliError(f"--image {args.image}: {w}×{h} pixels; the embedded model reads its own {toy.IMAGE}×{toy.IMAGE} "
                       f"synthetic scenes (its processor does not resize); give --model PATH for a real checkpoint")
    model, processor = load_model(args.model, args.device, args.dtype)
    if args.video and (getattr(processor, "video_processor", None) is None
                       or getattr(model.config, "video_token_id", None) is None):
        raise CliError(f"--video: {type(model).__name__} reads no video (models that do: LLaVA-OneVision, "
                       f"Video-LLaVA, LLaVA-NeXT-Video, Qwen2-VL, Qwen2.5-VL); give --image")
    cfg = method_config(model, args.method, args.budget, args.tokens)
    if cfg is None:
        raise CliError("--method dense keeps every token; choose a pruning method to show")
    if args.model:
        text = args.prompt.format(question=args.question)
    else:
        words = args.question.rstrip(" ?").split()
        unknown = [w for w in words if w not in processor.tokenizer.get_vocab()]
        if unknown:
            raise CliError(f"--question: the embedded model does not know {', '.join(map(repr, unknown))}; "
                           f"it reads the toy questions, e.g. 'what color is the circle'")
        text = toy.prompt(" ".join(words))
    inputs = processor(**visual, text=text, return_tensors="pt").to(args.device)
    greedy = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        dense = processor.tokenizer.decode(model.generate(**inputs, **greedy)[0, n:], skip_special_tokens=True)
        with sparsified(model, cfg):
            sparse = processor.tokenizer.decode(model.generate(**inputs, **greedy)[0, n:], skip_special_tokens=True)
            rep = report(model)
    print(f"dense : {dense.strip()}")
    print(f"{args.method}: {sparse.strip()}    ({rep.summary()})")
    fig = kept_figure(model, processor, inputs, rep, f"{args.method}: {args.question}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------- parser

def parser() -> argparse.ArgumentParser:
    """The `sparsevlm` command line: one subcommand per job."""
    from . import bench

    top = _Parser(prog="sparsevlm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    _eval_parser(sub)
    p = sub.add_parser("bench", help="prefill/decode latency, KV cache and peak memory per method",
                       description=bench.command.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=bench_cmd)
    p = sub.add_parser("flops", help="FLOPs: paper table, and formula vs fvcore vs torch on one question",
                       description=flops_cmd.__doc__)
    add_model_args(p)
    _data_args(p)
    p.set_defaults(func=flops_cmd)
    _show_parser(sub)
    return top


def _data_args(p, toys: bool = False) -> None:
    """--data, --prompt and --limit (and with `toys`, --toy): which questions to ask."""
    if toys:
        p.add_argument("--toy", default="image", choices=TOYS,
                       help="which embedded model and split: image (data/toy-llava) or video (data/toy-video, "
                            "8-frame clips, 129 visual tokens per clip); not with --model or --data (default image)")
    p.add_argument("--data", metavar="JSONL", default=None,
                   help="questions as JSON lines {image (path relative to the file), question, answer[, type]} "
                        "(default: the toy split stored beside the model, eval_split.json; required for other checkpoints)")
    p.add_argument("--prompt", default=LLAVA_PROMPT,
                   help=f"prompt template for --data / --model, with {{question}} (default {LLAVA_PROMPT!r})")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N questions (default: all)")


def _demo_parser(sub) -> None:
    """`sparsevlm demo`'s arguments."""
    p = sub.add_parser("demo", help="dense vs SparseVLM vs every baseline at each preset: table + plots",
                       description=demo.__doc__)
    add_model_args(p, methods=False)
    _data_args(p, toys=True)
    p.add_argument("--presets", type=int, nargs="+", default=[192, 128, 64], choices=BUDGETS,
                   help="LLaVA-1.5 presets (equivalent tokens of 576), scaled to the model (default 192 128 64)")
    p.add_argument("--methods", nargs="+", default=None, choices=METHOD_NAMES[2:],
                   help="baselines to run at each preset (default: all; with --toy video: "
                        f"{' '.join(VIDEO_BASELINES)})")
    p.add_argument("--out", default="sparsevlm-demo", help="output folder (default ./sparsevlm-demo)")
    p.add_argument("--results", metavar="DIR", default=None,
                   help="instead of timing and plotting, keep the comparison as DIR/baselines_<model>_<device>.csv "
                        "and .json (table, per-question correctness, configs, machine, this command), e.g. "
                        "results/baselines_toy_cpu.* (notebook 09 reads it); with --toy video, DIR/video_toy_<device>.*")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=demo)


def _eval_parser(sub) -> None:
    """`sparsevlm eval`'s arguments."""
    p = sub.add_parser("eval", help="accuracy of one method, per question type", description=evaluate_cmd.__doc__)
    add_model_args(p)
    _data_args(p, toys=True)
    p.add_argument("--batch-size", type=positive_int, default=64, help="questions per batch (default 64)")
    p.add_argument("--out", default=None, help="CSV file for the per-question results (default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=evaluate_cmd)


def _show_parser(sub) -> None:
    """`sparsevlm show`'s arguments."""
    p = sub.add_parser("show", help="answer a question about an image (or video) and draw the kept tokens",
                       description=show.__doc__)
    add_model_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="image file (PNG, JPEG, ...)")
    source.add_argument("--video", nargs="+", metavar="FRAME",
                        help="a video as its frames, image files in order, for a --model that reads video "
                             "(LLaVA-OneVision, Video-LLaVA, LLaVA-NeXT-Video, Qwen2-VL, Qwen2.5-VL); --prompt must "
                             "hold its video token")
    p.add_argument("--question", required=True,
                   help="the question; for the embedded model use its vocabulary, e.g. 'what color is the circle'")
    p.add_argument("--prompt", default=LLAVA_PROMPT, help="prompt template with {question}, for --model "
                                                          f"(default {LLAVA_PROMPT!r})")
    p.add_argument("--max-new-tokens", type=positive_int, default=8, help="answer length (default 8)")
    p.add_argument("--out", default="sparsevlm-show.png", help="figure to write (default sparsevlm-show.png)")
    p.set_defaults(func=show)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "quiet", False):  # also transformers' bars (loading weights)
        from transformers.utils import logging

        logging.disable_progress_bar()
    from .eval import world

    if args.command in ("eval", "demo") and world()[0] > 0:  # data-parallel: the first process reports
        sys.stdout = open(os.devnull, "w")
        args.out = None if args.command == "eval" else args.out  # demo: returns after the shared evaluation
    try:
        return args.func(args)
    except CliError as e:
        print(f"sparsevlm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as e:  # the library's own input errors
        print(f"sparsevlm {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
