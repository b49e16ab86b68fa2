"""MoE with MNRL (Hallee et al. 2024): the multiple-negatives ranking loss by hand, against a slow float64 loop and against
sentence-transformers' MultipleNegativesRankingLoss (values and gradients; test-only), and the enforced-routing MoE layer."""
import math
import pytest
import torch
from torch import nn
from contrastlab.zoo.moe_mnrl import (mnrl_loss, MNRLLoss, pos_domain, EnforcedRoutingMoE, route)

def _slow_mnrl(a, b, scale, negatives=(), symmetric=False):
    "Term by term: for anchor i, −s·cos(a_i, b_i) + log Σ_{c ∈ b ∪ negatives} exp(s·cos(a_i, c)); mean; optionally averaged with b → a."
    def cos(u, v): return (u * v).sum() / (u.norm() * v.norm())
    a, b = a.double(), b.double()
    cand = list(b) + [n for col in negatives for n in col.double()]
    fwd = sum(-scale * cos(a[i], b[i]) + torch.log(sum(torch.exp(scale * cos(a[i], c)) for c in cand)) for i in range(len(a))) / len(a)
    if not symmetric: return fwd
    bwd = sum(-scale * cos(b[i], a[i]) + torch.log(sum(torch.exp(scale * cos(b[i], c)) for c in a)) for i in range(len(a))) / len(a)
    return (fwd + bwd) / 2

def _t(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, dtype=torch.float64, generator=g)).requires_grad_()

def _close(ours, ref, inputs, tol=1e-9):
    assert abs(ours.item() - ref.item()) <= tol * max(1.0, abs(ref.item())), (ours.item(), ref.item())
    for x, y in zip(torch.autograd.grad(ours, inputs, retain_graph=True), torch.autograd.grad(ref, inputs, retain_graph=True)):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)

# ---- hand-worked ---------------------------------------------------------------------------------------------
def test_mnrl_hand_worked():
    # anchors e1, e2; positives e1, (e1+e2)/√2; scale 1. Anchor 1: cosines 1 (own), 1/√2. Anchor 2: 1/√2 (own), 0.
    r = 1 / math.sqrt(2)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0], [r, r]], dtype=torch.float64)
    want = ((-1 + math.log(math.e + math.exp(r))) + (-r + math.log(1 + math.exp(r)))) / 2
    assert math.isclose(mnrl_loss(a, b, 1.0).item(), want, rel_tol=1e-12)
    # one hard negative −e1 for anchor 1 and −e2 for anchor 2: both join every anchor's candidates
    n = -a
    want_n = ((-1 + math.log(math.e + math.exp(r) + math.exp(-1) + 1)) + (-r + math.log(1 + math.exp(r) + 1 + math.exp(-1)))) / 2
    assert math.isclose(mnrl_loss(a, b, 1.0, negatives=[n]).item(), want_n, rel_tol=1e-12)
    assert math.isclose(mnrl_loss(a, b, 1.0, negatives=n).item(), want_n, rel_tol=1e-12)

def test_mnrl_is_one_directional_by_default():
    a, b = _t(5, 4, seed=1), _t(5, 4, seed=2)
    assert not math.isclose(mnrl_loss(a, b).item(), mnrl_loss(b, a).item(), rel_tol=1e-6)
    sym = mnrl_loss(a, b, symmetric=True).item()
    assert math.isclose(sym, (mnrl_loss(a, b).item() + mnrl_loss(b, a).item()) / 2, rel_tol=1e-12)

# ---- a slow float64 loop, values and gradients ---------------------------------------------------------------
@pytest.mark.parametrize("b,d,scale,mag,n_neg,symmetric", [(2, 3, 1.0, 1.0, 0, False), (6, 5, 20.0, 3.0, 0, False),
                                                          (5, 4, 20.0, 0.01, 2, False), (7, 6, 7.5, 1.0, 1, True)])
def test_mnrl_against_the_slow_loop(b, d, scale, mag, n_neg, symmetric):
    a, p = _t(b, d, seed=b, scale=mag), _t(b, d, seed=b + 100, scale=mag)
    negs = [_t(b, d, seed=200 + k) for k in range(n_neg)]
    ours = mnrl_loss(a, p, scale, negatives=negs or None, symmetric=symmetric)
    _close(ours, _slow_mnrl(a, p, scale, negs, symmetric), (a, p, *negs))

def test_module_equals_function():
    a, b = _t(5, 3, seed=9), _t(5, 3, seed=10)
    assert MNRLLoss(scale=12.0)(a, b).item() == mnrl_loss(a, b, 12.0).item()

def test_learnable_scale_gets_a_gradient():
    a, b = _t(6, 4, seed=3), _t(6, 4, seed=4)
    s = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    loss = mnrl_loss(a, b, logit_scale=s)
    assert math.isclose(loss.item(), mnrl_loss(a, b, 20.0).item(), rel_tol=1e-12)
    (gs,) = torch.autograd.grad(loss, s)
    assert gs.abs() > 0

# ---- sentence-transformers --------------------------------------------------------------------------------------
class _Stub(nn.Module):
    "The smallest SentenceTransformer-compatible module: features in, `sentence_embedding` out (here the features are the embeddings)."
    def forward(self, features): return dict(sentence_embedding=features["emb"])

def _st():
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    return MultipleNegativesRankingLoss

