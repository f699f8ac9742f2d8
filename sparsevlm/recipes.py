"""What the command line, the bench and the lmms-eval model share: loading a model, and building
method configs from command-line-style choices (a method's name, a LLaVA-1.5 preset, equivalent
tokens). It sits below `cli.py`, `bench/` and `lmms.py`; it imports none of them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .methods import BASELINES
from .utils import device_problem

METHOD_NAMES = ("dense", "sparsevlm", *BASELINES)
BUDGETS = (192, 128, 96, 64)
DTYPES = ("float32", "bfloat16", "float16")
#: LLaVA-1.5's prompt, the default template for a checkpoint's questions
LLAVA_PROMPT = "USER: <image>\n{question} ASSISTANT:"
#: the embedded models `--toy` chooses between
TOYS = ("image", "video")
#: the video comparison's baselines: random and FastV (they run on any visual tokens), then the video methods
VIDEO_BASELINES = ("random", "fastv", "dycoke", "fastvid", "vidcom2", "holitom")


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


# ---------------------------------------------------------------- input checks

def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before anything is loaded."""
    problem = device_problem(device)
    if problem is not None:
        raise CliError(f"--device {device}: {problem}")


def check_prompt(prompt: str) -> None:
    """A prompt template must hold {question} and no other field."""
    import string

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None}
    except ValueError as e:
        raise CliError(f"--prompt {prompt!r}: not a template ({e})") from None
    if fields != {"question"}:
        raise CliError(f"--prompt {prompt!r}: must contain {{question}} and no other {{field}} (found "
                       f"{', '.join(sorted(fields)) or 'none'}); write literal braces as {{{{ }}}}")


def model_folder(path: str) -> Path:
    """`path` as a folder, or a CliError saying it is none."""
    folder = Path(path)
    if not folder.is_dir():
        raise CliError(f"--model {path}: no such folder (give a local checkpoint folder)")
    return folder


# ---------------------------------------------------------------- loading

def load_model(path: str | None, device: str, dtype: str, with_processor: bool = True, toy_kind: str = "image"):
    """(model, processor) from the embedded default (the image model, or with `toy_kind` "video" the
    video model) or a local checkpoint folder (processor None when not asked for: timing needs none)."""
    import torch

    from . import toy

    if device == "cuda" and int(os.environ.get("WORLD_SIZE", 1)) > 1:  # torchrun / accelerate: one GPU each
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    check_device(device)
    torch_dtype = getattr(torch, dtype)
    if path is None:
        model, processor = (toy.load_video if toy_kind == "video" else toy.load)(dtype=torch_dtype)
    else:
        model, processor = _checkpoint(path, torch_dtype, with_processor)
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise CliError(f"--device {device}: {str(e).splitlines()[0]}") from None
    return model, processor


def _checkpoint(path: str, torch_dtype, with_processor: bool):
    """(model, processor or None) of a local checkpoint folder of a supported family (its
    `config.model_type` one of `models.model_types()`), in eval mode."""
    folder = model_folder(path)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CliError(f"--model {path}: cannot read config.json ({e.__class__.__name__})") from None
    from .models import model_types

    if config.get("model_type") not in model_types():
        raise CliError(f"--model {path}: model_type {config.get('model_type')!r} is not supported; "
                       f"supported: {', '.join(model_types())}")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise CliError(f"--model {path}: the folder has config.json but no weights (*.safetensors or *.bin)")
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=torch_dtype).eval()
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True) if with_processor else None
    except (OSError, SafetensorError, pickle.UnpicklingError) as e:  # missing files; corrupt weights
        raise CliError(f"--model {path}: cannot load ({str(e).splitlines()[0]})") from None
    except ImportError as e:  # e.g. Qwen2-VL's and OneVision's processors need torchvision
        raise CliError(f"--model {path}: cannot load its processor ({' '.join(str(e).split()[:12])} ...); "
                       f"install what it names (`sparsevlm bench --model` needs no processor)") from None
    return model, processor


# ---------------------------------------------------------------- method configs

def model_shape(model) -> tuple[int, int]:
    """(visual tokens per image, language-model layers). Where the visual tokens depend on the image
    (LLaVA-NeXT, OneVision, the Qwen-VLs, InternVL), 576: LLaVA-1.5's count, so that presets and
    `--tokens` are shares of each image's tokens, as on LLaVA-1.5."""
    from .models import family_of

    n = family_of(model).visual_tokens(model.config)
    return n or 576, model.config.get_text_config().num_hidden_layers


def tokens_meaning(model) -> str:
    """What `--tokens T` targets on `model`, for messages."""
    from .models import family_of

    if family_of(model).visual_tokens(model.config):
        return f"this model has {model_shape(model)[0]} visual tokens per image"
    return ("this model's visual tokens depend on the image, so T counts among LLaVA-1.5's 576: each image keeps "
            "the same share, T/576 of its tokens")


def preset_config(model, budget: int, n_visual: int | None = None):
    """`SparseVLMConfig.preset(budget)` for `model`: scaled to its layers and to `n_visual` (default
    `model_shape`'s), in the position mode its family defaults to."""
    from .config import SparseVLMConfig
    from .models import default_positions

    n_vis, layers = model_shape(model)
    return prunable(model, SparseVLMConfig.preset(budget, n_visual=n_visual or n_vis, num_layers=layers,
                                                  positions=default_positions(model)))


