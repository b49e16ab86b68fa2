"""Device audit of every registered loss, without a GPU: the host syncs of one training step, by line.

    python tools/device_audit.py [--json OUT]

Each loss's registry example runs forward and backward on the CPU under a dispatch mode that counts
the operators that make a CUDA stream wait for the host: `_local_scalar_dense` (what `.item()`, `bool(t)`, `float(t)`
and `if t.any():` dispatch to), `nonzero`, `masked_select`, `equal`, `is_nonzero`, and indexing with a boolean mask
(its output size depends on the data). Each is attributed to the line of contrastlab code that asked for it. On a
GPU, `tools/gpu_kernel_startup.py` counts the real ones with `torch.cuda.set_sync_debug_mode`.

Placement (every tensor on the device, no silent CPU fallback) is checked by the GPU run itself: the notebooks run
with `device="cuda"`, where a tensor left on the CPU raises. (torch's `FakeTensorMode` can fake CUDA tensors on a CPU
machine, but every validity check of the loss core reads a boolean from the device, and a fake tensor has no value to
answer it with.)
"""
import argparse, json, sys, traceback
from collections import Counter
from pathlib import Path
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten.equal.default,
            aten.is_nonzero.default}


def _site()->str:
    "The innermost frame inside the contrastlab package: `contrastlab/module.py:line`."
    import contrastlab
    pkg = Path(contrastlab.__file__).resolve().parent
    for f in reversed(traceback.extract_stack()):
        p = Path(f.filename).resolve()
        if p.is_relative_to(pkg): return f"contrastlab/{p.relative_to(pkg).as_posix()}:{f.lineno}"
    return "<outside contrastlab>"


def _is_sync(func, args)->bool:
    if func in SYNC_OPS: return True
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and len(args) > 1:
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
    return False


class SyncCounter(TorchDispatchMode):
    "Counts the operators that would make a CUDA stream wait for the host, by the contrastlab line that caused them."
    def __init__(self):
        super().__init__(); self.sites = Counter()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_sync(func, args): self.sites[_site()] += 1
        return func(*args, **(kwargs or {}))


def count_syncs(fn)->tuple[Counter, object]:
    "Run `fn()` under `SyncCounter`: `(sites, result)`."
    with SyncCounter() as c: out = fn()
    return c.sites, out


def _step(spec, example):
    def run():
        out = spec.fn(**example.inputs, **example.params)
        loss = spec.loss_value(out)
        leaves = [t for t in example.inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
        if leaves: loss.backward()
        return loss
    return run


def _example(spec, seed=0):
    ex = spec.example(torch.float32, seed)
    for k, v in ex.inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and k in spec.embedding_args: v.requires_grad_(True)
    return ex


def audit()->list[dict]:
    "One row per registered loss: host syncs in one forward + backward of its registry example, with their sites."
    from contrastlab.registry import discover, losses
    discover()
    rows = []
    for spec in losses():
        sites, _ = count_syncs(_step(spec, _example(spec)))
        rows.append(dict(loss=spec.name, host_syncs=sum(sites.values()), sites=dict(sites.most_common())))
    return rows


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    rows = audit()
    print(f"{'loss':<22} {'syncs':>5}  where (the four most frequent lines)")
    for r in rows:
        print(f"{r['loss']:<22} {r['host_syncs']:>5}  " + ", ".join(f"{site} ×{n}" for site, n in list(r["sites"].items())[:4]))
    every = Counter()
    for r in rows: every.update(r["sites"])
    print(f"\n{sum(r['host_syncs'] > 0 for r in rows)} of {len(rows)} losses read the device from the host during a step "
          f"(median {sorted(r['host_syncs'] for r in rows)[len(rows) // 2]} reads); the lines that most losses share:")
    for site, n in every.most_common(6): print(f"  {n:>4}  {site}")
    if a.json:
        import datetime, platform
        meta = dict(torch=torch.__version__, python=platform.python_version(), date=datetime.date.today().isoformat(),
                    what="host syncs in one forward + backward of each registered loss's registry example, on the CPU")
        Path(a.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__": sys.exit(main())
