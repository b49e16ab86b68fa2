"""The decoding layer: the tiny LM's cache against full recompute, early-exit heads, the decoders (beam 1 = greedy, beam search
against exhaustive search, seeded nucleus sampling), top-p parity with transformers' TopPLogitsWarper, and the text metrics by hand."""
import itertools, math
import pytest
import torch
from contrastlab.decoding import (LMTokenizer, TinyLM, train_lm, lm_nll, held_out_prompts, greedy, beam_search, nucleus, top_p_filter,
                                  sequence_logprob, rep_n, diversity, coherence, isotropy, token_states)

@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return TinyLM(7, dim=16, n_layers=2, n_heads=2, max_len=12).double().eval()

def test_cache_equals_full_recompute(lm):
    x = torch.randint(0, 7, (3, 10))
    full = lm(x); a = lm(x[:, :4]); b = lm(x[:, 4:], cache=a.cache)
    torch.testing.assert_close(torch.cat([a.logits, b.logits], 1), full.logits)
    for i in range(3): torch.testing.assert_close(torch.cat([a.hidden[i], b.hidden[i]], 1), full.hidden[i])
    torch.testing.assert_close(lm.head(full.hidden[-1]), full.logits)

def test_beam_one_is_greedy_and_exhaustive_with_a_full_beam(lm):
    p = torch.tensor([[1, 2], [3, 0]])
    assert torch.equal(beam_search(lm, p, beams=1, max_new_tokens=5), greedy(lm, p, 5))
    allc = torch.tensor(list(itertools.product(range(7), repeat=2)))
    for i in range(2):
        every = torch.cat([p[i].expand(len(allc), 2), allc], 1)
        assert torch.equal(beam_search(lm, p[i:i + 1], beams=7, max_new_tokens=2)[0], every[sequence_logprob(lm, every, 2).argmax()])

def test_nucleus_is_seeded_and_tiny_p_is_greedy(lm):
    p = torch.tensor([[1, 2], [3, 0]])
    assert torch.equal(nucleus(lm, p, 0.9, 6, seed=1), nucleus(lm, p, 0.9, 6, seed=1))
    assert torch.equal(nucleus(lm, p, 1e-6, 6, seed=2), greedy(lm, p, 6))

@pytest.mark.parametrize("p", [0.3, 0.7, 0.95, 1.0])
def test_top_p_matches_transformers(p):
    from transformers.generation import TopPLogitsWarper
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g, dtype=torch.float64) * 3
    ref = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(torch.isfinite(top_p_filter(logits, p)), torch.isfinite(ref))

def test_metrics_by_hand():
    t = ["a b a b a", "c d e"]
    assert math.isclose(rep_n(t, 2), 1 - 4 / 6) and math.isclose(rep_n(t, 3), 1 - 3 / 4) and rep_n(t, 4) == 0
    assert math.isclose(diversity(t), 0.5)
    assert math.isclose(isotropy(torch.eye(4)), 1.0) and abs(isotropy(torch.ones(3, 2))) < 1e-12

def test_training_and_coherence():
    tok = LMTokenizer(["the cat sat on the mat."]); s = tok.stream(["the cat sat on the mat."] * 50)
    m = TinyLM(len(tok), dim=32, n_layers=1, n_heads=2, max_len=16)
    h = train_lm(m, s, steps=150, batch_size=8, lr=1e-2, seed=0)
    assert h[-1] < 0.5 and lm_nll(m, s) < 0.5
    good = tok.stream(["the cat sat on the mat."] * 2)[None]; bad = torch.cat([good[:, :2], good[:, 2:].flip(1)], 1)
    assert coherence(m, good, 2) > coherence(m, bad, 2) + 1.0
    prompts, cont = held_out_prompts(s, 4, prompt_len=3, cont_len=4, seed=0)
    assert prompts.shape == (4, 3) and cont.shape == (4, 4) and (prompts[:, 0] == tok.eos_id).all()

def test_bad_inputs(lm):
    with pytest.raises(ValueError, match="max_len"): greedy(lm, torch.tensor([[1, 2]]), 11)
    with pytest.raises(ValueError, match="vocabulary"): greedy(lm, torch.tensor([[9]]), 1)
    with pytest.raises(TypeError, match="integer"): greedy(lm, torch.zeros(1, 2), 1)
    with pytest.raises(ValueError, match="p must be in"): top_p_filter(torch.zeros(1, 3), 0.0)
    with pytest.raises(ValueError, match="at least 2 tokens"): isotropy(torch.ones(1, 3))
    with pytest.raises(ValueError, match="divisible"): TinyLM(5, dim=10, n_heads=4)
    with pytest.raises(TypeError, match="list of strings"): LMTokenizer("abc")
