"""WhitenedCSE (Zhuo et al. 2023): shuffled group whitening (each group's covariance ≈ I, a control without whitening that is not),
hand-worked cases, a slow float64 re-implementation (values and gradients), parity with the official whitening re-expressed in
numpy and with scipy's ZCA, error messages, and the trainer `train_whitenedcse`."""
import math
import numpy as np
import pytest
import scipy.linalg
import torch
from contrastlab.core import generator
from contrastlab.losses import whiten, contrastive_loss
from contrastlab.losses.reference import reference_loss
from contrastlab.zoo.whitenedcse import (ShuffledGroupWhitening, shuffled_group_whiten, zca_matrices, group_covariances,
                                         channel_permutations, multi_view_info_nce, whitenedcse_loss, WhitenedCSELoss,
                                         default_num_groups, whitenedcse_step, train_whitenedcse)

def _correlated(n=96, d=24, seed=0, dtype=torch.float64):
    g = generator(seed)
    return torch.randn(n, d, generator=g, dtype=dtype) @ torch.randn(d, d, generator=g, dtype=dtype) + 3.0

# ---- whitening: each group's covariance is I --------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 4, 8])
def test_each_group_covariance_is_identity_after_whitening(groups):
    z = _correlated()
    perm = channel_permutations(1, z.shape[1], generator(1))[0]
    out = shuffled_group_whiten(z, groups, perm, eps=1e-10)
    cov = group_covariances(out, groups, perm)
    eye = torch.eye(z.shape[1] // groups, dtype=torch.float64).expand_as(cov)
    torch.testing.assert_close(cov, eye, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.mean(0), torch.zeros(z.shape[1], dtype=torch.float64), rtol=0, atol=1e-9)

def test_control_without_whitening_the_groups_are_not_identity():
    # the same check on the input (and on the permutation alone) must fail: the test above can fail
    z = _correlated(); perm = channel_permutations(1, z.shape[1], generator(1))[0]
    for cov in (group_covariances(z, 4, perm), group_covariances(z[:, perm][:, torch.argsort(perm)], 4, perm)):
        eye = torch.eye(6, dtype=torch.float64).expand_as(cov)
        assert (cov - eye).abs().max() > 1.0
        with pytest.raises(AssertionError): torch.testing.assert_close(cov, eye, rtol=0, atol=1e-6)

def test_groups_are_formed_in_the_permuted_order():
    # whitened under `perm`, the groups of the *contiguous* split are not I (the groups really come from the permutation)
    z = _correlated(); perm = channel_permutations(1, 24, generator(2))[0]
    out = shuffled_group_whiten(z, 4, perm, eps=1e-10)
    assert (group_covariances(out, 4) - torch.eye(6, dtype=torch.float64)).abs().max() > 0.1
    # the identity permutation is the layer's plain group whitening
    torch.testing.assert_close(shuffled_group_whiten(z, 4, torch.arange(24)), whiten(z, 4), rtol=0, atol=0)

def test_hand_worked_two_channels():
    r = math.sqrt(3) / 2
    x = torch.tensor([[1.5, 1.5], [-1.5, -1.5], [r, -r], [-r, r]], dtype=torch.float64)   # covariance [[2, 1], [1, 2]] over N − 1
    out = shuffled_group_whiten(x, 1, eps=1e-14)
    torch.testing.assert_close(out, torch.tensor([[r, r], [-r, -r], [r, -r], [-r, r]], dtype=torch.float64), rtol=0, atol=1e-12)
    mean, w = zca_matrices(x, 1, eps=1e-14)
    s3 = 1 / math.sqrt(3)
    torch.testing.assert_close(w[0], 0.5 * torch.tensor([[s3 + 1, s3 - 1], [s3 - 1, s3 + 1]], dtype=torch.float64), rtol=0, atol=1e-12)

def test_detached_statistics_same_values_constant_matrix():
    z = _correlated(n=40, d=12).requires_grad_()
    perm = channel_permutations(1, 12, generator(3))[0]
    a, b = shuffled_group_whiten(z, 3, perm), shuffled_group_whiten(z, 3, perm, detach_stats=True)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # detached: the output is the centred input times a constant W, so its gradient is (I − 11ᵀ/N) G Wᵀ per group
    gout = torch.randn(40, 12, dtype=torch.float64, generator=generator(4))
    (grad,) = torch.autograd.grad((b * gout).sum(), z)
    _, w = zca_matrices(z.detach()[:, perm], 3)
    gp = gout[:, perm]; gp = gp - gp.mean(0)
    want = (gp.reshape(40, 3, 4).transpose(0, 1) @ w.transpose(1, 2)).transpose(0, 1).reshape(40, 12)[:, torch.argsort(perm)]
    torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-9)
    (full,) = torch.autograd.grad((a * gout).sum(), z)
    assert (full - grad).abs().max() > 1e-3                                     # the default also differentiates the statistics

