"""MultiCSR stage 3 (Wang et al. 2024): the false-negative mask, hand-worked cases, a slow float64 re-implementation of the masked loss
(values and gradients, with and without hard negatives), parity of `official=True` with a transcription of the official training
objective, stage 2's `filter_triples`, the false-negative counts against brute force and simulation, and the trainer."""
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from contrastlab.losses import cross_view_loss
from contrastlab.zoo.multicsr import (false_negative_mask, multicsr_candidates, multicsr_loss, MultiCSRLoss, filter_triples,
                                      frozen_neighbour_counts, group_neighbour_counts, in_batch_false_negatives, multicsr_step)

def _rand(b, d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, d, dtype=torch.float64, generator=g)).requires_grad_()

def _clustered_frozen(b, seed, noise=0.05):
    "Frozen embeddings in groups of two near-duplicates (cosine ≈ 0.99) and otherwise random directions in 6-D."
    g = torch.Generator().manual_seed(seed)
    base = torch.randn((b + 1) // 2, 6, dtype=torch.float64, generator=g).repeat_interleave(2, 0)[:b]
    return base + noise * torch.randn(b, 6, dtype=torch.float64, generator=g)

def _slow(z1, z2, fr, phi, tau, fpos=None, hard=None, fhard=None):
    "Row by row: −s_ii/τ + log(e^{s_ii/τ} + Σ over candidates j ≠ i (and every hard negative) whose frozen cosine is ≤ φ)."
    n = lambda v: v.double() / v.double().norm(dim=1, keepdim=True)
    a, p = n(z1), n(z2); fa = n(fr); fp = fa if fpos is None else n(fpos)
    cand, fc = [p], [fp]
    if hard is not None: cand.append(n(hard)); fc.append(n(fhard))
    cand, fc = torch.cat(cand), torch.cat(fc)
    total = 0.0
    for i in range(len(a)):
        pos = (a[i] * p[i]).sum() / tau
        terms = [torch.exp(pos)]
        for j in range(len(cand)):
            if j == i: continue
            if float((fa[i] * fc[j]).sum()) > phi: continue                       # a false negative: left out
            terms.append(torch.exp((a[i] * cand[j]).sum() / tau))
        total = total - pos + torch.log(sum(terms))
    return total / len(a)

def _official(z1, z2, fr, phi, tau, fpos=None, hard=None, fhard=None):
    "A transcription of the official cl_masked_forward objective: cos/τ logits, weights 0 where the frozen cos/τ exceeds φ/τ (the "
    "positive restored to 1), softmax of logits × weights, element-wise BCE against the one-hot target, mean over all entries."
    sim = lambda x, y: F.cosine_similarity(x.unsqueeze(1), y.unsqueeze(0), dim=-1) / tau
    fpos = fr if fpos is None else fpos
    cos = sim(z1, z2); cos_m = sim(fr, fpos)
    if hard is not None: cos = torch.cat([cos, sim(z1, hard)], 1); cos_m = torch.cat([cos_m, sim(fr, fhard)], 1)
    b = len(z1)
    labels = torch.cat([torch.eye(b, dtype=cos.dtype), torch.zeros(b, cos.shape[1] - b, dtype=cos.dtype)], 1)
    w = torch.where(cos_m > phi / tau, 0, 1).to(cos.dtype)
    restore = torch.eye(b, dtype=cos.dtype) - torch.diag_embed(torch.diag(w[:, :b]))
    w = w + torch.cat([restore, torch.zeros(b, cos.shape[1] - b, dtype=cos.dtype)], 1)
    p = torch.softmax(cos * w, -1)
    return (-(labels * torch.log(p) + (1 - labels) * torch.log(1 - p))).mean()

def _close(ours, ref, inputs, tol=1e-9):
    assert abs(ours.item() - ref.item()) <= tol * max(1.0, abs(ref.item())), (ours.item(), ref.item())
    for a, b in zip(torch.autograd.grad(ours, inputs, retain_graph=True), torch.autograd.grad(ref, inputs, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)

# ---- the mask -------------------------------------------------------------------------------------------------
def test_mask_hand_worked():
    f = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64), dim=1)
    s = f @ f.T                                                                     # s01 = 1/√1.01 ≈ 0.995
    assert false_negative_mask(s, 0.95).tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert not false_negative_mask(s, 0.996).any()
    assert false_negative_mask(s, 0.95, positives=None).diagonal().all()
    idx = torch.tensor([1, -1, 2])                                                  # anchor 0's positive is column 1: not masked
    assert false_negative_mask(s, 0.95, positives=idx).tolist() == [[True, False, False], [True, True, False], [False, False, False]]

