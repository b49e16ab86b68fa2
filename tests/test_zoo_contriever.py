"""Contriever (Izacard et al. 2022): independent random crops and word deletion (seeded, hand-worked lengths), the loss
(hand-worked, a slow float64 loop, the official MoCo construction: [q·k⁺, q·queue] cross-entropy), the queue and the
momentum encoder in the training step, seeded reproducibility of the trainer, the GCIDE corpus, and validation messages."""
import math
import numpy as np
import pytest
import torch
from contrastlab.nets import EMATeacher
from contrastlab.losses import FeatureQueue
from contrastlab.data.sentences import WordTokenizer
from contrastlab.sentence import sentence_protocol
from contrastlab.registry import get_paper, get_loss
from contrastlab.zoo.contriever import (random_crop, delete_words, contriever_views, contriever_loss, ContrieverLoss, contriever_queue,
                                        contriever_step, train_contriever, gcide_corpus, dense_retrieval)

WORDS = [f"w{i}" for i in range(20)]

class FixedRng(np.random.Generator):
    "A numpy Generator whose uniform, integers and random draws are scripted (for hand-worked cases)."
    def __init__(self, uniform=(), integers=(), random=None):
        super().__init__(np.random.PCG64(0)); self._u, self._i, self._r = list(uniform), list(integers), random
    def uniform(self, lo, hi): return self._u.pop(0)
    def integers(self, lo, hi): v = self._i.pop(0); assert lo <= v < hi, (lo, v, hi); return v
    def random(self, n): return np.asarray(self._r[:n])

# ---- crops and deletion -------------------------------------------------------------------------------------------
def test_hand_worked_crop():
    # 20 words, r = 0.25 → 5 words, placed at start 3 → w3..w7
    assert random_crop(WORDS, FixedRng(uniform=[0.25], integers=[3])) == ["w3", "w4", "w5", "w6", "w7"]
    # r = 0.5 on 3 words → ⌊1.5⌋ = 1 word; the start may go up to n − length = 2
    assert random_crop(["a", "b", "c"], FixedRng(uniform=[0.5], integers=[2])) == ["c"]
    # r = 0.1 on 4 words → ⌊0.4⌋ = 0 → at least one word
    assert random_crop(["a", "b", "c", "d"], FixedRng(uniform=[0.1], integers=[0])) == ["a"]

@pytest.mark.parametrize("lo,hi", [(0.1, 0.5), (0.05, 0.5), (0.3, 0.3), (1.0, 1.0)])
def test_seeded_crop_lengths_lie_in_the_ratio_range_and_are_contiguous(lo, hi):
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(500):
        c = random_crop(WORDS, rng, lo, hi)
        i = WORDS.index(c[0])
        assert c == WORDS[i:i + len(c)]
        lengths.append(len(c))
    assert max(1, int(20 * lo)) <= min(lengths) and max(lengths) <= int(20 * hi)
    if hi > lo: assert len(set(lengths)) > 1
    again = np.random.default_rng(0)
    assert random_crop(WORDS, again, lo, hi) == random_crop(WORDS, np.random.default_rng(0), lo, hi)

def test_crop_starts_cover_every_position():
    rng = np.random.default_rng(1)
    starts = {WORDS.index(random_crop(WORDS, rng, 0.25, 0.25)[0]) for _ in range(2000)}
    assert starts == set(range(0, 16))                            # length 5: starts 0 … 15

def test_hand_worked_deletion():
    assert delete_words(["a", "b", "c", "d"], FixedRng(random=[0.5, 0.05, 0.2, 0.09]), p=0.1) == ["a", "c"]
    assert delete_words(["a", "b"], FixedRng(random=[0.01, 0.02]), p=0.1) == ["a"]       # all deleted: the first word stays
    assert delete_words(WORDS, np.random.default_rng(0), p=0.0) == WORDS

def test_seeded_deletion_rate():
    kept = [len(delete_words(WORDS, np.random.default_rng(s), p=0.1)) for s in range(3000)]
    assert abs(np.mean(kept) / 20 - 0.9) < 0.01

