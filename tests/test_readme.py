"""The README is a landing page whose result figures are generated (issue #31): the blocks between
`<!-- results:NAME:start/end -->` in the README and the site pages equal what `docs/readme.py`
renders from the committed results (`make readme` rewrites them), the page stays short with the
commands and the ten-line usage first, and every page it links to exists and is on the site."""
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_blocks_equal_what_the_committed_results_give():
    readme = _module("docs_readme", ROOT / "docs" / "readme.py")
    assert "README.md" in readme.BLOCKS
    for rel, blocks in readme.BLOCKS.items():
        text = (ROOT / rel).read_text()
        assert readme.render(text, blocks) == text, f"{rel} differs from what `make readme` generates"


def test_a_block_that_drifts_is_caught(monkeypatch):
    readme = _module("docs_readme", ROOT / "docs" / "readme.py")
    text = README.read_text()
    stale = text.replace("<!-- results:results:start -->\n", "<!-- results:results:start -->\n| 0.48 |\n", 1)
    assert stale != text and readme.render(stale, readme.BLOCKS["README.md"]) == text


def test_the_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text) <= 10_000, f"README is {len(text)} characters"
    assert "make demo" in text and "make test" in text and "make lab" in text
    usage = text.index("sparsevlm.sparsify(model, cfg)")
    before = re.sub(r"```.*?```", " ", text[:usage] + "```", flags=re.S)  # prose before the usage's code
    words = [w for w in re.split(r"\s+", re.sub(r"`[^`]*`|\[|\]\([^)]*\)|^#.*$", " ", before, flags=re.M))
             if re.search(r"[A-Za-z0-9]", w)]
    assert len(words) <= 150, f"{len(words)} prose words before the ten-line usage"
    assert "sparsevlm-course" in text  # the distribution's name, and why the import name stays


def test_every_page_the_readme_links_exists_and_is_on_the_site():
    text = README.read_text()
    links = {m for m in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in m}
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing
    conf = (ROOT / "docs" / "conf.py").read_text()
    pages = {p.stem for p in (ROOT / "docs" / "pages").glob("*.md")}
    assert {f"docs/pages/{p}.md" for p in pages} <= links, "a site page the README does not link"
    assert all(f'"{p}"' in conf for p in pages), "a page missing from docs/conf.py's PAGES"
