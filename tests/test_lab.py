"""A real JupyterLab in headless Chromium: open a notebook, run it, move each explorer's control, see its figure change.

The server runs on 127.0.0.1 (a free port, no token) over a scratch project (a `pyproject.toml` and `nbs/`) holding a copy of
the notebook with the ci preset injected, so nothing under the real nbs/ is touched; the committed ledger is read, never
written. The browser reaches nothing but that server. Screenshots of every explorer before and after the move go to
`_build/ci/lab/`."""
import json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from conftest import CI_RUN, ROOT

pytestmark = pytest.mark.notebooks
SHOTS = CI_RUN / "lab"

# notebook -> how many explorers it shows; each is moved once
EXPLORERS = {"viz.ipynb": 1, "methods/simclr.ipynb": 2, "methods/laf.ipynb": 1, "methods/sepclr.ipynb": 1,
             "methods/hydra.ipynb": 1, "methods/beclr.ipynb": 1, "methods/aro.ipynb": 1}
TYPED = {"methods/aro.ipynb": "a blue square above a red circle"}     # what the test types into a text box
PROGRESS = {"methods/simclr.ipynb"}                                   # notebooks whose training shows tqdm bars (as widgets here)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A JupyterLab server over a scratch folder; stopped at the end, whatever happens."
    root = tmp_path_factory.mktemp("lab"); port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "CONTRASTLAB_PLAIN"}   # a real frontend: widgets live
    env.update(CONTRASTLAB_LEDGER=str(ROOT / "ledger"), CONTRASTLAB_RESULTS=str(root / "results"))
    (root / "pyproject.toml").write_text("[project]\nname = 'lab-scratch'\n")
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                             "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
                             f"--LabApp.workspaces_dir={root / '.workspaces'}", "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly", "--allow-root"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None: pytest.fail(f"JupyterLab exited ({proc.returncode}):\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(base + "/api/status", timeout=2); break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f"JupyterLab did not answer within 120 s:\n{(root / 'server.log').read_text()[-3000:]}")
        yield root, base
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()

@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None: pytest.fail("chromium is not installed; `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                                    "--disable-sync", "--no-first-run"])
        try: yield b
        finally: b.close()

def _stage(rel: str, root: Path) -> Path:
    "Copy a notebook into the server's folder with the ci preset injected after its parameters cell (as papermill does)."
    import nbformat
    from papermill.parameterize import parameterize_notebook
    nb = nbformat.read(ROOT / "nbs" / rel, as_version=4)
    for c in nb.cells: c.metadata.setdefault("tags", [])             # papermill reads every cell's tags
    nb.metadata.setdefault("papermill", {})
    params = {}
    if any("parameters" in c.metadata.get("tags", []) for c in nb.cells): params = dict(preset="ci", device="cpu")
    nb = parameterize_notebook(nb, params) if params else nb
    out = root / "nbs" / rel; out.parent.mkdir(parents=True, exist_ok=True); nbformat.write(nb, out)
    return out

def _errors(path: Path) -> list:
    "Error outputs of a saved notebook."
    nb = json.loads(path.read_text())
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb["cells"]) for o in c.get("outputs", [])
            if o.get("output_type") == "error"]

def _move(page, box, typed=None) -> str:
    "Move the explorer's first control with the keyboard (slider), a pick (dropdown) or typing (text box); what was done."
    handle, select, text = box.locator(".noUi-handle"), box.locator("select"), box.locator("input[type=text]")
    if handle.count():
        h = handle.first; h.focus()
        at_end = h.get_attribute("aria-valuenow") == h.get_attribute("aria-valuemax")   # the default may sit at the right end
        key = "ArrowLeft" if at_end else "ArrowRight"
        page.keyboard.press(key); page.keyboard.press(key); return f"slider → 2 × {key}"
    if select.count():
        select.first.select_option(index=1); return "dropdown → second option"
    text.first.fill(typed or text.first.input_value() + " again"); text.first.press("Enter"); return f"text box → {typed!r}"

@pytest.mark.parametrize("rel", sorted(EXPLORERS))
def test_explorers_in_jupyterlab(lab, browser, rel):
    root, base = lab
    path = _stage(rel, root)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=dict(width=1400, height=1000))
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())   # nothing but the server
    try:
        stem = Path(rel).stem                # a workspace of its own, reset: no notebook of an earlier test is restored beside it
        page.goto(f"{base}/lab/workspaces/{stem}/tree/{path.relative_to(root).as_posix()}?reset", wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                               timeout=120_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        panel = page.locator("#" + page.evaluate("window.jupyterapp.shell.currentWidget.id"))     # this notebook's panel only
        boxes = panel.locator(".contrastlab-explorer")
        n = EXPLORERS[rel]
        deadline, idle_since = time.time() + 600, None
        status = "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"
        while boxes.count() < n or panel.locator(".contrastlab-explorer .js-plotly-plot .main-svg").count() < n:
            if time.time() > deadline: pytest.fail(f"{rel}: {boxes.count()} of {n} explorers drew within 600 s")
            idle_since = (idle_since or time.time()) if page.evaluate(status) == "idle" else None
            if idle_since and time.time() - idle_since > 20:                     # the run stopped (an error) before the explorers
                page.evaluate("window.jupyterapp.commands.execute('docmanager:save')"); page.wait_for_timeout(1500)
                pytest.fail(f"{rel}: the kernel went idle with {boxes.count()} of {n} explorers drawn; errors: {_errors(path)}")
            page.wait_for_timeout(1000)
        page.wait_for_function(f"{status} === 'idle'", timeout=600_000)
        for k in range(n):
            box = boxes.nth(k); box.scroll_into_view_if_needed()
            readout = box.locator(".widget-html-content").last
            before_text, before_svg = readout.inner_text(), box.locator(".js-plotly-plot .main-svg").first.inner_html()
            box.screenshot(path=str(SHOTS / f"{stem}-{k}-before.png"))
            action = _move(page, box, TYPED.get(rel))
            page.wait_for_function("([el, t]) => el.innerText !== t", arg=[readout.element_handle(), before_text], timeout=60_000)
            page.wait_for_timeout(500)                                               # the figure redraws after the readout
            after_svg = box.locator(".js-plotly-plot .main-svg").first.inner_html()
            box.screenshot(path=str(SHOTS / f"{stem}-{k}-after.png"))
            assert after_svg != before_svg, f"{rel} explorer {k}: {action} changed the readout but not the figure"
            assert "Error" not in readout.inner_text(), f"{rel} explorer {k}: {readout.inner_text()}"
        broken = panel.locator(".jp-Cell").filter(has_text="Error displaying widget")
        if broken.count():
            broken.first.screenshot(path=str(SHOTS / f"{stem}-widget-error.png"))
            cells = [broken.nth(i).locator(".jp-InputArea").inner_text()[:120] for i in range(broken.count())]
            pytest.fail(f"{rel}: widgets failed to display in {len(cells)} cell(s): {cells}")
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')"); page.wait_for_timeout(1500)
        errs = _errors(path)
        assert not errs, f"{rel}: error outputs in JupyterLab: {errs}"
        if rel in PROGRESS:                    # tqdm.auto draws ipywidgets progress bars here (plain lines under papermill)
            assert panel.locator(".widget-hprogress").count() > 0, f"{rel}: training ran without a tqdm progress widget"
    finally:
        try: page.evaluate("window.jupyterapp.serviceManager.sessions.shutdownAll()")   # each kernel holds a notebook's models
        except Exception: pass                                                          # the page never loaded: nothing runs
        page.close()