def test_views_are_independent_crops_of_the_same_document_and_seeded():
    doc = " ".join(WORDS)
    q, k = contriever_views([doc] * 200, np.random.default_rng(0))
    assert len(q) == len(k) == 200 and q != k
    assert all(set(v.split()) <= set(WORDS) for v in q + k)
    assert contriever_views([doc, "x y"], np.random.default_rng(3)) == contriever_views([doc, "x y"], np.random.default_rng(3))

def test_crop_and_deletion_validate():
    with pytest.raises(ValueError, match="ratio_min must not exceed ratio_max"): random_crop(WORDS, np.random.default_rng(0), 0.6, 0.4)
    with pytest.raises(ValueError, match="ratio_min"): random_crop(WORDS, np.random.default_rng(0), 0.0, 0.4)
    with pytest.raises(TypeError, match="numpy Generator"): random_crop(WORDS, 0)
    with pytest.raises(TypeError, match="list of words"): random_crop("w0 w1", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least one word"): delete_words([], np.random.default_rng(0))
    with pytest.raises(ValueError, match="p"): delete_words(WORDS, np.random.default_rng(0), p=1.0)
    with pytest.raises(ValueError, match=r"texts\[1\] has no words"): contriever_views(["a b", " "], np.random.default_rng(0))
    with pytest.raises(TypeError, match="list of strings"): contriever_views("a b", np.random.default_rng(0))

# ---- the loss ----------------------------------------------------------------------------------------------------
def slow_loss(q, k, queue, tau, in_batch=False, cosine=True):
    n = (lambda x: x / x.norm()) if cosine else (lambda x: x)
    total = 0.0
    for b in range(len(q)):
        cands = ([k[j] for j in range(len(k))] if in_batch else [k[b]]) + ([] if queue is None else [queue[j] for j in range(len(queue))])
        logits = torch.stack([(n(q[b]) * n(c)).sum() / tau for c in cands])
        total = total + torch.logsumexp(logits, 0) - (n(q[b]) * n(k[b])).sum() / tau
    return total / len(q)

def test_hand_worked_loss():
    q, k, Q = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0], [-3.0, 0.0]])
    assert contriever_loss(q, k, Q, 1.0).item() == pytest.approx(-math.log(math.e / (math.e + 1 + math.exp(-1))))
    assert contriever_loss(q, k, Q, 0.5).item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2))))
    assert contriever_loss(q, k, Q, 1.0, cosine=False).item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-3))))

@pytest.mark.parametrize("in_batch,with_queue,cosine", [(False, True, True), (True, True, True), (True, False, True), (False, True, False)])
def test_loss_matches_the_slow_float64_loop(in_batch, with_queue, cosine):
    g = torch.Generator().manual_seed(0)
    q, k, Q = (torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True) for n in (5, 5, 7))
    queue = Q if with_queue else None
    ours = contriever_loss(q, k, queue, 0.05 if cosine else 2.0, in_batch=in_batch, cosine=cosine)
    ref = slow_loss(q, k, queue, 0.05 if cosine else 2.0, in_batch, cosine)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    ins = (q, k, Q) if with_queue else (q, k)
    for a, b in zip(torch.autograd.grad(ours, ins), torch.autograd.grad(ref, ins)): torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

def test_loss_is_the_official_moco_construction():
    "Cross-entropy of [q·k⁺, q·queueᵀ]/τ with target 0 (official MoCo._compute_logits), here on unit rows."
    g = torch.Generator().manual_seed(1)
    q, k, Q = (torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1) for n in (8, 8, 32))
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ Q.T], 1) / 0.05
    official = torch.nn.functional.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    assert contriever_loss(q, k, Q, 0.05).item() == pytest.approx(official.item(), rel=1e-12)
    assert ContrieverLoss(temperature=0.05)(q, k, Q).item() == pytest.approx(official.item(), rel=1e-12)

