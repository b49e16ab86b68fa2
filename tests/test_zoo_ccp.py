"""CCP (Wu et al. 2022): the two-language corpus (disjoint words but shared concepts, translations by construction), the
context pairs (same document, inside the window), the loss by hand in float64 (language bank, mixed bank, no bank) and its
gradient, calibration, the step (asymmetric BN reads running statistics), retrieval against an oracle, registration and
validation messages."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from contrastlab.losses import FeatureQueue
from contrastlab.nets import EMATeacher
from contrastlab.registry import get_paper, get_loss
from contrastlab.zoo.ccp import (two_language_corpus, context_pairs, BagEncoder, ccp_loss, language_calibrate, ccp_step, train_ccp,
                                 cross_language_retrieval, _bank)

@pytest.fixture(scope="module")
def corpus():
    return two_language_corpus(n_docs=60, n_concepts=40, n_test=30, seed=2)

def test_corpus_languages_share_only_shared_words(corpus):
    S, L = corpus["sentences"], corpus["language"]
    w0, w1 = set(S[L == 0].flatten().tolist()), set(S[L == 1].flatten().tolist())
    assert all(w < 40 for w in w0 & w1) and all(w < 80 for w in w0) and all(w < 40 or w >= 80 for w in w1)
    assert torch.equal(corpus["test_a"] == corpus["test_b"], corpus["test_a"] < 40)
    assert corpus["vocab_size"] == 120 and corpus["shared"].dtype == torch.bool

def test_corpus_topic_chains_persist():
    c = two_language_corpus(n_docs=400, stay=1.0, seed=0)
    assert (c["topics"] == c["topics"][:, :1]).all()           # stay = 1: one topic per document
    c = two_language_corpus(n_docs=400, stay=0.0, n_topics=16, seed=0)
    assert (c["topics"][:, 1:] != c["topics"][:, :-1]).float().mean() > 0.8

def test_context_pairs_stay_in_the_window():
    ids = dict(sentences=torch.arange(60 * 8).reshape(60, 8, 1).expand(60, 8, 6), language=torch.arange(60) % 2)
    c, x, l = context_pairs(ids, 2000, window=2, g=torch.Generator().manual_seed(0))
    dc, jc, dx, jx = c[:, 0] // 8, c[:, 0] % 8, x[:, 0] // 8, x[:, 0] % 8
    assert torch.equal(dc, dx) and torch.equal(l, dc % 2)
    gap = (jc - jx).abs(); assert ((gap >= 1) & (gap <= 2)).all()
    assert set((jc - jx).tolist()) == {-2, -1, 1, 2} and {0, 7} <= set(jc.tolist())       # both directions, the edges included
    with pytest.raises(ValueError, match="window must be ≤ 7"): context_pairs(ids, 4, window=8)

def _hand(q, k, m, keep, tau):
    qn, kn, mn = (F.normalize(x, dim=-1) for x in (q, k, m))
    rows = []
    for i in range(len(q)):
        lg = torch.cat([(qn[i] * kn[i]).sum()[None], (mn @ qn[i])[keep[i]]]) / tau
        rows.append(torch.logsumexp(lg, 0) - lg[0])
    return torch.stack(rows)

@pytest.mark.parametrize("bank", ["language", "mixed"])
def test_loss_and_gradient_by_hand(bank):
    g = torch.Generator().manual_seed(5)
    q, k, m = (torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True) for n in (4, 4, 7))
    l, ml = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 1, 1, 0, 0])
    keep = [ml == x if bank == "language" else torch.ones(7, dtype=torch.bool) for x in l]
    got, want = ccp_loss(q, k, m, l, ml, 0.2, bank=bank), _hand(q, k, m, keep, 0.2).mean()
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    g1 = torch.autograd.grad(got, (q, k, m)); g2 = torch.autograd.grad(want, (q, k, m))
    for a, b in zip(g1, g2): torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    torch.testing.assert_close(ccp_loss(q, k, m, l, ml, 0.2, bank=bank, reduction="none"), _hand(q, k, m, keep, 0.2), atol=1e-12, rtol=0)

def test_language_bank_drops_only_other_languages():
    g = torch.Generator().manual_seed(1)
    q, k, m = (torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (2, 2, 4))
    same = ccp_loss(q, k, m, torch.tensor([0, 0]), torch.tensor([0, 0, 0, 0]))
    torch.testing.assert_close(same, ccp_loss(q, k, m, bank="mixed"))      # one language: the two banks agree
    assert float(ccp_loss(q, k, m, torch.tensor([0, 0]), torch.tensor([1, 1, 1, 1]))) == pytest.approx(0.0, abs=1e-12)   # no own-language negative

def test_loss_validation():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="needs language"): ccp_loss(q, q, torch.randn(5, 4))
    with pytest.raises(ValueError, match="queue must have 4 columns"): ccp_loss(q, q, torch.randn(5, 3), bank="mixed")
    with pytest.raises(ValueError, match="bank must be one of"): ccp_loss(q, q, bank="both")
    with pytest.raises(ValueError, match="temperature must be > 0"): ccp_loss(q, q, temperature=0.0)
    with pytest.raises(TypeError, match="language must be an integer tensor"): ccp_loss(q, q, torch.randn(5, 4), torch.zeros(3), torch.zeros(5, dtype=torch.long))

def test_calibration_removes_a_language_offset():
    g = torch.Generator().manual_seed(2)
    z, l = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1] * 4)
    moved = z + 4.0 * l[:, None].double() * torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(language_calibrate(moved, l), language_calibrate(z, l))
    with pytest.raises(ValueError, match="one entry per row"): language_calibrate(z, l[:3])

def test_step_uses_running_statistics_in_the_key_branch(corpus):
    torch.manual_seed(0); model = BagEncoder(corpus["vocab_size"], 8, 4); teacher = EMATeacher(model, 0.9)
    queue, opt = FeatureQueue(4, 16, normalize_entries=True), torch.optim.Adam(model.parameters(), 1e-2)
    c, x, l = context_pairs(corpus, 8, g=torch.Generator().manual_seed(0))
    ccp_step(model, teacher, queue, c, x, l, opt, asymmetric_bn=True)
    assert not teacher.training and len(queue) == 8 and torch.equal(_bank(queue)[1], l)
    before = [p.detach().clone() for p in model.parameters()]
    ccp_step(model, teacher, queue, c, x, l, opt, asymmetric_bn=False)
    assert teacher.training and len(queue) == 16 and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

def test_bank_order_follows_the_features():
    qu = FeatureQueue(2, 3)
    for i in range(5): qu.enqueue(torch.full((1, 2), float(i)), torch.tensor([i]))
    f, lab = _bank(qu)
    assert f[:, 0].tolist() == [2.0, 3.0, 4.0] and lab.tolist() == [2, 3, 4]

def test_retrieval_oracle_and_training(corpus):
    class Oracle(nn.Module):
        def __init__(s): super().__init__(); s.w = nn.Parameter(torch.zeros(1))
        def forward(s, x): return F.one_hot(torch.where(x >= 80, x - 80, torch.where(x >= 40, x - 40, x)), 40).float().sum(1)
    r = cross_language_retrieval(Oracle(), corpus, calibrate=False)
    assert r["r1"] == 1.0 and r["mrr"] == 1.0
    m = train_ccp(corpus, steps=5, batch_size=8, queue_size=16, seed=0)
    assert not m.training and set(cross_language_retrieval(m, corpus)) == {"mrr", "r1", "topic", "language_gap"}
    m2 = train_ccp(corpus, steps=5, batch_size=8, queue_size=16, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))     # seeded

def test_encoder_validation():
    enc = BagEncoder(10)
    with pytest.raises(ValueError, match=r"word ids in \[0, 10\)"): enc(torch.tensor([[3, 10]]))
    with pytest.raises(TypeError, match="integer tensor"): enc(torch.zeros(2, 3))

def test_registration():
    p = get_paper("ccp")
    assert p.family == "retrieval" and p.losses == ("ccp_loss",) and get_loss("ccp_loss").paper == "ccp"
    assert {c.metric for c in p.claims} == {"ccp_mrr - untrained_mrr", "ccp_mrr - mixed_mrr", "ccp_mrr - symmetric_mrr", "ccp_mrr - ccp_raw_mrr"}
