"Loss core: values and gradients against the shared float64 reference (contrastlab.losses.reference), hand-worked cases, numerics, errors."
import math, warnings
import pytest, torch
import torch.nn.functional as F
from contrastlab.losses import (contrastive_loss, info_nce_loss, sup_con_loss, cross_view_loss, two_view_index, resolve_chunk,
                                label_positive_mask, InfoNCELoss, SupConLoss, CLIPLoss, CHUNK_AUTO_ROWS, CHUNK_SIZE)
from contrastlab.losses.reference import reference_loss, reference_info_nce, reference_sup_con, reference_cross_view
from contrastlab.zoo.dcl import dcl_loss

def ref_loss(z, pos, tau, decoupled=False, neg_w=None):
    "NT-Xent-style rows of normalised `z` with the diagonal excluded, through the shared reference."
    zn = F.normalize(z.double(), dim=1); n = len(z)
    return reference_loss(zn @ zn.T, pos, tau, exclude=torch.eye(n, dtype=torch.bool), decoupled=decoupled, neg_weight=neg_w)

def pair_mask(b):
    m = torch.zeros(2 * b, 2 * b, dtype=torch.bool); m[torch.arange(2 * b), two_view_index(b)] = True; return m

@pytest.mark.parametrize("b,d,tau", [(1, 3, 0.5), (4, 8, 0.1), (16, 5, 0.07), (7, 32, 1.0)])
@pytest.mark.parametrize("decoupled", [False, True])
def test_info_nce_matches_reference(b, d, tau, decoupled):
    if b == 1 and decoupled: pytest.skip("DCL with one pair has no negatives")
    g = torch.Generator().manual_seed(b * 100 + d)
    z1 = torch.randn(b, d, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(b, d, dtype=torch.float64, generator=g, requires_grad=True)
    ours = info_nce_loss(z1, z2, tau, decoupled=decoupled); ref = ref_loss(torch.cat([z1, z2]), pair_mask(b), tau, decoupled)
    assert abs(ours.item() - ref.item()) <= 1e-6 * max(1, abs(ref.item()))
    for a, r in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-9)

def test_sup_con_matches_reference():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20, 6, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (20,), generator=g)
    ours, ref = sup_con_loss(z, y, 0.2, missing="skip"), None
    has = label_positive_mask(y).any(1)
    # the reference over anchors with positives only (skip semantics)
    zn = z; mask = label_positive_mask(y)
    full = []
    e = torch.exp(F.normalize(zn, dim=1) @ F.normalize(zn, dim=1).T / 0.2)
    for i in range(20):
        if not has[i]: continue
        ps = mask[i].nonzero().flatten().tolist(); den = sum(e[i, a] for a in range(20) if a != i)
        full.append(-sum(torch.log(e[i, p] / den) for p in ps) / len(ps))
    ref = torch.stack(full).mean()
    assert abs(ours.item() - ref.item()) < 1e-6
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0], rtol=1e-6, atol=1e-9)

def test_negative_weights_match_reference():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(8, 4, dtype=torch.float64, generator=g, requires_grad=True)
    pos = pair_mask(4); w = torch.rand(8, 8, dtype=torch.float64, generator=g)
    zn = F.normalize(z, dim=1); sim = zn @ zn.T
    ours = contrastive_loss(sim, pos, 0.3, exclude="diagonal", neg_weight=w)
    ref = ref_loss(z, pos, 0.3, neg_w=w)
    assert abs(ours.item() - ref.item()) < 1e-6
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0], rtol=1e-6, atol=1e-9)

