"""LOL (Chen et al. 2024): the fact world (seeded, counts, false text never true), the prompts, the induced amateur (a copy),
the plausible set and the fused contrast by hand, the decoder's reductions (β = 0, α = 1, amateur = expert, weight 0 →
single layer) and its agreement with a cache-free float64 reference, the registration, and validation messages."""
import numpy as np
import pytest
import torch
from contrastlab.core import generator
from contrastlab.decoding import LMTokenizer, TinyLM, greedy
from contrastlab.registry import get_paper
from contrastlab.zoo.lol import (RELATIONS, make_fact_world, fact_texts, fact_prompts, induce_hallucination, plausible,
                                 fused_contrast, contrastive_decode)

@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    mk = lambda: TinyLM(40, dim=16, n_layers=4, n_heads=2, max_len=24).double().eval()
    return mk(), mk()

@pytest.fixture(scope="module")
def prompts():
    return torch.randint(3, 40, (4, 5), generator=generator(1))

# ---- the world --------------------------------------------------------------------------------------------------------
def test_world_is_seeded_and_counts_follow_the_popularity():
    w, w2 = make_fact_world(60, max_count=24, decay=1.0, seed=3), make_fact_world(60, max_count=24, decay=1.0, seed=3)
    assert w["entities"] == w2["entities"] and w["facts"] == w2["facts"] and w["counts"] == w2["counts"]
    assert make_fact_world(60, max_count=24, decay=1.0, seed=4)["entities"] != w["entities"]
    assert [make_fact_world(30, seed=0)["counts"][e] for e in make_fact_world(30, seed=0)["entities"]][:6] == [8, 6, 5, 4, 4, 3]   # the defaults
    c = [w["counts"][e] for e in w["entities"]]
    assert c[0] == 24 and c == sorted(c, reverse=True) and min(c) == 1
    assert len(set(w["entities"])) == 60 and not set(w["entities"]) & {v for vs in RELATIONS.values() for v in vs}

def test_prior_is_zipf_and_popular_values_dominate():
    w = make_fact_world(2000, zipf=1.0, seed=0)
    h = sum(1 / i for i in range(1, 9))
    np.testing.assert_allclose(w["prior"], [1 / (i * h) for i in range(1, 9)], rtol=1e-12)
    share = np.mean([v == RELATIONS[r][0] for (e, r), v in w["facts"].items()])
    assert abs(share - 1 / h) < 0.03                           # 8000 draws: within ~4 standard errors

def test_false_text_states_no_true_fact_and_keeps_the_counts():
    w = make_fact_world(80, seed=1)
    t, f = fact_texts(w, seed=2), fact_texts(w, false=True, seed=2)
    said = lambda texts: [(s.split()[3], s.split()[1], s.split()[5]) for s in texts]
    truth = {(e, r, v) for (e, r), v in w["facts"].items()}
    assert set(said(t)) == truth and not set(said(f)) & truth
    assert len(t) == len(f) == sum(w["counts"].values()) * len(RELATIONS)
    from collections import Counter
    assert Counter((e, r) for e, r, _ in said(f)) == Counter((e, r) for e, r, _ in said(t))

def test_prompts_and_their_validation():
    w = make_fact_world(30, seed=0); tok = LMTokenizer(fact_texts(w), vocab_size=150); P = fact_prompts(w, tok)
    assert P["prompts"].shape == (120, 6) and (P["prompts"][:, 0] == tok.eos_id).all()
    assert [list(RELATIONS)[i] for i in P["relation"][:4].tolist()] == [r for _, r in list(w["facts"])[:4]]
    e, r = next(iter(w["facts"]))
    assert tok.decode(P["prompts"][0]) == f"¶ the {r} of {e} is" and tok.vocab[int(P["truth"][0])] == w["facts"][e, r]
    assert tok.vocab[int(P["popular"][0])] == RELATIONS[r][0] and int(P["counts"][0]) == w["counts"][e]
    with pytest.raises(ValueError, match="does not know every entity"): fact_prompts(w, LMTokenizer(fact_texts(w), vocab_size=10))
    with pytest.raises(TypeError, match="LMTokenizer"): fact_prompts(w, None)
    with pytest.raises(TypeError, match="make_fact_world"): fact_texts({"facts": {}})
    with pytest.raises(ValueError, match="n_entities must be ≥ 1"): make_fact_world(0)

