"""CoCoSoDa (Shi et al. 2023): the standard-library corpus (docstrings removed, one pair per query), tokens and kinds, the four
soft augmentations (rates, kinds, lengths, seeds), the six-term loss (its in-batch InfoNCE limit, a float64 loop with queues, the
official logits' construction), the queues and the momentum encoder inside the step, the rankings' MRR, and validation messages."""
import math
import numpy as np
import pytest
import torch
from contrastlab.losses import cross_view_loss, FeatureQueue
from contrastlab.nets import EMATeacher
from contrastlab.sentence import sentence_protocol
from contrastlab.registry import get_paper, get_loss
from contrastlab.zoo.cocosoda import (first_sentence, strip_docstring, code_search_pairs, code_tokens, soda_vocabulary, soft_augment,
                                      SODA_MODES, QUEUE_NAMES, cocosoda_loss, CocosodaLoss, cocosoda_queues, cocosoda_step,
                                      inbatch_code_step, train_cocosoda, train_code_inbatch, ranking_mrr, code_search)

PAIRS = code_search_pairs(["textwrap", "colorsys", "fnmatch", "shlex", "bisect", "heapq", "glob"])

# ---- corpus --------------------------------------------------------------------------------------------------------
def test_corpus_has_no_docstring_in_its_code_and_distinct_queries():
    assert len(PAIRS) >= 20
    assert len({p["query"].lower() for p in PAIRS}) == len(PAIRS)
    for p in PAIRS:
        assert len(p["query"].split()) >= 4 and p["query"] not in p["code"]
        compile(p["code"], p["name"], "exec")                       # valid Python after the docstring is gone

def test_first_sentence_and_strip_docstring_hand_worked():
    assert first_sentence("Compute x. Then y.") == "Compute x."
    assert first_sentence("  Many\n  lines here\n\n  Rest.") == "Many lines here"
    assert strip_docstring("def f(a):\n    'Doc.'\n    return a  # note") == "def f(a):\n    return a"
    assert strip_docstring("    async def g():\n        '''Doc.'''\n") == "async def g():\n    pass"
    with pytest.raises(ValueError, match="exactly one function"): strip_docstring("def a(): pass\ndef b(): pass")

def test_missing_modules_are_skipped_with_their_names():
    with pytest.warns(UserWarning, match="no_such_module_xyz"):
        pairs = code_search_pairs(["textwrap", "no_such_module_xyz"])
    assert pairs
    with pytest.raises(ValueError, match="no documented function"): code_search_pairs(["textwrap"], min_words=500)

# ---- tokens and augmentation -----------------------------------------------------------------------------------------
def test_code_tokens_kinds():
    toks, kinds = code_tokens("if x >= 10:\n    y = 'a'  # c\n")
    assert toks == ["if", "x", ">=", "10", ":", "y", "=", "'a'"]
    assert kinds == ["keyword", "name", "operator", "number", "operator", "name", "operator", "string"]
    with pytest.raises(ValueError, match="tokenized"): code_tokens("x = (1,\n")

TOKS, KINDS = code_tokens(PAIRS[0]["code"])
VOC = soda_vocabulary([code_tokens(p["code"])[0] for p in PAIRS], [code_tokens(p["code"])[1] for p in PAIRS])

def test_vocabulary_by_kind():
    assert set(VOC) >= {"keyword", "name", "operator", "*"}
    assert set(VOC["*"]) == set().union(*(set(v) for k, v in VOC.items() if k != "*"))
    assert "def" in VOC["keyword"] and "def" not in VOC["name"]
    assert soda_vocabulary([["a", "b"]]) == {"word": ["a", "b"], "*": ["a", "b"]}

@pytest.mark.parametrize("mode", SODA_MODES)
def test_augmentation_keeps_length_is_seeded_and_zero_p_is_identity(mode):
    a = soft_augment(TOKS, KINDS, np.random.default_rng(3), 0.3, mode, vocabulary=VOC)
    b = soft_augment(TOKS, KINDS, np.random.default_rng(3), 0.3, mode, vocabulary=VOC)
    assert a == b and len(a) == len(TOKS)
    assert soft_augment(TOKS, KINDS, np.random.default_rng(3), 0.0, mode, vocabulary=VOC) == TOKS

