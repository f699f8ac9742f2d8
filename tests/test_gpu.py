"""On a CUDA device (issue #16, item 6): a sparsified prefill makes the host wait for the GPU no more
often than the dense model's own prefill plus the method's allowed reads (one per prefill when its
counts are planned, one more per pruning layer in SparseVLM's rank mode), a decoding step adds
none, and what the method decides on the GPU is what it decides on the CPU.

Waits are counted by torch's sync debug mode (`torch.cuda.set_sync_debug_mode`): every synchronising
operation warns (a read of a device value, a synchronous copy in either direction). On a CPU the
same reads are counted by `tests/test_host_reads.py`. Skipped without a GPU: run on one with
`python -m pytest tests/test_gpu.py` (the embedded model, a few seconds)."""
import warnings

import pytest
import torch

import sparsevlm
from sparsevlm.bench import preset_config, rank_config
from sparsevlm.models.staged import CACHE

from helpers import embedded_batch, planned_configs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device: run `python -m pytest tests/test_gpu.py` on a GPU machine")

torch.set_grad_enabled(False)


def waits(fn) -> int:
    """How many times `fn` makes the host wait for the GPU (torch's sync debug mode warns once each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.fixture(scope="module")
def embedded():
    torch.backends.cudnn.allow_tf32 = False  # the vision tower's convolution in full float32, as on a CPU
    torch.backends.cuda.matmul.allow_tf32 = False
    return embedded_batch(8)


def test_a_sparsified_prefill_waits_only_at_the_allowed_reads(embedded):
    model, inputs = embedded
    model.cuda()
    x = {k: v.cuda() for k, v in inputs.items()}
    prefill = lambda: model(**x, use_cache=True, logits_to_keep=1)  # noqa: E731
    prefill()
    dense = waits(prefill)
    for name, cfg in {**planned_configs(model), "rank": rank_config(model)}.items():
        allowed = 1 + (len(cfg.pruning_layers) if name == "rank" else 0)
        with sparsevlm.sparsified(model, cfg):
            prefill()  # warm-up
            assert waits(prefill) <= dense + allowed, name
            waits(lambda: sparsevlm.report(model))  # the report may read: it is built when asked for
    model.cpu()


def test_decoding_waits_no_more_than_dense(embedded):
    model, inputs = embedded
    model.cuda()
    x = {k: v.cuda() for k, v in inputs.items()}

    def step():
        out = model(**x, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([x["attention_mask"], torch.ones_like(nxt)], 1)
        return lambda: model(input_ids=nxt, attention_mask=mask, use_cache=True, **{CACHE: getattr(out, CACHE)})

    dense = waits(step())
    with sparsevlm.sparsified(model, preset_config(model, 128)):
        assert waits(step()) <= dense
    model.cpu()


@pytest.mark.parametrize("mode", ["preset", "rank"])
def test_the_gpu_decides_what_the_cpu_decides(embedded, mode):
    """Float32 on both: the kept tokens agree (a near-tie may fall the other way after sums in another
    order: at most 5 % of a sample's kept set differs) and the logits match to float32 accuracy."""
    model, inputs = embedded
    cfg = preset_config(model, 128) if mode == "preset" else rank_config(model)
    runs = {}
    for device in ("cpu", "cuda"):
        model.to(device)
        with sparsevlm.sparsified(model, cfg):
            logits = model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=True).logits[:, -1].cpu()
            runs[device] = logits, sparsevlm.report(model)
    model.cpu()
    (cpu_logits, cpu), (gpu_logits, gpu) = runs["cpu"], runs["cuda"]
    for step_cpu, step_gpu in zip(cpu.steps, gpu.steps, strict=True):
        for a, b in zip(step_cpu["kept"], step_gpu["kept"], strict=True):
            a, b = set(a), set(b)
            assert len(a - b) <= 0.05 * len(a), (step_cpu["layer"], sorted(a ^ b))
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=2e-3, rtol=2e-3)
