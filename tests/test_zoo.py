"Zoo papers: hand-worked cases, the shared float64 reference with stop-gradient statistics frozen, and parity with lightly."
import math, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from contrastlab.losses import info_nce_loss, normalize
from contrastlab.losses.reference import reference_info_nce, reference_sinkhorn
from contrastlab.zoo.dcl import dcl_loss, dclw_loss, dclw_weights
from contrastlab.zoo.swav import swav_loss, swav_codes, Prototypes, normalize_prototypes_

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peers import lightly_loss

def _pair(b=7, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, dtype=dtype, generator=g, requires_grad=True),
            torch.randn(b, d, dtype=dtype, generator=g, requires_grad=True))

def _close_with_grads(ours, ref, inputs, tol=1e-9):
    assert abs(ours.item() - ref.item()) <= tol * max(1, abs(ref.item())), (ours.item(), ref.item())
    for a, b in zip(torch.autograd.grad(ours, inputs, retain_graph=True), torch.autograd.grad(ref, inputs, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)

# ---- DCL / DCL-W --------------------------------------------------------------------------------------------
def test_dcl_hand_worked():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert math.isclose(dcl_loss(e, e, 1.0).item(), -1 + math.log(2), rel_tol=1e-6)

def test_dclw_weights_average_one_and_can_be_negative():
    torch.manual_seed(0)
    a = torch.randn(8, 4); b = a + torch.randn(8, 4); b[0] = a[0]
    w = dclw_weights(a, b, sigma=0.1)
    assert w.shape == (16,) and abs(w.mean().item() - 1) < 1e-6 and w[0] < 0 and not w.requires_grad

def test_dcl_and_dclw_against_the_reference():
    z1, z2 = _pair()
    _close_with_grads(dcl_loss(z1, z2, 0.2), reference_info_nce(z1, z2, 0.2, decoupled=True), (z1, z2))
    w = dclw_weights(z1, z2, 0.5)                                           # frozen: stop-gradient, as in the paper
    _close_with_grads(dclw_loss(z1, z2, 0.2, 0.5), reference_info_nce(z1, z2, 0.2, decoupled=True, pos_weight=w), (z1, z2))

@pytest.mark.parametrize("chunk", [None, 4])
def test_dcl_and_dclw_match_lightly(chunk):
    L = lightly_loss()
    z1, z2 = _pair(9, 6, seed=1)
    _close_with_grads(dcl_loss(z1, z2, 0.15, chunk=chunk), L.DCLLoss(temperature=0.15)(z1, z2), (z1, z2), tol=1e-9)
    _close_with_grads(dclw_loss(z1, z2, 0.15, 0.5, chunk=chunk), L.DCLWLoss(temperature=0.15, sigma=0.5)(z1, z2), (z1, z2), tol=1e-9)

# ---- SwAV ---------------------------------------------------------------------------------------------------
def test_codes_are_the_plain_sinkhorn_and_equipartitioned():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(20, 5, dtype=torch.float64, generator=g)
    q = swav_codes(s, 0.05, 3)
    torch.testing.assert_close(q, reference_sinkhorn(s, 0.05, 3), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(q.sum(1), torch.ones(20, dtype=torch.float64))
    assert (swav_codes(0.05 * s, 0.05, 50).sum(0) - 4).abs().max() < 1e-3  # 20 samples / 5 prototypes (soft scores)

def _scores(z, P): return F.normalize(z, dim=1) @ F.normalize(P, dim=1).T

@pytest.mark.parametrize("n_crops,with_queue", [(0, False), (2, False), (0, True), (2, True)])
def test_swav_matches_lightly(n_crops, with_queue):
    L = lightly_loss()
    g = torch.Generator().manual_seed(3)
    z1, z2 = _pair(10, 6, seed=4)
    P = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    crops = [torch.randn(10, 6, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(n_crops)]
    queue = torch.randn(12, 6, dtype=torch.float64, generator=g) if with_queue else None
    ours = swav_loss(z1, z2, P, 0.1, crops=crops, queue=queue)
    qo = [_scores(queue, P), _scores(queue, P)] if with_queue else None
    ref = L.SwaVLoss(temperature=0.1)([_scores(z1, P), _scores(z2, P)], [_scores(c, P) for c in crops], qo).squeeze()
    _close_with_grads(ours, ref, (z1, z2, P, *crops), tol=1e-9)

def test_prototypes_stay_on_the_sphere():
    p = Prototypes(6, 4)
    with torch.no_grad(): p.weight.mul_(3.0)
    normalize_prototypes_(p)
    torch.testing.assert_close(p.weight.norm(dim=1), torch.ones(4))

def test_swav_errors():
    z1, z2 = _pair()
    with pytest.raises(ValueError, match="prototypes must have 5 columns"): swav_loss(z1, z2, torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"crops\[0\]"): swav_loss(z1, z2, torch.randn(3, 5, dtype=torch.float64), crops=[z1[:3]])
