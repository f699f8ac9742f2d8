"""The public entry points: sparsify / unsparsify / sparsified / report.

One adapter per host model family; the config passed to `sparsify` selects the method, and the
adapter knows nothing about which method it runs.
"""
from __future__ import annotations

from contextlib import contextmanager

from ..config import SparseVLMConfig
from ..methods import build
from ..report import Report
from . import llava, qwen2_vl, qwen3_vl
from . import internvl
from . import gemma3
from . import qwen3_5
from .patching import check_one_device, unpatch
from .state import ModelState

#: one family adapter per line (`family.Family`); a new family is its file and one line here
ADAPTERS = [llava.FAMILY, qwen2_vl.FAMILY, qwen3_vl.FAMILY, internvl.FAMILY, qwen3_5.FAMILY, gemma3.FAMILY]


def model_types() -> tuple[str, ...]:
    """The `config.model_type` of every checkpoint some family loads (the command line's `--model`)."""
    return tuple(t for adapter in ADAPTERS for t in adapter.MODEL_TYPES)


def family_of(model):
    """The family adapter that sparsifies `model` (`family.Family`); a TypeError names what is supported."""
    reasons = []
    for adapter in ADAPTERS:
        reason = adapter.unsupported_reason(model)
        if reason is None:
            return adapter
        reasons.append(reason)
    name = type(model).__name__
    if all(r.startswith(f"{name} is not supported") for r in reasons):  # no family at all: one message
        raise TypeError(f"{name} is not supported; supported: " + "; ".join(a.SUPPORTED for a in ADAPTERS))
    raise TypeError("; ".join(r for r in reasons if not r.startswith(f"{name} is not supported")))


def depth(model) -> int:
    """Decoder layers of the model's language model."""
    return model.config.get_text_config().num_hidden_layers


def sparsify(model, cfg=None):
    """Apply a pruning method (SparseVLM by default) to `model` in place and return it.

    Idempotent: sparsifying again first removes the previous patch. Everything is checked before
    the model is touched: on an error the model stays exactly as it was. Inference only.
    """
    cfg = SparseVLMConfig() if cfg is None else cfg
    adapter = family_of(model)
    method = build(cfg, depth(model))  # default layers follow the model's depth
    adapter.check(model, method)
    check_one_device(model)
    unsparsify(model)
    adapter.patch(model, method, ModelState(cfg=cfg, method=method, method_name=type(method).__name__))
    return model


def unsparsify(model):
    """Restore the model's exact original behaviour (classes, hooks, attributes). Returns it."""
    unpatch(model)
    return model


def default_positions(model) -> str:
    """The `positions` mode configs for `model` default to: "compact" (the reference) where the
    family allows it, "original" where it keeps positions (M-RoPE)."""
    return family_of(model).POSITIONS[0]


def config_of(model):
    """The config `model` is sparsified with, or None."""
    state = getattr(model, "_sparsevlm", None)
    return None if state is None else state.cfg


@contextmanager
def sparsified(model, cfg=None):
    """`with sparsified(model, cfg): ...` — sparsify for the block, then restore what was before."""
    previous = config_of(model)
    sparsify(model, cfg)
    try:
        yield model
    finally:
        unsparsify(model)
        if previous is not None:
            sparsify(model, previous)


def report(model) -> Report:
    """What the last prefill of a sparsified model did (in this thread)."""
    state = getattr(model, "_sparsevlm", None)
    if state is None:
        raise ValueError("model is not sparsified: call sparsevlm.sparsify(model, cfg) first")
    call = state.call()
    rep = call.report
    if rep is None:
        raise ValueError("no forward pass yet: run the model (or generate) once, then ask for its report")
    if callable(rep):  # a pruned prefill leaves its report on the device; built once, here
        rep = call.report = rep()
    return rep


@contextmanager
def timing(model):
    """`with timing(model): ...` — a sparsified model clocks its method's own work in the block: each
    prefill's `Report.overhead_seconds` (CUDA synchronised around each part, so prefills run slower)."""
    state = getattr(model, "_sparsevlm", None)
    if state is None:
        raise ValueError("model is not sparsified: call sparsevlm.sparsify(model, cfg) first")
    before, state.timing = state.timing, True
    try:
        yield model
    finally:
        state.timing = before