def test_induced_amateur_is_a_trained_copy():
    w = make_fact_world(20, seed=0); tok = LMTokenizer(fact_texts(w), vocab_size=100)
    torch.manual_seed(0); ex = TinyLM(len(tok), dim=16, n_layers=2, n_heads=2, max_len=16)
    before = [p.detach().clone() for p in ex.parameters()]
    am = induce_hallucination(ex, tok.stream(fact_texts(w, false=True)), steps=3, seed=0)
    assert am is not ex and all(torch.equal(a, b) for a, b in zip(before, ex.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(am.parameters(), ex.parameters()))
    with pytest.raises(TypeError, match="expert must be a TinyLM"): induce_hallucination(torch.nn.Linear(2, 2), tok.stream(fact_texts(w)))

# ---- the score --------------------------------------------------------------------------------------------------------
def test_plausible_set_by_hand():
    lp = torch.tensor([[0.5, 0.3, 0.16, 0.04]], dtype=torch.float64).log()
    assert plausible(lp, 0.1).tolist() == [[True, True, True, False]]
    assert plausible(lp, 1.0).tolist() == [[True, False, False, False]]
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"): plausible(lp, 0.0)
    with pytest.raises(ValueError, match="logprobs must have 2 dimensions"): plausible(lp[0], 0.1)

def test_fused_contrast_by_hand():
    E, A = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64).log(), torch.tensor([[0.8, 0.1, 0.1]], dtype=torch.float64).log()
    s = fused_contrast([E], [A], [1.0], beta=1.0)
    torch.testing.assert_close(s[0, :2], torch.tensor([2 * np.log(0.5) - np.log(0.8), 2 * np.log(0.3) - np.log(0.1)], dtype=torch.float64))
    assert int(s.argmax()) == 1 and int(E.argmax()) == 0       # the contrast flips the choice
    torch.testing.assert_close(fused_contrast([E], [A], [1.0], beta=0.0), E)
    L = torch.tensor([[0.2, 0.2, 0.6]], dtype=torch.float64).log(); M = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64).log()
    torch.testing.assert_close(fused_contrast([E, L], [A, M], [1.0, 0.5], beta=2.0), (3 * E - 2 * A) + 0.5 * (3 * L - 2 * M))
    with pytest.raises(ValueError, match="one entry per fused layer"): fused_contrast([E], [A, A], [1.0])
    with pytest.raises(ValueError, match="beta must be ≥ 0"): fused_contrast([E], [A], [1.0], beta=-1.0)

# ---- the decoder ------------------------------------------------------------------------------------------------------
def test_decoder_reductions(models, prompts):
    ex, am = models; g = greedy(ex, prompts, 10)
    assert torch.equal(contrastive_decode(ex, am, prompts, 10, beta=0.0), g)
    assert torch.equal(contrastive_decode(ex, am, prompts, 10, alpha=1.0), g)
    assert torch.equal(contrastive_decode(ex, ex, prompts, 10, layers=(-1, 2), layer_weights=(1.0, 0.5)), g)
    assert torch.equal(contrastive_decode(ex, am, prompts, 10, layers=(-1, 2), layer_weights=(1.0, 0.0)), contrastive_decode(ex, am, prompts, 10))
    assert torch.equal(contrastive_decode(ex, am, prompts, 10, layers=(4,)), contrastive_decode(ex, am, prompts, 10, layers=(-1,)))

