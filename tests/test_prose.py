"""The course's prose, as a learner reads it (issue #31, items 2 and 3).

Numbers: every decimal number (a number with a decimal point, or with a percent sign) in a
notebook's markdown must be held by that notebook's own stored text outputs, by a committed result
(`results/*.json|csv`, `data/toy-llava/results.json`) or by the short list of paper figures below,
each with its source. The README's numbers must be held by the committed results (or the paper list).
"Held" means equal within the rounding shown: 0.41 is held by a printed 0.4123, 54 % by 0.5412,
"3.8 points" by 0.038. The numbers of one list or range ("0.53 / 0.41 / 0.32", "1.8 to 5.8") must all
come from one output of a code cell, or one column or one row of a committed result. A lone number
in a notebook must be printed by the notebook: ten thousand committed values hold almost any
two-decimal number, so there they prove nothing (in the README they are all there is).

Not numbers of this kind: section marks (§3.2), exercise ids (07.1), arXiv ids (2410.04417), model
names (LLaVA-1.5-7B, Qwen2.5-VL), versions (5.24.0, torch 2.14.1, Python ≥ 3.10), anything in code
or in an equation (`ratio=0.5`, $m = \\lfloor 0.3 n \\rfloor$: a definition, not a result), and the
level of an interval ("95 % bootstrap interval", "25–75 % spread").

Prose: counted as `../shared/tools/prose_stats.py` counts (words and sentences of markdown prose, code,
tables, headings, HTML and URLs removed; an equation is one word). Every notebook's mean sentence
is at most 18 words; no sentence in a notebook or the README is over 40 words; the core latency
notebook has at most 1,200 prose words; the README is at most 10,000 characters. Where
`../shared/tools/prose_stats.py` exists, a test checks that these counts equal its counts.
"""
import bisect
import csv
import functools
import importlib.util
import json
import math
import re
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = ROOT / "README.md"
RESULTS = sorted((ROOT / "results").glob("*.json")) + sorted((ROOT / "results").glob("*.csv")) + [
    ROOT / "data" / "toy-llava" / "results.json"]
SHARED_PROSE_STATS = ROOT.parent / "shared" / "tools" / "prose_stats.py"

MAX_MEAN, MAX_SENTENCE, MAX_LATENCY_WORDS, MAX_README_CHARS = 18, 40, 1200, 10_000

# Paper figures a notebook or the README may quote: (value, a pattern the quoting markdown cell or
# README section must contain, source). Keep it short; print a number from a cell where you can.
PAPER = [
    (4.62, r"paper|2410\.04417", "SparseVLM paper (arXiv 2410.04417), LLaVA-1.5-7B prefill TFLOPs, dense"),
    (2.14, r"paper|2410\.04417", "SparseVLM paper (arXiv 2410.04417), LLaVA-1.5-7B prefill TFLOPs at 192 tokens"),
    (1.72, r"paper|2410\.04417", "SparseVLM paper (arXiv 2410.04417), LLaVA-1.5-7B prefill TFLOPs at 128 tokens"),
    (1.30, r"paper|2410\.04417", "SparseVLM paper (arXiv 2410.04417), LLaVA-1.5-7B prefill TFLOPs at 64 tokens"),
    (54, r"paper|abstract|2410\.04417", "SparseVLM paper (arXiv 2410.04417), abstract: 54 % fewer FLOPs"),
    (37, r"paper|abstract|2410\.04417", "SparseVLM paper (arXiv 2410.04417), abstract: 37 % less CUDA time"),
    (13.5, r"paper|§ ?3\.4|reference", "SparseVLM (arXiv 2410.04417, §3.4) reference code: rank scale for 576 "
                                       "tokens (SparseVLMConfig.scale)"),
]

# ---------------------------------------------------------------- markdown, prose_stats' way


def markdown_cells(path: Path) -> list[str]:
    if path.suffix == ".ipynb":
        return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    return [path.read_text()]


def without_markup(md: str, display: str, inline: str, code: str, url: str) -> str:
    """Markdown with code blocks, HTML and images removed, links reduced to their text, and display
    equations, inline equations, inline code and URLs replaced by the given placeholders."""
    md = re.sub(r"```.*?```", " ", md, flags=re.S)
    md = re.sub(r"\$\$.+?\$\$", display, md, flags=re.S)
    md = re.sub(r"(?<!\\)\$[^$\n]+?\$", inline, md)
    md = re.sub(r"`[^`]*`", code, md)
    md = re.sub(r"<[^>]+>", " ", md)
    md = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", md)
    md = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", md)
    return re.sub(r"https?://\S+", url, md)