def test_loss_validates():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="no negatives"): contriever_loss(q, q, None)
    with pytest.raises(ValueError, match="queue must have 4 columns"): contriever_loss(q, q, torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"): contriever_loss(q, q, torch.randn(5, 4), 0.0)
    with pytest.raises(TypeError, match="in_batch must be a bool"): contriever_loss(q, q, torch.randn(5, 4), in_batch=1)
    with pytest.raises((ValueError, TypeError), match="k"): contriever_loss(q, torch.randn(2, 4), torch.randn(5, 4))

def test_registered():
    p = get_paper("contriever")
    assert p.family == "retrieval" and p.losses == ("contriever_loss",) and get_loss("contriever_loss").paper == "contriever"
    assert p.claims and p.deviations

# ---- queue, momentum encoder, step ---------------------------------------------------------------------------------
class Bag(torch.nn.Module):
    "A tiny text encoder: mean of word embeddings over a fixed vocabulary (deterministic, no dropout)."
    def __init__(self, vocab=WORDS + ["x", "y"], dim=6):
        super().__init__(); self.index = {w: i for i, w in enumerate(vocab)}; self.emb = torch.nn.EmbeddingBag(len(vocab), dim); self.dim = dim
    def forward(self, texts):
        ids = [torch.tensor([self.index[w] for w in t.split()]) for t in texts]
        return self.emb(torch.cat(ids), torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0))

def test_queue_starts_full_of_random_unit_keys_and_is_fifo():
    qu = contriever_queue(5, 8, seed=0)
    assert isinstance(qu, FeatureQueue) and len(qu) == 8 and qu.full
    torch.testing.assert_close(qu.features.norm(dim=1), torch.ones(8))
    assert torch.equal(contriever_queue(5, 8, seed=0).features, qu.features) and not torch.equal(contriever_queue(5, 8, seed=1).features, qu.features)
    first = qu.features.clone()
    qu.enqueue(torch.ones(3, 5))
    assert torch.equal(qu.features[:5], first[3:]) and torch.equal(qu.features[5:], torch.ones(3, 5))

def test_step_updates_the_key_encoder_by_momentum_and_enqueues_normalised_keys():
    torch.manual_seed(0)
    model = Bag(); teacher = EMATeacher(model, momentum=0.9); qu = contriever_queue(6, 12, seed=0)
    step = contriever_step(teacher, qu, seed=0)
    with torch.no_grad(): model.emb.weight.add_(1.0)                # the student moves; the teacher still holds the old weights
    old = teacher.module.emb.weight.clone(); before = qu.features.clone()
    loss = step(model, dict(texts=[" ".join(WORDS)] * 4))
    assert loss.ndim == 0 and loss.requires_grad
    torch.testing.assert_close(teacher.module.emb.weight, 0.9 * old + 0.1 * model.emb.weight.detach())
    assert not teacher.module.emb.weight.requires_grad
    torch.testing.assert_close(qu.features[-4:].norm(dim=1), torch.ones(4))
    assert torch.equal(qu.features[:-4], before[4:])
    loss.backward()
    assert model.emb.weight.grad is not None and teacher.module.emb.weight.grad is None

def test_step_without_queue_uses_in_batch_keys():
    torch.manual_seed(0)
    model = Bag(); step = contriever_step(EMATeacher(model, 0.0), None, seed=0)
    assert step(model, dict(texts=[" ".join(WORDS), "x y x", "w1 w2 w3"])).ndim == 0

def test_step_validates():
    m = Bag()
    with pytest.raises(TypeError, match="EMATeacher"): contriever_step(m, None)
    with pytest.raises(TypeError, match="FeatureQueue"): contriever_step(EMATeacher(m), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="p_delete"): contriever_step(EMATeacher(m), None, p_delete=1.5)

# ---- corpus, trainer, evaluation -------------------------------------------------------------------------------------
ROWS = [dict(headword=h, definition=f"{h} sense {i} of the word {h} in use") for h in ("bank", "cat", "dog", "eel", "fox", "gnu") for i in range(4)]

