#!/usr/bin/env bash
# make gpu-test: the notebooks' full presets on CUDA, on a machine that has a CUDA PyTorch and reaches no registry.
#
# With a GPU bundle (make gpu-bundle on a CPU machine, carried as _build/gpu-bundle) the machine's own python3 and its
# torch are used: the bundle's wheels are installed with --no-index --no-deps into .gpu/site, put first on PYTHONPATH.
# Without a bundle it falls back to the pinned virtual environment (make export; needs a registry).
#
# Settings (environment): OUT (default runs/gpu-<stamp>; the device tool sets it), PRESET (full), DEVICE (cuda; "auto"
# lets the CPU check of tests/test_gpu.py run it without a GPU), NOTEBOOKS (space-separated; default: every notebook
# that takes a `device` parameter, those with a CPU ledger entry first, fastest CPU full run first), BUDGET_S (start no notebook after this many
# seconds), BUNDLE (_build/gpu-bundle), PYTHON (python3), SITE (.gpu/site).
#
# What comes back under $OUT: the executed notebooks, results/, ledger/ (the CUDA entries: never the committed CPU
# ones), timings.json (status and seconds per notebook), device/<notebook>.json (peak GPU memory, host syncs by line).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-full}; DEVICE=${DEVICE:-cuda}; BUNDLE=${BUNDLE:-_build/gpu-bundle}; PY=${PYTHON:-python3}
SITE=${SITE:-.gpu/site}; OUT=${OUT:-runs/gpu-$(date +%Y%m%d-%H%M%S)}; BUDGET_S=${BUDGET_S:-}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd); mkdir -p "$SITE"; SITE=$(cd "$SITE" && pwd)
t0=$(date +%s)

if [ -f "$BUNDLE/manifest.json" ]; then
  command -v "$PY" >/dev/null || { echo "gpu-test: no $PY here (set PYTHON to the interpreter that holds the CUDA PyTorch)" >&2; exit 2; }
  "$PY" -c "import torch" 2>/dev/null || { echo "gpu-test: $PY has no torch: the bundle expects the machine's own PyTorch" >&2; exit 2; }
  # the manifest's tree hash, its Python, and what it leaves out on purpose (module=reason;...: skipped, not failed)
  read -r want bver < <("$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['tree_hash'], m['python_version'])" "$BUNDLE/manifest.json")
  have=$("$PY" tools/gpu_bundle.py --tree-hash)
  [ "$want" = "$have" ] || { echo "gpu-test: the bundle's contrastlab wheel was built from other code ($want) than this tree ($have): run make gpu-bundle again" >&2; exit 2; }
  pyver=$("$PY" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
  [ "$pyver" = "$bver" ] || { echo "gpu-test: the bundle is for Python $bver, $PY is $pyver: make gpu-bundle PYTHON_VERSION=$pyver" >&2; exit 2; }
  CONTRASTLAB_SKIP_MISSING=$("$PY" -c "import json,sys; print(';'.join(f'{k}={v}' for k, v in json.load(open(sys.argv[1]))['skip_missing'].items()))" "$BUNDLE/manifest.json")
  export CONTRASTLAB_SKIP_MISSING
  stamp=$(sha256sum "$BUNDLE/manifest.json" | cut -c1-16)
  if [ "$(cat "$SITE/.bundle" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "${SITE:?}"/*; rm -f "$SITE/.bundle"
    "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$SITE" "$BUNDLE"/wheels/*.whl
    echo "$stamp" > "$SITE/.bundle"
    echo "gpu-test: installed $(ls "$BUNDLE"/wheels/*.whl | wc -l) wheels from the bundle into $SITE ($(( $(date +%s) - t0 )) s)"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
else
  echo "gpu-test: no bundle at $BUNDLE: using the pinned environment (make export; needs a package registry)"
  make export >/dev/null; PY=.venv/bin/python
fi

if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-test needs a CUDA GPU (torch.cuda.is_available() is False); DEVICE=auto runs the same path on the CPU')"
fi
"$PY" - <<'EOF'
import importlib, pkgutil, sys, contrastlab
bad = []
for m in ["papermill", "nbclient", "ipykernel", "nbdev.showdoc", "plotly", "umap", "pynndescent", "ipywidgets", "anywidget",
          "mnist1d", "bm25s", "Stemmer", "fastcore"] + [i.name for i in pkgutil.walk_packages(contrastlab.__path__, "contrastlab.")]:
    try: importlib.import_module(m)
    except Exception as e: bad.append(f"{m}: {type(e).__name__}: {e}")
import torch
print(f"gpu-test: python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "") + f", contrastlab from {contrastlab.__path__[0]}")
if bad: sys.exit("gpu-test: these modules do not import:\n  " + "\n  ".join(bad))
EOF

if [ -z "${NOTEBOOKS:-}" ]; then
  NOTEBOOKS=$("$PY" - <<'EOF'
import json
from pathlib import Path
import sys
from contrastlab.runner import default_notebooks, notebook_parameters
wall = {}
for p in Path("ledger").glob("*.json"):
    e = json.loads(p.read_text()); wall[str(Path("nbs") / e["notebook"])] = e.get("wall_time_s", 1e9)
every = [str(p.relative_to(Path.cwd())) for p in default_notebooks(Path.cwd() / "nbs")]
nbs = [n for n in every if "device" in notebook_parameters(n)]   # the layer pages take no device: they stay CPU pages
print(f"gpu-test: {len(nbs)} notebooks take a device ({sum(n in wall for n in nbs)} with a CPU ledger entry first, fastest first); "
      f"{len(every) - len(nbs)} layer pages without one are not run", file=sys.stderr)
print(" ".join(sorted(nbs, key=lambda n: (n not in wall, wall.get(n, 0), n))))
EOF
)
fi

export CONTRASTLAB_LEDGER="$OUT/ledger" CONTRASTLAB_DEVICE_STATS="$OUT/device" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export IPYTHONDIR="$OUT/.ipython" NUMBA_CACHE_DIR="$PWD/.cache/numba" MPLCONFIGDIR="$PWD/.cache/matplotlib"
mkdir -p "$IPYTHONDIR/profile_default/startup"; cp tools/gpu_kernel_startup.py "$IPYTHONDIR/profile_default/startup/00-contrastlab-device.py"
rc=0
"$PY" -c "import sys; from contrastlab.runner import main; sys.exit(main(sys.argv[1:]))" run $NOTEBOOKS --preset "$PRESET" \
  -p device "$DEVICE" --out "$OUT" ${BUDGET_S:+--budget-s "$BUDGET_S"} || rc=$?
echo "gpu-test: $(( $(date +%s) - t0 )) s in all; ledger entries: $(ls "$OUT/ledger" 2>/dev/null | wc -l) in $OUT/ledger; timings: $OUT/timings.json"
exit $rc
