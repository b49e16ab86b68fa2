"""MoCHi and its MoCo-v2 baseline: a hand-worked case, a float64 reference, parity of the queue loss with lightly's
`NTXentLoss(memory_bank_size=...)`, the properties of the mixing, bad inputs, and the trainers' interface."""
import math, sys
from pathlib import Path
import pytest, torch
from contrastlab.core import generator
from contrastlab.losses import normalize
from contrastlab.zoo.mochi import (moco_loss, mochi_loss, hard_negative_mixing, mixed_similarities, MoCo, MoCoLoss, MoCHiLoss,
                                   train_moco_v2, train_mochi, negative_hardness, hardness_callback)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=generator(seed), dtype=dtype)


# ---------------------------------------------------------------- hand-worked

def test_hand_worked_moco_and_mochi():
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64); queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    # MoCo, τ = 1: positive 1, negatives 0 and −1
    want = -1 + math.log(math.e + 1 + math.exp(-1))
    assert abs(moco_loss(q, q, queue, 1.0).item() - want) < 1e-12
    # MoCHi(N=1, s=1, s′=1): the hardest negative is (0, 1); the pair mix of it with itself is itself (cos 0);
    # the query mix β q + (1 − β)(0, 1), normalised, has cos β / sqrt(β² + (1 − β)²) with the query
    det = {}
    got = mochi_loss(q, q, queue, 1.0, n_hard=1, s=1, s_prime=1, beta_max=0.5, generator=0, details=det)
    assert det["hard_index"].tolist() == [[0]] and det["pair_index"].tolist() == [[[0, 0]]]
    b = det["beta"].item(); assert 0 <= b < 0.5
    c = b / math.sqrt(b * b + (1 - b) ** 2)
    assert abs(got.item() - (-1 + math.log(math.e + 1 + math.exp(-1) + 1 + math.exp(c)))) < 1e-12


# ---------------------------------------------------------------- float64 reference

def _reference_mochi(q, k, queue, tau, det):
    "Slow, obviously-correct MoCHi: the mixes built one by one from the recorded draws (detached), the loss summed by hand."
    total = 0.0
    for b in range(q.shape[0]):
        qb = q[b] / q[b].norm(); kb = k[b] / k[b].norm()
        cands = [queue[j] / queue[j].norm() for j in range(queue.shape[0])]
        for (i, j), a in zip(det["pair_index"][b].tolist(), det["alpha"][b].tolist()):
            h = a * cands[i].detach() + (1 - a) * cands[j].detach(); cands.append(h / h.norm())
        for j, be in zip(det["partner_index"][b].tolist(), det["beta"][b].tolist()):
            h = be * qb.detach() + (1 - be) * cands[j].detach(); cands.append(h / h.norm())
        logits = [torch.dot(qb, kb) / tau] + [torch.dot(qb, c) / tau for c in cands]
        total = total - logits[0] + torch.log(sum(torch.exp(l) for l in logits))
    return total / q.shape[0]