def test_hand_worked_cases():
    sim = torch.tensor([[1.0, 0.0, 0.0]])
    assert math.isclose(contrastive_loss(sim, torch.tensor([0])).item(), math.log(1 + 2 / math.e), rel_tol=1e-6)
    assert math.isclose(contrastive_loss(sim, torch.tensor([0]), decoupled=True).item(), math.log(2) - 1, rel_tol=1e-6)
    # two identical pairs, orthogonal to each other, τ = 1: each anchor sees e^1 vs two e^0 → log(1 + 2/e)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); assert math.isclose(info_nce_loss(z1, z1, 1.0).item(), math.log(1 + 2 / math.e), rel_tol=1e-6)
    # soft targets: half on each of two equal candidates with a third → -log(1/3)
    t = torch.tensor([[0.5, 0.5, 0.0]]); assert math.isclose(contrastive_loss(torch.zeros(1, 3), t).item(), math.log(3), rel_tol=1e-6)
    # label smoothing over valid entries: uniform logits make every target give log 3
    assert math.isclose(contrastive_loss(torch.zeros(1, 3), torch.tensor([0]), label_smoothing=0.2).item(), math.log(3), rel_tol=1e-6)

def test_index_and_mask_paths_agree():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(10, 10, generator=g, dtype=torch.float64)
    idx = two_view_index(5)
    a = contrastive_loss(sim, idx, 0.2, exclude="diagonal")
    m = torch.zeros(10, 10, dtype=torch.bool); m[torch.arange(10), idx] = True
    b = contrastive_loss(sim, m, 0.2, exclude="diagonal")
    assert abs(a.item() - b.item()) < 1e-12

@pytest.mark.parametrize("tau", [1e-3, 2e-4])
def test_low_temperature_float32_accuracy(tau):
    torch.manual_seed(1)
    a = torch.randn(256, 128); b = a + 3.5 * torch.randn(256, 128)       # hard views, cos ≈ 0.27
    f64 = info_nce_loss(a.double(), b.double(), tau).item(); f32 = info_nce_loss(a, b, tau).item()
    assert math.isfinite(f32) and abs(f32 - f64) / abs(f64) < 1e-5

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tau", [0.1, 1e-3])
def test_half_precision_inputs(dtype, tau):
    torch.manual_seed(2)
    a = torch.randn(128, 64); b = a + 3.5 * torch.randn(128, 64)     # hard views: the loss stays far from 0
    ah, bh = a.to(dtype).requires_grad_(), b.to(dtype)
    h = info_nce_loss(ah, bh, tau); f = info_nce_loss(a, b, tau)
    assert h.dtype == torch.float32 and abs(h.item() - f.item()) / abs(f.item()) < 1e-2
    h.backward(); assert ah.grad.dtype == dtype and torch.isfinite(ah.grad.float()).all()
    sc = sup_con_loss(torch.cat([a, b]).to(dtype), torch.arange(256) % 8, tau)
    assert abs(sc.item() - sup_con_loss(torch.cat([a, b]), torch.arange(256) % 8, tau).item()) / sc.item() < 1e-2

@pytest.mark.parametrize("call,msg", [
    (lambda: info_nce_loss(torch.randn(4), torch.randn(4)), "must have 2 dimensions"),
    (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(5, 3)), "same shape"),
    (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(4, 2)), "same shape"),
    (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(4, 3), 0.0), "temperature must be > 0"),
    (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(4, 3), -1.0), "temperature must be > 0"),
    (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(4, 3), float("nan")), "temperature must be finite"),
    (lambda: info_nce_loss(torch.full((4, 3), float("nan")), torch.randn(4, 3)), "non-finite"),
    (lambda: info_nce_loss(torch.tensor([[float("inf"), 0.0]]), torch.randn(1, 2)), "non-finite"),
    (lambda: info_nce_loss(torch.randn(0, 3), torch.randn(0, 3)), "empty batch"),
    (lambda: sup_con_loss(torch.randn(6, 3), torch.arange(5)), "labels must have length 6"),
    (lambda: sup_con_loss(torch.randn(6, 3), torch.arange(6).float()), "integer tensor"),
    (lambda: sup_con_loss(torch.randn(6, 3), torch.arange(6).view(2, 3)), "labels must be 1-D"),
    (lambda: sup_con_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 2])), "2 of 4 anchors have no positive"),
    (lambda: info_nce_loss(torch.randn(4, 3, dtype=torch.float64).long(), torch.randn(4, 3)), "floating-point"),
])
def test_clear_errors(call, msg):
    with pytest.raises((ValueError, TypeError), match=msg): call()

