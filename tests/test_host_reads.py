"""How often a pruned prefill waits for the device (issue #16): the method reads device values on
the host once per prefill when its counts are planned (schedules), once more per pruning layer when
they depend on what the layer computed (SparseVLM's rank mode), never in decoding, and the report is
built from device tensors only when asked for. Counted with torch's profiler on the embedded model
(`sparsevlm.bench.profile_prefill`); on a CPU every read that could stall a GPU is seen, because
the library routes its reads through `select.host_ints` / `select.host_copy`."""
import pytest
import torch

import sparsevlm
from sparsevlm.bench import preset_config, profile_prefill, rank_config
from sparsevlm.models.staged import CACHE

from helpers import embedded_batch, planned_configs

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def embedded():
    return embedded_batch(8)


def test_a_planned_prefill_reads_the_device_once(embedded):
    model, inputs = embedded
    dense = profile_prefill(model, inputs)
    for name, cfg in planned_configs(model).items():
        counts = profile_prefill(model, inputs, cfg)
        assert counts["method_host_reads"] == 1, name
        assert counts["host_reads"] == dense["host_reads"] + 1, name  # nothing else waits either


def test_rank_mode_reads_once_more_per_pruning_layer(embedded):
    model, inputs = embedded
    cfg = rank_config(model)
    counts = profile_prefill(model, inputs, cfg)
    assert counts["method_host_reads"] == 1 + len(cfg.pruning_layers)


def test_decoding_and_the_report_read_nothing(embedded):
    from torch.profiler import ProfilerActivity, profile

    model, inputs = embedded
    with sparsevlm.sparsified(model, preset_config(model, 128)):
        out = model(**inputs, use_cache=True)
        assert callable(model._sparsevlm.call().report)  # not built yet: nothing was copied to the host
        step = {"input_ids": out.logits[:, -1:].argmax(-1), CACHE: getattr(out, CACHE),
                "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(8, 1, dtype=torch.long)], 1)}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(**step, use_cache=True)
        assert not [e for e in prof.events() if e.name in ("aten::_local_scalar_dense", "sparsevlm::host_read")]
        rep = sparsevlm.report(model)
        assert rep.steps and sparsevlm.report(model) is rep  # built once, when asked


def test_sparsevlm_own_work_is_a_few_hundred_ops_per_pruning_layer(embedded):
    """Issue #16, op count: SparseVLM's own aten calls in one prefill at preset 128, batch 8 — 4,410
    before the work (results/profile_toy_cpu.csv at caadc7d), at most 1,250 after. A regression guard:
    the count is exact (the same ops on the same shapes every run), not a timing."""
    model, inputs = embedded
    counts = profile_prefill(model, inputs, preset_config(model, 128))
    assert counts["method_aten_calls"] <= 1250, counts