def test_module_draws_a_new_permutation_per_call_and_is_seeded():
    z = _correlated(n=64, d=16, dtype=torch.float32)
    m1, m2 = ShuffledGroupWhitening(4, seed=7), ShuffledGroupWhitening(4, seed=7)
    o1, p1 = m1(z), m1.last_perm
    o2, p2 = m1(z), m1.last_perm
    assert not torch.equal(p1, p2) and not torch.allclose(o1, o2)
    torch.testing.assert_close(m2(z), o1, rtol=0, atol=0)                       # the same seed, the same first permutation
    assert ShuffledGroupWhitening(1).shuffle is False and ShuffledGroupWhitening(4, shuffle=False)(z).shape == z.shape
    torch.testing.assert_close(ShuffledGroupWhitening(4, shuffle=False)(z), whiten(z, 4), rtol=0, atol=0)

# ---- parity: the official whitening re-expressed in numpy, and scipy's ZCA (float64) -----------------------------
def _official_numpy(x, num_groups, perm):
    "The official forward for one view: permute, G contiguous groups, centre, cov over N (no ridge), U Λ^{-1/2} Uᵀ, un-permute."
    n, d = x.shape; w = d // num_groups
    xp = x[:, perm].reshape(n, num_groups, w)
    xp = (xp - xp.mean(0, keepdims=True)).transpose(1, 0, 2)
    lam, u = np.linalg.eigh(np.einsum("gni,gnj->gij", xp, xp) / n)
    out = np.einsum("gni,gij->gnj", xp, u @ (lam[:, :, None] ** -0.5 * np.swapaxes(u, 1, 2)))
    return out.transpose(1, 0, 2).reshape(n, d)[:, np.argsort(perm)]

def _scipy_zca(x, num_groups, perm):
    n, d = x.shape; w = d // num_groups; xp = x[:, perm] - x[:, perm].mean(0); out = np.empty_like(xp)
    for g in range(num_groups):
        sl = slice(g * w, (g + 1) * w)
        out[:, sl] = xp[:, sl] @ np.real(scipy.linalg.fractional_matrix_power(xp[:, sl].T @ xp[:, sl] / n, -0.5))
    return out[:, np.argsort(perm)]

