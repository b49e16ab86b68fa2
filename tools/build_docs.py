"""Build the offline docs site into _docs/ without Quarto.

Executed notebooks (from `contrastlab run` or the test suite, run with PLOTLY_RENDERER=notebook so plotly.js is inlined)
are laid over a copy of nbs/, processed by nbdev (`nbdev-proc-nbs`) and rendered by the pure-Python `smalldocs`.
Where Quarto exists, `nbdev-docs` renders the same `_quarto.yml` project instead.

    python tools/build_docs.py EXECUTED_DIR [--out _docs]
"""
import argparse, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def build(executed: Path, out: Path) -> Path:
    stage = ROOT / "_build" / "docs_nbs"
    if stage.exists(): shutil.rmtree(stage)
    shutil.copytree(ROOT / "nbs", stage, symlinks=False, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    n = 0
    for nb in sorted(Path(executed).rglob("*.ipynb")):
        dest = stage / nb.relative_to(executed)
        if dest.exists(): shutil.copy(nb, dest); n += 1
    print(f"docs: {n} executed notebook(s) from {executed}")
    bindir = Path(sys.executable).parent
    proc = ROOT / "_proc"
    if proc.exists(): shutil.rmtree(proc)
    subprocess.run([str(bindir / "nbdev-proc-nbs"), "--path", str(stage), "--file-re", r"\.(?:ipynb|qmd)$", "--force"],
                   cwd=ROOT, check=True)
    shutil.copy(ROOT / "nbs" / "sidebar.yml", proc / "sidebar.yml")   # nbdev regenerates it alphabetically; keep our order
    subprocess.run([str(bindir / "smalldocs"), "render", "--quiet", str(proc)], cwd=ROOT, check=True)
    if out.exists(): shutil.rmtree(out)
    shutil.move(str(proc / "_docs"), str(out))
    print(f"docs: site written to {out}")
    return out

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("executed", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "_docs")
    a = ap.parse_args()
    build(a.executed, a.out.resolve())
