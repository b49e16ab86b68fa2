"Any loss across ranks: 2 gloo processes equal one process on the concatenated batch (uneven last batches); torchrun example."
import os, subprocess, sys
from pathlib import Path
import pytest, torch
from contrastlab.distributed import compare_with_single_process, world
from contrastlab.losses import info_nce_loss, sup_con_loss, cross_view_loss
from contrastlab.ot import equipartition

ROOT = Path(__file__).resolve().parents[1]

def _batch(n=11, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, dtype=torch.float64, generator=g), torch.randn(n, d, dtype=torch.float64, generator=g)

@pytest.mark.parametrize("decoupled", [False, True])
def test_info_nce_two_ranks(decoupled):
    z1, z2 = _batch()
    r = compare_with_single_process("info_nce_loss", dict(z1=z1, z2=z2), [6, 5], dict(temperature=0.2, decoupled=decoupled))
    assert r["loss_diff"] < 1e-10 and r["grad_diff"] < 1e-10, r

@pytest.mark.parametrize("missing", ["raise", "skip"])
def test_sup_con_two_ranks(missing):
    z, _ = _batch(12)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4 if missing == "skip" else 3])   # label 4 occurs once: no positive
    r = compare_with_single_process("sup_con_loss", dict(z=z, labels=y), [7, 5], dict(temperature=0.1, missing=missing))
    assert r["loss_diff"] < 1e-10 and r["grad_diff"] < 1e-10, r

@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_two_ranks_with_learnable_scale(symmetric):
    a, b = _batch(9)
    scale = torch.tensor(7.0, dtype=torch.float64)          # a shared tensor input: its gradient is summed over ranks
    r = compare_with_single_process("cross_view_loss", dict(a=a, b=b, logit_scale=scale), [5, 4], dict(symmetric=symmetric))
    assert r["loss_diff"] < 1e-10 and r["grad_diff"] < 1e-10, r

def test_swav_equipartition_sums_over_ranks():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(13, 4, dtype=torch.float64, generator=g)
    r = compare_with_single_process((equipartition, ("scores",)), dict(scores=scores), [8, 5], dict(eps=0.05, n_iter=3), output="rows")
    assert r["value_diff"] < 1e-12, r

def test_single_process_is_the_plain_loss():
    assert world() == (0, 1)
    z1, z2 = torch.randn(6, 3), torch.randn(6, 3)
    assert torch.equal(info_nce_loss(z1, z2, 0.2, gather_distributed=True), info_nce_loss(z1, z2, 0.2))

def test_sizes_must_cover_the_batch():
    z1, z2 = _batch()
    with pytest.raises(ValueError, match="sizes must sum to the batch size 11"):
        compare_with_single_process("info_nce_loss", dict(z1=z1, z2=z2), [6, 4])

def test_torchrun_example_trains():
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(ROOT / "examples" / "ddp_simclr.py"), "--steps", "4", "--batch-size", "64"]
    run = lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    p = run()
    # One retry, only for gloo's known teardown abort *after* all steps trained (a std::terminate in its worker threads at exit);
    # any other failure, or the same abort twice, fails the test.
    if p.returncode != 0 and "step 4/4" in p.stdout and "terminate called without an active exception" in p.stderr: p = run()
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 4/4" in p.stdout and "2 ranks" in p.stdout
