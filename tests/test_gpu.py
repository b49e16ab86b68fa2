"""The GPU path without a GPU: the bundle is complete, fits one device call, and runs a notebook on its own.

`test_bundle_alone_runs_a_notebook_in_a_clean_312` builds the bundle, makes a clean Python 3.12 environment that holds
only what the accelerator machines' image holds that the lab touches (`image-requirements.txt`: their torch 2.11.0
build, which runs on the CPU here, numpy 2.5.2, transformers 5.17.0, sentence-transformers 6.0.1 ...), and runs
`tools/gpu_test.sh` in it — the very script of the GPU run — with `DEVICE=auto`: the bundle's wheels are installed with
`--no-index`, so a wheel missing from it fails here before any accelerator time is spent.
"""
import importlib.util, json, os, shutil, subprocess, sys, warnings, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "tools" / "gpu_bundle.py")
gb = importlib.util.module_from_spec(spec); spec.loader.exec_module(gb)
spec = importlib.util.spec_from_file_location("device_audit", ROOT / "tools" / "device_audit.py")
da = importlib.util.module_from_spec(spec); spec.loader.exec_module(da)
spec = importlib.util.spec_from_file_location("gpu_kernel_startup", ROOT / "tools" / "gpu_kernel_startup.py")
ks = importlib.util.module_from_spec(spec); spec.loader.exec_module(ks)


def test_image_list_is_read_with_versions():
    image = gb.image_packages()
    assert image["torch"] == "2.11.0" and image["numpy"] == "2.5.2" and image["scipy"] is None
    assert "papermill" not in image and "ipykernel" not in image


def test_closure_stops_at_the_image_and_holds_the_executor():
    image = gb.image_packages()
    bundle, from_image = gb.closure(image)
    assert {"contrastlab", "papermill", "nbclient", "ipykernel", "nbdev", "plotly", "umap-learn", "pynndescent",
            "ipywidgets", "mnist1d", "fastcore"} <= set(bundle)
    assert not set(bundle) & set(image), "a package the image has must not be carried"
    assert {"torch", "numpy", "scikit-learn", "transformers"} <= set(from_image)
    assert from_image["torch"] == "2.11.0"


def test_closure_grows_when_the_image_shrinks():   # control: the walk really stops at the image
    image = gb.image_packages()
    small = {k: v for k, v in image.items() if k not in ("tqdm", "pyyaml")}
    bundle, _ = gb.closure(small)
    assert {"tqdm", "pyyaml"} <= set(bundle)


def test_manifest_refuses_two_versions_of_one_package(tmp_path):
    for name in ("demo-1.0-py3-none-any.whl", "demo-1.1-py3-none-any.whl"):
        with zipfile.ZipFile(tmp_path / name, "w") as z: z.writestr("demo/__init__.py", "")
    with pytest.raises(SystemExit, match="two wheels of demo"):
        gb.manifest(tmp_path, {"demo": "1.0"}, {}, "3.12")


def test_manifest_refuses_a_missing_wheel(tmp_path):
    with zipfile.ZipFile(tmp_path / "demo-1.0-py3-none-any.whl", "w") as z: z.writestr("demo/__init__.py", "")
    with pytest.raises(SystemExit, match=r"no wheel came for \['other'\]"):
        gb.manifest(tmp_path, {"demo": "1.0", "other": "2.0"}, {}, "3.12")


def test_tree_hash_follows_the_code(tmp_path):
    (tmp_path / "contrastlab").mkdir()
    (tmp_path / "contrastlab" / "a.py").write_text("x = 1\n")
    h = gb.tree_hash(tmp_path)
    assert gb.tree_hash(tmp_path) == h
    (tmp_path / "contrastlab" / "a.py").write_text("x = 2\n")
    assert gb.tree_hash(tmp_path) != h


def test_sync_counter_tallies_sync_warnings_only():
    counts, passed = {}, []
    show = ks.counting(lambda *a: passed.append(a[0]), counts)
    with warnings.catch_warnings():
        warnings.simplefilter("always"); warnings.showwarning = show
        for _ in range(3): warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("something else")
    assert list(counts.values()) == [3] and next(iter(counts)).startswith(__file__)
    assert [str(m) for m in passed] == ["something else"]


def test_sync_counter_counts_host_reads_and_nothing_else():
    import torch
    x = torch.randn(6, 3)
    sites, _ = da.count_syncs(lambda: (x @ x.T).softmax(1).sum(0))
    assert sum(sites.values()) == 0, sites                         # control: pure device work reads nothing back
    sites, _ = da.count_syncs(lambda: (x.sum().item(), bool((x > 0).any()), x[x > 0], (x > 0).nonzero()))
    assert sum(sites.values()) == 4, sites


