"""Contrastive search (Su & Collier 2023): the degeneration penalty (hand-worked), the decoder against greedy decoding at
α = 0 and k = 1 and against a float64 reference without a cache, top-k sampling (inside the shortlist, seeded), the
registration, and validation messages."""
import math
import pytest
import torch
from contrastlab.core import generator
from contrastlab.decoding import TinyLM, greedy
from contrastlab.registry import get_paper
from contrastlab.zoo.contrastive_search import degeneration_penalty, contrastive_search, top_k_sampling

@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return TinyLM(50, dim=16, n_layers=2, n_heads=2, max_len=32).double().eval()

@pytest.fixture(scope="module")
def prompts():
    return torch.randint(3, 50, (3, 5), generator=generator(1))

# ---- the penalty ----------------------------------------------------------------------------------------------------
def test_penalty_hand_worked():
    ctx = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    cand = torch.tensor([[[3.0, 0.0], [1.0, 1.0], [-1.0, -1.0]]], dtype=torch.float64)
    want = torch.tensor([[1.0, 1 / math.sqrt(2), -1 / math.sqrt(2)]], dtype=torch.float64)
    torch.testing.assert_close(degeneration_penalty(cand, ctx), want, atol=1e-12, rtol=0)

def test_penalty_is_scale_free_and_per_row():
    g = generator(4)
    cand, ctx = torch.randn(2, 3, 5, generator=g, dtype=torch.float64), torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    p = degeneration_penalty(cand, ctx)
    torch.testing.assert_close(degeneration_penalty(7.0 * cand, 0.1 * ctx), p)
    # each row sees only its own context: a row's penalty is unchanged when the other row's context changes
    ctx2 = ctx.clone(); ctx2[1] = torch.randn(4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(degeneration_penalty(cand, ctx2)[0], p[0])
    assert not torch.allclose(degeneration_penalty(cand, ctx2)[1], p[1])

def test_penalty_validation():
    cand = torch.ones(1, 3, 2)
    with pytest.raises(ValueError, match=r"context must be \(B, L ≥ 1, D\)"): degeneration_penalty(cand, torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match=r"context must be \(B, L ≥ 1, D\)"): degeneration_penalty(cand, torch.ones(1, 0, 2))
    with pytest.raises(ValueError, match=r"context must be \(B, L ≥ 1, D\)"): degeneration_penalty(cand, torch.ones(2, 2, 2))
    with pytest.raises((ValueError, TypeError), match="candidates"): degeneration_penalty(cand[0], torch.ones(1, 2, 2))

# ---- the decoder ----------------------------------------------------------------------------------------------------
def test_alpha_zero_and_k_one_are_greedy(lm, prompts):
    g = greedy(lm, prompts, 12)
    assert torch.equal(contrastive_search(lm, prompts, k=5, alpha=0.0, max_new_tokens=12), g)
    assert torch.equal(contrastive_search(lm, prompts, k=1, alpha=0.9, max_new_tokens=12), g)

@torch.no_grad()
def slow_reference(model, ids, k, alpha, T):
    "Row by row, every candidate's state from a full forward pass of the sequence so far, no cache, float64."
    rows = []
    for row in ids:
        s = row.tolist()
        for _ in range(T):
            out = model(torch.tensor([s]))
            p = out.logits[0, -1].softmax(-1); ctx = out.last[0]
            best, best_score = None, -math.inf
            for v in p.topk(k).indices.tolist():              # the most probable first: ties go to it
                h = model(torch.tensor([s + [v]])).last[0, -1]
                pen = max(float(h @ c / (h.norm() * c.norm())) for c in ctx)
                score = (1 - alpha) * float(p[v]) - alpha * pen
                if score > best_score: best, best_score = v, score
            s.append(best)
        rows.append(s)
    return torch.tensor(rows)

@pytest.mark.parametrize("k,alpha", [(4, 0.6), (3, 0.3), (5, 1.0)])
def test_matches_slow_reference(lm, prompts, k, alpha):
    fast = contrastive_search(lm, prompts, k=k, alpha=alpha, max_new_tokens=8)
    assert torch.equal(fast, slow_reference(lm, prompts, k, alpha, 8))
    assert torch.equal(fast[:, :prompts.shape[1]], prompts)

def test_penalty_changes_the_choice(lm, prompts):
    # control for the reference comparison: the decoder is not greedy in disguise
    assert (contrastive_search(lm, prompts, k=4, alpha=0.6, max_new_tokens=8) != greedy(lm, prompts, 8)).any()

def test_decoder_validation(lm, prompts):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"): contrastive_search(lm, prompts, alpha=1.5, max_new_tokens=4)
    with pytest.raises(ValueError, match="k must be"): contrastive_search(lm, prompts, k=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="k must be"): contrastive_search(lm, prompts, k=51, max_new_tokens=4)

# ---- top-k sampling -------------------------------------------------------------------------------------------------
def test_top_k_one_is_greedy(lm, prompts):
    assert torch.equal(top_k_sampling(lm, prompts, k=1, max_new_tokens=10), greedy(lm, prompts, 10))

def test_top_k_stays_in_shortlist_and_is_seeded(lm, prompts):
    s = top_k_sampling(lm, prompts, k=5, max_new_tokens=10, seed=3)
    assert torch.equal(s, top_k_sampling(lm, prompts, k=5, max_new_tokens=10, seed=3))
    assert not torch.equal(s, top_k_sampling(lm, prompts, k=5, max_new_tokens=10, seed=4))
    with torch.no_grad(): lg = lm(s[:, :-1]).logits[:, prompts.shape[1] - 1:]
    assert (lg.topk(5, -1).indices == s[:, prompts.shape[1]:, None]).any(-1).all()
    # control: the same check with a shortlist of 1 fails for these draws
    assert not (lg.topk(1, -1).indices == s[:, prompts.shape[1]:, None]).any(-1).all()

def test_top_k_validation(lm, prompts):
    with pytest.raises(ValueError, match="k must be"): top_k_sampling(lm, prompts, k=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="seed must be"): top_k_sampling(lm, prompts, k=2, max_new_tokens=4, seed=-1)

def test_registered():
    p = get_paper("contrastive_search")
    assert p.family == "retrieval" and p.module == "contrastlab.zoo.contrastive_search"
    assert {c.metric for c in p.claims} == {"cs_coherence - nucleus_coherence", "cs_diversity - nucleus_diversity", "lm_isotropy"}