@torch.no_grad()
def _slow(E, A, ids, T, beta, alpha, layers, weights):
    s = ids.clone()
    for _ in range(T):
        hE, hA = E(s).hidden, A(s).hidden
        lp = lambda m, h, l: m.head(h[m.n_layers if l == -1 else l][:, -1]).log_softmax(-1)
        sc = sum(w * ((1 + beta) * lp(E, hE, l) - beta * lp(A, hA, l)) for l, w in zip(layers, weights))
        f = lp(E, hE, -1); sc[f < f.max(-1, keepdim=True).values + np.log(alpha)] = -float("inf")
        s = torch.cat([s, sc.argmax(-1, keepdim=True)], 1)
    return s

@pytest.mark.parametrize("layers,weights,beta,alpha", [((-1,), (1.0,), 1.0, 0.1), ((-1, 2), (1.0, 0.5), 1.0, 0.1), ((1, 3), (0.3, 1.0), 2.5, 0.05)])
def test_decoder_matches_a_cache_free_reference(models, prompts, layers, weights, beta, alpha):
    ex, am = models
    fast = contrastive_decode(ex, am, prompts, 10, beta=beta, alpha=alpha, layers=layers, layer_weights=weights)
    assert torch.equal(fast, _slow(ex, am, prompts, 10, beta, alpha, layers, weights))
    assert (fast != greedy(ex, prompts, 10)).any()

def test_plausibility_is_respected(models, prompts):
    ex, am = models
    out = contrastive_decode(ex, am, prompts, 8, beta=5.0, alpha=0.3, layers=(-1, 1), layer_weights=(1.0, 1.0))
    with torch.no_grad(): p = ex(out[:, :-1]).logits[:, prompts.shape[1] - 1:].softmax(-1)
    chosen = p.gather(-1, out[:, prompts.shape[1]:, None])[..., 0]
    assert (chosen >= 0.3 * p.amax(-1) - 1e-12).all()

def test_other_depth_and_own_prompt(models, prompts):
    ex, am = models; small = TinyLM(40, dim=8, n_layers=1, n_heads=2, max_len=24).double()
    assert contrastive_decode(ex, small, prompts, 6).shape == (4, 11)
    with pytest.raises(ValueError, match="each layer must be ≤ 1"): contrastive_decode(ex, small, prompts, 6, layers=(-1, 2), layer_weights=(1, 1))
    assert torch.equal(contrastive_decode(ex, am, prompts, 6, amateur_prompt_ids=prompts), contrastive_decode(ex, am, prompts, 6))
    o = contrastive_decode(ex, am, prompts, 6, amateur_prompt_ids=prompts[:, 3:])
    assert torch.equal(o[:, :5], prompts)
    with pytest.raises(ValueError, match="expert's 4 rows"): contrastive_decode(ex, am, prompts, 6, amateur_prompt_ids=prompts[:2])

def test_decoder_validation(models, prompts):
    ex, am = models
    with pytest.raises(ValueError, match="share a vocabulary"): contrastive_decode(ex, TinyLM(41, dim=8, n_layers=1, n_heads=2, max_len=24), prompts, 4)
    with pytest.raises(ValueError, match="one length"): contrastive_decode(ex, am, prompts, 4, layers=(-1, 2), layer_weights=(1.0,))
    with pytest.raises(ValueError, match="each layer must be ≥ 1"): contrastive_decode(ex, am, prompts, 4, layers=(0,))
    with pytest.raises(ValueError, match="each layer weight must be ≥ 0"): contrastive_decode(ex, am, prompts, 4, layer_weights=(-0.5,))
    with pytest.raises(ValueError, match="beta must be ≥ 0"): contrastive_decode(ex, am, prompts, 4, beta=-1.0)
    with pytest.raises(ValueError, match="exceeds the model's max_len"): contrastive_decode(ex, am, prompts, 30)

def test_registration():
    p = get_paper("lol")
    assert p.family == "retrieval" and p.module == "contrastlab.zoo.lol" and p.losses == ()
    assert {c.metric for c in p.claims} == {"lol_acc - icd_acc", "lol_acc - greedy_acc"}
