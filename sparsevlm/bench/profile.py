"""Counting one prefill with torch's profiler: aten calls and host reads, and the method's share of
them (`sparsevlm bench --profile`)."""
from __future__ import annotations

import statistics
from contextlib import nullcontext

import pandas as pd
import torch

from ..models import sparsified, timing
from .timing import overhead_times, prefill_time


def inside(event, name: str) -> bool:
    """Whether a profiler event lies inside a range called `name`."""
    event = event.cpu_parent
    while event is not None:
        if event.name == name:
            return True
        event = event.cpu_parent
    return False


def profile_prefill(model, inputs: dict, cfg=None) -> dict:
    """Counted with torch's profiler on one prefill after a warm-up: aten calls, host reads of device
    values (each stalls the host until the device catches up: `aten::_local_scalar_dense`, and the
    method's batched reads, `select.host_ints` / `host_copy`), and the part of both made by the method's own work
    (inside its "sparsevlm::method" ranges). On a CPU a read of a CPU tensor by `.tolist()` or
    `.cpu()` outside those two is not seen; the library makes none while pruning."""
    from torch.profiler import ProfilerActivity, profile

    from ..models.state import METHOD_RANGE
    from ..select import HOST_READ, ON_HOST

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if next(model.parameters()).is_cuda else [])
    with torch.no_grad(), sparsified(model, cfg) if cfg is not None else nullcontext():
        model(**inputs, use_cache=True)
        with profile(activities=activities) as prof:
            model(**inputs, use_cache=True)

    def in_method(event):
        return inside(event, METHOD_RANGE)

    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    # A host read: a device value read as a Python number (`aten::_local_scalar_dense`), or a
    # transfer of several at once by the method (`select.host_ints` / `host_copy`, their own range);
    # not a read inside a transfer, nor one of a value already copied to the host (`select.ON_HOST`).
    reads = [e for e in prof.events() if e.name in ("aten::_local_scalar_dense", HOST_READ)
             and not (e.name != HOST_READ and (inside(e, HOST_READ) or inside(e, ON_HOST)))]
    return {"aten_calls": len(aten), "host_reads": len(reads), "method_aten_calls": sum(map(in_method, aten)),
            "method_host_reads": sum(map(in_method, reads))}


def profile_table(model, batches: dict, rows: dict, repeats: int = 5, warmup: int = 2, log=print) -> pd.DataFrame:
    """`profile_prefill` for every method and batch ({batch size: inputs}), with the method's own
    time (`Report.overhead_seconds`, median of `repeats`) as a share of dense prefill at that batch."""
    out = []
    for size, inputs in batches.items():
        dense_ms = prefill_time(model, inputs, None, repeats, warmup) * 1e3
        for name, cfg in rows.items():
            r = {"method": name, "batch": size, **profile_prefill(model, inputs, cfg), "method_time_share": 0.0}
            if cfg is not None:
                with torch.no_grad(), sparsified(model, cfg), timing(model):
                    r["method_time_share"] = statistics.median(overhead_times(model, inputs, repeats)) * 1e3 / dense_ms
            out.append(r)
            log(f"{name:>16} batch {size}: {r['aten_calls']} aten calls ({r['method_aten_calls']} the method's), "
                f"{r['host_reads']} host reads ({r['method_host_reads']}), method time {r['method_time_share']:.1%} "
                f"of dense prefill")
    return pd.DataFrame(out)
