"""Peer libraries for benchmarks and parity tests (installed with --no-deps, never in the main requirements).

lightly imports torchvision.ops at package import, and PyPI's torchvision does not import beside the CPU torch build
this project pins; its loss code never calls torchvision, so inert stand-ins are enough."""
import sys, types

def stub_torchvision():
    "Give lightly inert torchvision names when the real package cannot load."
    try:
        import torchvision.ops  # noqa: F401
        return
    except Exception:
        pass
    tv = types.ModuleType("torchvision"); ops = types.ModuleType("torchvision.ops")
    def _no(*a, **k): raise RuntimeError("torchvision stand-in: not available here")
    ops.roi_align = _no; ops.StochasticDepth = _no; ops.sigmoid_focal_loss = _no; tv.ops = ops
    sys.modules["torchvision"] = tv; sys.modules["torchvision.ops"] = ops
    for name in ("transforms", "models", "datasets", "io", "utils"):
        m = types.ModuleType(f"torchvision.{name}"); setattr(tv, name, m); sys.modules[f"torchvision.{name}"] = m

def lightly_loss():
    "The `lightly.loss` module (with the torchvision stand-in)."
    stub_torchvision()
    import lightly.loss
    # lightly has bound the names it needs; the stand-ins leave `sys.modules` so that later availability checks (Hugging
    # Face's `find_spec("torchvision")`, in the same test session) see no torchvision instead of a module without a spec
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        if getattr(sys.modules[name], "__spec__", None) is None: del sys.modules[name]
    return lightly.loss