def prose_of(md: str) -> str:
    """Markdown prose only, as prose_stats.clean: code, tables, headings, HTML, URLs removed (a
    display equation ends a sentence, an inline one is a word)."""
    md = without_markup(md, " EQ. ", "EQ", "CODE", "URL")
    return "\n".join(line for line in md.splitlines() if not line.lstrip().startswith(("|", "#")))


def words(text: str) -> list[str]:
    text = re.sub(r"```.*", " ", text, flags=re.S)
    return [w for w in re.split(r"\s+", text) if re.search(r"[A-Za-z0-9]", w)]


def sentences(prose: str) -> list[str]:
    """A bullet item or a paragraph ends a sentence too; fragments under 3 words are not sentences."""
    out = []
    for para in re.split(r"\n\s*\n|\n\s*(?:[-*+]|\d+\.)\s+", prose):
        para = re.sub(r"^(?:[-*+]|\d+\.)\s+", "", " ".join(para.split()))
        out += [s for s in re.split(r"(?<=[.!?:;])\s+(?=[A-Z*_\"'(0-9])", para) if len(words(s)) >= 3]
    return out


@functools.cache
def prose_stats(path: Path) -> dict:
    prose = "".join(prose_of(md) + "\n\n" for md in markdown_cells(path))
    sents = sentences(prose)
    lens = [len(words(s)) for s in sents]
    return {"words": len(words(prose)), "sent": len(sents), "mean": sum(lens) / len(lens) if lens else 0.0,
            "gt40": sum(n > MAX_SENTENCE for n in lens), "sentences": list(zip(lens, sents))}


def ids(paths):
    return [p.name for p in paths]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_sentences_are_short_on_average(path):
    mean = prose_stats(path)["mean"]
    assert mean <= MAX_MEAN, f"{path.name}: {mean:.1f} words per sentence (at most {MAX_MEAN})"


@pytest.mark.parametrize("path", NOTEBOOKS + [README], ids=ids(NOTEBOOKS + [README]))
def test_no_sentence_is_over_40_words(path):
    long = sorted(((n, s) for n, s in prose_stats(path)["sentences"] if n > MAX_SENTENCE), reverse=True)
    assert not long, f"{path.name}: {len(long)} sentences over {MAX_SENTENCE} words:\n" + "\n".join(
        f"  {n} words: {s[:160]}{'…' if len(s) > 160 else ''}" for n, s in long)


def test_the_latency_notebook_is_a_core_notebook():
    (path,) = (ROOT / "notebooks").glob("[0-9][0-9]_latency_and_memory.ipynb")
    n = prose_stats(path)["words"]
    assert n <= MAX_LATENCY_WORDS, f"{path.name}: {n} prose words (at most {MAX_LATENCY_WORDS})"


def test_the_readme_is_a_landing_page():
    n = len(README.read_text())
    assert n <= MAX_README_CHARS, f"README.md: {n:,} characters (at most {MAX_README_CHARS:,})"


@pytest.mark.skipif(not SHARED_PROSE_STATS.is_file(), reason="no ../shared/tools/prose_stats.py here")
def test_the_counts_are_prose_stats_counts():
    spec = importlib.util.spec_from_file_location("prose_stats", SHARED_PROSE_STATS)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    for path in NOTEBOOKS + [README]:
        ref, ours = theirs.stats(path), prose_stats(path)
        assert (ours["words"], ours["sent"], ours["gt40"]) == (ref["words"], ref["sent"], ref["gt40"]), path.name
        assert math.isclose(ours["mean"], ref["mean"]), path.name


# ---------------------------------------------------------------- numbers and what holds them

SEP = r"\s*(?:/|–|—|-|to|and|or|,)\s*[−+±~≈]?"
# A number, with the numbers after it that share its unit ("88.5 / 83.6 / 84.0 %", "2–14 %", "1.8 to 5.8 points").
NUMBER = re.compile(r"(?<![\w.§/])(\d+(?:\.\d+)*)(?=((?:" + SEP + r"\d+(?:\.\d+)?)*)"
                    r"(\s?(?:\\?%|per ?cent|percentage points|points|pp\b))?)")
