"SwAV's trainer pieces: a hand-worked case, a slow float64 reference with multi-crop and a queue, errors, lightly parity, and the trainer's mechanics."
import math, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from contrastlab.protocol import vision_protocol
from contrastlab.zoo.swav import (swav_loss, swav_codes, Prototypes, normalize_prototypes_, multi_crop_views, SwAVModel,
                                  prototype_usage, train_swav)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peers import lightly_loss

def test_hand_worked_two_samples_two_prototypes():
    # z1 = z2 = prototypes = I₂: scores I, codes ∝ exp(I/ε) (already balanced), so q₀ = σ(1/ε) and the loss is
    # −q₀ log σ(1/τ) − q₁ log σ(−1/τ) = log(1 + e^{−1/τ}) + q₁/τ, with q₁ = σ(−1/ε).
    e = torch.eye(2, dtype=torch.float64)
    tau, eps = 0.5, 0.25
    q1 = 1 / (1 + math.exp(1 / eps))
    want = math.log1p(math.exp(-1 / tau)) + q1 / tau
    assert math.isclose(swav_loss(e, e, e, tau, eps).item(), want, rel_tol=1e-12)
    torch.testing.assert_close(swav_codes(e, eps), torch.tensor([[1 - q1, q1], [q1, 1 - q1]], dtype=torch.float64))

def _plain_sinkhorn(s, eps, n_iter):
    "Textbook Sinkhorn–Knopp on exp(s/ε): alternate column and row normalisations, one-by-one."
    Q = torch.exp(s / eps).T.clone()                      # K × N
    K, N = Q.shape
    Q = Q / Q.sum()
    for _ in range(n_iter):
        for k in range(K): Q[k] = Q[k] / Q[k].sum() / K
        for n in range(N): Q[:, n] = Q[:, n] / Q[:, n].sum() / N
    return (Q * N).T

def _reference(views, P, tau, eps, n_iter, queue=None):
    "Every view predicts each other large view's code, explicit loops, float64."
    C = P / P.norm(dim=1, keepdim=True)
    sc = [(v / v.norm(dim=1, keepdim=True)) @ C.T for v in views]
    qs = None if queue is None else (queue / queue.norm(dim=1, keepdim=True)) @ C.T
    total, terms = 0.0, 0
    for i in (0, 1):
        with torch.no_grad():                             # the codes carry no gradient
            s = sc[i] if qs is None else torch.cat([sc[i], qs])
            q = _plain_sinkhorn(s, eps, n_iter)[: len(views[0])]
        for v in range(len(views)):
            if v == i: continue
            logp = sc[v] / tau - torch.logsumexp(sc[v] / tau, 1, keepdim=True)
            total = total - sum((q[n] * logp[n]).sum() for n in range(len(q))) / len(q); terms += 1
    return total / terms

@pytest.mark.parametrize("n_crops,with_queue", [(0, False), (3, False), (2, True)])
def test_against_a_slow_float64_reference(n_crops, with_queue):
    g = torch.Generator().manual_seed(7)
    views = [torch.randn(9, 6, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2 + n_crops)]
    P = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    queue = torch.randn(11, 6, dtype=torch.float64, generator=g) if with_queue else None
    ours = swav_loss(views[0], views[1], P, 0.2, 0.1, 5, crops=views[2:], queue=queue)
    ref = _reference(views, P, 0.2, 0.1, 5, queue)
    assert abs(ours.item() - ref.item()) < 1e-10 * max(1, abs(ref.item()))
    for a, b in zip(torch.autograd.grad(ours, [*views, P]), torch.autograd.grad(ref, [*views, P])):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)

def test_codes_match_lightly_sinkhorn():
    lightly_loss()                                        # installs the torchvision stand-in first
    from lightly.loss.swav_loss import sinkhorn
    s = torch.randn(30, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(swav_codes(s, 0.05, 3), sinkhorn(s, iterations=3, epsilon=0.05), rtol=1e-6, atol=1e-9)

def test_multi_crop_views():
    x = torch.randn(5, 40)
    v = multi_crop_views(x, 3, g=torch.Generator().manual_seed(0))
    assert len(v) == 5 and all(t.shape == (5, 40) for t in v)
    w = multi_crop_views(x, 3, g=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(v, w))
    assert len(multi_crop_views(x, 0)) == 2

def test_errors_name_the_parameter():
    x = torch.randn(4, 40)
    with pytest.raises(ValueError, match="n_crops"): multi_crop_views(x, -1)
    with pytest.raises(ValueError, match="crop_scale"): multi_crop_views(x, 1, crop_scale=(0.6, 0.3))
    with pytest.raises(ValueError, match="crop_scale"): multi_crop_views(x, 1, crop_scale=0.5)
    with pytest.raises((ValueError, TypeError), match="scores"): prototype_usage(torch.randn(3))
    with pytest.raises(ValueError, match="n_prototypes"): SwAVModel(40, 1)
    data = dict(x=torch.randn(200, 40))
    p = vision_protocol("ci", 0, batch_size=32, epochs=1)
    with pytest.raises(ValueError, match="queue_size"): train_swav(data, p, 0, queue_size=40)
    with pytest.raises(ValueError, match="temperature"): train_swav(data, p, 0, temperature=0)

def test_usage_counts_prototypes():
    s = torch.zeros(6, 4); s[:3, 1] = 1; s[3:, 2] = 1
    u = prototype_usage(s)
    assert u["used"] == 2 and math.isclose(u["usage_entropy"], math.log(2), rel_tol=1e-6)
    assert u["code_entropy"] > u["usage_entropy"]

@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(192, 40, generator=g), x_test=torch.randn(64, 40, generator=g))

def test_trainer_freezes_normalises_and_queues(tiny):
    p = vision_protocol("ci", 0, batch_size=32, epochs=2)
    torch.manual_seed(0)
    model, h = train_swav(tiny, p, 0, n_crops=1, queue_size=64, queue_start_epoch=0, freeze_prototypes_steps=100,
                          eval_x=tiny["x_test"])
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(30))
    from contrastlab.core import seed_everything
    seed_everything(0); init = SwAVModel(40, 30)
    torch.testing.assert_close(model.prototypes.weight, F.normalize(init.prototypes.weight, dim=1))   # frozen throughout
    assert h["queue_used"][0] == 0 and h["queue_used"][-1] == 1                                        # used once full
    assert {"usage_entropy", "used", "code_entropy"} <= set(h.epochs)
    assert model(tiny["x_test"]).shape == (64, 64) and model.features(tiny["x_test"]).shape == (64, 128)

def test_prototypes_learn_after_the_freeze_and_the_control_runs(tiny):
    p = vision_protocol("ci", 0, batch_size=32, epochs=1)
    from contrastlab.core import seed_everything
    seed_everything(0); init = F.normalize(SwAVModel(40, 30).prototypes.weight.detach(), dim=1)
    model, _ = train_swav(tiny, p, 0, n_crops=0, freeze_prototypes_steps=2)
    assert not torch.allclose(model.prototypes.weight, init)
    ctrl, hc = train_swav(tiny, p, 0, n_crops=0, equipartition=False)
    assert all(math.isfinite(v) for v in hc["loss"])