@pytest.mark.parametrize("b,scale,mag,n_neg", [(2, 20.0, 1.0, 0), (12, 20.0, 5.0, 0), (8, 20.0, 1.0, 1), (9, 7.0, 0.3, 3)])
def test_parity_with_sentence_transformers(b, scale, mag, n_neg):
    # the loss's own forward over a stub model: (anchor, positive, negative_1, ..., negative_n) columns, float64, values and gradients
    M = _st()
    a, p = _t(b, 16, seed=11, scale=mag), _t(b, 16, seed=12, scale=mag)
    negs = [_t(b, 16, seed=13 + k, scale=mag) for k in range(n_neg)]
    ref = M(_Stub(), scale=scale)([dict(emb=x) for x in (a, p, *negs)], None)
    _close(mnrl_loss(a, p, scale, negatives=negs or None), ref, (a, p, *negs), tol=1e-7)

def test_parity_with_sentence_transformers_symmetric():
    M = _st()
    a, p, n = _t(10, 8, seed=21), _t(10, 8, seed=22), _t(10, 8, seed=23)
    ref = M(_Stub(), directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")([dict(emb=x) for x in (a, p, n)], None)
    _close(mnrl_loss(a, p, negatives=[n], symmetric=True), ref, (a, p, n), tol=1e-7)

def test_parity_control_a_wrong_scale_disagrees():
    # the parity test can fail: sentence-transformers at scale 20 is not our loss at scale 10
    M = _st()
    a, p = _t(8, 6, seed=31), _t(8, 6, seed=32)
    ref = M(_Stub())([dict(emb=a), dict(emb=p)], None)
    assert abs(mnrl_loss(a, p, 10.0).item() - ref.item()) > 1e-3

# ---- bad inputs -----------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_parameter():
    a, b = _t(4, 3), _t(4, 3, seed=1)
    with pytest.raises(ValueError, match="scale"): mnrl_loss(a, b, 0.0)
    with pytest.raises(ValueError, match="scale"): mnrl_loss(a, b, float("nan"))
    with pytest.raises(TypeError, match="symmetric"): mnrl_loss(a, b, symmetric="yes")
    with pytest.raises(ValueError, match=r"negatives\[0\]"): mnrl_loss(a, b, negatives=[b[:2]])
    with pytest.raises(ValueError, match="negatives"): mnrl_loss(a, b, negatives=[])
    with pytest.raises(TypeError, match="negatives"): mnrl_loss(a, b, negatives="x")
    with pytest.raises(ValueError, match="a and b"): mnrl_loss(a, b[:3])

# ---- domains --------------------------------------------------------------------------------------------------
def test_pos_domain():
    assert [pos_domain(p) for p in ("n.", "prop. n.", "n. pl.", "v. i.", "v. t. & i.", "a.", "adj.", "adv.", "interj.")] == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert [pos_domain(p, 3) for p in ("n.", "v. t.", "a.", "adv.")] == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="n_domains"): pos_domain("n.", 1)
    with pytest.raises(TypeError, match="pos"): pos_domain(None)

# ---- enforced routing -----------------------------------------------------------------------------------------
def _ff(seed=0):
    torch.manual_seed(seed); return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))

def test_moe_starts_as_the_dense_block_and_routes_by_domain():
    ff = _ff(); moe = EnforcedRoutingMoE(ff, 3)
    x = torch.randn(6, 5, 4); d = torch.tensor([2, 0, 1, 2, 0, 1])
    torch.testing.assert_close(moe(x, domain=d), ff(x))
    for e in range(3):
        with torch.no_grad(): moe.experts[e][2].bias.fill_(float(e))
    y = moe(x, domain=d)
    for i in range(6): torch.testing.assert_close(y[i], moe.experts[int(d[i])](x[i:i + 1])[0])
    assert moe.usage.tolist() == [4, 4, 4]

def test_moe_gradient_reaches_only_the_routed_experts():
    moe = EnforcedRoutingMoE(_ff(), 3)
    x = torch.randn(4, 4, requires_grad=True)
    moe(x, domain=torch.tensor([1, 1, 2, 1])).sum().backward()
    assert moe.experts[0][0].weight.grad is None
    assert moe.experts[1][0].weight.grad.abs().sum() > 0 and moe.experts[2][0].weight.grad.abs().sum() > 0
    # the gradient of expert 2 is that of its one row alone
    ref = EnforcedRoutingMoE(_ff(), 3); ref.experts[2](x[2:3].detach()).sum().backward()
    torch.testing.assert_close(moe.experts[2][0].weight.grad, ref.experts[2][0].weight.grad)

def test_route_sets_and_restores():
    model = nn.Sequential(nn.Linear(4, 4), EnforcedRoutingMoE(_ff(), 2))
    with pytest.raises(ValueError, match="domain"): model(torch.randn(3, 4))
    with route(model, torch.tensor([0, 1, 1])): model(torch.randn(3, 4))
    assert model[1].domain is None
    with route(model, 1):
        with route(model, 0): assert model[1].domain == 0
        assert model[1].domain == 1
    with pytest.raises(ValueError, match="EnforcedRoutingMoE"): route(nn.Linear(2, 2), 0).__enter__()

def test_moe_bad_inputs():
    with pytest.raises(ValueError, match="num_experts"): EnforcedRoutingMoE(_ff(), 0)
    with pytest.raises(TypeError, match="ff"): EnforcedRoutingMoE(lambda x: x, 2)
    moe = EnforcedRoutingMoE(_ff(), 2); x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"): moe(x, domain=torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"\(3,\)"): moe(x, domain=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"): moe(x, domain=torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="rows"): moe(x, torch.randn(2, 4), domain=0)