def test_rates_and_kinds_of_each_mode():
    rng, n = np.random.default_rng(0), len(TOKS)
    long_t, long_k = TOKS * 20, KINDS * 20
    m = np.mean([sum(x == "[MASK]" for x in soft_augment(long_t, long_k, rng, 0.1, "mask", vocabulary=VOC)) / len(long_t) for _ in range(300)])
    assert abs(m - 0.08) < 0.01, m                                          # 80% of the 10% hit become the mask
    for mode in ("type_replace", "type_mask"):
        for _ in range(200):
            a = soft_augment(TOKS, KINDS, rng, 0.5, mode, vocabulary=VOC)
            changed = {k for x, y, k in zip(TOKS, a, KINDS) if x != y}
            assert len(changed) <= 1                                        # one kind per draw
            if mode == "type_replace":                                      # replaced by a token of the same kind
                assert all(y in VOC[k] for x, y, k in zip(TOKS, a, KINDS) if x != y)
    full = soft_augment(TOKS, KINDS, rng, 1.0, "replace", vocabulary=VOC)
    assert all(y in VOC["*"] for y in full)

def test_augmentation_validates():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="vocabulary"): soft_augment(TOKS, KINDS, rng, 0.1, "mask")
    with pytest.raises(ValueError, match="one kind per token"): soft_augment(TOKS, KINDS[:-1], rng, vocabulary=VOC)
    with pytest.raises(ValueError, match="mode"): soft_augment(TOKS, KINDS, rng, 0.1, "swap", vocabulary=VOC)
    with pytest.raises(TypeError, match="numpy Generator"): soft_augment(TOKS, KINDS, 0, vocabulary=VOC)
    with pytest.raises(ValueError, match="p"): soft_augment(TOKS, KINDS, rng, 1.5, vocabulary=VOC)
    assert soft_augment([], None, rng, 0.5, "type_mask") == []

# ---- the loss --------------------------------------------------------------------------------------------------------
def _emb(seed, b=5, d=4, n=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, dtype=torch.float64, generator=g) for _ in range(n)]

def test_inbatch_limit_is_clip():
    c, x = _emb(0, n=2)
    assert torch.allclose(cocosoda_loss(c, x, c, x, temperature=0.1, intra=False), cross_view_loss(c, x, 0.1, symmetric=True), atol=1e-12)

def test_official_construction_with_queues():
    # the official logits: cat([time_score · a bᵀ, a Qᵀ]) / τ with unit rows, cross-entropy against the diagonal, averaged over all rows
    cq, xq, ck, xk = [torch.nn.functional.normalize(z, dim=1) for z in _emb(1)]
    g = torch.Generator().manual_seed(2)
    qs = [torch.nn.functional.normalize(torch.randn(k, 4, dtype=torch.float64, generator=g), dim=1) for k in (6, 3, 8, 2)]
    tau, ts = 0.07, 2.0
    order = [(cq, xq, qs[1]), (cq, xk, qs[3]), (xq, cq, qs[0]), (xq, ck, qs[2]), (cq, ck, qs[2]), (xq, xk, qs[3])]
    ce = [torch.nn.functional.cross_entropy(torch.cat([ts * a @ b.T, a @ q.T], 1) / tau, torch.arange(5), reduction="none") for a, b, q in order]
    ref = torch.cat(ce).mean()
    got = cocosoda_loss(cq, xq, ck, xk, *qs, temperature=tau, time_score=ts)
    assert torch.allclose(got, ref, atol=1e-12), (got, ref)
    rows = cocosoda_loss(cq, xq, ck, xk, *qs, temperature=tau, time_score=ts, reduction="none")
    assert rows.shape == (6, 5) and torch.allclose(rows.sum(), cocosoda_loss(cq, xq, ck, xk, *qs, temperature=tau, time_score=ts, reduction="sum"))
    four = cocosoda_loss(cq, xq, ck, xk, *qs, temperature=tau, time_score=ts, intra=False)
    assert torch.allclose(four, torch.cat(ce[:4]).mean(), atol=1e-12)

def test_loss_registered_and_module_equals_function():
    spec = get_loss("cocosoda_loss")
    assert spec.paper == "cocosoda" and get_paper("cocosoda").family == "retrieval"
    ex = spec.example(torch.float64, 0)
    assert torch.allclose(CocosodaLoss(**ex.params)(**ex.inputs), cocosoda_loss(**ex.inputs, **ex.params))

