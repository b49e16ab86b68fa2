"GroCo: the soft sorting network against diffsort, hand-worked cases, a slow float64 reference of the loss, the official loss's conventions, bad inputs."
import math
import pytest, torch
import torch.nn.functional as F
from contrastlab.protocol import vision_protocol
from contrastlab.zoo.groco import (odd_even_schedule, soft_swap, soft_sort, soft_sort_matrix, groco_sims, groco_loss,
                                   ordered_fraction, train_groco, GroCoLoss)

def _pair(b=9, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, dtype=torch.float64, generator=g, requires_grad=True),
            torch.randn(b, d, dtype=torch.float64, generator=g, requires_grad=True))

def _grads(out, inputs):
    return torch.autograd.grad(out, inputs, retain_graph=True)

# ---- the network --------------------------------------------------------------------------------------------
def test_schedule_sorts_with_hard_swaps():
    assert odd_even_schedule(3) == [[(0, 1)], [(1, 2)], [(0, 1)]]
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 4, 7, 11):
        for _ in range(30):
            v = torch.randn(n, generator=g).tolist()
            for layer in odd_even_schedule(n):
                for i, j in layer:
                    if v[i] > v[j]: v[i], v[j] = v[j], v[i]
            assert v == sorted(v)

def test_two_elements_by_hand():
    x = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    a = math.atan(1.5 * (0.1 - 0.3)) / math.pi + 0.5                        # P(x0 is the smaller)
    v, P = soft_sort(x, steepness=1.5)
    torch.testing.assert_close(P[0], torch.tensor([[a, 1 - a], [1 - a, a]], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(v[0], torch.tensor([a * 0.3 + (1 - a) * 0.1, (1 - a) * 0.3 + a * 0.1], dtype=torch.float64), rtol=0, atol=1e-15)
    lo, hi, al = soft_swap(torch.tensor(0.0), torch.tensor(1.0), 1.0, "logistic")
    assert math.isclose(al.item(), 1 / (1 + math.exp(-1)), rel_tol=1e-6) and math.isclose((lo + hi).item(), 1.0, rel_tol=1e-6)

@pytest.mark.parametrize("interpolation", ["cauchy", "logistic", "logistic_phi"])
@pytest.mark.parametrize("n", [2, 3, 6, 11])
def test_soft_permutation_equals_diffsort(n, interpolation):
    diffsort = pytest.importorskip("diffsort")
    g = torch.Generator().manual_seed(n)
    x = torch.randn(6, n, dtype=torch.float64, generator=g, requires_grad=True)
    for steepness in (1.0, 4.0):
        net = diffsort.DiffSortNet("odd_even", n, steepness=steepness, interpolation_type=interpolation, art_lambda=0.25)
        v_ref, P_ref = net(x)
        v, P = soft_sort(x, steepness, interpolation, art_lambda=0.25)
        torch.testing.assert_close(P, P_ref, rtol=0, atol=1e-6); torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-6)
        w = torch.randn(6, n, n, dtype=torch.float64, generator=g)
        for a, b in zip(_grads((P * w).sum() + v.pow(2).sum(), x), _grads((P_ref * w).sum() + v_ref.pow(2).sum(), x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(soft_sort_matrix(x, steepness, interpolation), P_ref, rtol=0, atol=1e-6)

def test_soft_permutation_is_doubly_stochastic_and_hardens():
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    P = soft_sort_matrix(x)
    torch.testing.assert_close(P.sum(1), torch.ones(5, 8, dtype=torch.float64)); torch.testing.assert_close(P.sum(2), torch.ones(5, 8, dtype=torch.float64))
    hard = F.one_hot(x.argsort(1).argsort(1), 8).double()
    assert (soft_sort_matrix(x, 1e5) - hard).abs().max() < 1e-2                  # Cauchy tails: slow, but it gets there

# ---- the loss -----------------------------------------------------------------------------------------------
def test_loss_two_samples_by_hand():
    # B = 2, k = 1: each anchor sorts [s_neg, s_pos]; both BCE terms reduce to -log α, α = ½ + atan(β(s_pos − s_neg))/π
    z1 = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64); z2 = torch.tensor([[0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    n1, n2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    beta, terms = 2.0, []
    for A, B in ((n1, n2), (n2, n1)):
        for i in range(2):
            s_pos, s_neg = float(A[i] @ B[i]), float(A[i] @ A[1 - i])
            terms.append(-math.log(0.5 + math.atan(beta * (s_pos - s_neg)) / math.pi))
    assert math.isclose(groco_loss(z1, z2, topk=1, steepness=beta).item(), sum(terms) / 4, rel_tol=1e-12)

def _slow_groco(z1, z2, k, beta, stop_grad=True):
    "Obviously-correct float64 reference: loops over anchors, negatives by sorting, the network pair by pair on scalars."
    sg = (lambda t: t.detach()) if stop_grad else (lambda t: t)
    total, count = 0.0, 0
    for A, Pv in ((z1, z2), (z2, z1)):
        An, Pn = F.normalize(A, dim=1), F.normalize(Pv, dim=1)
        for i in range(len(A)):
            negs = sorted([An[i] @ sg(An[j]) for j in range(len(A)) if j != i], key=lambda t: t.item())[-k:]
            s = negs + [An[i] @ sg(Pn[i])]
            n = len(s); perm = [[1.0 if r == c else 0.0 for c in range(n)] for r in range(n)]
            for layer in odd_even_schedule(n):
                for u, w in layer:
                    al = torch.atan(beta * (s[w] - s[u])) / math.pi + 0.5
                    s[u], s[w] = al * s[u] + (1 - al) * s[w], (1 - al) * s[u] + al * s[w]
                    for r in range(n): perm[r][u], perm[r][w] = al * perm[r][u] + (1 - al) * perm[r][w], (1 - al) * perm[r][u] + al * perm[r][w]
            row = 0.0
            for r in range(n):
                up, down = sum(perm[r][k:]), sum(perm[r][:k])
                t = 1.0 if r >= k else 0.0
                row = row - 0.5 * (t * torch.log(up) + (1 - t) * torch.log(1 - up)) - 0.5 * ((1 - t) * torch.log(down) + t * torch.log(1 - down))
            total = total + row / n; count += 1
    return total / count

@pytest.mark.parametrize("stop_grad", [True, False])
def test_loss_against_slow_reference(stop_grad):
    z1, z2 = _pair()
    ours, ref = groco_loss(z1, z2, topk=4, steepness=3.0, stop_grad=stop_grad), _slow_groco(z1, z2, 4, 3.0, stop_grad)
    assert math.isclose(ours.item(), ref.item(), rel_tol=1e-10)
    for a, b in zip(_grads(ours, (z1, z2)), _grads(ref, (z1, z2))): torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)

def test_loss_follows_the_official_conventions():
    "The official loss as its code is written (diffsort's sorter, torch.topk + flip, BCELoss over both groups, clip, per-view mean)."
    diffsort = pytest.importorskip("diffsort")
    z1, z2 = _pair(b=16, d=6, seed=3)
    k, beta = 10, 1.0
    sorter = diffsort.DiffSortNet("odd_even", k + 1, steepness=beta, interpolation_type="cauchy", art_lambda=0.25)
    bce, total = torch.nn.BCELoss(), 0.0
    for A, Pv in ((z1, z2), (z2, z1)):
        pos = F.cosine_similarity(A, Pv.detach(), dim=1)[:, None]
        An, Nn = F.normalize(A, dim=1), F.normalize(A.detach(), dim=1)
        neg = (An @ Nn.T).masked_fill(torch.eye(len(A), dtype=torch.bool), -float("inf"))
        sims = torch.cat([torch.flip(torch.topk(neg, k, dim=1).values, dims=[1]), pos], 1)
        _, P = sorter(sims)
        target = torch.eye(k + 1, dtype=torch.float64).expand_as(P)
        sums = lambda M: (M[:, :, :k].sum(2, keepdim=True).clip(0, 1), M[:, :, k:].sum(2, keepdim=True).clip(0, 1))
        (pn, pp), (tn, tp) = sums(P), sums(target)
        total = total + (bce(pp, tp) + bce(pn, tn)) / 2
    official = total / 2
    ours = groco_loss(z1, z2, topk=k, steepness=beta)
    assert abs(ours.item() - official.item()) < 1e-6
    for a, b in zip(_grads(ours, (z1, z2)), _grads(official, (z1, z2))): torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

def test_stop_grad_leaves_only_the_anchor_side():
    z1, z2 = _pair(b=6)
    s = groco_sims(z1, z2, topk=3)
    assert s.shape == (6, 4) and bool((s[:, :3].diff(dim=1) >= 0).all())      # negatives ascending, positive last
    (g2,) = torch.autograd.grad(s[:, -1].sum(), z2, allow_unused=True)
    assert g2 is None                                                        # the positive is detached

def test_module_and_loss_decrease_with_order():
    z = torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    near, far = groco_loss(z, z + 0.01 * torch.randn_like(z)), groco_loss(z, torch.randn_like(z))
    assert near < far
    assert math.isclose(GroCoLoss(topk=10)(z, z + 0.1).item(), groco_loss(z, z + 0.1, topk=10).item(), rel_tol=1e-12)

def test_ordered_fraction():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(300, 8, generator=g)
    assert ordered_fraction(z, z.clone()) == 1.0
    assert ordered_fraction(z, torch.randn(300, 8, generator=g)) < 0.1

# ---- bad inputs ---------------------------------------------------------------------------------------------
def test_bad_inputs():
    z1, z2 = _pair(b=6)
    with pytest.raises(ValueError, match="topk must be at most the batch size minus one \\(5\\), got 6"): groco_loss(z1, z2, topk=6)
    with pytest.raises(ValueError, match="topk"): groco_loss(z1, z2, topk=0)
    with pytest.raises(ValueError, match="steepness"): groco_loss(z1, z2, topk=2, steepness=0.0)
    with pytest.raises(ValueError, match="interpolation"): groco_loss(z1, z2, topk=2, interpolation="gauss")
    with pytest.raises(ValueError, match="z1 and z2 must have the same shape"): groco_loss(z1, z2[:5])
    with pytest.raises(ValueError, match="non-finite"): soft_sort(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="x must have 2 dimensions"): soft_sort(torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"): soft_sort(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="network"): soft_sort(torch.zeros(2, 3), network="bitonic")
    with pytest.raises(ValueError, match="n must be"): odd_even_schedule(0)
    with pytest.raises(TypeError, match="protocol must be a Protocol"): train_groco({}, dict(epochs=1), 0)
    with pytest.raises(ValueError, match="topk must be at most the batch size minus one \\(255\\), got 300"):
        train_groco({}, vision_protocol("ci"), 0, topk=300)
