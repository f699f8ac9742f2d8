"""What a sparsified model carries: its state (one per model) and each call's (one per thread),
as small dataclasses with named fields. `patching.py`, `staged.py` and the family adapters read
and write them; nothing outside `sparsevlm/models/` does."""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class CallState:
    """One call's state (a forward or a `generate`), kept per thread."""

    #: the last prefill's report, or a function that builds it from what stayed on the device
    report: Any = None
    #: (B, L) bool: where the multimodal model spliced visual tokens in (read once by the text model)
    vis_mask: torch.Tensor | None = None
    #: (B, L) video frame of each position (−1 elsewhere), for per-frame budgets
    frames: torch.Tensor | None = None
    #: the vision tower's signals at the visual positions ("cls_attention", "keys"), for methods reading it
    vision: dict = field(default_factory=dict)
    #: the vision tower's feature-layer queries and keys of this call ("q", "k"), before they become `vision`
    vision_capture: dict | None = None
    #: per image: [CLS] attention and keys, computed once and expanded for beams
    vision_signals: list | None = None
    #: a pruning layer's queries, keys and (when hooked) keys before RoPE, while it runs
    capture: dict | None = None
    #: (B, L) bool: input positions with real outputs after the last prefill (None: it ran dense)
    present: torch.Tensor | None = None
    #: the prompt's length, when assisted generation appends a draft to the prompt's first forward
    prompt_len: int | None = None
    #: why `generate` asks the prefill to run dense (chunked prefill, right padding)
    dense_reason: str | None = None
    #: seconds of the method's own work in this prefill (when timing is on)
    overhead_s: float = 0.0


@dataclass
class ModelState:
    """A sparsified model's state, shared by its top-level, multimodal and text modules."""

    cfg: Any
    method: Any
    method_name: str
    #: the model's family adapter (`family.Family`): what the staged loop asks per layer
    family: Any = None
    #: whether prefills clock the method's own work (`sparsevlm.models.timing`)
    timing: bool = False
    #: hooks to remove on `unsparsify`
    hooks: list = field(default_factory=list)
    #: the attention module whose `apply_rotary_pos_emb` is wrapped (`compat.wrap_rope`)
    rope_module: Any = None
    #: the vision tower's attention at the feature layer, for methods that read the tower
    vision_attn: Any = None
    local: threading.local = field(default_factory=threading.local)

    def call(self) -> CallState:
        """This thread's call state: one model may serve several threads."""
        if not hasattr(self.local, "call"):
            self.local.call = CallState()
        return self.local.call


#: a KV cache shortened by a pruned prefill -> its stages (each shorter layout and the layer it starts at);
#: held weakly, so nothing outlives the cache and nothing is written on transformers' object
STAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: the profiler range that marks the method's own work (counted by `sparsevlm bench --profile`)
METHOD_RANGE = "sparsevlm::method"


class Clock:
    """Marks a block as the method's own work: a profiler range, and its wall time added to the
    call's `overhead_s` when the model's timing is on (synchronising CUDA around it)."""

    def __init__(self, st: ModelState, device):
        self.st, self.call, self.device = st, st.call(), device
        self.range = torch.profiler.record_function(METHOD_RANGE)

    def __enter__(self):
        self.range.__enter__()
        if self.st.timing:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.t = time.perf_counter()

    def __exit__(self, *exc):
        if self.st.timing:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.call.overhead_s += time.perf_counter() - self.t
        self.range.__exit__(*exc)
        return False
