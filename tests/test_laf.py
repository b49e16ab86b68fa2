"LAF: splits, the extractor/head protocol, the losses on hand-computed cases, input errors, and a tiny end-to-end run."
import inspect, math
import pytest, torch
import torch.nn as nn
from contrastlab.methods.laf import (SplitClassifier, check_protocol, make_classifier, train_classifier, predict,
    class_removal_split, random_removal_split, noisy_label_split, RepVAE, vae_loss, LAFConfig, official_lrs, ue_loss, ra_loss,
    laf_unlearn, laf_repair, label_subset, UnlearningTask, evaluate_unlearning, geometry_report, neggrad_baseline, forgets,
    hides_membership)
from contrastlab.metrics import auc_standard_error, sorted_softmax_attack as mia_official

Y = torch.arange(1000) % 10

def blobs(n=400, seed=0, n_classes=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    centres = torch.randn(n_classes, 16, generator=torch.Generator().manual_seed(99)) * 3
    x = (centres[y] + torch.randn(n, 16, generator=g)).reshape(n, 1, 4, 4)
    return x, y

def test_class_removal_split():
    s = class_removal_split(Y, 3)
    assert len(s.forget) == 100 and bool((Y[s.forget] == 3).all()) and len(s.remain) == 900
    assert set(s.forget.tolist()).isdisjoint(s.remain.tolist()) and torch.equal(s.y_train, Y)
    idx, lab = s.matched_nonmembers(Y)
    assert bool((lab == 3).all()) and len(idx) == 100

def test_random_removal_split():
    s = random_removal_split(Y, seed=1)
    assert len(s.forget) == 5 * 40 and set(Y[s.forget].tolist()) == {5, 6, 7, 8, 9}
    assert torch.equal(s.forget, random_removal_split(Y, seed=1).forget)
    assert not torch.equal(s.forget, random_removal_split(Y, seed=2).forget)

def test_noisy_label_split():
    s = noisy_label_split(Y, seed=0)
    assert len(s.forget) == 5 * 60 and bool((s.y_train[s.forget] != Y[s.forget]).all())      # every flipped label is wrong
    assert torch.equal(s.y_train[s.remain], Y[s.remain])
    big = noisy_label_split(torch.arange(20000) % 10, seed=0)
    assert 9 in big.y_train[big.forget].tolist()                                              # the official bug is fixed...
    bug = noisy_label_split(torch.arange(20000) % 10, seed=0, faithful_bug=True)
    assert 9 not in bug.y_train[bug.forget].tolist()                                          # ...and can be restored
    idx, lab = s.matched_nonmembers(Y)
    assert len(idx) == 500 and bool((lab != Y[idx]).all())

def test_split_errors():
    with pytest.raises(ValueError, match="empty forget set"): class_removal_split(torch.tensor([0, 1, 2, 4]), 3)
    with pytest.raises(ValueError, match="whole training set"): class_removal_split(torch.zeros(10, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="must lie in"): class_removal_split(torch.tensor([0, 12]), 0)
    with pytest.raises(TypeError): class_removal_split(torch.rand(10), 0)

def test_protocol_and_shapes():
    torch.manual_seed(0)
    m = make_classifier((40,), 10)
    assert check_protocol(m, torch.randn(3, 40)) == 64
    with pytest.raises(TypeError, match="extractor/head protocol"): check_protocol(nn.Linear(4, 2))
    with pytest.raises(TypeError, match="nn.Module"): check_protocol("model")
    with pytest.raises(ValueError, match="does not match the model"): check_protocol(m, torch.randn(3, 50))
    with pytest.raises(ValueError, match=r"\(L,\) for signals"): make_classifier((4, 4))

def test_laf_input_errors():
    torch.manual_seed(0)
    m = make_classifier((40,), 10); x = torch.randn(64, 40)
    with pytest.raises(ValueError, match="x_forget is empty"): laf_unlearn(m, x[:0], x)
    with pytest.raises(ValueError, match="whole training set"): laf_unlearn(m, x, x[:0])
    with pytest.raises(ValueError, match="does not match the model"): laf_unlearn(m, torch.randn(8, 30), torch.randn(8, 30))
    with pytest.raises(ValueError, match="same per-row shape"): laf_unlearn(m, torch.randn(8, 30), x)
    with pytest.raises(TypeError, match="protocol"): laf_unlearn(nn.Linear(40, 10), x[:8], x[8:])
    with pytest.raises(TypeError, match="takes no labels"): laf_unlearn(m, (x[:8], torch.zeros(8, dtype=torch.long)), x[8:])
    with pytest.raises(TypeError, match="unknown LAF option"): laf_unlearn(m, x[:8], x[8:], labels=1)
    with pytest.raises(ValueError, match="decoder"): laf_unlearn(m, x[:8], x[8:], decoder="tanh")
    with pytest.raises(ValueError, match="use_ue / use_ra"): laf_unlearn(m, x[:8], x[8:], use_ue=False, use_ra=False)
    with pytest.raises(ValueError, match="labelled"): laf_repair(m, x[:0], torch.zeros(0, dtype=torch.long))

def test_signature_takes_no_labels():
    assert list(inspect.signature(laf_unlearn).parameters) == ["model", "x_forget", "x_remain", "config", "vaes", "overrides"]
    assert not any("label" in f or f in ("y", "targets") for f in LAFConfig.__dataclass_fields__)
    c = official_lrs(); assert (c.lr_ue, c.lr_ra) == (5e-5, 1e-4) and LAFConfig().lr_ue == 5e-4

def test_ra_loss_at_the_original():
    torch.manual_seed(0)
    h = nn.Linear(5, 4); xr, xf = torch.randn(6, 5), torch.randn(7, 5)
    # at h = h0 every distance is 0, so L_RA = Σ_r (0 − log Σ_f e^0) = −B_r log B_f
    er, ef = h(xr), h(xf)
    assert math.isclose(ra_loss(er, ef, er, ef, 20.0).item(), -6 * math.log(7), rel_tol=1e-6)

def test_ue_loss_linear_transform():
    torch.manual_seed(0)
    h = nn.Identity(); vr, vf = RepVAE(4, latent=2).eval(), RepVAE(4, latent=2).eval()
    xr, xf = torch.randn(5, 4), torch.randn(3, 4)
    torch.manual_seed(1); got = ue_loss(h(xr), h(xf), vr, vf, "linear")
    torch.manual_seed(1); want = vr.recon_error(xr).sum() - vf.recon_error(xf).sum()
    assert torch.allclose(got, want)
    with pytest.raises(ValueError, match="transform must be one of"): ue_loss(xr, xf, vr, vf, "saturate")
    torch.manual_seed(1); sat = ue_loss(h(xr), h(xf), vr, vf, "saturating")
    assert -3 * math.e < sat.item() < 5 * math.e      # each term of exp(ℓ/(ℓ+1)) lies in [1, e)

def test_vae_decoders_and_loss():
    torch.manual_seed(0)
    e = torch.randn(10, 8)
    lin, sig = RepVAE(8, decoder="linear"), RepVAE(8, decoder="sigmoid")
    out = sig(e)[0]; assert bool(((out > 0) & (out < 1)).all())
    rec, mu, logvar = lin(e, sample=False)
    with torch.no_grad():
        lin.mu.weight.zero_(); lin.mu.bias.zero_(); lin.logvar.weight.zero_(); lin.logvar.bias.zero_()
    torch.manual_seed(3); l1 = vae_loss(lin, e, kl_weight=1.0)
    torch.manual_seed(3); l0 = vae_loss(lin, e, kl_weight=0.0)
    assert torch.allclose(l1, l0)                     # q(z|e) = N(0, I): zero KL

def test_auc_standard_error_known_value():
    assert math.isclose(auc_standard_error(0.5, 100, 100), math.sqrt((0.25 + 99 * (1 / 3 - 0.25) * 2) / 1e4), rel_tol=1e-12)
    assert auc_standard_error(0.6, 1000, 1000) < auc_standard_error(0.6, 100, 100)

def test_mia_official_on_identical_outputs():
    torch.manual_seed(0)
    logits = torch.randn(400, 10)
    r = mia_official(logits[:100], logits[100:200], logits[200:300], logits[300:], logits[:100])
    assert 0.35 < r["mia"] < 0.65 and r["mia_attacker_acc"] > 0.7   # members seen in training are recognised; fresh draws are not

def test_bn_eval_mode_freezes_statistics():
    torch.manual_seed(0)
    m = make_classifier((40,), 10, bn=True); x = torch.randn(96, 40)
    train_classifier(m, x, torch.arange(96) % 10, epochs=1)
    bn = [b for b in m.extractor.modules() if isinstance(b, nn.BatchNorm1d)][0]
    before = bn.running_mean.clone()
    out, _ = laf_unlearn(m, x[:32], x[32:], epochs=1, vae_epochs=1)
    after = [b for b in out.extractor.modules() if isinstance(b, nn.BatchNorm1d)][0].running_mean
    assert torch.equal(before, after)
    out, _ = laf_unlearn(m, x[:32], x[32:], epochs=1, vae_epochs=1, bn_mode="train")
    assert not torch.equal(before, [b for b in out.extractor.modules() if isinstance(b, nn.BatchNorm1d)][0].running_mean)

def test_tiny_end_to_end():
    x, y = blobs(600); xt, yt = blobs(300, seed=1)
    torch.manual_seed(0)
    m = train_classifier(make_classifier((1, 4, 4), 3, emb_dim=16, width=8), x, y, epochs=10)
    split = class_removal_split(y, 0, n_classes=3)
    task = UnlearningTask(x, y, xt, yt, split, seed=0)
    heads = [p.clone() for p in m.head.parameters()]; ext = [p.clone() for p in m.extractor.parameters()]
    laf, hist = laf_unlearn(m, task.x_forget, task.x_remain, epochs=10, vae_epochs=5, lr_ue=5e-3, lr_ra=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(heads, m.head.parameters()))          # the input model is untouched
    assert all(torch.equal(a, b) for a, b in zip(ext, m.extractor.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(heads, laf.head.parameters()))        # LAF edits only the extractor
    assert len(hist["ue"]) == len(hist["ra"]) == 10 * math.ceil(len(split.forget) / 32)
    r0, r1 = evaluate_unlearning(m, task), evaluate_unlearning(laf, task)
    assert r0["acc_test_forget_classes"] > 90 and r1["acc_test_forget_classes"] < 20
    assert r1["acc_test_other_classes"] > 80 and len(r1["per_class_test"]) == 3
    assert all(0 <= r1[k] <= 1 for k in ("mia", "mia_attacker_acc", "loss_auc", "residual_auc"))
    lab = label_subset(len(split.remain), 0.1)
    assert len(lab) == round(0.1 * len(split.remain))
    rep = laf_repair(laf, task.x_remain[lab], task.y_remain[lab])
    assert all(torch.equal(a, b) for a, b in zip(laf.extractor.parameters(), rep.extractor.parameters()))
    g = geometry_report(laf, m, m, task)
    assert g["cos_to_original_remain"] > g["cos_to_original_forget"]
    ng = neggrad_baseline(m, task.x_forget, task.y_forget)
    assert not all(torch.equal(a, b) for a, b in zip(m.parameters(), ng.parameters()))

def test_forgets_passes_laf_and_fails_its_controls():
    "The notebook's forgetting check, on a tiny run: LAF passes it; the Original and an ablated LAF (no step size) fail it."
    x, y = blobs(600); xt, yt = blobs(300, seed=1)
    torch.manual_seed(0)
    m = train_classifier(make_classifier((1, 4, 4), 3, emb_dim=16, width=8), x, y, epochs=10)
    task = UnlearningTask(x, y, xt, yt, class_removal_split(y, 0, n_classes=3), seed=0)
    kw = dict(epochs=10, vae_epochs=5)
    laf, _ = laf_unlearn(m, task.x_forget, task.x_remain, lr_ue=5e-3, lr_ra=1e-2, **kw)
    still, _ = laf_unlearn(m, task.x_forget, task.x_remain, lr_ue=0.0, lr_ra=1e-7, **kw)
    r0, r1, r2 = (evaluate_unlearning(v, task) for v in (m, laf, still))
    assert forgets(r1, r0, 20, 10)
    assert not forgets(r0, r0, 20, 10) and not forgets(r2, r0, 20, 10)
    broken = dict(r1, acc_test_other_classes=r0["acc_test_other_classes"] - 11)     # forgets by breaking the rest
    assert not forgets(broken, r0, 20, 10)
    with pytest.raises(KeyError, match="evaluate_unlearning"): forgets(dict(acc=1), r0)

def test_hides_membership_fails_a_leaking_model():
    assert hides_membership(dict(loss_auc=0.51), 400, 100)
    assert not hides_membership(dict(loss_auc=0.63), 400, 100)      # the Original's hard-class signal is caught
    assert not hides_membership(dict(loss_auc=0.35), 400, 100)      # so is an inverted one
    with pytest.raises(KeyError, match="loss_auc"): hides_membership(dict(mia=0.5), 400, 100)
