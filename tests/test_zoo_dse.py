"""DSE (Barkan et al. 2020): pair features and the siamese head by hand, the distillation loss against a float64 row-by-row
reference and against the official trainer's formula (written from reading it: task loss mean, then
((pred − teacher)²).sum(1).mean(), mixed by the distillation coefficient), error messages, the cross-encoder's pair
sequence, the cached one-query-against-N scoring, and the trainers."""
import math
import pytest
import torch
import torch.nn.functional as F
from contrastlab.registry import get_paper, get_loss
from contrastlab.data.sentences import frame_pairs
from contrastlab.sentence import sentence_protocol, sentence_data, sentence_encoder
from contrastlab.zoo.dse import (pair_features, SiameseHead, distill_pair_loss, DistillPairLoss, CrossEncoder, cross_encoder, SiameseStudent,
                                 embedding_cache, one_to_many, pair_scores, cached_pair_scores, train_cross_encoder, train_dse)

# ---- pair features and the head -------------------------------------------------------------------------------
def test_pair_features_hand_worked():
    u = torch.tensor([[1.0, -2.0], [0.5, 0.0]]); v = torch.tensor([[3.0, 1.0], [0.5, 2.0]])
    want = torch.tensor([[1.0, -2.0, 3.0, 1.0, 3.0, -2.0, 2.0, 3.0], [0.5, 0.0, 0.5, 2.0, 0.25, 0.0, 0.0, 2.0]])
    assert torch.equal(pair_features(u, v), want)

def test_head_is_fc_relu_fc_over_the_features():
    torch.manual_seed(0)
    h = SiameseHead(3, hidden=(5,))
    u, v = torch.randn(4, 3), torch.randn(4, 3)
    x = torch.cat([u, v, u * v, (u - v).abs()], 1)
    want = h.fc[1](torch.relu(h.fc[0](x)))
    torch.testing.assert_close(h(u, v), want)
    d = SiameseHead(3, hidden=(), mode="dot")
    torch.testing.assert_close(d(u, v), d.fc[0]((u * v).sum(1, keepdim=True)))

