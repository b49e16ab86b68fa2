"The docs site: built offline from the executed notebooks, opened from disk in headless Chromium with no network."
import shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import CI_RUN, ROOT
from contrastlab.runner import run_notebook

METHOD_PAGES = [f"methods/{m}.ipynb" for m in ("simclr", "laf", "sepclr", "hydra", "beclr", "aro")]

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for rel in ("index.ipynb", "viz.ipynb", *METHOD_PAGES):      # normally already executed by test_notebooks
        if not (CI_RUN / rel).exists(): run_notebook(ROOT / "nbs" / rel, (CI_RUN / rel).parent, preset="ci")
    out = tmp_path_factory.mktemp("site") / "_docs"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), str(CI_RUN), "--out", str(out)], check=True, cwd=ROOT)
    return out

def test_site_pages_exist(site):
    for page in ("index.html", "losses/index.html", "losses/core.html", "losses/named.html", "metrics/geometry.html", "viz.html",
                 "methods/simclr.html", "zoo/index.html"):
        assert (site / page).exists(), page
    assert "contrastive_loss" in (site / "losses/core.html").read_text()          # show_doc output rendered
    assert "info_nce_loss" in (site / "losses/named.html").read_text()

def test_index_lists_every_registered_paper(site):
    from contrastlab.registry import papers
    html = (site / "index.html").read_text()
    missing = [p.key for p in papers() if p.title not in html or f"{p.notebook.replace('.ipynb', '.html')}" not in html]
    assert not missing, f"the docs index does not list {missing}"

@pytest.mark.notebooks
def test_simclr_page_draws_plotly_offline(site):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = _chromium_offline(p)
        ctx = browser.new_context(offline=True)
        requests = []
        page = ctx.new_page(); page.on("request", lambda r: requests.append(r.url))
        page.goto((site / "methods" / "simclr.html").as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        n_plots = page.locator(".js-plotly-plot").count()
        n_points = page.locator(".js-plotly-plot .scatterlayer .point").count()
        browser.close()
    # fonts, KaTeX and plotly's optional MathJax are asked for (and fail) offline; plotly.js itself must be inline
    plotly_remote = [u for u in requests if u.startswith("http") and "plotly" in u]
    assert not plotly_remote, f"plotly.js came from the network: {plotly_remote[:3]}"
    assert n_plots >= 5, f"only {n_plots} plotly figures drew"
    assert n_points > 10, f"the alignment–uniformity plane drew {n_points} SVG points"

def _chromium_offline(p):
    chromium = shutil.which("chromium")
    if chromium is None: pytest.fail("chromium is not installed; `make test` installs it (apt-get install chromium)")
    return p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                                            "--disable-component-update", "--disable-sync", "--no-first-run"])

def _move_offline(page, plot) -> tuple:
    "Move a kernel-free explorer's control (click the slider's far end, or pick another state in the dropdown): (what, title before, after)."
    title = lambda: plot.locator(".gtitle").first.text_content()
    before = title()
    if plot.locator(".slider-container").count():
        rail = plot.locator(".slider-rail-touch-rect").first.bounding_box()
        for frac, how in ((0.97, "slider: right end clicked"), (0.03, "slider: left end clicked")):   # the default may sit at one end
            page.mouse.click(rail["x"] + rail["width"] * frac, rail["y"] + rail["height"] / 2); page.wait_for_timeout(400)
            if title() != before: break
    else:
        plot.locator(".updatemenu-header").first.click(); page.wait_for_timeout(300)
        plot.locator(".updatemenu-dropdown-button").nth(1).click(); page.wait_for_timeout(400); how = "dropdown: second state picked"
    return how, before, title()

@pytest.mark.notebooks
@pytest.mark.parametrize("rel", ["viz.ipynb", *METHOD_PAGES])
def test_page_explorer_moves_offline(site, rel):
    "Every method page (and the viz page) has a kernel-free explorer whose control changes the figure in Chromium with no network."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = _chromium_offline(p)
        page = browser.new_context(offline=True).new_page()
        page.goto((site / rel.replace(".ipynb", ".html")).as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        plots = page.locator(".js-plotly-plot").filter(has=page.locator(".slider-container, .updatemenu-container"))
        n = plots.count()
        assert n >= 1, f"{rel}: no figure with a slider or a dropdown on the page"
        plot = plots.last; plot.scroll_into_view_if_needed()
        svg = plot.locator(".main-svg").first.inner_html()
        how, before, after = _move_offline(page, plot)
        changed = plot.locator(".main-svg").first.inner_html() != svg
        (CI_RUN / "site").mkdir(parents=True, exist_ok=True); plot.screenshot(path=str(CI_RUN / "site" / f"{Path(rel).stem}-explorer.png"))
        browser.close()
    assert after != before and changed, f"{rel}: {how} left the figure as it was (title {before!r})"
