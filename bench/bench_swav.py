"""Forward+backward time of SwAV's loss (Sinkhorn codes + swapped prediction) against lightly's SwaVLoss on the CPU.

    python bench/bench_swav.py [--sizes 256 1024 4096] [--prototypes 100 3000] [--out bench/results/swav.json]

Inputs are identical for both: two views of B rows, D = 128, float32, z2 = z1 + 0.5·noise, K prototypes; τ = 0.1,
ε = 0.05, three Sinkhorn–Knopp normalisations. The timed step starts from the raw embeddings and prototypes and ends with
the backward pass w.r.t. both views and the prototypes. lightly's loss takes prototype scores, so its step computes
them first with the same expression (normalised rows times normalised prototypes) — both sides do the same work.
The median of the repeats is reported, and the ratio lightly / contrastlab (> 1: contrastlab is faster).
lightly is a bench-only dependency, imported with a stand-in for torchvision.ops (bench/peers.py).
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from timing import time_step
IMPLS = ("contrastlab", "lightly")
LABELS = {"contrastlab": "contrastlab swav_loss", "lightly": "lightly SwaVLoss (scores computed the same way)"}

def make_step(impl, b, d, k, tau=0.1, eps=0.05, n_iter=3):
    import torch, torch.nn.functional as F
    torch.manual_seed(0)
    z1 = torch.randn(b, d, requires_grad=True); z2 = (z1.detach() + 0.5 * torch.randn(b, d)).requires_grad_()
    P = torch.randn(k, d, requires_grad=True)
    if impl == "contrastlab":
        from contrastlab.zoo.swav import swav_loss
        return lambda: swav_loss(z1, z2, P, tau, eps, n_iter).backward()
    if impl == "lightly":
        from peers import lightly_loss
        crit = lightly_loss().SwaVLoss(temperature=tau, sinkhorn_iterations=n_iter, sinkhorn_epsilon=eps)
        def step():
            C = F.normalize(P, dim=1)
            crit([F.normalize(z1, dim=1) @ C.T, F.normalize(z2, dim=1) @ C.T], []).backward()
        return step
    raise ValueError(impl)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--prototypes", type=int, nargs="+", default=[100, 3000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed repeats per configuration (at least 3 repeats)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "swav.json")
    a = ap.parse_args()
    import torch
    threads = int(os.environ.get("BENCH_THREADS", "2")); torch.set_num_threads(threads)
    rows = []
    for k in a.prototypes:
        for b in a.sizes:
            r = {impl: time_step(make_step(impl, b, a.dim, k), a.budget, slow_factor=4) for impl in IMPLS}
            row = dict(B=b, K=k, contrastlab_ms=r["contrastlab"]["ms"], lightly_ms=r["lightly"]["ms"],
                       ratio=r["lightly"]["ms"] / r["contrastlab"]["ms"], repeats=dict(contrastlab=r["contrastlab"]["repeats"], lightly=r["lightly"]["repeats"]))
            rows.append(row)
            print(f"K={k:<5} B={b:<5} contrastlab {row['contrastlab_ms']:8.2f} ms   lightly {row['lightly_ms']:8.2f} ms   ratio lightly/contrastlab {row['ratio']:.2f}×", flush=True)
    meta = dict(dim=a.dim, tau=0.1, eps=0.05, sinkhorn_iterations=3, threads=threads, cpu=platform.processor() or platform.machine(),
                python=platform.python_version(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"), nproc=os.cpu_count(),
                step="forward + backward w.r.t. z1, z2 and the prototypes; median of repeats")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(dict(meta=meta, rows=rows, labels=LABELS), indent=1) + "\n")
    print(f"\nwritten to {a.out}")

if __name__ == "__main__":
    main()
