"""IPython start-up file of the GPU run (tools/gpu_test.sh copies it into the kernels' $IPYTHONDIR).

In every notebook kernel it turns on torch's CUDA sync debug mode ("warn") and counts the host synchronisations by the
line of code that caused them, without printing them; when the kernel exits it writes
`$CONTRASTLAB_DEVICE_STATS/<notebook>.json` with the device, the peak GPU memory torch allocated and those counts.
On a machine without CUDA it writes the same file with the device "cpu" and no counts (the CPU check of the script).
"""
import atexit, json, os, warnings
from pathlib import Path

_OUT = os.environ.get("CONTRASTLAB_DEVICE_STATS")
_SYNCS: dict = {}


def counting(shown, counts:dict):
    "A `warnings.showwarning` that tallies torch's sync-debug warnings in `counts` by file:line and passes the rest to `shown`."
    def count(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "synchroniz" in str(message):
            key = f"{filename}:{lineno}"
            counts[key] = counts.get(key, 0) + 1
            return
        shown(message, category, filename, lineno, file, line)
    return count


def _install():
    import torch
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
        warnings.filterwarnings("always", message=".*synchroniz", category=UserWarning)
        warnings.showwarning = counting(warnings.showwarning, _SYNCS)

    def write():
        name = os.environ.get("CONTRASTLAB_NOTEBOOK", f"kernel-{os.getpid()}")
        stats = dict(notebook=name, device=torch.cuda.get_device_name() if cuda else "cpu",
                     peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                     host_syncs=sum(_SYNCS.values()),
                     sync_sites=dict(sorted(_SYNCS.items(), key=lambda kv: -kv[1])[:50]))
        Path(_OUT).mkdir(parents=True, exist_ok=True)
        (Path(_OUT) / f"{name}.json").write_text(json.dumps(stats, indent=1) + "\n")
    atexit.register(write)


if _OUT: _install()
