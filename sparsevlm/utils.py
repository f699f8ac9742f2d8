"""Small shared helpers."""
from __future__ import annotations

import random
from argparse import ArgumentTypeError
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shipped_path(folder: str, *parts: str) -> Path:
    """A folder shipped with the library (`data`, `results`): inside the installed package
    (sparsevlm/<folder>/..., where `pip install .` puts it), else in the source checkout beside the
    package (<checkout>/<folder>/..., also what an editable install sees)."""
    package = Path(__file__).resolve().parent
    installed = package.joinpath(folder, *parts)
    return installed if installed.exists() else package.parent.joinpath(folder, *parts)


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise ArgumentTypeError(f"{value} is not allowed; give an integer ≥ 1")
    return value


def device_problem(device) -> str | None:
    """Why `device` cannot be used on this machine (not a torch device, no CUDA, no such GPU), or None."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return "not a torch device (e.g. cpu, cuda, cuda:1)"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"CUDA is not available here (torch {torch.__version__}); use cpu"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None