def test_float64_reference_values_and_gradients():
    q = _rand(6, 5, seed=1).requires_grad_(); k = _rand(6, 5, seed=2).requires_grad_(); queue = _rand(15, 5, seed=3)
    det = {}
    ours = mochi_loss(q, k, queue, 0.3, n_hard=5, s=7, s_prime=4, beta_max=0.4, generator=11, details=det)
    ref = _reference_mochi(q, k, queue, 0.3, det)
    assert abs(ours.item() - ref.item()) < 1e-10
    for a, b in zip(torch.autograd.grad(ours, (q, k)), torch.autograd.grad(ref, (q, k))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # and the hardest-N sets the draws came from are the true top-5 per query
    sim = normalize(q.detach()) @ normalize(queue).T
    brute = torch.tensor([sorted(sorted(range(15), key=lambda j: -sim[b, j].item())[:5]) for b in range(6)])
    assert torch.equal(det["hard_index"], brute)


def test_logit_space_equals_building_the_mixes():
    q = _rand(9, 6, seed=4).requires_grad_(); k = _rand(9, 6, seed=5); queue = _rand(30, 6, seed=6)
    fast = mochi_loss(q, k, queue, 0.2, 8, 10, 5, 0.5, generator=2)
    built = moco_loss(q, k, queue, 0.2, extra=hard_negative_mixing(q, queue, 8, 10, 5, 0.5, generator=2))
    assert abs(fast.item() - built.item()) < 1e-12
    torch.testing.assert_close(torch.autograd.grad(fast, q)[0], torch.autograd.grad(built, q)[0], rtol=1e-10, atol=1e-12)
    q2, k2, big = _rand(3, 6, seed=7).requires_grad_(), _rand(3, 6, seed=8), _rand(200, 6, seed=9)   # a large queue: the pairs' dots path
    fast = mochi_loss(q2, k2, big, 0.2, 8, 4, 2, generator=1)
    built = moco_loss(q2, k2, big, 0.2, extra=hard_negative_mixing(q2, big, 8, 4, 2, generator=1))
    assert abs(fast.item() - built.item()) < 1e-12
    torch.testing.assert_close(torch.autograd.grad(fast, q2)[0], torch.autograd.grad(built, q2)[0], rtol=1e-10, atol=1e-12)
    qn, bank = normalize(q.detach()), normalize(queue)
    torch.testing.assert_close(mixed_similarities(qn, qn @ bank.T, bank, 8, 10, 5, 0.5, generator=2),
                               torch.einsum("bd,bsd->bs", qn, hard_negative_mixing(q, queue, 8, 10, 5, 0.5, generator=2)))


# ---------------------------------------------------------------- parity with lightly

def test_moco_loss_matches_lightly_memory_bank_over_steps():
    """lightly's `NTXentLoss(memory_bank_size=(K, D))` = `moco_loss(out0, out1, queue)` followed by enqueueing out1.

    Conventions, documented: lightly's bank starts as K random unit rows (ours: copy them in); it stores the keys normalised
    (ours stores them as given and `moco_loss` normalises the queue — the same values); it reads the bank before adding the
    batch (so do we); at the wrap it truncates the batch instead of wrapping around (identical when K is a multiple of B, as here);
    and it differentiates through both views (so does `moco_loss`: the trainer, not the loss, takes keys without gradient)."""
    from peers import lightly_loss
    B, D, K, tau = 4, 6, 12, 0.2
    crit = lightly_loss().NTXentLoss(temperature=tau, memory_bank_size=(K, D))
    crit.memory_bank.bank = normalize(crit.memory_bank.bank.double())   # its random unit rows, re-normalised in float64
    from contrastlab.losses import FeatureQueue
    ours = FeatureQueue(D, K).double(); ours.enqueue(crit.memory_bank.bank.clone())
    for t in range(5):                                            # more than one pass through the queue
        o0 = _rand(B, D, seed=10 + t).requires_grad_(); o1 = _rand(B, D, seed=20 + t).requires_grad_()
        theirs = crit(o0, o1); g_theirs = torch.autograd.grad(theirs, (o0, o1))
        mine = moco_loss(o0, o1, ours.features.clone(), tau); g_mine = torch.autograd.grad(mine, (o0, o1))
        ours.enqueue(o1.detach())
        assert abs(theirs.item() - mine.item()) < 1e-6 * max(1, abs(theirs.item())), (t, theirs.item(), mine.item())
        for a, b in zip(g_theirs, g_mine): torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(normalize(ours.bank), normalize(crit.memory_bank.bank), rtol=1e-12, atol=1e-12)   # same bank, slot by slot


def test_module_forms():
    q, k, queue = _rand(5, 4, seed=1), _rand(5, 4, seed=2), _rand(10, 4, seed=3)
    assert MoCoLoss(temperature=0.3)(q, k, queue).item() == moco_loss(q, k, queue, 0.3).item()
    assert MoCHiLoss(temperature=0.3, n_hard=3, s=2, s_prime=2, generator=7)(q, k, queue).item() == \
        mochi_loss(q, k, queue, 0.3, 3, 2, 2, generator=7).item()


# ---------------------------------------------------------------- the mixing's properties

def test_mixes_are_unit_detached_in_span_and_beta_bounded():
    q = _rand(6, 7, seed=8).requires_grad_(); queue = _rand(25, 7, seed=9)
    det = {}
    H = hard_negative_mixing(q, queue, 5, 6, 8, beta_max=0.3, generator=generator(4), details=det)
    assert H.shape == (6, 14, 7) and not H.requires_grad
    torch.testing.assert_close(H.norm(dim=-1), torch.ones(6, 14, dtype=torch.float64))
    qn, bn = normalize(q.detach()), normalize(queue)
    assert (det["beta"] >= 0).all() and (det["beta"] < 0.3).all() and (det["alpha"] >= 0).all() and (det["alpha"] <= 1).all()
    for b in range(6):
        hard = set(det["hard_index"][b].tolist())
        assert set(det["pair_index"][b].flatten().tolist()) <= hard and set(det["partner_index"][b].tolist()) <= hard
        for j in range(8):                                       # query mix: weights (a, c) on (q, n), a/(a + c) = β < β_max
            A = torch.stack([qn[b], bn[det["partner_index"][b, j]]], 1)
            a, c = torch.linalg.lstsq(A, H[b, 6 + j].unsqueeze(1)).solution.squeeze(1)
            torch.testing.assert_close(A @ torch.stack([a, c]), H[b, 6 + j])
            assert a > 0 and c > 0 and a / (a + c) < 0.3
            assert abs(a / (a + c) - det["beta"][b, j]) < 1e-10
        for j in range(6):                                       # pair mix: in the span of its pair, convex weights
            i1, i2 = det["pair_index"][b, j]
            if i1 == i2: torch.testing.assert_close(H[b, j], bn[i1]); continue
            A = torch.stack([bn[i1], bn[i2]], 1)
            w = torch.linalg.lstsq(A, H[b, j].unsqueeze(1)).solution.squeeze(1)
            torch.testing.assert_close(A @ w, H[b, j]); assert (w >= -1e-12).all()


def test_hardest_selection_and_hardness():
    q = _rand(4, 8, seed=12); queue = _rand(50, 8, seed=13)
    det = {}
    H = hard_negative_mixing(q, queue, 10, 20, 20, generator=3, details=det)
    sim = normalize(q) @ normalize(queue).T
    top = sim.topk(10, dim=1)
    assert torch.equal(det["hard_index"], top.indices.sort(1).values)
    outside = torch.ones_like(sim, dtype=torch.bool).scatter_(1, top.indices, False)
    assert (sim.masked_fill(outside, float("inf")).min(1).values >= sim.masked_fill(~outside, -float("inf")).max(1).values).all()
    hs = torch.einsum("bd,bsd->bs", normalize(q), H)
    parents = sim.gather(1, det["partner_index"])
    assert (hs[:, 20:] > parents).all()                          # a query mix is harder than its negative (β > 0)
    pi = det["pair_index"]
    lo = torch.minimum(sim.gather(1, pi[..., 0]), sim.gather(1, pi[..., 1]))
    ok = lo > 0                                                   # both parents on the query's side: the mix is at least as hard as the easier one
    assert (hs[:, :20][ok] >= lo[ok] - 1e-12).all()


def test_draws_are_reproducible_and_seeded():
    q, queue = _rand(3, 4, seed=1), _rand(9, 4, seed=2)
    a = hard_negative_mixing(q, queue, 4, 3, 3, generator=5); b = hard_negative_mixing(q, queue, 4, 3, 3, generator=5)
    c = hard_negative_mixing(q, queue, 4, 3, 3, generator=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = generator(0), generator(0)
    assert torch.equal(hard_negative_mixing(q, queue, 4, 3, 3, generator=g1), hard_negative_mixing(q, queue, 4, 3, 3, generator=g2))
    assert hard_negative_mixing(q, queue, 4, 0, 0).shape == (3, 0, 4)
    assert torch.equal(mochi_loss(q, q, queue, 0.2, 4, 0, 0), moco_loss(q, q, queue, 0.2))   # no mixes: MoCo-v2


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("call, message", [
    (lambda q, k, Q: hard_negative_mixing(q, Q, 11, 2, 2), "n_hard must be ≤ 10"),
    (lambda q, k, Q: hard_negative_mixing(q, Q, 0, 2, 2), "n_hard must be ≥ 1"),
    (lambda q, k, Q: hard_negative_mixing(q, Q, 3, -1, 2), "s must be ≥ 0"),
    (lambda q, k, Q: hard_negative_mixing(q, Q, 3, 2, 2.5), "s_prime must be an int"),
    (lambda q, k, Q: hard_negative_mixing(q, Q, 3, 2, 2, beta_max=0.6), "beta_max must lie in (0, 0.5]"),
    (lambda q, k, Q: hard_negative_mixing(q, Q, 3, 2, 2, beta_max=0.0), "beta_max must be > 0"),
    (lambda q, k, Q: hard_negative_mixing(q, Q, 3, 2, 2, generator="x"), "generator must be a torch.Generator, an int seed or None"),
    (lambda q, k, Q: mochi_loss(q, k, Q[:, :3]), "queue must have 4 columns like q, got shape (10, 3)"),
    (lambda q, k, Q: moco_loss(q, k[:2], Q), "q and k must have the same shape"),
    (lambda q, k, Q: moco_loss(q, k, Q, extra=torch.zeros(5, 2, 3, dtype=torch.float64)), "extra must have shape (5, S, 4)"),
    (lambda q, k, Q: moco_loss(q, k, Q, extra=torch.zeros(5, 2, dtype=torch.float64)), "extra must have 3 dimensions"),
    (lambda q, k, Q: mochi_loss(q, k, Q, temperature=0.0), "temperature must be > 0"),
])
def test_bad_inputs(call, message):
    q, k, Q = _rand(5, 4, seed=1), _rand(5, 4, seed=2), _rand(10, 4, seed=3)
    with pytest.raises((ValueError, TypeError)) as e: call(q, k, Q)
    assert message in str(e.value), str(e.value)


# ---------------------------------------------------------------- the trainers

def test_trainers_follow_the_family_interface():
    from contrastlab.protocol import vision_protocol, vision_data
    p = vision_protocol("ci", 0, n_samples=400, epochs=2, batch_size=64)
    data = vision_data(p)
    x = data["x_test"][:32]
    m1, h1 = train_moco_v2(data, p, 0, queue_size=128, callbacks=[hardness_callback(x, n_hard=8)])
    m2, h2 = train_mochi(data, p, 0, queue_size=128, n_hard=16, s=8, s_prime=4, start_epoch=1)
    for m, h in ((m1, h1), (m2, h2)):
        assert isinstance(m, MoCo) and len(h.epochs["loss"]) == 2
        assert m.features(x).shape == (32, 128) and m(x).shape == (32, 64)
        assert m.queue.full
    assert set(h1.epochs) >= {"alignment", "uniformity", "queue_sim", "hardest_sim"}
    key = dict(m1.key_encoder.module.named_parameters()); query = dict(m1.encoder.named_parameters())
    assert not all(torch.equal(key[n], query[n]) for n in query)              # the key encoder lags the query encoder
    hard = negative_hardness(m2, x, n_hard=16, s=8, s_prime=4)
    assert {k: tuple(v.shape) for k, v in hard.items()} == dict(queue=(32, 128), hardest=(32, 16), pair_mix=(32, 8), query_mix=(32, 4), random_mix=(32, 8))
    with pytest.raises(ValueError, match="n_hard must be ≤ 128"): train_mochi(data, p, 0, queue_size=128, n_hard=200)
    with pytest.raises(ValueError, match="queue_size"): train_moco_v2(data, p, 0, queue_size=32)
    with pytest.raises(TypeError, match="unknown override"): train_moco_v2(data, p, 0, optimizer="sgd")
