"""Vega v1's phase 2 (Zhong et al. 2023): the MultiObjective, BERT-style masking, the masked-token head and loss (hand-worked,
a float64 loop, parity with Hugging Face's BERT masked-LM head and loss), and the trainer `train_vega` on the family's layer."""
import math
import pytest
import torch
from contrastlab.core import generator, seed_everything
from contrastlab.data.sentences import WordTokenizer
from contrastlab.sentence import sentence_protocol, sentence_data, sentence_encoder
import contrastlab.zoo.vega as vega
from contrastlab.zoo.vega import (MultiObjective, mask_tokens, MLMHead, MLMLoss, mlm_loss, mlm_accuracy, vega_step, train_vega,
                                  token_quality, heldout_sentences, unigram_quality)

# ---- MultiObjective ----------------------------------------------------------------------------------------------
def test_multiobjective_by_hand_and_its_gradient():
    a, b = torch.tensor(2.0, requires_grad=True), torch.tensor(-3.0, requires_grad=True)
    out = MultiObjective({"mlm": 0.5}, simcse=2.0)(mlm=a, simcse=b)
    assert out["loss"].item() == 0.5 * 2 + 2 * -3 and out["mlm"].item() == 2.0 and out["simcse"].item() == -3.0
    out["loss"].backward(); assert (a.grad.item(), b.grad.item()) == (0.5, 2.0)

def test_multiobjective_zero_weight_is_reported_not_summed():
    out = MultiObjective(mlm=1.0, simcse=0.0)(mlm=torch.tensor(1.5), simcse=torch.tensor(7.0))
    assert out["loss"].item() == 1.5 and out["simcse"].item() == 7.0

def test_multiobjective_validates():
    with pytest.raises(ValueError, match="at least one named term"): MultiObjective()
    with pytest.raises(ValueError, match="other than 'loss'"): MultiObjective(loss=1.0)
    with pytest.raises(ValueError, match="identifiers"): MultiObjective({"two words": 1.0})
    with pytest.raises(ValueError, match="weight of 'a'"): MultiObjective(a=float("nan"))
    with pytest.raises(TypeError, match="weight of 'a'"): MultiObjective(a="1")
    with pytest.raises(ValueError, match="at least one weight"): MultiObjective(a=0.0, b=0.0)
    with pytest.raises(TypeError, match="weights must be a dict"): MultiObjective([("a", 1.0)])
    obj = MultiObjective(a=1.0, b=1.0)
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['c'\]"): obj(a=torch.tensor(1.0), c=torch.tensor(1.0))
    with pytest.raises(TypeError, match="term 'b'"): obj(a=torch.tensor(1.0), b=2.0)
    with pytest.raises(TypeError, match="term 'b'"): obj(a=torch.tensor(1.0), b=torch.tensor(2))
    with pytest.raises(ValueError, match="term 'a' is non-finite"): obj(a=torch.tensor(float("inf")), b=torch.tensor(1.0))

# ---- masking -----------------------------------------------------------------------------------------------------
def _batch(n=300, L=40, V=60, seed=0):
    g = generator(seed)
    ids = torch.randint(0, V, (n, L), generator=g)
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]
    ids[~mask] = 0
    return ids, mask

def test_mask_tokens_never_selects_padding_or_specials_and_is_seeded():
    ids, mask = _batch()
    inp, sel = mask_tokens(ids, mask, 0.3, generator(1), vocab_size=60)
    assert not sel[~mask].any() and not sel[ids < 5].any()
    assert (inp[~sel] == ids[~sel]).all()
    inp2, sel2 = mask_tokens(ids, mask, 0.3, generator(1), vocab_size=60)
    assert torch.equal(inp, inp2) and torch.equal(sel, sel2)
    assert not torch.equal(sel, mask_tokens(ids, mask, 0.3, generator(2), vocab_size=60)[1])
    rnd = sel & (inp != 2) & (inp != ids)
    assert rnd.any() and (inp[rnd] >= 5).all() and (inp[rnd] < 60).all()        # random replacements are ordinary tokens

def test_mask_tokens_rates_and_at_least_one():
    ids, mask = _batch(n=2000, L=30)
    eligible = mask & (ids >= 5)
    inp, sel = mask_tokens(ids, mask, 0.15, generator(3), vocab_size=60, at_least_one=False)
    assert abs(sel.sum() / eligible.sum() - 0.15) < 0.01
    frac_mask = (inp[sel] == 2).float().mean().item()
    frac_rand = ((inp[sel] != 2) & (inp[sel] != ids[sel])).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_rand - 0.1 * (1 - 1 / 55)) < 0.02
    _, sel1 = mask_tokens(ids, mask, 0.15, generator(3), vocab_size=60)
    assert (sel1.any(1) == eligible.any(1)).all()                              # every sentence with an ordinary token predicts one
    assert (sel1 & ~sel).sum(1).max() <= 1 and (sel & ~sel1).sum() == 0       # ... by adding exactly one where none was drawn