def test_device_audit_attributes_the_loss_cores_checks():
    import torch
    from contrastlab.losses import info_nce_loss
    z = torch.randn(8, 4, requires_grad=True)
    sites, loss = da.count_syncs(lambda: info_nce_loss(z[:4], z[4:]))
    assert sum(sites.values()) >= 1 and all(s.startswith("contrastlab/") for s in sites), sites


def _python312():
    "A CPython 3.12 that runs: pyenv's, else one on PATH (a pyenv shim that is not active fails `-c pass` and is passed over)."
    pyenv = Path.home() / ".pyenv" / "versions"
    for p in [*sorted(pyenv.glob("3.12*/bin/python"))[::-1], shutil.which("python3.12")]:
        if p and subprocess.run([str(p), "-c", "import sys; assert sys.version_info[:2] == (3, 12)"], capture_output=True).returncode == 0:
            return str(p)
    return None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "bundle"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_bundle.py"), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout


def test_bundle_fits_one_device_call(bundle):
    out, log = bundle
    m = json.loads((out / "manifest.json").read_text())
    assert m["bytes"] + gb.tree_bytes() <= 64 * 2**20, log
    assert m["python_version"] == "3.12" and m["tree_hash"] == gb.tree_hash()
    names = [w["name"] for w in m["wheels"]]
    assert len(names) == len(set(names)) and "contrastlab" in names and "papermill" in names
    from packaging import tags
    from packaging.utils import parse_wheel_filename
    ok = set(tags.cpython_tags((3, 12), platforms=gb.PLATFORMS)) | set(tags.compatible_tags((3, 12), "cp312", gb.PLATFORMS))
    wrong = [w["file"] for w in m["wheels"] if not set(parse_wheel_filename(w["file"])[3]) & ok]
    assert not wrong, f"wheels that CPython 3.12 on x86-64 Linux cannot install: {wrong}"
    assert "together" in log and "MiB" in log


def test_bundle_check_fails_over_the_limit(bundle):   # control: the size check can fail
    out, _ = bundle
    m = json.loads((out / "manifest.json").read_text())
    assert gb.report(m, gb.tree_bytes(), limit_mib=64)
    assert not gb.report(m, gb.tree_bytes(), limit_mib=m["bytes"] / 2**20 / 2)


def test_bundle_alone_runs_a_notebook_in_a_clean_312(bundle, tmp_path):
    py = _python312()
    if py is None: pytest.skip("no Python 3.12 on this machine (pyenv install 3.12)")
    out, _ = bundle
    env_dir = tmp_path / "image"
    subprocess.run([py, "-m", "venv", str(env_dir)], check=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    r = subprocess.run(pip + ["-r", str(out / "image-requirements.txt")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONTRASTLAB_RESULTS", "CONTRASTLAB_LEDGER", "VIRTUAL_ENV")}
    probe = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import papermill"], capture_output=True, env=clean, cwd=tmp_path)
    assert probe.returncode != 0, "the clean environment must not have papermill before the bundle"
    run = tmp_path / "out"
    env = dict(clean, PYTHON=str(env_dir / "bin" / "python"), DEVICE="auto", PRESET="ci", BUNDLE=str(out),
               SITE=str(tmp_path / "site"), OUT=str(run),
               NOTEBOOKS="nbs/methods/simclr.ipynb nbs/metrics/ir.ipynb")
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_test.sh")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "torch 2.11.0" in r.stdout and "cuda False" in r.stdout
    timings = {Path(t["notebook"]).stem: t for t in json.loads((run / "timings.json").read_text())}
    assert timings["simclr"]["status"] == "ok"
    assert timings["ir"]["status"] == "skipped" and "faiss" in timings["ir"]["reason"]
    assert (run / "methods" / "simclr.ipynb").exists() and list((run / "results").glob("simclr*.json"))
    stats = json.loads((run / "device" / "simclr.json").read_text())
    assert stats["device"] == "cpu" and stats["notebook"] == "simclr"
    assert not (run / "ledger").exists(), "a ci run writes no ledger entry"


def test_gpu_script_refuses_a_bundle_of_other_code(bundle, tmp_path):
    out, _ = bundle
    stale = tmp_path / "bundle"; shutil.copytree(out, stale)
    m = json.loads((stale / "manifest.json").read_text()); m["tree_hash"] = "0" * 16
    (stale / "manifest.json").write_text(json.dumps(m))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=sys.executable, DEVICE="auto", BUNDLE=str(stale), OUT=str(tmp_path / "out"), SITE=str(tmp_path / "site"))
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_test.sh")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "built from other code" in r.stderr