# What joins the numbers of one list or range: they must come from one printout or one column.
JOIN = re.compile(r"\s*(?:/|–|—|-|→|to)\s*[−+±~≈]?")
VERSION_BEFORE = re.compile(r"(?i)(?:python|torch|torchvision|transformers|lmms-eval|jupyterlab|nbval|ipywidgets|numpy|"
                            r"fvcore|cuda|sphinx|release|releases|version|versions|before|since|≥|>=|<=|==|<|>)"
                            r"\s*(?:\S+\s+)?$")
VERSION_AFTER = re.compile(r"(?i)^(?:\.x|\s+(?:and|or)\s+(?:older|newer|later|earlier)|\s+(?:transformers|torch|python))")
LEVEL_AFTER = re.compile(r"(?i)^\s?(?:\\?%|per ?cent)\s+(?:[\w-]+\s+){0,2}?(?:interval|intervals|bootstrap|confidence|"
                         r"spread|quantile|quartile)")
SECTION_BEFORE = re.compile(r"(?i)(?:§\s*|\bsection\s+|\bsec\.\s*|\btable\s+|\bfig\.\s*|\bfigure\s+|\beq\.\s*)$")


@functools.cache
def exercise_ids() -> frozenset:
    """Every exercise id the notebooks pose (`check("10.1", ...)`): "10.1" in prose names it."""
    text = "".join("".join(c["source"]) for nb in NOTEBOOKS for c in json.loads(nb.read_text())["cells"])
    return frozenset(re.findall(r"check\(\s*['\"](\d\d\.\d+)['\"]", text))


def strip_for_numbers(md: str) -> str:
    """Markdown without what holds no claims: code, equations, HTML tags, link targets, URLs."""
    return without_markup(md, " EQ ", " EQ ", " CODE ", " URL ")


class Number(NamedTuple):
    shown: str        # as written, "%" added for a percent or points
    value: float
    decimals: int     # digits after the point: the rounding shown
    percent: bool     # a percent or percentage points: 54 % is also 0.54
    group: int        # the numbers of one list or range ("0.53 / 0.41 / 0.32") share a group
    where: str        # the sentence, or the part of a long one around the number


def numbers_in(md: str, exercises: frozenset = frozenset()) -> list[Number]:
    """Every decimal number of `md`'s prose (a decimal point or a percent sign), in order."""
    text = strip_for_numbers(md)
    spans = sentence_spans(text)
    out, group, last_end = [], 0, None
    for m in NUMBER.finditer(text):
        shown, before, after = m.group(1), text[max(0, m.start() - 30):m.start()], text[m.end():m.end() + 40]
        percent = m.group(3) is not None
        if shown.count(".") > 1 or not ("." in shown or percent):
            continue  # a version (5.24.0) or a whole number
        if re.search(r"[A-Za-z]-?$", before) or re.match(r"-[A-Za-z]|-\d+[A-Za-z]", after):
            continue  # part of a name: LLaVA-1.5-7B, Qwen2.5-VL
        if re.fullmatch(r"\d{4}\.\d{4,5}", shown) or re.fullmatch(r"0\d\.\d+", shown) or shown in exercises:
            continue  # arXiv id, exercise id
        if SECTION_BEFORE.search(before) or VERSION_BEFORE.search(before) or VERSION_AFTER.match(after):
            continue
        if re.search(r"(?:\d+\.\d+\.\d+|\.x)\s*(?:to|and|–|-)\s*$", before):
            continue  # "5.19.0 to 5.24": the other end of a range of versions
        if percent and (LEVEL_AFTER.match(text[m.end() + len(m.group(2)):][:60])
                        or re.match(r"25\s*[–-]\s*75\s?%", text[m.start():m.end() + 8])
                        or re.search(r"25\s*[–-]\s*$", before) and shown == "75"):
            continue  # an interval's level or the quartiles, not a result
        if last_end is None or not JOIN.fullmatch(text[last_end:m.start()]):
            group += 1
        last_end = m.end()
        a, b = next(((a, b) for a, b in spans if a <= m.start() < b), (0, len(text)))
        where = " ".join(text[a:b].split())
        if len(where) > 220:
            where = "…" + " ".join(text[max(a, m.start() - 100):min(b, m.end() + 100)].split()) + "…"
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        percent = percent or bool(re.search(r"\bpoints?\b|percentage", where))  # "by 2.2 (0.1 to 4.4) points"
        out.append(Number(shown + ("%" if m.group(3) else ""), float(shown), decimals, percent, group, where))
    return out


