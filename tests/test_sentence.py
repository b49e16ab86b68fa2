"""The sentence family's layer: the GCIDE loader on local files and on the package, the frame benchmark's gold scores,
the word tokenizer, the evaluation suite against slow references, SimCSE's loss against its formula, and the training loop."""
import json, math
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from contrastlab.data.sentences import load_gcide, frame_pairs, frame_sentences, realize, random_frame, WordTokenizer, FRAME_SLOTS
from contrastlab.metrics.sentences import graded_spearman, headword_retrieval, isotropy
from contrastlab.sentence import (sentence_protocol, sentence_data, sentence_encoder, TinySentenceEncoder, TextBatches, train_sentences,
                                  simcse_loss, simcse_step, train_simcse, sentence_readouts, SentenceProtocol)

def _write(tmp_path, name, obj):
    (tmp_path / name).write_text(obj if isinstance(obj, str) else json.dumps(obj)); return tmp_path

def test_gcide_loader_on_a_local_folder(tmp_path):
    _write(tmp_path, "words_A.json", {"ant": {"pos": [{"part_of_speech": "n.", "definitions": [
        {"text": "A small insect that lives in large colonies. [1913 Webster]", "examples": ["An ant carried a crumb.", "ok"]},
        {"text": "Too short.", "examples": []}]}]}, "abc": None})
    _write(tmp_path, "words_B.json", {"bee": {"pos": [{"part_of_speech": "n.", "definitions": [{"text": "An insect that makes honey from flowers."}]}]}})
    rows = load_gcide(tmp_path)
    assert [r["headword"] for r in rows] == ["ant", "bee"]
    assert rows[0] == dict(headword="ant", pos="n.", definition="A small insect that lives in large colonies.", examples=["An ant carried a crumb."])
    assert [r["headword"] for r in load_gcide(tmp_path, letters="b")] == ["bee"]
    assert load_gcide(tmp_path, max_words=6) == [r for r in rows if len(r["definition"].split()) <= 6]

def test_gcide_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="path must be a folder"): load_gcide(tmp_path / "missing")
    with pytest.raises(ValueError, match="no words_"): load_gcide(tmp_path)
    _write(tmp_path, "words_C.json", "{not json")
    with pytest.raises(ValueError, match="words_C.json is not valid JSON"): load_gcide(tmp_path)
    with pytest.raises(ValueError, match="letters"): load_gcide(tmp_path, letters="1")
    with pytest.raises(ValueError, match="max_words"): load_gcide(tmp_path, min_words=5, max_words=3)

def test_packaged_gcide_has_definitions_and_examples():
    rows = load_gcide(letters="z")
    assert len(rows) > 300 and all(4 <= len(r["definition"].split()) <= 40 for r in rows)
    assert any(r["examples"] for r in rows) and {r["pos"] for r in rows} >= {"n.", "a."}

def test_frame_pairs_are_seeded_graded_and_surface_varied():
    a, b = frame_pairs(300, seed=5), frame_pairs(300, seed=5)
    assert a["a"] == b["a"] and np.array_equal(a["gold"], b["gold"]) and frame_pairs(300, seed=6)["a"] != a["a"]
    assert set(np.round(a["gold"] * 5).astype(int)) == set(range(6))
    paraphrases = [(x, y) for x, y, g in zip(a["a"], a["b"], a["gold"]) if g == 1]
    assert sum(x != y for x, y in paraphrases) > 0.8 * len(paraphrases)     # same frame, mostly different words or voice
    assert frame_sentences(5, seed=1) == frame_sentences(5, seed=1)

def test_realize_voice_and_validation():
    rng = np.random.default_rng(0); f = random_frame(rng)
    assert " was " in realize(f, rng, voice="passive") and " by " in realize(f, rng, voice="passive", front=True)
    with pytest.raises(ValueError, match="voice"): realize(f, rng, voice="middle")
    with pytest.raises(ValueError, match="n_pairs"): frame_pairs(0, seed=1)