def test_mask_tokens_validates():
    ids, mask = _batch(n=4, L=6)
    with pytest.raises(ValueError, match="rate"): mask_tokens(ids, mask, 0.0, vocab_size=60)
    with pytest.raises(ValueError, match="rate"): mask_tokens(ids, mask, 1.5, vocab_size=60)
    with pytest.raises(TypeError, match="mask must be a bool"): mask_tokens(ids, mask.long(), vocab_size=60)
    with pytest.raises(ValueError, match="shape of ids"): mask_tokens(ids, mask[:, :3], vocab_size=60)
    with pytest.raises(TypeError, match="ids must be an integer"): mask_tokens(ids.float(), mask, vocab_size=60)
    with pytest.raises(ValueError, match="vocab_size is needed"): mask_tokens(ids, mask)
    with pytest.raises(ValueError, match="mix must sum to 1"): mask_tokens(ids, mask, mix=(0.5, 0.1, 0.1), vocab_size=60)
    with pytest.raises(ValueError, match="mix must be three"): mask_tokens(ids, mask, mix=(1.0,), vocab_size=60)

# ---- the loss: hand-worked, float64 loop, bad inputs ----------------------------------------------------------------
def _slow_mlm(logits, targets):
    "−log(e^{l_t} / Σ_v e^{l_v}) row by row, in float64, averaged."
    total = 0.0
    for row, t in zip(logits.double(), targets.tolist()):
        total = total - (row[t] - torch.log(sum(torch.exp(x) for x in row)))
    return total / len(targets)

def test_mlm_loss_hand_worked():
    assert math.isclose(mlm_loss(torch.zeros(4, 10), torch.tensor([0, 1, 2, 9])).item(), math.log(10), rel_tol=1e-6)
    lg = torch.tensor([[0.0, math.log(3)], [math.log(3), 0.0]], dtype=torch.float64)
    assert math.isclose(mlm_loss(lg, torch.tensor([1, 1])).item(), (-math.log(0.75) - math.log(0.25)) / 2, rel_tol=1e-12)
    assert mlm_accuracy(lg, torch.tensor([1, 1])).item() == 0.5

@pytest.mark.parametrize("n,v,scale", [(1, 2, 1.0), (7, 11, 5.0), (20, 3, 0.01)])
def test_mlm_loss_against_the_slow_loop(n, v, scale):
    g = generator(n)
    lg = (scale * torch.randn(n, v, dtype=torch.float64, generator=g)).requires_grad_()
    tg = torch.randint(0, v, (n,), generator=g)
    ours, ref = mlm_loss(lg, tg), _slow_mlm(lg, tg)
    assert abs(ours.item() - ref.item()) < 1e-10
    torch.testing.assert_close(torch.autograd.grad(ours, lg)[0], torch.autograd.grad(ref, lg)[0], rtol=1e-9, atol=1e-12)
    assert MLMLoss()(lg, tg).item() == ours.item()

def test_mlm_loss_bad_inputs():
    lg, tg = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="same number of rows"): mlm_loss(lg, tg[:3])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"): mlm_loss(lg, tg + 2)
    with pytest.raises(TypeError, match="targets must be an integer"): mlm_loss(lg, tg.float())
    with pytest.raises(ValueError, match="at least 1 row"): mlm_loss(lg[:0], tg[:0])
    bad = lg.clone(); bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"): mlm_loss(bad, tg)
    assert mlm_loss(lg.half(), tg).dtype == torch.float32

# ---- parity with Hugging Face's BERT masked LM (test-only) ---------------------------------------------------------
def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=31, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(cfg).eval(), cfg

def test_mlm_loss_matches_bert_for_masked_lm():
    bert, cfg = _tiny_bert()
    ids, mask = _batch(n=6, L=12, V=31, seed=4)
    inputs, sel = mask_tokens(ids, mask, 0.3, generator(5), vocab_size=31)
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    with torch.no_grad(): out = bert(input_ids=inputs, attention_mask=mask.long(), labels=labels)
    ours = mlm_loss(out.logits[sel], ids[sel])
    assert abs(ours.item() - out.loss.item()) < 1e-6, (ours.item(), out.loss.item())

def test_mlm_head_matches_bert_prediction_head():
    bert, cfg = _tiny_bert()
    hf = bert.cls.predictions
    head = MLMHead(cfg.hidden_size, cfg.vocab_size, eps=cfg.layer_norm_eps)
    with torch.no_grad():
        head.dense.load_state_dict(hf.transform.dense.state_dict()); head.norm.load_state_dict(hf.transform.LayerNorm.state_dict())
        head.decoder.weight.copy_(hf.decoder.weight); head.decoder.bias.copy_(hf.decoder.bias)
        h = torch.randn(5, 7, cfg.hidden_size, generator=generator(0))
        torch.testing.assert_close(head(h), hf(h), rtol=1e-5, atol=1e-6)

