"""The README's result figures and the site's tables of measurements, generated from the committed
results (`results/*.json`, `data/toy-llava/results.json`) and the library's FLOPs formula, never typed
by hand. Each generated block sits between marker comments:

    <!-- results:NAME:start -->  ...  <!-- results:NAME:end -->

`make readme` (`python docs/readme.py`) rewrites every block in place; `python docs/readme.py --check`
exits 1 and names the files whose blocks differ from what this script generates (tests/test_readme.py
runs the same check)."""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
TOY = ROOT / "data" / "toy-llava" / "results.json"
LLAVA_BENCH = RESULTS / "bench_llava-1.5-7b-shaped-h1024_cpu.json"
PRESETS = ("192", "128", "64")
NAMES = {"sparsevlm": "SparseVLM", "random": "random tokens", "fastv": "FastV", "pdrop": "PyramidDrop",
         "visionzip": "VisionZip-style", "tome": "ToMe-style", "dart": "DART", "divprune": "DivPrune",
         "vispruner": "VisPruner", "cdpruner": "CDPruner", "pooling": "pooling", "dense": "dense"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _rows(doc: dict) -> dict:
    return {r["method"]: r for r in doc["results"]}


def _line(cells) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _ratio(row: dict) -> str:
    """The language model's prefill time against dense's, with the interval the bench stored."""
    if row["method"] == "dense":
        return "1"
    value = f"{row['lm_prefill_ratio']:.2f}"
    if row.get("lm_prefill_ratio_ci_low") is not None:
        return f"{value} [{row['lm_prefill_ratio_ci_low']:.2f}, {row['lm_prefill_ratio_ci_high']:.2f}]"
    if row.get("lm_prefill_ratio_p25") is not None:
        return f"{value} (quartiles {row['lm_prefill_ratio_p25']:.2f}–{row['lm_prefill_ratio_p75']:.2f})"
    return value


def _coverage(doc: dict) -> str:
    note = doc["machine"].get("ratio_ci", "")
    match = re.search(r"([0-9.]+)% interval", note)
    return f"{match.group(1)} %" if match else "the stored"


def readme_results() -> str:
    """The README's results: the paper's FLOPs table beside our formula, the LLaVA-1.5-7B-shaped CPU
    bench (time and FLOPs against dense, with intervals) and the embedded model's dense accuracy."""
    from sparsevlm.flops import paper_table

    table = paper_table()
    doc = _load(LLAVA_BENCH)
    rows, machine = _rows(doc), doc["machine"]
    toy = _load(TOY)
    cols = ["dense", *map(int, PRESETS)]
    out = [_line(["LLaVA-1.5-7B prefill", "dense", *(f"{p} tokens" for p in PRESETS)]),
           _line(["---"] * 5),
           _line(["TFLOPs, paper (Table 1)", *(f"{table.loc[c, 'tflops_paper']:.2f}" for c in cols)]),
           _line(["TFLOPs, our formula (`flops.paper_table()`)", *(f"{table.loc[c, 'tflops']:.3f}" for c in cols)])]
    out.append(_line(["FLOPs / dense, CPU bench (SparseVLM)", "1",
                     *(f"{rows[f'sparsevlm {p}']['flops_ratio']:.2f}" for p in PRESETS)]))
    for method in ("sparsevlm", "random", "fastv"):
        out.append(_line([f"time / dense, CPU bench ({NAMES[method]})", "1",
                         *(_ratio(rows[f"{method} {p}"]) for p in PRESETS)]))
    own = [rows[f"sparsevlm {p}"]["overhead_ms"] for p in PRESETS]
    out += ["",
            f"The CPU bench is `{LLAVA_BENCH.relative_to(ROOT)}`: LLaVA-1.5-7B's tokens, layers and vision tower "
            f"with random weights and a language model {machine['text_hidden']} wide, "
            f"{machine['threads']} CPU threads, {machine['repeats']} rounds. "
            f"\"Time\" is the language model's prefill against dense's in the same round: the median, "
            f"with a {_coverage(doc)} interval in brackets. "
            f"SparseVLM's own work takes {min(own):.0f}–{max(own):.0f} ms of a "
            f"{rows['dense']['prefill_ms'] / 1000:.1f} s dense prefill. "
            f"The embedded toy model answers {100 * toy['dense_accuracy']['all']:.2f} % of its "
            f"{toy['n_questions']} held-out questions dense (`data/toy-llava/results.json`)."]
    return "\n".join(out)


def _bench_table(path: Path) -> str:
    doc = _load(path)
    m, rows = doc["machine"], doc["results"]
    has_lm, has_layers = "lm_prefill_ms" in rows[0], "layers_ratio" in rows[0]
    one = lambda r, value: "1" if r["method"] == "dense" else value
    head = ["method", "prefill / dense", *(["language model / dense"] if has_lm else []),
            *(["decoder layers / dense"] if has_layers else []), "FLOPs / dense", "own work (ms)", "KV cache (MB)"]
    dense = rows[0]
    lm = f", of which the language model {dense['lm_prefill_ms']:.0f} ms" if has_lm else ""
    out = [f"**`{path.name}`**: model `{m.get('model')}`"
           + (f", language model {m['text_hidden']} wide" if m.get("text_hidden") else "")
           + f", batch {m.get('batch', 1)}, {m.get('repeats')} rounds, {m.get('device')}, {m.get('dtype')}; "
           f"dense prefill {dense['prefill_ms']:.0f} ms{lm}.", "",
           _line(head), "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], one(r, f"{r['prefill_ratio']:.2f}"), *([_ratio(r)] if has_lm else []),
                 *([one(r, f"{r['layers_ratio']:.2f}")] if has_layers else []), one(r, f"{r['flops_ratio']:.2f}"),
                 "–" if r.get("overhead_ms") is None else f"{r['overhead_ms']:.1f}", f"{r['kv_cache_mb']:.1f}"]
        out.append(_line(cells))
    return "\n".join(out)


def bench_tables() -> str:
    """One table per committed bench file: each method's prefill time, language-model time (with
    its interval or quartiles), FLOPs, own work and KV cache."""
    return "\n\n".join(_bench_table(p) for p in sorted(RESULTS.glob("bench_*.json")))


def profile_table() -> str:
    """Aten calls and host reads of one prefill of the embedded model: dense and SparseVLM."""
    doc = _load(RESULTS / "profile_toy_cpu.json")
    head = ["method", "batch", "aten calls", "host reads", "the method's aten calls", "the method's host reads",
            "the method's share of the time"]
    out = [_line(head), "|" + "---|" * len(head)]
    for r in doc["results"]:
        if r["method"] in ("dense", "sparsevlm 128", "sparsevlm rank"):
            out.append(f"| {r['method']} | {r['batch']} | {r['aten_calls']:,} | {r['host_reads']} | "
                       f"{r['method_aten_calls']:,} | {r['method_host_reads']} | {100 * r['method_time_share']:.0f} % |")
    return "\n".join(out)


BLOCKS = {"README.md": {"results": readme_results},
          "docs/pages/numbers.md": {"benches": bench_tables},
          "docs/pages/behaviour.md": {"profile": profile_table}}


def render(text: str, blocks: dict) -> str:
    """`text` with each named block's body replaced by what its function generates."""
    for name, make in blocks.items():
        start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
        if not pattern.search(text):
            raise ValueError(f"no block {start} … {end}")
        body = make()
        text = pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)
    return text


def main(argv: list[str]) -> int:
    stale = []
    for rel, blocks in BLOCKS.items():
        path = ROOT / rel
        text = path.read_text()
        new = render(text, blocks)
        if new != text:
            stale.append(rel)
            if "--check" not in argv:
                path.write_text(new)
    if "--check" in argv and stale:
        print("generated blocks differ from the committed results (run `make readme`):", *stale, file=sys.stderr)
        return 1
    print(("stale: " if "--check" in argv else "rewritten: ") + (", ".join(stale) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