def test_word_tokenizer():
    tok = WordTokenizer(["b b b a a c"], vocab_size=7, max_len=3)
    assert tok.vocab[5:] == ["b", "a"] and len(tok) == 7
    ids, mask = tok(["a b c d", ""])
    assert ids.tolist() == [[6, 5, tok.unk_id], [tok.unk_id, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]
    with pytest.raises(TypeError, match="list of strings"): WordTokenizer("abc")
    with pytest.raises(ValueError, match="vocab_size"): WordTokenizer(["a"], vocab_size=3)

def test_graded_spearman_is_scipy_on_cosines():
    g = torch.Generator().manual_seed(0)
    table = {f"s{i}": torch.randn(8, generator=g) for i in range(40)}
    emb = lambda texts: torch.stack([table[t] for t in texts])
    a, b = [f"s{i}" for i in range(20)], [f"s{i}" for i in range(20, 40)]
    gold = np.random.default_rng(0).random(20)
    cos = [float(torch.nn.functional.cosine_similarity(table[x], table[y], dim=0)) for x, y in zip(a, b)]
    assert math.isclose(graded_spearman(emb, a, b, gold), 100 * spearmanr(cos, gold).statistic, rel_tol=1e-9)
    with pytest.raises(ValueError, match="more than one distinct"): graded_spearman(emb, a, b, np.ones(20))

def _slow_retrieval(sim, target, k=10):
    rr, hit = [], []
    for i in range(len(sim)):
        rank = 1 + sum(1 for j in range(sim.shape[1]) if j != target[i] and sim[i, j] >= sim[i, target[i]])
        rr.append(1 / rank if rank <= k else 0.0); hit.append(rank == 1)
    return np.mean(rr), np.mean(hit)

def test_headword_retrieval_against_a_slow_loop():
    g = torch.Generator().manual_seed(1)
    heads = [f"h{i}" for i in range(30)]
    table = {t: torch.randn(6, generator=g) for t in heads + [f"d{i}" for i in range(60)]}
    emb = lambda texts: torch.stack([table[t] for t in texts])
    qh = [heads[i % 30] for i in range(60)]
    out = headword_retrieval(emb, [f"d{i}" for i in range(60)], qh)
    q = torch.nn.functional.normalize(emb([f"d{i}" for i in range(60)]).double(), dim=1)
    c = torch.nn.functional.normalize(emb(sorted(heads)).double(), dim=1)
    mrr, r1 = _slow_retrieval((q @ c.T).numpy(), [sorted(heads).index(h) for h in qh])
    assert math.isclose(out["mrr10"], mrr, rel_tol=1e-9) and math.isclose(out["r1"], r1, rel_tol=1e-9)

def test_isotropy_bounds():
    d = 8
    assert math.isclose(isotropy(torch.cat([torch.eye(d), -torch.eye(d)])), 1.0, rel_tol=1e-9)
    line = torch.tensor([[1.0] + [0.0] * (d - 1), [-1.0] + [0.0] * (d - 1)]).repeat(5, 1)
    assert math.isclose(isotropy(line), 1 / d, rel_tol=1e-9)

def _slow_simcse(z1, z2, tau):
    z1 = z1 / z1.norm(dim=1, keepdim=True); z2 = z2 / z2.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(len(z1)):
        s = [(z1[i] * z2[j]).sum() / tau for j in range(len(z2))]
        total = total - s[i] + torch.logsumexp(torch.stack(s), 0)
    return total / len(z1)

@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_simcse_loss_is_the_one_direction_formula(tau):
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True); z2 = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    ours, ref = simcse_loss(z1, z2, tau), _slow_simcse(z1, z2, tau)
    assert math.isclose(ours.item(), ref.item(), rel_tol=1e-10)
    for x, y in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(ref, (z1, z2))): assert torch.allclose(x, y, atol=1e-10)

@pytest.fixture(scope="module")
def tiny():
    p = sentence_protocol("ci", n_samples=1000, epochs=1, n_pairs=60, n_retrieval=10)
    return p, sentence_data(p)

def test_data_has_no_retrieval_leak(tiny):
    p, d = tiny
    train_heads = {h for h in d["train_meta"]["headword"] if h} | {r["headword"] for r in d["entries"]}
    assert not train_heads & set(d["retrieval"]["headwords"]) and len(d["retrieval"]["headwords"]) == 10
    assert len(d["train"]) == 1000 and set(d["train_meta"]["kind"]) == {"definition", "example", "frame"}
    with pytest.raises(TypeError, match="SentenceProtocol"): sentence_data(object())

def test_text_batches_are_seeded_and_reshuffled():
    texts = [str(i) for i in range(10)]
    b = TextBatches(texts, 4, seed=3)
    e0 = [x["idx"].tolist() for x in b]; again = [x["idx"].tolist() for x in TextBatches(texts, 4, seed=3)]
    b.set_epoch(1); e1 = [x["idx"].tolist() for x in b]
    assert len(b) == 2 and e0 == again and e0 != e1
    with pytest.raises(ValueError, match="batch_size"): TextBatches(texts[:3], 4, seed=0)

def test_train_simcse_is_seeded_and_learns(tiny):
    p, d = tiny
    m1, h1 = train_simcse(d, p, 0); m2, h2 = train_simcse(d, p, 0)
    assert h1.epochs["loss"] == h2.epochs["loss"]
    assert torch.equal(m1.embed(d["train"][:5]), m2.embed(d["train"][:5]))
    r = sentence_readouts(m1, d)
    assert set(r) == {"sts", "mrr10", "r1", "alignment", "uniformity", "isotropy", "effective_rank"} and all(math.isfinite(v) for v in r.values())

def test_train_sentences_validates(tiny):
    p, d = tiny
    with pytest.raises(TypeError, match="step_fn"): train_sentences(d, p, 0, None)
    with pytest.raises(TypeError, match="SentenceProtocol"): train_sentences(d, object(), 0, simcse_step())
    frozen = TinySentenceEncoder(d["tokenizer"]).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"): train_sentences(d, p, 0, simcse_step(), model=frozen)
    with pytest.raises(ValueError, match="encoder"): sentence_protocol("ci", encoder="gpt")