@pytest.mark.parametrize("n,d,groups", [(40, 12, 4), (64, 24, 4), (128, 48, 8)])
def test_parity_with_the_official_whitening_and_scipy(n, d, groups):
    x = _correlated(n, d, seed=n)
    perm = channel_permutations(1, d, generator(d))[0]
    ours = shuffled_group_whiten(x, groups, perm, eps=1e-14).numpy() * math.sqrt(n / (n - 1))   # ours divides by N − 1
    np.testing.assert_allclose(ours, _official_numpy(x.numpy(), groups, perm.numpy()), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(ours, _scipy_zca(x.numpy(), groups, perm.numpy()), rtol=1e-8, atol=1e-9)

# ---- the loss: hand-worked, float64 reference, gradients ---------------------------------------------------------
def test_multi_view_hand_worked():
    e1, e2 = torch.eye(2, dtype=torch.float64)
    v = torch.stack([torch.stack([e1, e1, e2]), torch.stack([e2, e2, e1])])
    assert math.isclose(multi_view_info_nce(v, 1.0).item(), -1 + 2 * math.log(1 + math.e), rel_tol=1e-12)
    assert math.isclose(multi_view_info_nce(v, 1.0, form="joint").item(), -0.5 + math.log(2 * math.e + 2), rel_tol=1e-12)

def test_two_views_are_simcse():
    v = torch.randn(9, 2, 5, dtype=torch.float64, generator=generator(0))
    from contrastlab.sentence import simcse_loss
    torch.testing.assert_close(multi_view_info_nce(v, 0.05), simcse_loss(v[:, 0], v[:, 1], 0.05), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(multi_view_info_nce(v, 0.05, form="joint"), simcse_loss(v[:, 0], v[:, 1], 0.05), rtol=1e-12, atol=1e-12)

def _slow(views, tau, groups, perms, eps=1e-5, form="sum"):
    views = views.double(); b, v, d = views.shape; w = d // groups
    white = []
    for k in range(v):
        x = views[:, k][:, perms[k]]; cols = []
        for g in range(groups):
            xg = x[:, g * w:(g + 1) * w]; xg = xg - xg.mean(0)
            lam, u = torch.linalg.eigh(xg.T @ xg / (b - 1) + eps * torch.eye(w, dtype=torch.float64))
            cols.append(xg @ u @ torch.diag(lam.rsqrt()) @ u.T)
        y = torch.cat(cols, 1)[:, torch.argsort(perms[k])]
        white.append(y / y.norm(dim=1, keepdim=True))
    if form == "joint":
        cand = torch.cat(white[1:]); sim = white[0] @ cand.T
        mask = torch.zeros(b, (v - 1) * b, dtype=torch.bool)
        for k in range(v - 1):
            for i in range(b): mask[i, k * b + i] = True
        return reference_loss(sim, mask, tau)
    total = 0.0
    for k in range(1, v):
        for i in range(b):
            num = torch.exp((white[0][i] * white[k][i]).sum() / tau)
            den = sum(torch.exp((white[0][i] * white[k][j]).sum() / tau) for j in range(b))
            total = total - torch.log(num / den) / b
    return total

@pytest.mark.parametrize("b,v,d,groups,tau,form", [(10, 3, 6, 3, 0.5, "sum"), (12, 4, 8, 2, 0.05, "sum"), (10, 3, 6, 2, 0.2, "joint")])
def test_loss_against_the_slow_formula(b, v, d, groups, tau, form):
    views = torch.randn(b, v, d, dtype=torch.float64, generator=generator(b + v)).requires_grad_()
    perms = channel_permutations(v, d, generator(d))
    ours, ref = whitenedcse_loss(views, tau, groups, perms=perms, form=form), _slow(views, tau, groups, perms, form=form)
    assert abs(ours.item() - ref.item()) <= 1e-9 * max(1.0, abs(ref.item())), (ours.item(), ref.item())
    torch.testing.assert_close(torch.autograd.grad(ours, views, retain_graph=True)[0], torch.autograd.grad(ref, views)[0], rtol=1e-7, atol=1e-8)

def test_generator_draws_one_permutation_per_view_and_module_equals_function():
    views = torch.randn(16, 3, 12, dtype=torch.float64, generator=generator(0))
    perms = channel_permutations(3, 12, generator(5))
    assert len({tuple(p.tolist()) for p in perms}) == 3
    torch.testing.assert_close(whitenedcse_loss(views, 0.05, 4, generator=generator(5)), whitenedcse_loss(views, 0.05, 4, perms=perms), rtol=0, atol=0)
    torch.testing.assert_close(WhitenedCSELoss(temperature=0.05, num_groups=4, perms=perms)(views), whitenedcse_loss(views, 0.05, 4, perms=perms))
    # the shuffle matters: different permutations give a different loss, the same ones the same
    assert whitenedcse_loss(views, 0.05, 4, perms=perms).item() != whitenedcse_loss(views, 0.05, 4, shuffle=False).item()

# ---- bad inputs ------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_parameter():
    z = _correlated(n=16, d=12)
    with pytest.raises(ValueError, match="num_groups"): shuffled_group_whiten(z, 5)
    with pytest.raises(TypeError, match="num_groups"): shuffled_group_whiten(z, 2.0)
    with pytest.raises(ValueError, match="perm"): shuffled_group_whiten(z, 3, torch.zeros(12, dtype=torch.long))
    with pytest.raises(TypeError, match="perm"): shuffled_group_whiten(z, 3, torch.zeros(12))
    with pytest.raises(ValueError, match="eps"): shuffled_group_whiten(z, 3, eps=0.0)
    with pytest.raises(ValueError, match="z"): shuffled_group_whiten(z[:1], 3)
    v = torch.randn(8, 3, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="views"): whitenedcse_loss(v[:, :1], 0.05, 3)
    with pytest.raises(ValueError, match="perms"): whitenedcse_loss(v, 0.05, 3, perms=channel_permutations(2, 12))
    with pytest.raises(ValueError, match="perms"): whitenedcse_loss(v, 0.05, 3, shuffle=False, perms=channel_permutations(3, 12))
    with pytest.raises(ValueError, match="form"): whitenedcse_loss(v, 0.05, 3, form="mean")
    with pytest.raises(ValueError, match="temperature"): multi_view_info_nce(v, 0.0)
    with pytest.raises(TypeError, match="shuffle"): ShuffledGroupWhitening(3, shuffle="yes")
    with pytest.raises(TypeError, match="loss option"): whitenedcse_step(0.05, 3, chunk=8)
    with pytest.raises(ValueError, match="num_pos"): whitenedcse_step(0.05, 1)

def test_default_num_groups_follows_the_official_width():
    assert (default_num_groups(768), default_num_groups(384), default_num_groups(128), default_num_groups(7)) == (128, 64, 16, 1)

# ---- the trainer -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from contrastlab.sentence import sentence_protocol, sentence_data
    p = sentence_protocol("ci", epochs=1)
    return p, sentence_data(p)

def test_train_whitenedcse_is_train_sentences_with_the_step(tiny):
    from contrastlab.sentence import train_sentences
    p, data = tiny
    m, h = train_whitenedcse(data, p, 3, n_samples=192)
    ref, _ = train_sentences(data, p, 3, whitenedcse_step(p.temperature, 3, seed=3), n_samples=192)
    x = data["train"][:5]
    assert m.embed(x).shape == (5, m.dim) and len(h.epochs["loss"]) == 1
    torch.testing.assert_close(m.embed(x), ref.embed(x), rtol=0, atol=0)       # same seed, same step: the same model
    ab, _ = train_whitenedcse(data, p, 3, n_samples=192, whitening=False)
    assert not torch.allclose(ab.embed(x), m.embed(x))                          # the ablation trains differently

def test_train_whitenedcse_rejects_bad_knobs(tiny):
    p, data = tiny
    with pytest.raises(ValueError, match="temperature"): train_whitenedcse(data, p, 0, temperature=-1.0)
    with pytest.raises(ValueError, match="num_pos"): train_whitenedcse(data, p, 0, num_pos=1)
    with pytest.raises(TypeError, match="whitening"): train_whitenedcse(data, p, 0, whitening="no")
    with pytest.raises(TypeError, match="protocol"): train_whitenedcse(data, dict(epochs=1), 0)