def test_mlm_head_is_seeded_apart_from_the_global_stream():
    torch.manual_seed(0); before = torch.rand(3)
    torch.manual_seed(0); a = MLMHead(8, 20, seed=1); after = torch.rand(3)
    assert torch.equal(before, after)                                           # the head does not consume the global stream
    b = MLMHead(8, 20, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="last dimension is 8"): a(torch.randn(2, 7))

# ---- the trainer on the family's layer -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    p = sentence_protocol("ci", n_samples=400, epochs=1, n_pairs=40, n_retrieval=10)
    return p, sentence_data(p)

def test_train_vega_starts_from_the_baselines_initialisation(tiny, monkeypatch):
    p, data = tiny
    monkeypatch.setattr(vega, "train_sentences", lambda data, protocol, seed, step, *, model, **kw: (model, None))
    m, _ = train_vega(data, p, 3)
    seed_everything(3); ref = sentence_encoder(data, p)
    sd = m.state_dict()
    for k, v in ref.state_dict().items(): assert torch.equal(sd[k], v), k
    assert isinstance(m.mlm_head, MLMHead) and m.mlm_head.vocab_size == len(data["tokenizer"])

def test_train_vega_logs_each_term_and_is_seeded(tiny):
    p, data = tiny
    m, h = train_vega(data, p, 0, simcse_weight=0.5)
    assert sorted(h.epochs) == ["epoch", "loss", "mlm", "mlm_acc", "simcse"]
    for tot, a, b in zip(h["loss"], h["mlm"], h["simcse"]): assert abs(tot - (a + 0.5 * b)) < 1e-4
    m2, h2 = train_vega(data, p, 0, simcse_weight=0.5)
    assert h["loss"] == h2["loss"]
    texts = data["train"][:5]
    torch.testing.assert_close(m.embed(texts), m2.embed(texts), rtol=0, atol=0)
    mt, ht = train_vega(data, p, 0, simcse_weight=0.0)
    assert sorted(ht.epochs) == ["epoch", "loss", "mlm", "mlm_acc"] and ht["loss"] == ht["mlm"]

def test_train_vega_rejects_bad_knobs(tiny):
    p, data = tiny
    with pytest.raises(ValueError, match="simcse_weight"): train_vega(data, p, 0, simcse_weight=-0.1)
    with pytest.raises(ValueError, match="mlm_weight"): train_vega(data, p, 0, mlm_weight=0.0)
    with pytest.raises(ValueError, match="encoder must be 'tiny'"): train_vega(data, p, 0, encoder="minilm")
    with pytest.raises(TypeError, match="protocol"): train_vega(data, dict(epochs=1), 0)
    with pytest.raises(ValueError, match="rate"): train_vega(data, p, 0, rate=0.0)
    with pytest.raises(ValueError, match="unknown"): vega_step(MultiObjective(rtd=1.0), mask_id=2, vocab_size=50)
    with pytest.raises(TypeError, match="MultiObjective"): vega_step(dict(mlm=1.0), mask_id=2, vocab_size=50)

def test_token_quality_fixed_masks_and_the_trivial_predictor(tiny):
    p, data = tiny
    held = heldout_sentences(data, 60, seed=1)
    assert len(held) == 60 and not set(held) & set(data["train"]) and held == heldout_sentences(data, 60, seed=1)
    seed_everything(0); m = sentence_encoder(data, p); m.mlm_head = MLMHead(m.dim, m.vocab_size)
    q1, q2 = token_quality(m, held), token_quality(m, held, batch_size=7)
    assert q1["tok_n"] == q2["tok_n"] > 0 and abs(q1["tok_acc"] - q2["tok_acc"]) < 1e-9 and abs(q1["tok_loss"] - q2["tok_loss"]) < 1e-5
    assert abs(q1["tok_loss"] - math.log(m.vocab_size)) < 1.0                  # an untrained head is near uniform
    u = unigram_quality(data["train"], data["tokenizer"], held)
    assert u["tok_n"] == q1["tok_n"] and 0 < u["tok_acc"] < 0.2
    with pytest.raises(ValueError, match="n must be"): heldout_sentences(data, 10 ** 7)
    with pytest.raises(ValueError, match="no head"): token_quality(sentence_encoder(data, p), held)

def test_unigram_quality_by_hand():
    tok = WordTokenizer(["b b b c"], vocab_size=10)
    b, c = tok.index["b"], tok.index["c"]
    # add-one counts over the two words: b 4, c 2 → p(b) = 2/3; every held-out token is predicted "b"
    u = unigram_quality(["b b b c"], tok, ["c b"], rate=1.0)
    assert u["tok_n"] == 2 and u["tok_acc"] == 0.5
    assert math.isclose(u["tok_loss"], -(math.log(2 / 3) + math.log(1 / 3)) / 2, rel_tol=1e-12)