def test_loss_validates():
    cq, xq, ck, xk = _emb(3)
    with pytest.raises(ValueError, match="time_score"): cocosoda_loss(cq, xq, ck, xk, time_score=0.0)
    with pytest.raises(ValueError, match="nl_queue must have 4 columns"): cocosoda_loss(cq, xq, ck, xk, nl_queue=torch.randn(3, 5))
    with pytest.raises(TypeError, match="intra must be a bool"): cocosoda_loss(cq, xq, ck, xk, intra=1)
    with pytest.raises(ValueError, match="reduction"): cocosoda_loss(cq, xq, ck, xk, reduction="max")

# ---- queues, step and training ----------------------------------------------------------------------------------------
ALL = code_search_pairs()
P = sentence_protocol("ci", 0, n_samples=100, epochs=1, batch_size=50, max_len=32)

def test_step_fills_the_four_queues_and_moves_the_momentum_encoder():
    from contrastlab.zoo.cocosoda import _pair_data
    from contrastlab.sentence import sentence_encoder
    pairs = PAIRS[:16]
    data = _pair_data(pairs, P, None)
    torch.manual_seed(0); model = sentence_encoder(data, P)
    teacher = EMATeacher(model, 0.5)
    queues = cocosoda_queues(model.dim, 12, seed=0)
    before = {k: q.features.clone() for k, q in queues.items()}
    step = cocosoda_step(teacher, queues, pairs, seed=0)
    with torch.no_grad(): [p.add_(0.1) for p in model.parameters()]
    t0 = [p.clone() for p in teacher.module.parameters()]
    loss = step(model, dict(idx=torch.arange(8), texts=[p["query"] for p in pairs[:8]]))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    for k in QUEUE_NAMES:
        assert queues[k].ptr == 8 and not torch.allclose(queues[k].features, before[k])
    assert any(not torch.allclose(a, b) for a, b in zip(t0, teacher.module.parameters()))   # moved before the keys

def test_training_is_seeded_and_the_baseline_trains():
    m1, h1 = train_cocosoda(ALL[:100], P, 0, queue_size=64, momentum=0.9)
    m2, h2 = train_cocosoda(ALL[:100], P, 0, queue_size=64, momentum=0.9)
    assert h1["loss"] == h2["loss"] and len(h1["loss"]) == 2
    for a, b in zip(m1.parameters(), m2.parameters()): assert torch.equal(a, b)
    assert set(h1.queues) == set(QUEUE_NAMES)
    m3, _ = train_code_inbatch(ALL[:100], P, 0)
    r = code_search(m3.embed, ALL[100:132])
    assert 0 < r["mrr"] <= 1 and 0 <= r["r1"] <= r["r10"] <= 1

def test_step_and_trainer_validate():
    with pytest.raises(TypeError, match="EMATeacher"): cocosoda_step(None, None, PAIRS)
    t = EMATeacher(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="cocosoda_queues"): cocosoda_step(t, {"code_queue": FeatureQueue(2, 2)}, PAIRS)
    with pytest.raises(TypeError, match="pairs must be"): cocosoda_step(t, None, [("q", "c")])
    with pytest.raises(ValueError, match="modes"): cocosoda_step(t, None, PAIRS, modes=("mask", "rot13"))
    with pytest.raises(TypeError, match="SentenceProtocol"): train_cocosoda(PAIRS, {}, 0)
    with pytest.raises(ValueError, match="momentum"): train_cocosoda(PAIRS, P, 0, momentum=1.5)

# ---- rankings ----------------------------------------------------------------------------------------------------------
def test_ranking_mrr_hand_worked_and_validates():
    ranked = torch.tensor([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    r = ranking_mrr(ranked, torch.tensor([0, 1, 2]))
    assert math.isclose(r["mrr"], (1 / 2 + 1 + 1 / 3) / 3, rel_tol=1e-12) and math.isclose(r["r1"], 1 / 3) and r["r10"] == 1.0
    with pytest.raises(ValueError, match=r"\(Q, K\)"): ranking_mrr(ranked[0], torch.tensor([0]))
    with pytest.raises(ValueError, match="must appear"): ranking_mrr(ranked[:, :1], torch.tensor([0, 1, 2]))

def test_code_search_of_a_perfect_embedding_is_one():
    pairs = [dict(query=f"q{i}", code=f"c{i}") for i in range(5)]
    def embed(texts): return torch.nn.functional.one_hot(torch.tensor([int(t[1:]) for t in texts]), 5).float()
    assert code_search(embed, pairs) == dict(mrr=1.0, r1=1.0, r10=1.0)
    with pytest.raises(TypeError, match="callable"): code_search(None, pairs)