def test_mask_is_strict_and_rectangular():
    s = torch.tensor([[1.0, 0.95, 0.96, 0.2], [0.95, 1.0, 0.1, 0.97]])
    assert false_negative_mask(s, 0.95).tolist() == [[False, False, True, False], [False, False, False, True]]

def test_mask_bad_inputs():
    s = torch.eye(3)
    for bad in (1.01, -2, float("nan"), "0.9", True):
        with pytest.raises(ValueError, match="phi"): false_negative_mask(s, bad)
    with pytest.raises(ValueError, match="frozen_sims"): false_negative_mask(torch.ones(3), 0.9)
    with pytest.raises(ValueError, match="positives"): false_negative_mask(s, 0.9, positives="rows")
    with pytest.raises(ValueError, match="positives"): false_negative_mask(s, 0.9, positives=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="positives"): false_negative_mask(s, 0.9, positives=torch.tensor([0, 1, 3]))

# ---- the loss: hand-worked, slow reference, official parity ---------------------------------------------------
def test_loss_hand_worked():
    f = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64), dim=1)
    c = float(f[0] @ f[1])
    masked = 2 * (-1 + math.log(math.e + 1)) + (-1 + math.log(math.e + 2))         # τ = 1: rows 0 and 1 lose each other
    plain = 2 * (-1 + math.log(math.e + math.exp(c) + 1)) + (-1 + math.log(math.e + 2))
    assert math.isclose(multicsr_loss(f, f, f, 0.95, 1.0).item(), masked / 3, rel_tol=1e-12)
    assert math.isclose(multicsr_loss(f, f, f, 1.0, 1.0).item(), plain / 3, rel_tol=1e-12)

@pytest.mark.parametrize("b,tau,phi,scale", [(2, 1.0, 0.9, 1.0), (7, 0.05, 0.95, 3.0), (10, 0.2, 0.5, 0.01), (9, 0.1, -1.0, 1.0)])
def test_loss_against_the_slow_formula(b, tau, phi, scale):
    z1, z2 = _rand(b, 4, b, scale), _rand(b, 4, b + 100, scale)
    fr = _clustered_frozen(b, b)
    _close(multicsr_loss(z1, z2, fr, phi, tau), _slow(z1, z2, fr, phi, tau), (z1, z2))

def test_loss_with_hard_negatives_and_distinct_positive_sentences():
    b = 8
    z1, z2, z3 = _rand(b, 5, 1), _rand(b, 5, 2), _rand(b, 5, 3)
    fr, fp, fh = _clustered_frozen(b, 4), _clustered_frozen(b, 4, noise=0.3), _clustered_frozen(b, 5, noise=0.1)
    for phi in (0.9, 0.5):
        kw = dict(frozen_pos=fp, hard=z3, frozen_hard=fh)
        _close(multicsr_loss(z1, z2, fr, phi, 0.1, **kw), _slow(z1, z2, fr, phi, 0.1, fp, z3, fh), (z1, z2, z3))
        sim, mask = multicsr_candidates(z1, z2, fr, phi, **kw)
        assert sim.shape == mask.shape == (b, 2 * b) and not mask[:, :b].diagonal().any()

@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("phi", [0.95, 0.6])
def test_official_objective_matches_the_official_code(phi, hard):
    b = 8
    z1, z2, z3 = _rand(b, 6, 11), _rand(b, 6, 12), _rand(b, 6, 13)
    fr, fp, fh = _clustered_frozen(b, 6), _clustered_frozen(b, 6, noise=0.2), _clustered_frozen(b, 7)
    kw = dict(frozen_pos=fp, hard=z3, frozen_hard=fh) if hard else {}
    ins = (z1, z2, z3) if hard else (z1, z2)
    ref = _official(z1, z2, fr, phi, 0.05, fp if hard else None, z3 if hard else None, fh if hard else None)
    ours = multicsr_loss(z1, z2, fr, phi, 0.05, official=True, **kw)
    _close(ours, ref, ins, tol=1e-9)
    # the official form keeps the zeroed logits in the softmax, so it is not the clean loss (which drops them)
    assert not math.isclose(ours.item(), multicsr_loss(z1, z2, fr, phi, 0.05, **kw).item(), rel_tol=1e-3)

def test_nothing_masked_is_simcse():
    z1, z2 = _rand(12, 8, 21), _rand(12, 8, 22)
    fr = torch.randn(12, 3, dtype=torch.float64)
    st = {}
    loss = multicsr_loss(z1, z2, fr, 1.0, 0.05, stats=st)
    assert st["n_masked"] == 0
    _close(loss, cross_view_loss(z1, z2, 0.05, symmetric=False), (z1, z2), tol=1e-12)

