"""Sphinx configuration of the course website (`make docs`): the README as the landing page, the
notebooks in course order with the outputs CI verified (never re-executed here), the pages the
README links to (`docs/pages/`: families, behaviour, evaluation, numbers, versions...), the model card,
the committed results, the command line's --help and an API reference of `sparsevlm.__all__`.
Everything builds offline from the package index: myst-nb renders the notebooks, sphinx-book-theme
ships its assets, sphinx-mathjax-offline serves MathJax from the build folder. The source root is
the repository (`sphinx-build -c docs . docs/_build/html`), so that the README's and notebooks'
relative links are the site's links; `-W` makes a broken one fail the build."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "docs" / "_generated"

project = "sparsevlm"
author = "the sparsevlm developers"
root_doc = "README"  # the landing page; its navigation is added when Sphinx reads it (`_navigation`)
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx-mathjax-offline"]
COURSE = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = ["families", "behaviour", "evaluation", "numbers", "baselines", "versions", "extending"]  # docs/pages/, in this order
include_patterns = ["README.md", "docs/pages/*.md", "docs/_generated/*.md", "notebooks/[0-9][0-9]_*.ipynb", "data/toy-llava/MODEL_CARD.md",
                    "data/toy-video/MODEL_CARD.md"]
exclude_patterns = ["docs/_build/**", ".venv/**", "build/**"]
nb_execution_mode = "off"  # what readers see is what nbval checked
nb_output_stderr = "remove"
nb_ipywidgets_js = {}  # the widgets' JavaScript comes from a CDN: none here (07 shows a static snapshot)
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

sys.path.insert(0, str(Path(__file__).resolve().parent))
myst_heading_slug_func = "slugs.jupyter_slug"  # Jupyter's anchors: `#Notation` works in both
suppress_warnings = ["myst.header"]  # notebooks start below h1 in places; not a broken link
html_theme = "sphinx_book_theme"
html_title = "sparsevlm: SparseVLM, its baselines and a course"
html_theme_options = {"repository_url": "", "use_download_button": False, "show_toc_level": 2}
html_static_path = []
html_favicon = "favicon.svg"
html_context = {"default_mode": "light"}  # the theme logs an error when no mode is set
autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "none"


def _cli_page() -> str:
    """The command line's help, from the installed `sparsevlm` itself."""
    from sparsevlm.cli import parser

    p = parser()
    out = ["# The command line", "", "Generated from `sparsevlm --help` at build time.", ""]
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sp in [("sparsevlm", p)] + list(sub.choices.items()):
        title = name if name == "sparsevlm" else f"sparsevlm {name}"
        out += [f"## `{title}`", "", "```text", sp.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _api_page() -> str:
    import sparsevlm

    out = ["# API reference", "", "Every public name of `sparsevlm` (`sparsevlm.__all__`), from its docstring.", ""]
    for name in sparsevlm.__all__:
        obj = getattr(sparsevlm, name)
        kind = ("autoclass" if isinstance(obj, type) else "automodule" if type(obj).__name__ == "module"
                else "autodata" if not callable(obj) else "autofunction")
        target = f"{obj.__name__}" if kind == "automodule" else f"sparsevlm.{name}"
        out += [f"## `{name}`", "", f"```{{{kind}}} {target}", *([":no-members:"] if kind == "automodule" else []),
                "```", ""]
    return "\n".join(out)


def _results_page() -> str:
    import json

    out = ["# Results", "", "The committed benchmark files (`results/`), with the machine each was measured on.", ""]
    for path in sorted((ROOT / "results").glob("*.json")):
        doc = json.loads(path.read_text())
        out += [f"## `{path.name}`", "", "```json", json.dumps(doc.get("machine", {}), indent=1), "```", "",
                "```text", (path.with_suffix(".csv")).read_text().rstrip(), "```", ""]
    return "\n".join(out)


def _generate(app) -> None:
    GENERATED.mkdir(parents=True, exist_ok=True)
    for name, make in (("cli", _cli_page), ("api", _api_page), ("results", _results_page)):
        text = make() + "\n"
        path = GENERATED / f"{name}.md"
        if not path.exists() or path.read_text() != text:  # unchanged pages keep Sphinx's cache
            path.write_text(text)


def _navigation(app, docname, source) -> None:
    """The site's table of contents, appended to the README as Sphinx reads it (hidden: it drives
    the sidebar and the previous/next links; the README on GitHub stays as it is)."""
    if docname != "README":
        return
    blocks = [("The course", [f"notebooks/{n}" for n in COURSE]),  # an `NN_*_appendix` follows its NN
              ("Using the library", [f"docs/pages/{p}" for p in PAGES]),
              ("Reference", ["data/toy-llava/MODEL_CARD", "data/toy-video/MODEL_CARD", "docs/_generated/results", "docs/_generated/cli",
                             "docs/_generated/api"])]
    for caption, pages in blocks:
        source[0] += "\n\n```{toctree}\n:hidden:\n:caption: " + caption + "\n\n" + "\n".join(pages) + "\n```\n"


def _reread_navigation(app, env, added, changed, removed) -> list[str]:
    """The README carries the navigation, which follows the notebooks and pages on disk: re-read it on
    every build, so that a notebook added since the last one joins the toc (Sphinx's cache would keep
    the README's old doctree)."""
    return ["README"]


def _entry(app, exception) -> None:
    """`index.html`: the site's entry, forwarding to the landing page (the README)."""
    if exception is None and app.builder.format == "html":
        Path(app.outdir, "index.html").write_text('<!DOCTYPE html><html><head><meta charset="utf-8">'
                                                  '<meta http-equiv="refresh" content="0; url=README.html">'
                                                  '<title>sparsevlm</title></head><body>'
                                                  '<a href="README.html">sparsevlm</a></body></html>\n')


def setup(app):
    app.connect("builder-inited", _generate)
    app.connect("build-finished", _entry)
    app.connect("source-read", _navigation)
    app.connect("env-get-outdated", _reread_navigation)
