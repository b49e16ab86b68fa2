"""Forward+backward time of MoCo's queue InfoNCE and MoCHi's loss against lightly's `NTXentLoss(memory_bank_size=...)`, on the CPU.

    python bench/bench_mochi.py [--sizes 256 1024 4096] [--queue 4096] [--out bench/results/mochi.json]

Inputs are identical for every implementation: B queries and their keys (D = 128, float32, k = q + 0.5·noise), a queue of K unit
rows, τ = 0.2; the timed step is the loss forward + backward w.r.t. both q and k (lightly differentiates through both views, and
`moco_loss` does too); the median of the repeats is reported. lightly's loss also enqueues the batch into its bank at every call
(ours leaves the queue to the trainer, a copy of B rows). MoCHi runs MoCHi(64, 128, 32) — the notebook's configuration — twice:
`mochi_loss` (the mixes' similarities in logit space) and `moco_loss(extra=hard_negative_mixing(...))` (the mixes built, B × 160 × D).
lightly is a bench-only dependency, imported with a stand-in for torchvision.ops (bench/peers.py).
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from timing import time_step
IMPLS = ["moco", "lightly_memory_bank", "mochi", "mochi_built"]
LABELS = {"moco": "contrastlab moco_loss (queue InfoNCE)", "lightly_memory_bank": "lightly NTXentLoss(memory_bank_size)",
          "mochi": "contrastlab mochi_loss (logit space)", "mochi_built": "moco_loss + hard_negative_mixing (mixes built)"}
MIX = dict(n_hard=64, s=128, s_prime=32, beta_max=0.5)

def make_step(impl, b, d, k_size, tau):
    import torch
    sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
    torch.manual_seed(0)
    q = torch.randn(b, d, requires_grad=True); k = (q.detach() + 0.5 * torch.randn(b, d)).requires_grad_()
    queue = torch.nn.functional.normalize(torch.randn(k_size, d), dim=1)
    if impl == "moco":
        from contrastlab.zoo.mochi import moco_loss
        return lambda: moco_loss(q, k, queue, tau).backward()
    if impl == "mochi":
        from contrastlab.zoo.mochi import mochi_loss
        from contrastlab.core import generator
        g = generator(0)
        return lambda: mochi_loss(q, k, queue, tau, generator=g, **MIX).backward()
    if impl == "mochi_built":
        from contrastlab.zoo.mochi import moco_loss, hard_negative_mixing
        from contrastlab.core import generator
        g = generator(0)
        return lambda: moco_loss(q, k, queue, tau, extra=hard_negative_mixing(q, queue, generator=g, **MIX)).backward()
    if impl == "lightly_memory_bank":
        from peers import lightly_loss
        crit = lightly_loss().NTXentLoss(temperature=tau, memory_bank_size=(k_size, d))
        crit.memory_bank.bank = queue.clone()
        return lambda: crit(q, k).backward()
    raise ValueError(impl)

def time_one(impl, b, d, k_size, tau, budget_s):
    return time_step(make_step(impl, b, d, k_size, tau), budget_s)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--queue", type=int, default=4096, help="K, the queue / memory bank size")
    ap.add_argument("--impls", nargs="+", default=IMPLS)
    ap.add_argument("--dim", type=int, default=128); ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed repeats per configuration (at least 3 repeats)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mochi.json")
    a = ap.parse_args()
    import torch
    threads = int(os.environ.get("BENCH_THREADS", "2")); torch.set_num_threads(threads)
    rows = []
    for b in a.sizes:
        for impl in a.impls:
            r = dict(impl=impl, B=b, **time_one(impl, b, a.dim, a.queue, a.tau, a.budget)); rows.append(r)
            print(f"B={b:<6} {LABELS[impl]:<50} {r['ms']:9.1f} ms  ({r['repeats']} reps)", flush=True)
    print(f"\nforward+backward, D={a.dim}, K={a.queue}, float32, {threads} threads; ratio = implementation / lightly NTXentLoss(memory_bank_size)")
    print(f"{'implementation':<50} " + " ".join(f"{'B=' + str(b):>20}" for b in a.sizes))
    ref = {r["B"]: r for r in rows if r["impl"] == "lightly_memory_bank"}
    for impl in a.impls:
        cells = []
        for b in a.sizes:
            r = next(r for r in rows if r["impl"] == impl and r["B"] == b)
            ratio = f" ({r['ms'] / ref[b]['ms']:.2f}×)" if b in ref and impl != "lightly_memory_bank" else ""
            cells.append(f"{r['ms']:>8.1f} ms{ratio}".rjust(20))
        print(f"{LABELS[impl]:<50} " + " ".join(cells))
    for r in rows:
        if r["B"] in ref: r["ratio_to_lightly"] = r["ms"] / ref[r["B"]]["ms"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(dim=a.dim, queue=a.queue, tau=a.tau, mixing=MIX, threads=threads, cpu=platform.processor() or platform.machine(),
                python=platform.python_version(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"), nproc=os.cpu_count())
    a.out.write_text(json.dumps(dict(meta=meta, rows=rows, labels=LABELS), indent=1) + "\n")
    print(f"\nwritten to {a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}")

if __name__ == "__main__":
    main()
