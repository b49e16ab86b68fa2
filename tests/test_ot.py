"contrastlab.ot: plans against POT (plain and log-domain solvers), tiny ε, batching, compaction, equipartition, errors."
import math
import numpy as np
import pytest, torch
import ot as pot
from contrastlab.ot import sinkhorn_log, equipartition

def problem(seed, n=5, m=75, d=16, E=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (n, d) if E is None else (E, n, d)
    x = torch.randn(*shape, generator=g, dtype=dtype); y = torch.randn(*shape[:-2], m, d, generator=g, dtype=dtype)
    C = torch.cdist(x, y) ** 2
    return C / C.amax((-2, -1), keepdim=True)

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn_log"])
def test_matches_pot_uniform(seed, method):
    C = problem(seed); n, m = C.shape
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    ref = pot.sinkhorn(a, b, C.numpy(), 0.05, method=method, numItermax=5000, stopThr=1e-13)
    P = sinkhorn_log(C, 0.05, tol=1e-13, max_iter=5000)
    assert np.abs(P.numpy() - ref).max() < 1e-12

def test_matches_pot_given_marginals_same_iteration():
    "Same update order and stopping rule as POT's sinkhorn_log: at a loose tolerance the plans still agree closely."
    g = torch.Generator().manual_seed(3)
    C = problem(3, n=7, m=11)
    a = torch.rand(7, generator=g, dtype=torch.float64) + 0.1; a /= a.sum()
    b = torch.rand(11, generator=g, dtype=torch.float64) + 0.1; b /= b.sum()
    for tol in (1e-4, 1e-9):
        ref = pot.bregman.sinkhorn_log(a.numpy(), b.numpy(), C.numpy(), 0.1, numItermax=1000, stopThr=tol)
        P = sinkhorn_log(C, 0.1, a, b, tol=tol)
        assert np.abs(P.numpy() - ref).max() < 1e-14

def test_tiny_eps_log_domain_where_plain_overflows():
    "A constant added to the cost leaves the plan unchanged, but at ε = 1e-3 it underflows the whole kernel exp(−C/ε)."
    C = problem(4, n=6, m=6) + 0.8; eps = 1e-3
    a = np.full(6, 1 / 6)
    with np.errstate(all="ignore"), pytest.warns(UserWarning):
        plain = pot.sinkhorn(a, a, C.numpy(), eps, method="sinkhorn", numItermax=200)
    assert not np.isfinite(plain).all() or np.abs(plain.sum(1) - a).max() > 0.1   # the scaling form breaks down (0/0)
    ref = pot.bregman.sinkhorn_log(a, a, C.numpy(), eps, numItermax=20000, stopThr=1e-12)
    P = sinkhorn_log(C, eps, tol=1e-12, max_iter=20000)
    assert torch.isfinite(P).all()
    assert np.abs(P.numpy() - ref).max() < 1e-9
    assert torch.allclose(P, sinkhorn_log(C - 0.8, eps, tol=1e-12, max_iter=20000), atol=1e-9)
    emd = pot.emd(a, a, C.numpy())                                        # near the unregularised optimum
    assert np.abs(P.numpy() - emd).max() < 1e-3

def test_float32_tiny_eps_finite():
    C = problem(5, dtype=torch.float32)
    P = sinkhorn_log(C, 1e-3, tol=1e-6, max_iter=3000)
    assert torch.isfinite(P).all() and torch.allclose(P.sum(1), torch.full((5,), 0.2), atol=1e-5)

def test_batched_equals_loop_and_pot_per_problem():
    C = problem(6, E=40)
    P, info = sinkhorn_log(C, 0.05, tol=1e-9, return_info=True)
    assert P.shape == (40, 5, 75) and info["n_iter"].shape == (40,)
    loop = torch.stack([sinkhorn_log(c, 0.05, tol=1e-9) for c in C])
    assert torch.equal(P, loop)                                   # compaction gives each problem exactly its own run
    for e in range(0, 40, 13):
        ref = pot.bregman.sinkhorn_log(np.full(5, 0.2), np.full(75, 1 / 75), C[e].numpy(), 0.05, stopThr=1e-9)
        assert np.abs(P[e].numpy() - ref).max() < 1e-14
    assert bool(info["converged"].all())

def test_compaction_iterations_and_mask_mode():
    C = problem(7, E=20)
    C[3] = C[3] * 0.02                                            # a nearly flat cost converges at once ...
    C[5] = problem(8, n=5, m=75) ** 8                             # ... a peaky one takes longer
    _, info = sinkhorn_log(C, 0.02, tol=1e-10, max_iter=5000, return_info=True)
    assert info["n_iter"].min() < info["n_iter"].max()
    P_mask, info_m = sinkhorn_log(C, 0.02, tol=1e-10, max_iter=5000, compact=False, return_info=True)
    assert (info_m["n_iter"] == info["n_iter"].max()).all()       # without compaction every problem waits for the slowest
    P = sinkhorn_log(C, 0.02, tol=1e-10, max_iter=5000)
    assert torch.allclose(P, P_mask, atol=1e-9)

def test_batched_given_marginals_and_max_iter():
    g = torch.Generator().manual_seed(9)
    C = problem(9, E=3, n=4, m=6)
    a = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1; a /= a.sum(1, keepdim=True)
    b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1; b /= b.sum()      # shared b
    P, info = sinkhorn_log(C, 0.1, a, b, tol=1e-12, max_iter=3000, return_info=True)
    assert torch.allclose(P.sum(2), a, atol=1e-10) and torch.allclose(P.sum(1), b.expand(3, -1), atol=1e-10)
    _, info2 = sinkhorn_log(C, 0.01, a, b, tol=1e-15, max_iter=7, return_info=True)
    assert (info2["n_iter"] == 7).all() and not bool(info2["converged"].any())

def test_errors():
    C = problem(0)
    with pytest.raises(ValueError, match="same mass"): sinkhorn_log(C, 0.05, a=torch.full((5,), 0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="same mass"):
        sinkhorn_log(C.expand(2, -1, -1), 0.05, b=torch.stack([torch.full((75,), 1 / 75), torch.full((75,), 2 / 75)]).double())
    bad = C.clone(); bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"): sinkhorn_log(bad, 0.05)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"): sinkhorn_log(bad, 0.05)
    with pytest.raises(ValueError, match="non-negative"): sinkhorn_log(C, 0.05, a=torch.tensor([0.5, 0.5, 0.2, -0.4, 0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"): sinkhorn_log(C, 0.05, a=torch.full((4,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps"): sinkhorn_log(C, 0.0)
    with pytest.raises(ValueError, match="dimensions"): sinkhorn_log(C[0], 0.05)
    with pytest.raises(TypeError): sinkhorn_log(C.numpy(), 0.05)
    with pytest.raises(ValueError, match="non-finite"): equipartition(torch.tensor([[1.0, float("inf")]]))

def swav_reference(scores, eps, n_iter):
    "SwAV's plain-domain Sinkhorn-Knopp (float64)."
    Q = torch.exp(scores.double() / eps).T; Q /= Q.sum(); K, B = Q.shape
    for _ in range(n_iter):
        Q /= Q.sum(1, keepdim=True); Q /= K
        Q /= Q.sum(0, keepdim=True); Q /= B
    return (Q * B).T

def test_equipartition_matches_swav_and_balances():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(64, 8, generator=g, dtype=torch.float64)
    q = equipartition(s, 0.5, n_iter=3)
    assert torch.allclose(q, swav_reference(s, 0.5, 3), atol=1e-12)
    assert torch.allclose(q.sum(1), torch.ones(64, dtype=torch.float64))
    q = equipartition(s, 0.1, n_iter=500)
    assert torch.allclose(q.sum(0), torch.full((8,), 8.0, dtype=torch.float64), atol=1e-6)
    # tiny eps: the plain form overflows, the log domain stays finite
    assert not torch.isfinite(swav_reference(s.float(), 1e-4, 3).float()).all()
    assert torch.isfinite(equipartition(s.float(), 1e-4, 3)).all()
    # batched = per problem
    sb = torch.randn(3, 20, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(equipartition(sb, 0.2, 5), torch.stack([equipartition(x, 0.2, 5) for x in sb]), atol=1e-14)
