"""Forward+backward time and peak memory of NT-Xent implementations on the CPU, measured in one run.

    python bench/bench_losses.py [--sizes 256 1024 4096 16384] [--big 65536] [--out bench/results/losses.json]

Every (implementation, B) runs in a fresh subprocess so that its peak RSS is its own (Δ over the RSS just before the
first loss call), with the address space capped so that impossible configurations fail fast instead of swapping.
Inputs are identical for every implementation: two views of B rows (2B anchors), D = 128, float32, z2 = z1 + 0.5·noise,
τ = 0.1; the timed step is loss forward + backward w.r.t. both views; the median of the repeats is reported.
The peers (lightly, pytorch-metric-learning) are bench-only dependencies; lightly is imported with a stand-in for
torchvision.ops (never called by its NT-Xent code) because torchvision does not import beside this CPU torch build.
"""
import argparse, json, os, platform, resource, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ["contrastlab", "contrastlab_dense", "contrastlab_general", "reference", "lightly_ntxent", "pml_ntxent", "pml_supcon", "matmul_floor"]
LABELS = {"contrastlab": "contrastlab info_nce_loss (auto)", "contrastlab_dense": "contrastlab info_nce_loss (dense path)",
          "contrastlab_general": "contrastlab contrastive_loss (general, dense)",
          "reference": "plain reference (one matmul + cross_entropy)", "lightly_ntxent": "lightly NTXentLoss",
          "pml_ntxent": "pml NTXentLoss", "pml_supcon": "pml SupConLoss", "matmul_floor": "matmul floor (2 products)"}

def _rss_mb():
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def _stub_torchvision():
    "lightly imports torchvision.ops at package import; give it inert names when the real one cannot load (bench/peers.py)."
    sys.path.insert(0, str(ROOT / "bench"))
    from peers import stub_torchvision
    stub_torchvision()

def make_step(impl, b, d, tau):
    import torch, torch.nn.functional as F
    torch.manual_seed(0)
    z1 = torch.randn(b, d, requires_grad=True); z2 = (z1.detach() + 0.5 * torch.randn(b, d)).requires_grad_()
    if impl in ("contrastlab", "contrastlab_dense"):
        from contrastlab.losses import info_nce_loss
        chunk = "auto" if impl == "contrastlab" else None
        return lambda: info_nce_loss(z1, z2, tau, chunk=chunk).backward()
    if impl == "contrastlab_general":       # the general objective, called the way a new loss would call it
        from contrastlab.losses import contrastive_loss, normalize, two_view_index
        pos = two_view_index(b)
        def step():
            z = normalize(torch.cat([z1, z2]))
            contrastive_loss(z @ z.T, pos, tau, exclude="diagonal").backward()
        return step
    if impl == "reference":
        t = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]); eye = torch.eye(2 * b, dtype=torch.bool)
        def step():
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            F.cross_entropy((z @ z.T / tau).masked_fill(eye, float("-inf")), t).backward()
        return step
    if impl == "lightly_ntxent":
        _stub_torchvision()
        from lightly.loss import NTXentLoss
        crit = NTXentLoss(temperature=tau)
        return lambda: crit(z1, z2).backward()
    if impl in ("pml_ntxent", "pml_supcon"):
        from pytorch_metric_learning import losses as pml
        crit = pml.NTXentLoss(temperature=tau) if impl == "pml_ntxent" else pml.SupConLoss(temperature=tau)
        labels = torch.cat([torch.arange(b), torch.arange(b)])
        return lambda: crit(torch.cat([z1, z2]), labels).backward()
    if impl == "matmul_floor":
        z = F.normalize(torch.cat([z1, z2]).detach(), dim=1); g = torch.empty(2 * b, 2 * b)
        def step():
            torch.mm(z, z.T, out=g); torch.mm(g, z)
        return step
    raise ValueError(impl)

def worker(impl, b, d, tau, budget_s):
    import torch
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    step = make_step(impl, b, d, tau)
    base = _rss_mb()
    t0 = time.perf_counter(); step(); first = time.perf_counter() - t0        # warm-up (also the first sample of memory)
    times = []
    while len(times) < 15 and (len(times) < 2 or sum(times) < budget_s) and (len(times) < 1 or first * (len(times) + 1) < 4 * budget_s):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(ms=1000 * times[len(times) // 2], min_ms=1000 * times[0], repeats=len(times), peak_mb=peak - base)))

def run_one(impl, b, d, tau, budget_s, mem_gib, timeout_s):
    code = (f"import resource,sys; resource.setrlimit(resource.RLIMIT_AS, ({mem_gib} << 30, {mem_gib} << 30)); "
            f"sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_losses as bl; bl.worker({impl!r}, {b}, {d}, {tau}, {budget_s})")
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout > {timeout_s}s")
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return dict(error=("out of memory" if "memory" in p.stderr.lower() or "alloc" in p.stderr.lower() else last)[:120])
    return json.loads(p.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    ap.add_argument("--big", type=int, nargs="*", default=[65536], help="sizes run for contrastlab's chunked path only")
    ap.add_argument("--impls", nargs="+", default=IMPLS)
    ap.add_argument("--dim", type=int, default=128); ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed repeats per configuration (at least 2 repeats)")
    ap.add_argument("--mem-gib", type=int, default=20); ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "losses.json")
    a = ap.parse_args()
    rows, failed = [], set()
    for b in a.sizes + a.big:
        for impl in a.impls:
            if b in a.big and b not in a.sizes and impl not in ("contrastlab",): continue
            if impl in failed: rows.append(dict(impl=impl, B=b, error="skipped: failed at a smaller B")); continue
            r = dict(impl=impl, B=b, **run_one(impl, b, a.dim, a.tau, a.budget, a.mem_gib, a.timeout))
            rows.append(r)
            if "error" in r: failed.add(impl)
            msg = f"{r['ms']:10.1f} ms  {r['peak_mb']:9.0f} MB  ({r['repeats']} reps)" if "error" not in r else f"  {r['error']}"
            print(f"B={b:<6} {LABELS[impl]:<46} {msg}", flush=True)
    # the table: ratios to contrastlab (time, memory) at each B
    print(f"\nforward+backward, D={a.dim}, float32, {os.environ.get('BENCH_THREADS', '2')} threads; ratio = other / contrastlab")
    print(f"{'implementation':<46} " + " ".join(f"{'B=' + str(b):>24}" for b in a.sizes + a.big))
    ours = {r["B"]: r for r in rows if r["impl"] == "contrastlab" and "error" not in r}
    for impl in a.impls:
        cells = []
        for b in a.sizes + a.big:
            r = next((r for r in rows if r["impl"] == impl and r["B"] == b), None)
            if r is None: cells.append(f"{'':>24}"); continue
            if "error" in r: cells.append(f"{'—':>24}"); continue
            o = ours.get(b)
            ratio = f" ({r['ms'] / o['ms']:.2f}×, {r['peak_mb'] / max(o['peak_mb'], 1):.1f}× mem)" if o and impl != "contrastlab" else ""
            cells.append(f"{r['ms']:>9.0f} ms{ratio}".rjust(24))
        print(f"{LABELS[impl]:<46} " + " ".join(cells))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(dim=a.dim, tau=a.tau, threads=int(os.environ.get("BENCH_THREADS", "2")), cpu=platform.processor() or platform.machine(),
                python=platform.python_version(), date=time.strftime("%Y-%m-%d"), nproc=os.cpu_count())
    a.out.write_text(json.dumps(dict(meta=meta, rows=rows, labels=LABELS), indent=1))
    print(f"\nwritten to {a.out}")

if __name__ == "__main__":
    main()
