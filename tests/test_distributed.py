"Cross-rank NT-Xent on 2 gloo processes equals one process on the concatenated batch; torchrun example runs."
import os, shutil, subprocess, sys
from pathlib import Path
import pytest, torch
from contrastlab.distributed import compare_with_single_process, distributed_info_nce, world
from contrastlab.losses import info_nce

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.parametrize("local_loss", [True, False])
@pytest.mark.parametrize("decoupled", [False, True])
def test_two_ranks_match_one_process(local_loss, decoupled):
    torch.manual_seed(0)
    z1, z2 = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    r = compare_with_single_process(z1, z2, sizes=[5, 4], local_loss=local_loss, decoupled=decoupled)   # short last batch
    assert r["loss_diff"] < 1e-10 and r["grad_diff"] < 1e-10, r

def test_single_process_falls_back_to_info_nce():
    assert world() == (0, 1)
    z1, z2 = torch.randn(6, 3), torch.randn(6, 3)
    assert torch.allclose(distributed_info_nce(z1, z2, 0.2), info_nce(z1, z2, 0.2))

def test_torchrun_example_trains():
    torchrun = Path(sys.executable).parent / "torchrun"
    p = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(ROOT / "examples" / "ddp_simclr.py"),
                        "--steps", "4", "--batch-size", "64"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 4/4" in p.stdout and "2 ranks" in p.stdout