def test_masked_candidates_receive_no_push_and_the_control_does():
    # the mechanism: entries flagged as false negatives get zero gradient through the similarity matrix; without the mask they are pushed
    b = 12
    z1, z2 = _rand(b, 5, 31), _rand(b, 5, 32)
    fr = _clustered_frozen(b, 33)
    sim, mask = multicsr_candidates(z1, z2, fr, 0.9)
    assert mask.sum() >= b // 2
    for phi, pushed in ((0.9, False), (1.0, True)):
        s = sim.detach().clone().requires_grad_()
        from contrastlab.losses import contrastive_loss
        _, m = multicsr_candidates(z1, z2, fr, phi)
        contrastive_loss(s, torch.arange(b), 0.05, exclude=m).backward()
        assert (s.grad[mask].abs().sum() > 0) == pushed

def test_module_equals_function():
    z1, z2, fr = _rand(6, 4, 41), _rand(6, 4, 42), _clustered_frozen(6, 43)
    assert MultiCSRLoss(phi=0.9, temperature=0.1)(z1, z2, fr).item() == multicsr_loss(z1, z2, fr, 0.9, 0.1).item()
    assert MultiCSRLoss(0.9, 0.1, official=True)(z1, z2, fr).item() == multicsr_loss(z1, z2, fr, 0.9, 0.1, official=True).item()

def test_frozen_carries_no_gradient():
    z1, z2 = _rand(6, 4, 51), _rand(6, 4, 52)
    fr = _clustered_frozen(6, 53).requires_grad_()
    multicsr_loss(z1, z2, fr, 0.9, 0.1).backward()
    assert fr.grad is None

def test_loss_bad_inputs_name_the_parameter():
    z1, z2, fr = _rand(4, 3, 61), _rand(4, 3, 62), _clustered_frozen(4, 63)
    with pytest.raises(ValueError, match="temperature"): multicsr_loss(z1, z2, fr, 0.9, 0.0)
    with pytest.raises(ValueError, match="phi"): multicsr_loss(z1, z2, fr, 2.0)
    with pytest.raises(ValueError, match="frozen"): multicsr_loss(z1, z2, fr[:3])
    with pytest.raises(ValueError, match="frozen_pos"): multicsr_loss(z1, z2, fr, frozen_pos=fr[:2])
    with pytest.raises(ValueError, match="frozen_hard"): multicsr_loss(z1, z2, fr, hard=z1.detach())
    with pytest.raises(ValueError, match="hard"): multicsr_loss(z1, z2, fr, frozen_hard=fr)
    with pytest.raises(ValueError, match="reduction"): multicsr_loss(z1, z2, fr, official=True, reduction="sum")
    with pytest.raises(TypeError, match="official"): multicsr_loss(z1, z2, fr, official=1)
    with pytest.raises((ValueError, TypeError)): multicsr_loss(z1, z2[:3], fr)

# ---- stage 2's rule -------------------------------------------------------------------------------------------
def test_filter_triples_hand_worked():
    sc = [[4, 1], [3, 3], [5, 4], [2, 0], [3, 2], [1, 4], [3.5, 2.5], [3.5, 2.6]]
    assert filter_triples(sc).tolist() == [True, False, False, False, True, False, True, False]
    assert filter_triples(sc, gap=2).tolist() == [True] + [False] * 7
    assert filter_triples(sc, pos_min=4, neg_max=1).tolist() == [True] + [False] * 7
    keep, swap = filter_triples(sc, orient=True)
    assert keep.tolist() == [True, False, False, False, True, True, True, False] and swap.tolist() == [False] * 5 + [True, False, False]

def test_filter_triples_bad_inputs():
    with pytest.raises(ValueError, match="scores"): filter_triples([1, 2])
    with pytest.raises(ValueError, match="scores"): filter_triples([[1, float("nan")]])
    with pytest.raises(ValueError, match="gap"): filter_triples([[4, 1]], gap=-1)
    with pytest.raises(TypeError, match="pos_min"): filter_triples([[4, 1]], pos_min="3")
    with pytest.raises(TypeError, match="orient"): filter_triples([[4, 1]], orient="yes")

# ---- counting false negatives ---------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_frozen_counts_against_brute_force(chunk):
    fr = _clustered_frozen(31, 71, noise=0.3).float()
    fn = F.normalize(fr, dim=1); s = fn @ fn.T
    phis = (0.5, 0.9, 0.99)
    got = frozen_neighbour_counts(fr, phis, chunk=chunk)
    for k, phi in enumerate(phis):
        want = [sum(1 for j in range(31) if j != i and float(s[i, j]) > phi) for i in range(31)]
        assert got[k].tolist() == want
    assert frozen_neighbour_counts(fr, 0.9, chunk=chunk).tolist() == got[1].tolist()

