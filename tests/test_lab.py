"""The ablation explorer of notebook 08, tested as a learner uses it (issue #31, item 9).

A fixture starts JupyterLab on 127.0.0.1 with a token, on a copy of the notebook in a temporary
folder (the repository's notebook is never opened, so nothing is saved into it). Debian's Chromium,
driven by playwright as in tests/test_docs.py, opens the notebook and runs all cells. Then, on the
widgets: the mode toggle disables the controls that do not apply (schedule: scale and bias; rank:
preset), a knob changes (preset 64), "run ablation" is pressed, and the output shows a new numbered
run: its "run N added" line, the two plots with N marked on both, and N in the runs table.
The labels are the explorer's own (see the widget cell of notebooks/08_ablations.ipynb).
"""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_docs import CHROMIUM, browser  # noqa: F401 (a fixture) Debian's chromium, as the site's test uses

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "08_ablations.ipynb"
JUPYTER_LAB = Path(sys.executable).parent / "jupyter-lab"
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make browser` installs Debian's (make test does)"),
              pytest.mark.skipif(not JUPYTER_LAB.is_file(), reason="no jupyter-lab in this environment: install [docs]")]
RUN_ALL_S, PRESS_S = 300, 180  # generous: a 2-core machine shared with other jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of notebook 08; yields (base URL, token)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    token, port = secrets.token_hex(16), free_port()
    settings = root / ".settings"  # no autosave; every cell kept in the page (no windowing), so its widgets are there
    for plugin, values in (("docmanager-extension/plugin", {"autosave": False}),
                           ("notebook-extension/tracker", {"windowingMode": "none"})):
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(root / ".runtime"), IPYTHONDIR=str(root / ".ipython"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"), JUPYTERLAB_SETTINGS_DIR=str(settings))
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [str(JUPYTER_LAB), "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--allow-root"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def control(page, label: str):
    """The widget whose description is `label` (ipywidgets draws it as a label beside the control)."""
    return page.locator(f".jp-OutputArea .lm-Widget:has(> .widget-label:text-is('{label}'))")


def slider_disabled(page, label: str) -> bool:
    return control(page, label).evaluate(
        "el => !!el.querySelector('.noUi-target[disabled]') || el.querySelector('.widget-readout').contentEditable === 'false'")


def state(page) -> dict:
    return {"preset": control(page, "preset").locator("select").is_disabled(),
            "scale": slider_disabled(page, "scale"), "bias": slider_disabled(page, "bias")}


def test_the_explorer_switches_mode_and_adds_a_numbered_run(lab, browser):
    base, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", wait_until="load")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=60_000)
    page.evaluate("async () => { const w = window.jupyterapp.shell.currentWidget; await w.context.ready;"
                  " await w.sessionContext.ready; }")
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'",
                           timeout=60_000)

    # Run all: the command resolves when every cell has run (an error stops it).
    start = time.monotonic()
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells')"
                  ".then(ok => { window.__ran = {ok}; }, e => { window.__ran = {ok: false, error: String(e)}; }); }")
    page.wait_for_function("() => window.__ran", timeout=RUN_ALL_S * 1000)
    ok = page.evaluate("() => window.__ran.ok")
    failed = page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.model.sharedModel.cells
        .filter(c => c.cell_type === 'code').flatMap(c => c.outputs).filter(o => o.output_type === 'error')
        .map(o => o.ename + ': ' + o.evalue)""")
    assert ok and not failed, f"Run All failed: {failed}"
    run_all_s = time.monotonic() - start

    button = page.locator(".jp-OutputArea .widget-button", has_text="run ablation")
    button.scroll_into_view_if_needed(timeout=60_000)
    assert state(page) == {"preset": False, "scale": True, "bias": True}, "schedule mode: only the preset applies"

    mode = control(page, "mode")
    mode.locator("button[data-value='rank']").click()
    _wait(lambda: state(page) == {"preset": True, "scale": False, "bias": False}, "rank mode: preset disabled")
    mode.locator("button[data-value='schedule']").click()
    _wait(lambda: state(page) == {"preset": False, "scale": True, "bias": True}, "schedule mode again: preset enabled")

    control(page, "preset").locator("select").select_option("64")
    out = page.locator(".jp-OutputArea .widget-output").last
    start = time.monotonic()
    button.click()
    out.get_by_text(re.compile(r"run \d+ added:")).first.wait_for(timeout=PRESS_S * 1000)
    n = int(re.search(r"run (\d+) added:", out.inner_text()).group(1))
    _wait(lambda: re.search(rf"(?m)^\s*{n}\s", out.inner_text().split("marked on both plots")[-1]), "the runs table", 60)
    press_s = time.monotonic() - start
    text = out.inner_text()
    marked = re.search(r"marked on both plots: runs ([\d, ]+)", text)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if re.match(r"\s*\d+\s", line)}
    assert n >= 2, text
    assert marked and str(n) in re.split(r"[,\s]+", marked.group(1)), f"run {n} is not marked on both plots:\n{text}"
    assert str(n) in rows and "1" in rows, f"run {n} is not in the runs table:\n{text}"
    assert rows[str(n)] != rows["1"], f"the new preset changed nothing in run {n}:\n{text}"
    assert out.locator("img").count() >= 1, "the two plots are not drawn"
    page.close()
    assert not errors, errors
    print(f"run all {run_all_s:.0f} s, one press {press_s:.0f} s")


def _wait(condition, what: str, timeout_s: float = 20):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
