"""DCL / DCL-W (Yeh et al. 2022): hand-worked cases, a slow float64 re-implementation of the paper's formula, gradients,
error messages, parity with lightly's DCLLoss / DCLWLoss, and the trainer `train_dcl`."""
import math, sys
from functools import partial
from pathlib import Path
import pytest
import torch
from contrastlab.protocol import vision_protocol, vision_data, train_baseline
from contrastlab.zoo.dcl import dcl_loss, dclw_loss, dclw_weights, DCLLoss, DCLWLoss, train_dcl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peers import lightly_loss

def _slow_dcl(z1, z2, tau, w=None):
    "The paper's formula term by term: for every row i of cat([z1, z2]), −w_i s(i, i′)/τ + log Σ_{k ∉ {i, i′}} exp(s(i, k)/τ); mean."
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        j = (i + b) % n                                      # the other view of the same sample
        s_pos = (z[i] * z[j]).sum()
        neg = sum(torch.exp((z[i] * z[k]).sum() / tau) for k in range(n) if k not in (i, j))
        wi = 1.0 if w is None else w[i % b]
        total = total - wi * s_pos / tau + torch.log(neg)
    return total / n

def _slow_weights(z1, z2, sigma):
    "w_i = 2 − exp(s_ii′/σ) / mean_j exp(s_jj′/σ), one per pair, from a plain loop."
    s = [float((a / a.norm() * b / b.norm()).sum()) for a, b in zip(z1.double(), z2.double())]
    e = [math.exp(v / sigma) for v in s]
    return torch.tensor([2 - x / (sum(e) / len(e)) for x in e], dtype=torch.float64)

def _pair(b=6, d=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, d, dtype=torch.float64, generator=g)).requires_grad_(), \
           (scale * torch.randn(b, d, dtype=torch.float64, generator=g)).requires_grad_()

def _values_and_grads_close(ours, ref, inputs, tol=1e-6):
    assert abs(ours.item() - ref.item()) <= tol * max(1.0, abs(ref.item())), (ours.item(), ref.item())
    for a, b in zip(torch.autograd.grad(ours, inputs, retain_graph=True), torch.autograd.grad(ref, inputs, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)

# ---- hand-worked ---------------------------------------------------------------------------------------------
def test_dcl_hand_worked_two_pairs_at_an_angle():
    # z1 = (e1, e2), z2 = (e1, (e1 + e2)/√2), τ = 1. Row by row (s: cosine), the positive left out of each denominator:
    #   z1[0]: pos e1·e1 = 1;      negs z1[1], z2[1]: cos 0, 1/√2       → −1 + log(1 + e^{1/√2})
    #   z1[1]: pos e2·z2[1] = 1/√2; negs z1[0], z2[0]: cos 0, 0         → −1/√2 + log 2
    #   z2[0]: pos 1;              negs z1[1], z2[1]: 0, 1/√2           → −1 + log(1 + e^{1/√2})
    #   z2[1]: pos 1/√2;           negs z1[0], z2[0]: 1/√2, 1/√2        → −1/√2 + log(2 e^{1/√2}) = log 2
    r = 1 / math.sqrt(2)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 0.0], [r, r]], dtype=torch.float64)
    want = (2 * (-1 + math.log(1 + math.exp(r))) + (-r + math.log(2)) + math.log(2)) / 4
    assert math.isclose(dcl_loss(z1, z2, 1.0).item(), want, rel_tol=1e-12)

def test_dclw_weights_hand_worked():
    # positive cosines 1 and 1/√2 at σ = 0.5: w = 2 − 2·softmax(2, √2)
    r = 1 / math.sqrt(2)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 0.0], [r, r]], dtype=torch.float64)
    e1, e2 = math.exp(2.0), math.exp(2 * r)
    w = dclw_weights(z1, z2, 0.5)
    torch.testing.assert_close(w, torch.tensor([2 - 2 * e1 / (e1 + e2), 2 - 2 * e2 / (e1 + e2)] * 2, dtype=torch.float64))
    assert w[0] < 1 < w[1]                                   # the closer pair is pushed less, the far one more

