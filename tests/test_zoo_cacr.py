"""CACR (Zheng et al., TMLR 2023): a hand-worked case, a float64 loop reference, gradients, bad inputs.

No package ships CACR, so parity is with `reference_cacr` below: a literal loop over anchors, positives and negatives written
from the paper's formula with the conventions of the official code (JegZheng/CACR-SSL, `small_scale_experiments/losses`):
weights not detached; positives the same sample's other views; negatives the other samples of one other view, once per view
pair x < y (the earlier view anchors); L⁺ averaged over V·B anchors, L⁻ over pairs and anchors; the debiased form
(L⁻ − τ₊ d⁺)/(1 − τ₊) per anchor."""
import math
import pytest, torch
from contrastlab.losses import info_nce_loss
from contrastlab.protocol import vision_protocol, vision_data
from contrastlab.zoo.cacr import (stack_views, cacr_costs, cacr_weights, cacr_attraction, cacr_repulsion, cacr_loss, CACRLoss,
                                  multi_view_info_nce, train_cacr, train_multi_view, positive_distances, positive_spread)

def reference_cacr(views, tau_pos=1.0, tau_neg=0.9, alpha=1.0, beta=1.0, debiased=False, tau_plus=0.1):
    "The loss as a literal loop: every anchor, every positive, every negative, one at a time."
    z = [v / v.norm(dim=1, keepdim=True) for v in views]
    V, B = len(z), len(z[0])
    sq = lambda a, b: ((a - b) ** 2).sum()
    attraction = 0.0
    for x in range(V):
        for i in range(B):
            ds = [sq(z[x][i], z[y][i]) for y in range(V) if y != x]
            e = [torch.exp(tau_pos * d) for d in ds]
            attraction = attraction + sum(ek / sum(e) * alpha * dk for ek, dk in zip(e, ds))
    attraction = attraction / (V * B)
    repulsion, n = 0.0, 0
    for x in range(V):
        for y in range(x + 1, V):
            for i in range(B):
                ds = [sq(z[x][i], z[y][j]) for j in range(B) if j != i]
                e = [torch.exp(-tau_neg * d) for d in ds]
                r = sum(ek / sum(e) * (-beta * dk) for ek, dk in zip(e, ds))
                if debiased: r = (r - tau_plus * sq(z[x][i], z[y][i])) / (1 - tau_plus)
                repulsion = repulsion + r; n += 1
    return attraction + repulsion / n

def _views(v=4, b=5, d=3, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=grad) for _ in range(v)]

# --- hand-worked -------------------------------------------------------------------------------------------------------

def test_two_samples_two_views_by_hand():
    # sample 0 at 0° and 90°, sample 1 at 180° and 270°: every positive and every negative at d = 2 → L⁺ = 2, L⁻ = −2
    v0 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]); v1 = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    st = {}
    assert abs(cacr_loss([v0, v1], 1.0, 0.9, stats=st).item()) < 1e-6
    assert abs(st["attraction"].item() - 2) < 1e-6 and abs(st["repulsion"].item() + 2) < 1e-6

def test_three_views_by_hand():
    # sample 0's views (1,0), (0,1), (−1,0); sample 1's the same turned by 180°. Anchor (1,0) has positives at d = 2 and 4,
    # so at τ⁺ = 1 its expected cost is E = (2 + 4e²)/(1 + e²); anchor (0,1) has both at 2; anchor (−1,0) is anchor (1,0)'s
    # mirror: L⁺ = (2E + 2)/3. One negative per anchor (B = 2): pair (0,1) d = 2, 2; pair (0,2) d = 0, 0; pair (1,2) d = 2, 2,
    # so L⁻ = −8/6.
    s0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]); s1 = -s0
    views = [torch.stack([s0[v], s1[v]]) for v in range(3)]
    E = (2 + 4 * math.e ** 2) / (1 + math.e ** 2)
    st = {}
    loss = cacr_loss(views, 1.0, 0.9, stats=st)
    assert abs(st["attraction"].item() - (2 * E + 2) / 3) < 1e-5
    assert abs(st["repulsion"].item() + 8 / 6) < 1e-5
    assert abs(loss.item() - ((2 * E + 2) / 3 - 8 / 6)) < 1e-5
    st0 = {}; cacr_loss(views, 0.0, 0.9, stats=st0)                   # τ⁺ = 0: uniform weights, E = 3
    assert abs(st0["attraction"].item() - 8 / 3) < 1e-5