def sentence_spans(text: str) -> list[tuple[int, int]]:
    cuts = [m.end() for m in re.finditer(r"(?<=[.!?:;])\s+(?=[A-Z*_\"'(0-9])|\n\s*\n|\n\s*(?:[-*+|]|\d+\.)\s+", text)]
    return list(zip([0] + cuts, cuts + [len(text)]))


OUT_NUMBER = re.compile(r"(?<![\w.])[-+−]?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:[eE]([-+]?\d+))?(\s?%)?")


class Pool:
    """Numbers, each with the half-unit of the rounding it was shown with: searchable intervals."""

    def __init__(self):
        self.items = []

    def add(self, value: float, half: float = 0.0, percent: bool = False):
        if math.isfinite(value):
            self.items.append((abs(value), half))
            if percent:
                self.items.append((abs(value) / 100, half / 100))

    def add_text(self, text: str):
        for m in OUT_NUMBER.finditer(text):
            whole, frac, exp, pct = m.groups()
            value = float(whole.replace(",", "") + (frac or "") + (f"e{exp}" if exp else ""))
            half = 0.5 * 10.0 ** (-(len(frac) - 1) + int(exp or 0)) if frac else 0.0
            self.add(value, half, bool(pct))

    def freeze(self):
        self.items.sort()
        self.values = [v for v, _ in self.items]
        self.widest = max((h for _, h in self.items), default=0.0)
        return self

    def holds(self, n: Number) -> bool:
        tol = 0.5 * 10.0 ** -n.decimals + 1e-9
        for x, t in [(n.value, tol)] + ([(n.value / 100, tol / 100)] if n.percent else []):
            i = bisect.bisect_left(self.values, x - t - self.widest)
            while i < len(self.values) and self.values[i] <= x + t + self.widest:
                if abs(self.values[i] - x) <= t + self.items[i][1]:
                    return True
                i += 1
        return False


class Source:
    """What may hold a notebook's numbers: a flat pool for a lone number, and units (one output of a
    code cell, one column of a committed result) of which one must hold every number of a list."""

    def __init__(self, units: list[Pool], loose: Pool | None = None, lone: bool = True):
        self.units, self.lone = [u.freeze() for u in units], lone
        self.flat = Pool()
        for u in self.units + [loose or Pool()]:
            self.flat.items += u.items
        self.flat.freeze()

    def holds(self, group: list[Number]) -> list[Number]:
        """The numbers of `group` (one list or range) this source does not hold."""
        if len(group) == 1:
            return [] if self.lone and self.flat.holds(group[0]) else group
        return [] if any(all(u.holds(n) for n in group) for u in self.units) else group


def _scalars(obj, key: tuple, units: dict, flat: Pool):
    """Columns (one key across the items of a list: the methods of a bench) and rows (the scalars of one
    object: one method's results) are units. A list of bare numbers (per-round samples, per-layer
    counts) is raw data: it holds nothing."""
    if isinstance(obj, dict):
        row = units.setdefault(key + ("row", id(obj)), Pool())
        for k, v in obj.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                _add(row, v)
            _scalars(v, key + (k,), units, flat)
    elif isinstance(obj, list):
        for v in obj:
            _scalars(v, key + ("*",), units, flat)
    elif isinstance(obj, (int, float, str)) and not isinstance(obj, bool):
        if key[-1:] != ("*",):  # a list of bare numbers: per-round samples, per-layer counts, not results
            _add(units.setdefault(key, Pool()), obj)


def _add(pool: Pool, v):
    pool.add_text(v) if isinstance(v, str) else pool.add(float(v))


@functools.cache
def committed(lone: bool = True) -> Source:
    """Every committed result: its columns and rows are units, as a notebook's outputs are. With
    `lone=False` they hold lists and ranges only: ten thousand committed values hold almost every
    two-decimal number, so a lone number in a notebook must be printed by the notebook."""
    units, flat = {}, Pool()
    for path in RESULTS:
        if path.suffix == ".json":
            _scalars(json.loads(path.read_text()), (path.name,), units, flat)
        else:
            rows = list(csv.DictReader(path.read_text().splitlines()))
            _scalars(rows, (path.name,), units, flat)
    return Source(list(units.values()), flat, lone)