def test_head_bad_inputs():
    with pytest.raises(ValueError, match="mode"): SiameseHead(3, mode="cos")
    with pytest.raises(TypeError, match="hidden"): SiameseHead(3, hidden=512)
    with pytest.raises(ValueError, match="same shape"): pair_features(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-finite"): pair_features(torch.tensor([[float("nan")]]), torch.zeros(1, 1))

# ---- the loss ---------------------------------------------------------------------------------------------------
def test_loss_hand_worked():
    p, y, t = torch.tensor([0.2, 0.9]), torch.tensor([0.0, 1.0]), torch.tensor([0.4, 0.5])
    assert math.isclose(distill_pair_loss(p, y, t).item(), 0.0625, rel_tol=1e-6)
    assert math.isclose(distill_pair_loss(p, y, t, labeled=torch.tensor([True, False])).item(), 0.1, rel_tol=1e-6)
    assert math.isclose(distill_pair_loss(p, y, t, lam=0.25).item(), 0.5 * (0.75 * 0.04 + 0.25 * 0.04 + 0.75 * 0.01 + 0.25 * 0.16), rel_tol=1e-6)

def _row_by_row(pred, target, teacher, lam, task, labeled):
    rows = []
    for i in range(len(pred)):
        d = ((pred[i] - teacher[i]) ** 2).sum()
        if not labeled[i]: rows.append(d); continue
        if task == "mse": t = ((pred[i] - target[i]) ** 2).sum()
        elif task == "bce":
            x, z = pred[i], target[i]
            t = (torch.clamp(x, min=0) - x * z + torch.log1p(torch.exp(-x.abs()))).sum()
        else: t = -torch.log_softmax(pred[i], 0)[target[i]]
        rows.append((1 - lam) * t + lam * d)
    return sum(rows) / len(rows)

@pytest.mark.parametrize("task,K", [("mse", 1), ("mse", 3), ("bce", 1), ("ce", 4)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_loss_against_row_by_row_float64(task, K, lam):
    g = torch.Generator().manual_seed(K)
    P = torch.randn(7, K, dtype=torch.float64, generator=g, requires_grad=True)
    T = torch.randn(7, K, dtype=torch.float64, generator=g, requires_grad=True)
    Y = torch.randint(0, K, (7,), generator=g) if task == "ce" else (torch.rand(7, K, dtype=torch.float64, generator=g) > 0.5).double()
    lab = torch.tensor([True, True, False, True, False, True, True])
    ours, ref = distill_pair_loss(P, Y, T, lam, task, labeled=lab), _row_by_row(P, Y, T, lam, task, lab)
    assert abs(ours.item() - ref.item()) < 1e-12
    for a, b in zip(torch.autograd.grad(ours, (P, T)), torch.autograd.grad(ref, (P, T))): torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

@pytest.mark.parametrize("task", ["mse", "bce", "ce"])
def test_loss_matches_the_official_trainer_formula(task):
    # the official trainer: loss = loss_fn(y_pred, y) (torch's MSE / BCEWithLogits / CrossEntropy, mean reduction), then
    # (1 − c)·loss + c·((y_pred − logits)²).sum(dim=1).mean(); with one output unit (regression, binary) or class logits (ce)
    g = torch.Generator().manual_seed(3)
    K = 3 if task == "ce" else 1
    P = torch.randn(9, K, dtype=torch.float64, generator=g); T = torch.randn(9, K, dtype=torch.float64, generator=g)
    Y = torch.randint(0, K, (9,), generator=g) if task == "ce" else torch.rand(9, K, dtype=torch.float64, generator=g).round()
    base = dict(mse=F.mse_loss, bce=F.binary_cross_entropy_with_logits, ce=F.cross_entropy)[task](P, Y)
    official = 0.5 * base + 0.5 * ((P - T) ** 2).sum(dim=1).mean()
    assert abs(distill_pair_loss(P, Y, T, 0.5, task).item() - official.item()) < 1e-12

def test_default_lambda_is_the_official_one():
    import inspect
    assert inspect.signature(distill_pair_loss).parameters["lam"].default == 0.5

def test_module_equals_function_and_registry():
    P, Y, T = torch.randn(5, 1), torch.rand(5, 1), torch.randn(5, 1)
    assert DistillPairLoss(lam=0.3)(P, Y, T).item() == distill_pair_loss(P, Y, T, 0.3).item()
    paper = get_paper("dse")
    assert paper.family == "sentence" and paper.code == "microsoft/Distilled-Sentence-Embedding" and get_loss("distill_pair_loss").paper == "dse"

def test_loss_bad_inputs_name_the_parameter():
    P, Y, T = torch.randn(4, 1), torch.rand(4, 1), torch.randn(4, 1)
    with pytest.raises(ValueError, match="lam"): distill_pair_loss(P, Y, T, lam=-0.1)
    with pytest.raises(ValueError, match="task"): distill_pair_loss(P, Y, T, task="hinge")
    with pytest.raises(ValueError, match="teacher"): distill_pair_loss(P, Y, T[:3])
    with pytest.raises(ValueError, match="target"): distill_pair_loss(P, Y[:3], T)
    with pytest.raises(TypeError, match="labeled"): distill_pair_loss(P, Y, T, labeled=torch.ones(4))
    with pytest.raises(ValueError, match="labeled"): distill_pair_loss(P, Y, T, labeled=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="target"): distill_pair_loss(torch.randn(4, 3), torch.rand(4), torch.randn(4, 3), task="ce")
    with pytest.raises(ValueError, match="empty"): distill_pair_loss(P[:0], Y[:0], T[:0])

# ---- models on the family's data ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    p = sentence_protocol("ci")
    return p, sentence_data(p)

def test_cross_encoder_sequence_and_room_for_two_sentences(tiny):
    p, data = tiny
    ce = cross_encoder(data, p)
    assert isinstance(ce, CrossEncoder) and ce.encoder.tokenizer.max_len == 2 * p.max_len + 3 and data["tokenizer"].max_len == p.max_len
    tok = data["tokenizer"]
    ids, mask, types = ce.pair_tokens(["A boat ."], ["The dog barked loudly ."])
    words_a, words_b = tok(["A boat ."])[0][0].tolist(), tok(["The dog barked loudly ."])[0][0].tolist()
    assert ids[0].tolist() == [tok.cls_id] + words_a + [tok.sep_id] + words_b + [tok.sep_id]
    assert types[0].tolist() == [0] * (len(words_a) + 2) + [1] * (len(words_b) + 1) and bool(mask.all())
    with pytest.raises(ValueError, match="same length"): ce.pair_tokens(["a"], ["b", "c"])

def test_cached_scoring_equals_pairwise(tiny):
    p, data = tiny
    torch.manual_seed(0)
    st = SiameseStudent(sentence_encoder(data, p)).eval(); ce = cross_encoder(data, p).eval()
    q, cands = data["bench"]["a"][3], data["bench"]["b"][:9]
    torch.testing.assert_close(one_to_many(st, q, st.cache(cands)), st([q] * 9, cands), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_to_many(ce, q, cands, batch_size=4), pair_scores(ce, [q] * 9, cands), rtol=1e-5, atol=1e-5)
    c = embedding_cache(st.encoder, cands + [q])
    torch.testing.assert_close(cached_pair_scores(st, [q] * 9, cands, c), pair_scores(st, [q] * 9, cands), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cache lacks"): cached_pair_scores(st, ["unseen sentence"], [q], c)
    with pytest.raises(TypeError, match="query"): one_to_many(st, [q], st.cache(cands))

def test_train_dse_lambda_endpoints_and_frozen_towers(tiny):
    p, data = tiny
    pairs, transfer = frame_pairs(96, 5), frame_pairs(40, 6)
    towers = sentence_encoder(data, p); w = towers.emb.weight.clone()
    gold = torch.as_tensor(pairs["gold"], dtype=torch.float32).reshape(-1, 1)
    x = (pairs["a"][:6], pairs["b"][:6])
    task, _ = train_dse(towers, pairs, None, 1, lam=0.0, epochs=2)
    zero, _ = train_dse(towers, pairs, torch.randn(96, 1), 1, lam=0.0, epochs=2)           # λ = 0: the teacher has no weight
    one, _ = train_dse(towers, pairs, gold, 1, lam=1.0, epochs=2)                          # λ = 1 onto a teacher that is the gold: the task
    torch.testing.assert_close(task(*x), zero(*x), rtol=0, atol=0)
    torch.testing.assert_close(task(*x), one(*x), rtol=1e-5, atol=1e-6)
    dse, h = train_dse(towers, pairs, torch.randn(96, 1), 1, transfer=transfer, transfer_scores=torch.randn(40, 1), epochs=1)
    assert len(h.epochs["loss"]) == 1 and not torch.allclose(dse(*x), task(*x))
    assert torch.equal(towers.emb.weight, w)
    with pytest.raises(ValueError, match="teacher_scores"): train_dse(towers, pairs, None, 0)
    with pytest.raises(ValueError, match="transfer"): train_dse(towers, pairs, gold, 0, transfer=transfer)
    with pytest.raises(ValueError, match="teacher_scores"): train_dse(towers, pairs, gold[:5], 0)

def test_train_cross_encoder_learns_on_its_pairs(tiny):
    p, data = tiny
    pairs = frame_pairs(128, 9)
    te, h = train_cross_encoder(data, p, 0, pairs, epochs=2)
    assert len(h.epochs["loss"]) == 2 and all(math.isfinite(v) for v in h.epochs["loss"])
    assert pair_scores(te, pairs["a"][:3], pairs["b"][:3]).shape == (3, 1)
    with pytest.raises(ValueError, match="head_lr"): train_cross_encoder(data, p, 0, pairs, head_lr=0)
