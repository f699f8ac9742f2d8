"""Making the method cheaper must not change what it decides. `tests/data/decisions.pt` holds, for
every method, what the implementation of 2026-11-25 (commit 793c8d5, before the work on host reads
and op counts) decided on the embedded evaluation split (64 questions, batches of 8) and on random
inputs of tiny LLaVA-1.5, OneVision and Qwen2-VL models: kept indices, raters, recycled counts,
visual tokens per layer, the scores, which outputs are present, and the logits. This test recomputes
all of it: the decisions must be identical, bit for bit on any machine. The floats (scores, logits)
were bit-identical on the recording machine; another CPU's kernels round differently (seen: scores
within 1e-6, logits within 1.1e-5 on a second machine, every decision unchanged), so they are
compared to float32 rounding, far below any difference a changed decision would make.

Regenerate only for an intended change of behaviour: `python tests/test_decisions_unchanged.py`.
"""
from pathlib import Path

import pytest
import torch

import sparsevlm
from sparsevlm import toy

DATA = Path(__file__).parent / "data" / "decisions.pt"
torch.set_grad_enabled(False)


def toy_configs(model):
    from sparsevlm.bench import preset_config, rank_config

    p = preset_config(model, 128)
    return {"preset192": preset_config(model, 192), "preset128": p, "preset64": preset_config(model, 64),
            "rank": rank_config(model), "plus": p.replace(rope_correction=True, top_heads=2),
            "original": p.replace(positions="original"), "random": sparsevlm.RandomConfig(pruning_layers=(1, 2, 4), schedule=(30, 12, 6)),
            "fastv": sparsevlm.FastVConfig(layer=1, prune_ratio=0.7), "pdrop": sparsevlm.PDropConfig(pruning_layers=(1, 3, 5)),
            "visionzip": sparsevlm.VisionZipConfig(dominant=12, contextual=4), "tome": sparsevlm.ToMeConfig(keep=16)}


def _run(model, inputs, cfg):
    with sparsevlm.sparsified(model, cfg):
        out = model(**inputs)
        rep = sparsevlm.report(model)
    steps = [{k: (v.tolist() if isinstance(v, torch.Tensor) and k != "scores" else v) for k, v in s.items()}
             for s in rep.steps]
    return {"steps": steps, "raters": rep.raters, "visual_in": rep.visual_in, "visual_out": rep.visual_out,
            "present": rep.present, "logits": out.logits[:, -1].float().clone()}


def cases():
    """(name, model, inputs, config) for every recorded run."""
    from helpers import batch, tiny_llava
    from test_families import image_batch, video_batch
    from test_qwen_vl import batch as qwen_batch

    from sparsevlm.toy.families import tiny_vlm

    model, processor = toy.load()
    recs = toy.eval_split(limit=64)
    for name, cfg in toy_configs(model).items():
        for i in range(0, 64, 8):
            part = recs[i:i + 8]
            inputs = processor(images=[r["image"] for r in part], text=[r["prompt"] for r in part],
                               return_tensors="pt", padding=True)
            yield f"toy-{name}-{i}", model, inputs, cfg
    llava = tiny_llava("qwen2")
    inputs = batch([5, 12, 3, 9])
    for name, cfg in toy_configs(model).items():
        if name == "pdrop":
            cfg = sparsevlm.PDropConfig(pruning_layers=(1, 3, 4))
        yield f"llava-{name}", llava, inputs, cfg
    onevision = tiny_vlm("onevision")
    one = sparsevlm.SparseVLMConfig.preset(64, pruning_layers=(1, 2, 3), schedule=(30, 20, 10))
    yield "onevision-images", onevision, image_batch(onevision, [5, 3, 7])[0], one
    yield "onevision-video-span", onevision, video_batch(onevision, [4, 9])[0], one.replace(budget_per="span")
    qwen = tiny_vlm("qwen2-vl")
    q = one.replace(positions="original")
    yield "qwen-images", qwen, qwen_batch([(1, 8, 12), (1, 12, 8), (1, 8, 8)], [5, 3, 7])[0], q
    yield "qwen-video-span", qwen, qwen_batch([(2, 8, 8), (4, 8, 8)], [6, 2], video=True)[0], \
        q.replace(budget_per="span")
    yield "qwen-rank", qwen, qwen_batch([(1, 8, 12), (1, 12, 8)], [5, 3])[0], \
        sparsevlm.SparseVLMConfig(pruning_layers=(1, 2), scale=2.0, positions="original")


@pytest.mark.skipif(not DATA.exists(), reason="tests/data/decisions.pt is missing: run this file to record it")
def test_every_decision_is_what_it_was():
    recorded = torch.load(DATA, weights_only=False)
    seen = 0
    for name, model, inputs, cfg in cases():
        got, want = _run(model, inputs, cfg), recorded[name]
        assert got["raters"] == want["raters"], name
        for k in ("visual_in", "visual_out", "present"):
            assert torch.equal(got[k], want[k]), (name, k)
        assert len(got["steps"]) == len(want["steps"]), name
        for g, w in zip(got["steps"], want["steps"]):
            assert g.keys() == w.keys(), name
            for k in g:
                if k == "scores":
                    torch.testing.assert_close(g[k], w[k], rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)
                else:
                    assert g[k] == w[k], (name, k)
        torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-5, atol=1e-4, msg=name)
        seen += 1
    assert seen == len(recorded)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    DATA.parent.mkdir(exist_ok=True)
    torch.save({name: _run(model, inputs, cfg) for name, model, inputs, cfg in cases()}, DATA)
    print(f"wrote {DATA} ({DATA.stat().st_size / 1e3:.0f} kB)")