def rank_config(model, n_visual: int | None = None):
    """SparseVLM's rank mode for `model`: `SparseVLMConfig.rank` at its visual tokens (`n_visual`,
    default `model_shape`'s) and layers, in the position mode its family defaults to."""
    from .config import SparseVLMConfig
    from .models import default_positions

    n_vis, layers = model_shape(model)
    return prunable(model, SparseVLMConfig.rank(n_visual or n_vis, layers, positions=default_positions(model)))


def prunable(model, cfg):
    """`cfg` with its pruning layers where `model`'s family may prune (`Family.prunable_layers`: on
    Qwen3.5, the first full-attention layer at or after each; the baselines matched to it follow).
    Unchanged where every layer may prune, or where moving would merge two layers of a schedule."""
    from .models import family_of

    layers = family_of(model).prunable_layers(model.model.language_model, cfg.pruning_layers)
    if layers == tuple(cfg.pruning_layers) or len(layers) != len(cfg.pruning_layers):
        return cfg
    return cfg.replace(pruning_layers=layers)


def method_config(model, method: str, budget: int | None = None, tokens: float | None = None,
                  n_visual: int | None = None):
    """The config of `method` at a LLaVA-1.5 preset `budget` (scaled to the model's `n_visual`
    tokens per sample, default `model_shape`'s) or at `tokens` equivalent tokens (baselines matched
    with `match_budget`). None for dense. Where the visual tokens depend on the image (Qwen2-VL),
    budgets are ratios of LLaVA-1.5's 576; M-RoPE models take original positions."""
    from .methods import match_budget, matched_baselines

    if method == "dense":
        return None
    if method == "sparsevlm" and budget is None and tokens is None:
        return rank_config(model, n_visual)
    n_vis, layers = model_shape(model)
    n_visual = n_visual or n_vis
    cfg = preset_config(model, budget or 192, n_visual)
    if tokens is not None:
        if not 0 < tokens <= n_visual:
            meaning = f"a clip has {n_visual} visual tokens" if n_visual != n_vis else tokens_meaning(model)
            raise CliError(f"--tokens {tokens:g} is out of range (0, {n_visual}]; {meaning}")
        try:
            base = cfg if method == "sparsevlm" else matched_baselines(cfg, n_visual, layers, methods=[method])[method]
            return match_budget(base, tokens, n_visual, layers)
        except ValueError as e:
            raise CliError(f"--tokens {tokens:g}: {e}") from None
    return cfg if method == "sparsevlm" else matched_baselines(cfg, n_visual, layers, methods=[method])[method]


def methods_for(model, budgets, n_visual: int | None = None, log=None, methods=None, video: bool = False) -> dict:
    """{row name: config} — dense, SparseVLM at each budget (LLaVA-1.5 presets scaled to the
    model's `n_visual` tokens per image), and every baseline matched to its equivalent tokens that
    the model's family supports (M-RoPE models: original positions; the others are logged). The video
    methods only when the inputs are `video`: on images they would run dense."""
    from .methods import matched_baselines

    n_vis, layers = model_shape(model)
    n_vis = n_visual or n_vis
    rows = {"dense": None}
    for n in budgets:
        cfg = preset_config(model, n, n_vis)
        baselines = matched_baselines(cfg, n_vis, layers, methods=[m for m in methods or BASELINES if m != "sparsevlm"])
        for name, c in (({"sparsevlm": cfg} if methods is None or "sparsevlm" in methods else {}) | baselines).items():
            problem = _unsupported(model, c, layers, video)
            if problem is not None:
                if log is not None and n == budgets[0]:
                    log(f"{name}: skipped ({problem.split('; ')[0]})")
                continue
            rows[f"{name} {n}"] = c
    return rows


def clip_tokens(model) -> int:
    """Visual tokens of one clip of the embedded video model (8 frames × 16 + the newline = 129):
    what its presets and `--tokens` are shares of."""
    from .toy.video import tokens_per_video

    return tokens_per_video(model.config)


def video_methods_for(model, budgets, methods=VIDEO_BASELINES, log=None) -> dict:
    """{row name: config} on the embedded video model: `methods_for` at the clip's visual tokens, with
    SparseVLM twice per budget: one keep count per clip ("sparsevlm N", budget_per="sample") and one
    per frame ("sparsevlm-frame N", budget_per="span")."""
    from dataclasses import replace

    rows = methods_for(model, budgets, n_visual=clip_tokens(model), log=log, methods=["sparsevlm", *methods], video=True)
    out = {}
    for name, cfg in rows.items():
        out[name] = cfg
        if name.startswith("sparsevlm "):
            out[f"sparsevlm-frame {name.split()[1]}"] = replace(cfg, budget_per="span")
    return out


def _unsupported(model, cfg, layers: int, video: bool = False) -> str | None:
    """Why `model`'s family cannot run `cfg`'s method (or, on images, why a video method would run
    dense), or None."""
    from .methods import build
    from .models import family_of

    method = build(cfg, layers)
    try:
        family_of(model).check(model, method)
    except ValueError as e:
        return str(e)
    if method.needs_frames and not video:
        return f"{type(method).__name__} reduces video frames; these inputs are images"
    return None
