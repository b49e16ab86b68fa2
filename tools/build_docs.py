"""Build the offline docs site into _docs/ without Quarto.

Executed notebooks (from `contrastlab run` or the test suite, run with PLOTLY_RENDERER=notebook so plotly.js is inlined)
are laid over a copy of nbs/, processed by nbdev (`nbdev-proc-nbs`) and rendered by the pure-Python `smalldocs`.
Where Quarto exists, `nbdev-docs` renders the same `_quarto.yml` project instead.

    python tools/build_docs.py EXECUTED_DIR [--out _docs]
"""
import re, argparse, shutil, subprocess, sys, tarfile, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KATEX_VERSION = "0.16.11"     # the version smalldocs links to on a CDN; served from the site instead, so maths renders offline
KATEX_CDN = f"https://cdn.jsdelivr.net/npm/katex@{KATEX_VERSION}/dist"

def vendor_katex(site: Path) -> bool:
    "Copy KaTeX (from the npm registry's package, cached in .cache/) into the site and point every page at it."
    cache = ROOT / ".cache" / f"katex-{KATEX_VERSION}"
    if not (cache / "katex.min.js").exists():
        npm = shutil.which("npm")
        if npm is None:
            print("docs: npm not found; maths will load KaTeX from its CDN"); return False
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([npm, "pack", f"katex@{KATEX_VERSION}", "--silent"], cwd=tmp, capture_output=True, text=True)
            tgz = next(Path(tmp).glob("katex-*.tgz"), None)
            if r.returncode or tgz is None:
                print(f"docs: could not fetch KaTeX ({r.stderr.strip()[-200:]}); maths will load it from its CDN"); return False
            with tarfile.open(tgz) as t:
                members = [m for m in t.getmembers() if m.name.startswith("package/dist/")]
                t.extractall(tmp, members=members, filter="data")
            if cache.exists(): shutil.rmtree(cache)
            shutil.copytree(Path(tmp) / "package" / "dist", cache)
    dest = site / "site_libs" / "katex"
    if dest.exists(): shutil.rmtree(dest)
    shutil.copytree(cache, dest)
    n = 0
    for page in site.rglob("*.html"):
        html = page.read_text()
        if KATEX_CDN in html:
            rel = "/".join([".."] * (len(page.relative_to(site).parts) - 1)) or "."
            page.write_text(html.replace(KATEX_CDN, f"{rel}/site_libs/katex")); n += 1
    print(f"docs: KaTeX served from the site on {n} page(s)")
    return True

def imports_and_other_code(src: str) -> bool:
    """A cell nbdev would re-execute out of context: not exported, with an import beside other statements (nbdev warns
    "Found cells containing imports and other code" and runs the whole cell, whose other names the fresh kernel lacks)."""
    import ast
    if re.match(r"\s*#\|\s*(export|exports|exporti|eval:)", src): return False
    try: body = ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))).body
    except SyntaxError: return False
    kinds = [isinstance(n, (ast.Import, ast.ImportFrom)) for n in body]
    return any(kinds) and not all(kinds)

def keep_executed_outputs(stage: Path) -> int:
    """Mark the staged notebooks' explorer and prose-from-the-ledger cells `eval: false` for nbdev, which re-executes cells that
    import something while it processes the docs, in a fresh kernel without the run's state (trained models, sweep tables):
    their executed outputs are kept instead."""
    import nbformat
    from contrastlab.ledger import _unhashed
    n = 0
    for path in stage.rglob("*.ipynb"):
        nb = nbformat.read(path, as_version=4); hit = False
        for c in nb.cells:
            if c.cell_type == "code" and (_unhashed(c.source) or imports_and_other_code(c.source)):
                c.source = "#| eval: false\n" + c.source; hit = True; n += 1
        if hit: nbformat.write(nb, path)
    return n

def build(executed: Path, out: Path) -> Path:
    stage = ROOT / "_build" / "docs_nbs"
    if stage.exists(): shutil.rmtree(stage)
    shutil.copytree(ROOT / "nbs", stage, symlinks=False, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    n = 0
    for nb in sorted(Path(executed).rglob("*.ipynb")):
        dest = stage / nb.relative_to(executed)
        if dest.exists(): shutil.copy(nb, dest); n += 1
    print(f"docs: {n} executed notebook(s) from {executed}")
    print(f"docs: {keep_executed_outputs(stage)} explorer, ledger-prose and import-with-code cell(s) kept as executed")
    bindir = Path(sys.executable).parent
    proc = ROOT / "_proc"
    if proc.exists(): shutil.rmtree(proc)
    # nbdev-proc-nbs would first try to download and install Quarto (noise, then `sudo: not found` offline); smalldocs does
    # not need Quarto, so the processing step runs with that check switched off.
    proc_nbs = ("import sys, nbdev.quarto as q; q._ensure_quarto = lambda: None; "
                "q.nbdev_proc_nbs.__wrapped__(path=sys.argv[1], file_re=sys.argv[2], force=True)")
    subprocess.run([sys.executable, "-c", proc_nbs, str(stage), r"\.(?:ipynb|qmd)$"], cwd=ROOT, check=True)
    shutil.copy(ROOT / "nbs" / "sidebar.yml", proc / "sidebar.yml")   # nbdev regenerates it alphabetically; keep our order
    subprocess.run([str(bindir / "smalldocs"), "render", "--quiet", str(proc)], cwd=ROOT, check=True)
    if out.exists(): shutil.rmtree(out)
    shutil.move(str(proc / "_docs"), str(out))
    vendor_katex(out)
    print(f"docs: site written to {out}")
    return out

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("executed", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "_docs")
    a = ap.parse_args()
    build(a.executed, a.out.resolve())
