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