def outputs_of(path: Path) -> Source:
    """A notebook's stored text outputs, one unit per output of a code cell."""
    units = []
    for c in json.loads(path.read_text())["cells"]:
        for o in c.get("outputs", []) if c["cell_type"] == "code" else []:
            unit = Pool()
            for text in [o.get("text", "")] + [o.get("data", {}).get(k, "") for k in ("text/plain", "text/markdown")]:
                unit.add_text("".join(text))
            units.append(unit)
    return Source(units)


def paper_holds(n: Number, context: str) -> bool:
    return any(abs(n.value - v) <= 0.5 * 10.0 ** -n.decimals + 1e-9 and re.search(pat, context, re.I)
               for v, pat, _ in PAPER)


def unbacked(sources: list[Source], units: list[str]) -> list[str]:
    """Lines naming each number of `units` (markdown cells, README sections) no source holds."""
    bad = []
    for unit in units:
        found = numbers_in(unit, exercise_ids())
        for g in sorted({n.group for n in found}):
            group = [n for n in found if n.group == g and not paper_holds(n, unit)]
            missing = set(group)
            for source in sources:
                missing &= set(source.holds(group))
            bad += [f"  {n.shown}: {n.where}" for n in group if n in missing]
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_every_number_in_a_notebook_is_backed(path):
    bad = unbacked([outputs_of(path), committed(lone=False)], markdown_cells(path))
    assert not bad, (f"{path.name}: {len(bad)} numbers held by neither its outputs, the committed results, nor "
                     f"the paper list in tests/test_prose.py (a lone number must be printed by the notebook; a "
                     f"list or range must come from one output, or one column or row of a committed result):\n"
                     + "\n".join(bad))


def test_every_number_in_the_readme_is_backed():
    """Blocks written by `make readme` are left out: tests/test_readme.py holds them equal to what their
    generator computes from results/ and the library (e.g. the formula's TFLOPs, computed, not stored)."""
    text = re.sub(r"<!-- results:(\S+):start -->.*?<!-- results:\1:end -->", " ", README.read_text(), flags=re.S)
    assert text != README.read_text(), "the README's generated block is gone"
    sections = re.split(r"\n(?=#)", text)  # a paper figure's source is named in its section
    bad = unbacked([committed()], sections)
    assert not bad, (f"README.md: {len(bad)} numbers not held by the committed results (a list or range must "
                     f"come from one column):\n" + "\n".join(bad))


# ---------------------------------------------------------------- the checker itself


def test_what_counts_as_a_number():
    md = ("SparseVLM (§3.2, [arXiv 2410.04417](https://arxiv.org/abs/2410.04417)) on LLaVA-1.5-7B and Qwen2.5-VL, "
          "checked with transformers 5.24.0 and Python ≥ 3.10 (exercise 07.1, `ratio=0.5`, $m = 0.3 n$). "
          "It keeps 0.41 of dense, with a 95 % bootstrap interval, 54 % fewer FLOPs and 2–14 % more time; "
          "Accuracy 88.5 / 83.6 %. It wins by 3.8 points.")
    found = [(n.shown, n.group) for n in numbers_in(md)]
    assert found == [("0.41", 1), ("54%", 2), ("2%", 3), ("14%", 3), ("88.5%", 4), ("83.6%", 4), ("3.8%", 5)], found


def test_what_holds_a_number():
    source = Source([Pool(), Pool()])
    source.units[0].add_text("ratio 0.4123 | acc 0.5412 | diff 0.038 | time 2.88 ms | 12.5% | tokens 64")
    source.units[1].add_text("0.53 0.32")
    source = Source(source.units)
    (n41, n54, n38, n125, n29, n24, n42, n645, n53, n32) = numbers_in(
        "0.41, 54 %, 3.8 points, 0.125, 2.9, 2.4, 0.42, 64.5, 0.53 / 0.32")
    assert not source.holds([n41]) and not source.holds([n54]) and not source.holds([n38])
    assert not source.holds([n125]) and not source.holds([n29])
    assert source.holds([n24]) == [n24] and source.holds([n42]) == [n42] and source.holds([n645]) == [n645]
    assert not source.holds([n53, n32])
    assert source.holds([n41, n32]) == [n41, n32]  # each is held, but by different outputs
