"""Pruning methods behind one interface: a config selects the method."""
from __future__ import annotations

from ..config import FastVConfig, PDropConfig, RandomConfig, SparseVLMConfig
from .base import Decision, Method, PruneInput
from .attention import FastV, PDrop
from .random import RandomTokens
from .sparsevlm import SparseVLM

# Config class -> method class. Baselines register here.
METHODS: dict[type, type[Method]] = {SparseVLMConfig: SparseVLM, RandomConfig: RandomTokens, FastVConfig: FastV,
                                     PDropConfig: PDrop}


def build(cfg) -> Method:
    """The method object for a config."""
    try:
        return METHODS[type(cfg)](cfg)
    except KeyError:
        names = ", ".join(c.__name__ for c in METHODS)
        raise TypeError(f"cfg of type {type(cfg).__name__} is not a method config; supported: {names}") from None


__all__ = ["build", "Method", "PruneInput", "Decision", "SparseVLM", "RandomTokens", "FastV", "PDrop", "METHODS"]