def test_weights_favour_far_positives_and_close_negatives():
    d = torch.tensor([[0.1, 0.5, 1.5]], dtype=torch.float64)
    e = torch.exp(d[0])
    torch.testing.assert_close(cacr_weights(d, 1.0)[0], e / e.sum())
    torch.testing.assert_close(cacr_weights(d, 2.0, "negative")[0], torch.exp(-2 * d[0]) / torch.exp(-2 * d[0]).sum())
    assert cacr_weights(d, 1.0).argmax() == 2 and cacr_weights(d, 1.0, "negative").argmax() == 0

# --- float64 reference ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(tau_pos=2.0, tau_neg=0.5), dict(tau_pos=0.0, tau_neg=0.0), dict(alpha=0.5, beta=2.0),
                                dict(debiased=True, tau_plus=0.1), dict(tau_neg=2.0, debiased=True, tau_plus=0.3)])
def test_matches_the_loop_reference_in_value_and_gradient(kw):
    vs = _views(grad=True)
    ours, ref = cacr_loss(vs, **kw), reference_cacr(vs, **kw)
    assert abs(ours.item() - ref.item()) < 1e-10, (ours.item(), ref.item())
    for a, b in zip(torch.autograd.grad(ours, vs), torch.autograd.grad(ref, vs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)

def test_two_views_and_many_views():
    for v in (2, 3, 6):
        vs = _views(v=v, b=4, seed=v)
        assert abs(cacr_loss(vs).item() - reference_cacr(vs).item()) < 1e-10

def test_list_and_tensor_forms_agree_and_samples_permute():
    vs = _views()
    t = torch.stack(vs, 1)
    assert abs(cacr_loss(vs).item() - cacr_loss(t).item()) < 1e-12
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert abs(cacr_loss(t[perm]).item() - cacr_loss(t).item()) < 1e-12

def test_the_pairs_are_ordered_as_the_official_code():
    # the earlier view of a pair supplies the anchors: reversing the views changes L⁻ (and the loop reference agrees)
    vs = _views(v=2, b=6, seed=3)
    assert abs(cacr_loss(vs).item() - cacr_loss(vs[::-1]).item()) > 1e-6
    assert abs(cacr_loss(vs[::-1]).item() - reference_cacr(vs[::-1]).item()) < 1e-10

def test_costs_are_the_pairwise_distances():
    z = torch.nn.functional.normalize(torch.stack(_views(v=3, b=4)), dim=-1)
    pos, neg, paired = cacr_costs(z)
    assert pos.shape == (4, 3, 2) and neg.shape == (3, 4, 3) and paired.shape == (3, 4)
    assert abs(pos[1, 0, 1].item() - ((z[0, 1] - z[2, 1]) ** 2).sum().item()) < 1e-12        # sample 1, view 0 → view 2
    assert abs(neg[2, 3, 0].item() - ((z[1, 3] - z[2, 0]) ** 2).sum().item()) < 1e-12        # pair (1, 2), anchor 3 → sample 0
    assert abs(paired[1, 2].item() - ((z[0, 2] - z[2, 2]) ** 2).sum().item()) < 1e-12        # pair (0, 2), sample 2

# --- gradients --------------------------------------------------------------------------------------------------------

def test_gradcheck_both_forms():
    vs = _views(v=3, b=4, grad=True)
    assert torch.autograd.gradcheck(lambda *x: cacr_loss(list(x), 1.0, 0.9), tuple(vs))
    assert torch.autograd.gradcheck(lambda *x: cacr_loss(list(x), 2.0, 2.0, debiased=True), tuple(vs))

def test_the_weights_carry_gradient_as_in_the_official_code():
    vs = _views(v=4, b=5, grad=True)
    g_ours = torch.autograd.grad(cacr_loss(vs, 2.0, 2.0), vs)
    z = torch.nn.functional.normalize(torch.stack(vs), dim=-1)
    pos, neg, _ = cacr_costs(z)
    frozen = ((cacr_weights(pos, 2.0).detach() * pos).sum(-1).mean()
              - (cacr_weights(neg, 2.0, "negative").detach() * neg).sum(-1).mean())
    g_frozen = torch.autograd.grad(frozen, vs)
    assert abs(frozen.item() - cacr_loss(vs, 2.0, 2.0).item()) < 1e-12          # same value ...
    assert max((a - b).abs().max().item() for a, b in zip(g_ours, g_frozen)) > 1e-3   # ... another gradient

def test_module_and_half_precision():
    vs = _views()
    assert abs(CACRLoss(tau_pos=1.0, tau_neg=2.0)(vs).item() - cacr_loss(vs, 1.0, 2.0).item()) < 1e-12
    half = cacr_loss([v.detach().half() for v in vs])
    assert half.dtype == torch.float32 and abs(half.item() - cacr_loss(vs).item()) < 1e-2

def test_multi_view_info_nce():
    vs = [v.float() for v in _views(v=2, b=6)]
    assert abs(multi_view_info_nce(vs, 0.3).item() - info_nce_loss(vs[0], vs[1], 0.3).item()) < 1e-6
    v5 = [v.float() for v in _views(v=5, b=6)]
    assert torch.isfinite(multi_view_info_nce(v5)) and multi_view_info_nce(torch.stack(v5, 1)).item() == multi_view_info_nce(v5).item()

# --- bad inputs -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("views,err,msg", [
    (lambda v: v[:1], ValueError, "at least 2 views"),
    (lambda v: [v[0], v[1][:3]], ValueError, "views[1]"),
    (lambda v: [v[0], v[1][:, :2]], ValueError, "views[1]"),
    (lambda v: torch.stack(v, 1).unsqueeze(0), ValueError, "(1, 5, 4, 3)"),
    (lambda v: torch.stack(v, 1)[:, :1], ValueError, "at least 2 views"),
    (lambda v: [t[:1] for t in v], ValueError, "at least 2 samples"),
    (lambda v: torch.stack(v, 1)[:0], ValueError, "empty"),
    (lambda v: [v[0], v[1].clone().fill_(float("nan"))], ValueError, "non-finite"),
    (lambda v: [t.long() for t in v], TypeError, "floating"),
    (lambda v: {"a": v[0]}, TypeError, "list of (B, D) tensors"),
])
def test_bad_views(views, err, msg):
    with pytest.raises(err, match=None) as e: cacr_loss(views(_views()))
    assert msg in str(e.value), str(e.value)