def test_group_counts_and_bad_inputs():
    assert group_neighbour_counts(["x", "y", "x", None, "", "x", "y"]).tolist() == [2, 1, 2, 0, 0, 2, 1]
    with pytest.raises(ValueError, match="groups"): group_neighbour_counts([])
    with pytest.raises(ValueError, match="phi"): frozen_neighbour_counts(torch.randn(4, 3), [])
    with pytest.raises(ValueError, match="batch_size"): in_batch_false_negatives(torch.tensor([1, 1, 0]), 4)
    with pytest.raises(ValueError, match="counts"): in_batch_false_negatives(torch.tensor([5, 1, 0]), 2)
    with pytest.raises(TypeError, match="counts"): in_batch_false_negatives(torch.tensor([1.0, 1.0]), 2)

def test_in_batch_expectations_hand_worked_and_simulated():
    r = in_batch_false_negatives(torch.tensor([1, 1, 0, 0]), 2)                     # one pair among four, batches of two
    assert all(math.isclose(r[k], 1 / 6, rel_tol=1e-12) for k in ("per_anchor", "share", "anchors_hit"))
    full = in_batch_false_negatives(torch.tensor([1, 1, 0, 0]), 4)                  # one batch: the pair always meets
    assert math.isclose(full["anchors_hit"], 0.5, rel_tol=1e-12) and math.isclose(full["per_anchor"], 0.5, rel_tol=1e-12)
    rng = np.random.default_rng(0); grp = rng.integers(0, 25, 300); cnt = group_neighbour_counts(grp.tolist())
    for b in (10, 50):
        hit, per = [], []
        for _ in range(200):
            for bt in rng.permutation(300).reshape(-1, b):
                k = (grp[bt][:, None] == grp[bt][None, :]).sum(1) - 1; hit += (k > 0).tolist(); per += k.tolist()
        want = in_batch_false_negatives(cnt, b)
        assert abs(np.mean(hit) - want["anchors_hit"]) < 0.01 and abs(np.mean(per) - want["per_anchor"]) < 0.02 * max(1, want["per_anchor"])

# ---- the step function --------------------------------------------------------------------------------------
def test_step_looks_up_the_frozen_rows_of_the_batch():
    class Views(torch.nn.Module):
        "A stand-in encoder: a fixed embedding per text plus noise (the dropout views)."
        def __init__(self): super().__init__(); self.table = {t: torch.randn(4, dtype=torch.float64) for t in "abcdef"}
        def forward(self, texts): return torch.stack([self.table[t] + 0.1 * torch.randn(4, dtype=torch.float64) for t in texts])
    fr = _clustered_frozen(6, 81)
    step = multicsr_step(fr, 0.9, 0.05)
    m = Views(); batch = dict(idx=torch.tensor([4, 0, 1]), texts=["e", "a", "b"])
    torch.manual_seed(0); got = step(m, batch)
    torch.manual_seed(0); z1, z2 = m(batch["texts"]), m(batch["texts"])
    assert got.item() == multicsr_loss(z1, z2, fr[batch["idx"]], 0.9, 0.05).item()
    with pytest.raises(ValueError, match="phi"): multicsr_step(fr, 3.0)

# ---- the trainer --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from contrastlab.sentence import sentence_protocol, sentence_data
    p = sentence_protocol("ci")
    return p, sentence_data(p)

def test_train_multicsr_with_an_empty_mask_is_simcse(tiny):
    from contrastlab.sentence import train_simcse
    from contrastlab.zoo.multicsr import train_multicsr
    p, data = tiny
    fr = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(n_samples=256, epochs=1)
    m, h = train_multicsr(data, p, 3, frozen=fr, phi=1.0, **kw)                 # no cosine exceeds 1: nothing masked
    ref, _ = train_simcse(data, p, 3, **kw)
    texts = data["train"][:8]
    torch.testing.assert_close(m.embed(texts), ref.embed(texts), rtol=1e-4, atol=1e-4)
    grouped = torch.zeros(256, 16); grouped[:, 0] = 1.0                          # every pair a false negative: only positives remain
    m2, _ = train_multicsr(data, p, 3, frozen=grouped, phi=0.5, **kw)
    assert (m2.embed(texts) - ref.embed(texts)).abs().max() > 1e-3

def test_train_multicsr_rejects_bad_knobs(tiny):
    from contrastlab.zoo.multicsr import train_multicsr
    p, data = tiny
    fr = torch.randn(256, 4)
    with pytest.raises(ValueError, match="phi"): train_multicsr(data, p, 0, frozen=fr, phi=1.5, n_samples=256)
    with pytest.raises(ValueError, match="temperature"): train_multicsr(data, p, 0, frozen=fr, temperature=0, n_samples=256)
    with pytest.raises(ValueError, match="frozen"): train_multicsr(data, p, 0, frozen=fr[:100], n_samples=256)
    with pytest.raises(TypeError, match="protocol"): train_multicsr(data, dict(epochs=1), 0, frozen=fr)