# ---- a slow float64 re-implementation, values and gradients ---------------------------------------------------
@pytest.mark.parametrize("b,d,tau,scale", [(2, 3, 1.0, 1.0), (5, 4, 0.1, 3.0), (8, 6, 0.5, 0.01)])
def test_dcl_against_the_slow_formula(b, d, tau, scale):
    z1, z2 = _pair(b, d, seed=b, scale=scale)
    _values_and_grads_close(dcl_loss(z1, z2, tau), _slow_dcl(z1, z2, tau), (z1, z2), tol=1e-9)

@pytest.mark.parametrize("sigma", [0.5, 0.1, 2.0])
def test_dclw_against_the_slow_formula(sigma):
    z1, z2 = _pair(7, 5, seed=3)
    w = _slow_weights(z1.detach(), z2.detach(), sigma)
    torch.testing.assert_close(dclw_weights(z1, z2, sigma), torch.cat([w, w]), rtol=1e-12, atol=1e-12)
    _values_and_grads_close(dclw_loss(z1, z2, 0.2, sigma), _slow_dcl(z1, z2, 0.2, w), (z1, z2), tol=1e-9)

def test_modules_equal_functions():
    z1, z2 = _pair(5, 3, seed=9)
    assert DCLLoss(temperature=0.3)(z1, z2).item() == dcl_loss(z1, z2, 0.3).item()
    assert DCLWLoss(temperature=0.3, sigma=0.4)(z1, z2).item() == dclw_loss(z1, z2, 0.3, 0.4).item()

def test_weights_carry_no_gradient():
    z1, z2 = _pair(4, 3, seed=5)
    assert not dclw_weights(z1, z2).requires_grad

# ---- lightly --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b,tau,sigma,scale", [(2, 0.5, 0.5, 1.0), (12, 0.07, 0.2, 5.0)])
def test_parity_with_lightly(b, tau, sigma, scale):
    # lightly normalises inside its losses too, so unnormalised inputs of any scale must agree; values and gradients, float64
    L = lightly_loss()
    z1, z2 = _pair(b, 8, seed=11, scale=scale)
    _values_and_grads_close(dcl_loss(z1, z2, tau), L.DCLLoss(temperature=tau)(z1, z2), (z1, z2), tol=1e-6)
    _values_and_grads_close(dclw_loss(z1, z2, tau, sigma), L.DCLWLoss(temperature=tau, sigma=sigma)(z1, z2), (z1, z2), tol=1e-6)

# ---- bad inputs -----------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_parameter():
    z1, z2 = _pair(4, 3)
    with pytest.raises(ValueError, match="temperature"): dcl_loss(z1, z2, 0.0)
    with pytest.raises(ValueError, match="sigma"): dclw_weights(z1, z2, -1.0)
    with pytest.raises(ValueError, match="sigma"): dclw_loss(z1, z2, 0.1, 0.0)
    with pytest.raises((ValueError, TypeError)): dcl_loss(z1, z2[:3], 0.1)          # different batch sizes
    with pytest.raises(ValueError, match="empty denominator"): dcl_loss(z1[:1], z2[:1], 0.1)

# ---- the trainer ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    p = vision_protocol("ci", n_samples=200, epochs=1)
    return p, vision_data(p)

def test_train_dcl_is_the_baseline_with_the_dcl_loss(tiny):
    p, data = tiny
    m, h = train_dcl(data, p, 3, batch_size=32)
    ref, _ = train_baseline(data, p, 3, batch_size=32, loss_fn=partial(dcl_loss, temperature=p.temperature))
    x = data["x"][:6]
    assert m.features(x).shape == (6, 128) and m(x).shape[0] == 6 and len(h.epochs["loss"]) == 1
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)                    # same seed, same loss, same τ: the same model
    mw, _ = train_dcl(data, p, 3, batch_size=32, weighted=True, sigma=0.5, temperature=0.1)
    refw, _ = train_baseline(data, p, 3, batch_size=32, loss_fn=partial(dclw_loss, temperature=0.1, sigma=0.5))
    torch.testing.assert_close(mw(x), refw(x), rtol=0, atol=0)

def test_train_dcl_rejects_bad_knobs(tiny):
    p, data = tiny
    with pytest.raises(ValueError, match="temperature"): train_dcl(data, p, 0, temperature=-0.1)
    with pytest.raises(ValueError, match="sigma"): train_dcl(data, p, 0, weighted=True, sigma=0)
    with pytest.raises(TypeError, match="weighted"): train_dcl(data, p, 0, weighted="yes")
    with pytest.raises(TypeError, match="protocol"): train_dcl(data, dict(epochs=1), 0)