def test_missing_positives_skip_is_reported():
    z, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 2])
    stats = {}
    with pytest.warns(UserWarning, match="2 of 4 anchors have no positive"):
        loss = sup_con_loss(z, y, missing="skip", stats=stats)
    assert torch.isfinite(loss) and stats == {"n_anchors": 4, "n_missing": 2}
    with pytest.raises(ValueError, match="all of them"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore"); sup_con_loss(z[2:], y[2:], missing="skip")
    mod = SupConLoss(missing="skip")
    with pytest.warns(UserWarning): mod(z, y)
    assert mod.last_stats["n_missing"] == 2

def test_modules_and_clip():
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    assert torch.allclose(InfoNCELoss(0.2)(z1, z2), info_nce_loss(z1, z2, 0.2))
    assert torch.allclose(dcl_loss(z1, z2, 0.2), info_nce_loss(z1, z2, 0.2, decoupled=True))
    clip = CLIPLoss(); clip.logit.log_scale.data.fill_(10.0)
    assert clip.scale.item() == 100.0                     # clamped
    loss = clip(z1, z2); loss.backward(); assert torch.isfinite(loss)
    one = cross_view_loss(z1, z2, 0.1, symmetric=False)
    assert torch.allclose(one, F.cross_entropy(F.normalize(z1) @ F.normalize(z2).T / 0.1, torch.arange(8)), atol=1e-6)

# ---- the chunked path ------------------------------------------------------------------------------------

@pytest.mark.parametrize("b,chunk", [(5, 1), (13, 4), (32, 7), (64, 64), (50, 200)])
@pytest.mark.parametrize("decoupled", [False, True])
def test_chunked_matches_dense_float64(b, chunk, decoupled):
    g = torch.Generator().manual_seed(b + chunk)
    z1 = torch.randn(b, 6, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(b, 6, dtype=torch.float64, generator=g, requires_grad=True)
    d = info_nce_loss(z1, z2, 0.15, decoupled=decoupled, chunk=None); c = info_nce_loss(z1, z2, 0.15, decoupled=decoupled, chunk=chunk)
    assert abs(d.item() - c.item()) <= 1e-6 * abs(d.item())
    for x, y in zip(torch.autograd.grad(d, (z1, z2)), torch.autograd.grad(c, (z1, z2))):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-10)
    ref = ref_loss(torch.cat([z1, z2]).detach(), pair_mask(b), 0.15, decoupled) if b <= 13 else None
    if ref is not None: assert abs(ref.item() - c.item()) < 1e-6

def test_chunked_backward_scales_with_upstream_gradient():
    z1, z2 = torch.randn(20, 4, dtype=torch.float64, requires_grad=True), torch.randn(20, 4, dtype=torch.float64)
    (3.0 * info_nce_loss(z1, z2, 0.3, chunk=6)).backward(); g3 = z1.grad.clone(); z1.grad = None
    info_nce_loss(z1, z2, 0.3, chunk=None).backward()
    torch.testing.assert_close(g3, 3.0 * z1.grad)

def test_auto_chunk_threshold():
    cpu = torch.device("cpu")
    assert resolve_chunk("auto", CHUNK_AUTO_ROWS - 1, cpu) is None
    assert resolve_chunk("auto", CHUNK_AUTO_ROWS, cpu) == CHUNK_SIZE["cpu"]
    with pytest.raises(ValueError, match="chunk must be"): info_nce_loss(torch.randn(4, 3), torch.randn(4, 3), chunk=-2)

@pytest.mark.parametrize("tau", [1e-3, 2e-4])
def test_chunked_low_temperature_float32(tau):
    torch.manual_seed(1)
    a = torch.randn(1024, 64); b = a + 3.5 * torch.randn(1024, 64)          # 2048 rows: the auto path is chunked
    f64 = info_nce_loss(a.double(), b.double(), tau, chunk=None).item(); f32 = info_nce_loss(a, b, tau).item()
    assert abs(f32 - f64) / abs(f64) < 1e-5

def test_chunked_bfloat16_inputs():
    torch.manual_seed(2)
    a = torch.randn(1024, 64); b = a + torch.randn(1024, 64)
    ab = a.bfloat16().requires_grad_()
    h = info_nce_loss(ab, b.bfloat16(), 0.1, chunk=256); f = info_nce_loss(a, b, 0.1, chunk=256)
    assert torch.isfinite(h) and abs(h.item() - f.item()) / f.item() < 1e-2
    h.backward(); assert ab.grad.dtype == torch.bfloat16 and torch.isfinite(ab.grad.float()).all()


# ---- growth points: positive-side weights and candidates ---------------------------------------------------
@pytest.mark.parametrize("decoupled", [False, True])
def test_pos_weight_matches_reference_both_paths(decoupled):
    g = torch.Generator().manual_seed(7)
    z1 = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(10, dtype=torch.float64, generator=g)                    # any sign
    ours = info_nce_loss(z1, z2, 0.3, decoupled=decoupled, pos_weight=w)
    ref = reference_info_nce(z1, z2, 0.3, decoupled=decoupled, pos_weight=w)
    assert abs(ours.item() - ref.item()) < 1e-9
    for a, r in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        torch.testing.assert_close(a, r, rtol=1e-7, atol=1e-10)
    zn = F.normalize(torch.cat([z1, z2]).detach(), dim=1); mask = pair_mask(5)       # the mask path gives the same
    m = contrastive_loss(zn @ zn.T, mask, 0.3, exclude="diagonal", decoupled=decoupled, pos_weight=w.unsqueeze(1).expand(10, 10))
    assert abs(m.item() - ref.item()) < 1e-9

@pytest.mark.parametrize("chunk", [3, 8])
def test_pos_weight_chunked_equals_dense(chunk):
    g = torch.Generator().manual_seed(chunk)
    z1 = torch.randn(11, 6, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(11, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(22, dtype=torch.float64, generator=g)
    d, c = info_nce_loss(z1, z2, 0.2, decoupled=True, pos_weight=w, chunk=None), info_nce_loss(z1, z2, 0.2, decoupled=True, pos_weight=w, chunk=chunk)
    assert abs(d.item() - c.item()) < 1e-10
    for a, b in zip(torch.autograd.grad(d, (z1, z2)), torch.autograd.grad(c, (z1, z2))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

def test_negatives_join_the_denominator():
    g = torch.Generator().manual_seed(3)
    a, b, q = (torch.randn(n, 5, dtype=torch.float64, generator=g, requires_grad=True) for n in (6, 6, 9))
    for sym in (True, False):
        ours, ref = cross_view_loss(a, b, 0.2, symmetric=sym, negatives=q), reference_cross_view(a, b, 0.2, symmetric=sym, negatives=q)
        assert abs(ours.item() - ref.item()) < 1e-9
        for x, y in zip(torch.autograd.grad(ours, (a, b, q)), torch.autograd.grad(ref, (a, b, q))):
            torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-10)

def test_sup_con_reference_module():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(12, 5, dtype=torch.float64, generator=g, requires_grad=True); y = torch.arange(12) % 4
    ours, ref = sup_con_loss(z, y, 0.3), reference_sup_con(z, y, 0.3)
    assert abs(ours.item() - ref.item()) < 1e-9
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0], rtol=1e-7, atol=1e-10)

@pytest.mark.parametrize("bad,msg", [
    (dict(neg_weight=torch.tensor([[1.0, float("nan"), 1.0]])), "neg_weight contains 1 non-finite"),
    (dict(neg_weight=torch.tensor([[1.0, -1.0, 1.0]])), "neg_weight must be ≥ 0"),
    (dict(pos_weight=torch.tensor([float("inf")])), "pos_weight contains 1 non-finite"),
    (dict(pos_weight=torch.ones(2)), "pos_weight must have shape"),
    (dict(pos_weight=torch.ones(1), label_smoothing=0.1), "cannot be combined"),
])
def test_weight_errors(bad, msg):
    with pytest.raises(ValueError, match=msg): contrastive_loss(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0]), **bad)

def test_nan_similarity_is_named():
    with pytest.raises(ValueError, match="sim contains 1 NaN"):
        contrastive_loss(torch.tensor([[1.0, float("nan"), 0.0]]), torch.tensor([[True, False, False]]))