def test_corpus_holds_out_one_definition_per_query():
    c = gcide_corpus(5, 3, seed=0, rows=ROWS)
    assert len(c["documents"]) == 5 and len(c["queries"]) == 3 and c["relevant"].dtype == torch.long
    for qtext, j in zip(c["queries"], c["relevant"].tolist()):
        assert qtext.split()[0] == c["headwords"][j] and qtext not in c["documents"][j]
        assert c["documents"][j].startswith(c["headwords"][j] + ". ")
    assert gcide_corpus(5, 3, seed=0, rows=ROWS)["queries"] == c["queries"]
    with pytest.raises(ValueError, match="only 6 entries"): gcide_corpus(7, 1, rows=ROWS)
    with pytest.raises(ValueError, match="n_queries"): gcide_corpus(3, 4, rows=ROWS)

def test_dense_retrieval_of_a_perfect_embedder():
    c = gcide_corpus(6, 6, seed=0, rows=ROWS)
    heads = c["headwords"]
    def oracle(texts):   # one-hot of the headword named in the text
        return torch.stack([torch.eye(len(heads))[next(i for i, h in enumerate(heads) if h in t.split() or t.startswith(h + "."))] for t in texts])
    m = dense_retrieval(oracle, c, k=6)
    assert m == {"ndcg6": 1.0, "r6": 1.0}
    with pytest.raises(TypeError, match="gcide_corpus"): dense_retrieval(oracle, dict(documents=[]))

def _tiny_setup():
    docs = [f"doc {i} " + " ".join(f"w{(i * 7 + j) % 20}" for j in range(12)) for i in range(128)]
    p = sentence_protocol("ci", 0, n_samples=128, epochs=1, batch_size=32)
    return dict(train=docs, tokenizer=WordTokenizer(docs, max_len=16)), p

def test_training_is_seeded_and_reproducible():
    data, p = _tiny_setup()
    (m1, h1), (m2, h2) = (train_contriever(data, p, 3, queue_size=32) for _ in range(2))
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()): assert torch.equal(a, b)
    assert list(h1.epochs["loss"]) == list(h2.epochs["loss"])
    m3, _ = train_contriever(data, p, 4, queue_size=32)
    assert any(not torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values()))
    assert len(h1.queue) == 32 and h1.teacher.momentum == 0.99

def test_trainer_validates():
    data, p = _tiny_setup()
    with pytest.raises(TypeError, match="SentenceProtocol"): train_contriever(data, object(), 0)
    with pytest.raises(ValueError, match="momentum"): train_contriever(data, p, 0, momentum=1.5)

# ---- parity with a public implementation of the queue loss -----------------------------------------------------------
def test_loss_and_queue_match_lightly_memory_bank_over_steps():
    """lightly's `NTXentLoss(memory_bank_size=(K, D))` scores each query against its own key and the bank, then adds the keys:
    `contriever_loss(q, k, queue)` (cosine, no in-batch keys) followed by `queue.enqueue(normalize(k))`, as `contriever_step` does.
    Conventions: lightly's bank starts as K random unit rows (copied into ours, as `contriever_queue` starts from random unit rows);
    K is a multiple of B (lightly truncates at the wrap where a FeatureQueue wraps around)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    peers = pytest.importorskip("peers")
    try: lightly = peers.lightly_loss()
    except Exception as e: pytest.skip(f"lightly is not available: {e}")
    from contrastlab.losses import normalize
    B, D, K, tau = 4, 6, 12, 0.05
    crit = lightly.NTXentLoss(temperature=tau, memory_bank_size=(K, D))
    crit.memory_bank.bank = normalize(crit.memory_bank.bank.double())
    ours = FeatureQueue(D, K).double(); ours.enqueue(crit.memory_bank.bank.clone())
    g = torch.Generator().manual_seed(0)
    for t in range(5):
        q = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True); k = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
        theirs = crit(q, k); g_theirs = torch.autograd.grad(theirs, (q, k))
        mine = contriever_loss(q, k, ours.features.clone(), tau); g_mine = torch.autograd.grad(mine, (q, k))
        ours.enqueue(normalize(k.detach()))
        assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
        for a, b in zip(g_theirs, g_mine): torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