@pytest.mark.parametrize("kw,msg", [(dict(tau_pos=-1.0), "tau_pos"), (dict(tau_neg=float("nan")), "tau_neg"), (dict(alpha=-1.0), "alpha"),
                                    (dict(beta=float("inf")), "beta"), (dict(debiased=True, tau_plus=1.0), "tau_plus"),
                                    (dict(debiased=1), "debiased")])
def test_bad_hyper_parameters(kw, msg):
    with pytest.raises((ValueError, TypeError)) as e: cacr_loss(_views(), **kw)
    assert msg in str(e.value), str(e.value)

def test_bad_component_inputs():
    with pytest.raises(ValueError, match="kind"): cacr_weights(torch.ones(2, 3), 1.0, "both")
    with pytest.raises(ValueError, match="candidate"): cacr_weights(torch.ones(2, 0), 1.0)
    with pytest.raises(ValueError, match="paired"): cacr_repulsion(torch.ones(1, 4, 3), paired=torch.ones(1, 5))
    with pytest.raises(ValueError, match="z"): cacr_costs(torch.ones(4, 3))
    with pytest.raises(ValueError, match="d"): positive_spread(torch.ones(3))

# --- training and readouts ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    p = vision_protocol("ci", n_samples=400, epochs=1, batch_size=64)
    return p, vision_data(p)

def test_train_cacr_shape_and_logs(tiny):
    p, data = tiny
    model, hist = train_cacr(data, p, 0, n_views=3)
    assert model(data["x"][:4]).shape == (4, 64) and model.features(data["x"][:4]).shape[0] == 4
    assert {"loss", "attraction", "repulsion"} <= set(hist)
    for a, r, l in zip(hist["attraction"], hist["repulsion"], hist["loss"]): assert abs(a + r - l) < 1e-5
    d = positive_distances(model, data["x_test"][:20], n_views=4, seed=0)
    assert d.shape == (20, 6) and (d >= 0).all()
    s = positive_spread(d)
    assert s["pos_mean"] <= s["pos_hardest"] and set(s) == {"pos_mean", "pos_q90", "pos_hardest"}
    torch.testing.assert_close(positive_distances(model, data["x_test"][:20], n_views=4, seed=0), d)     # seeded

def test_trainer_bad_inputs(tiny):
    p, data = tiny
    with pytest.raises(ValueError, match="n_views"): train_cacr(data, p, 0, n_views=1)
    with pytest.raises(ValueError, match="tau_neg"): train_cacr(data, p, 0, tau_neg=-1.0)
    with pytest.raises(TypeError, match="protocol"): train_multi_view(data, "ci", 0, multi_view_info_nce)
    with pytest.raises(TypeError, match="unknown"): train_cacr(data, p, 0, epoch=3)
