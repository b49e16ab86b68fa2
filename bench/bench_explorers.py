"""Per-interaction latency of every explorer, at ci scale, on this machine.

    python bench/bench_explorers.py [--out bench/results/explorers.json] [notebooks ...]

Each notebook (default: the six methods; the viz notebook's own explorers are examples, registered in its own namespace) runs with papermill and preset="ci", plus one appended cell that reopens
every explorer the notebook built as a live widget (`viz.built_explorers`) and moves each of its controls through up to
four other values, the way a reader moves them in JupyterLab. A move's latency is the kernel's side of it: `render` for the
new values plus the in-place update of the FigureWidget (the browser's repaint comes on top). The kernel-free figure's
precomputation (one render per state, as the docs page is built) is reported beside it.
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path
import nbformat, papermill as pm

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [f"methods/{m}.ipynb" for m in ("simclr", "laf", "sepclr", "hydra", "beclr", "aro")]   # SimCLR's holds the temperature explorer

TIMING_CELL = '''
import json, statistics
from contrastlab.viz import built_explorers, explorer
_rows = []
for _e in [e for e in built_explorers() if e["live"] is None]:
    _box = explorer(_e["render"], _e["title"], live=True, defaults=_e["defaults"], **_e["controls"])
    for _name, _w in _box.controls.items():
        _vals = [v for _, v in _w.options] if hasattr(_w, "options") else list(_e["controls"][_name].examples)
        for _v in [v for v in _vals if v != _w.value][:4]: _w.value = _v
    _box.controls[next(iter(_box.controls))].value = _e["defaults"][next(iter(_box.controls))]
    _rows.append(dict(title=_e["title"] or _e["render"].__name__, moves=len(_box.latencies),
                      median_s=statistics.median(_box.latencies), max_s=max(_box.latencies),
                      states=len(_e["seconds"]), precompute_s=sum(_e["seconds"])))
open(TIMINGS_PATH, "w").write(json.dumps(_rows))
'''

def time_notebook(rel: str, tmp: Path) -> list:
    src = ROOT / "nbs" / rel
    nb = nbformat.read(src, as_version=4)
    timings = tmp / (rel.replace("/", "__") + ".json")
    nb.cells.append(nbformat.v4.new_code_cell(f"TIMINGS_PATH = {str(timings)!r}\n" + TIMING_CELL))
    path = tmp / rel.replace("/", "__"); nbformat.write(nb, path)
    params = dict(preset="ci", device="cpu") if any("parameters" in c.metadata.get("tags", []) for c in nb.cells) else {}
    os.environ.update(CONTRASTLAB_PLAIN="1", CONTRASTLAB_RESULTS=str(tmp / "results"))
    t0 = time.time()
    pm.execute_notebook(str(path), str(tmp / ("out-" + path.name)), parameters=params, cwd=str(src.parent), progress_bar=False)
    rows = json.loads(timings.read_text())
    for r in rows: r.update(notebook=rel, notebook_s=round(time.time() - t0, 1))
    return rows

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", default=NOTEBOOKS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "explorers.json"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel in a.notebooks:
            rows += time_notebook(rel, Path(tmp))
            for r in rows[-len([x for x in rows if x["notebook"] == rel]):]:
                print(f"{rel:24s} {r['title'][:48]:48s} {r['moves']:3d} moves  median {r['median_s'] * 1000:6.0f} ms  max {r['max_s'] * 1000:6.0f} ms"
                      f"  | {r['states']:3d} states precomputed in {r['precompute_s']:.1f} s", flush=True)
    import torch
    out = dict(machine=dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), python=platform.python_version(),
                            torch=torch.__version__), preset="ci", rows=rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("written:", a.out)

if __name__ == "__main__":
    main()
