"contrastlab.methods.beclr: glyph data, episodes, OpTA, classifiers, DyCE memory modes, losses, a tiny training run."
import math
import numpy as np
import pytest, torch
from contrastlab.data import GLYPH_CHARS, CONFUSABLE, glyph_splits, render_glyphs, EpisodeSampler, GlyphAugment
from contrastlab.nets import Conv4
from contrastlab.metrics import standardize, episode_features, nearest_prototype, logistic_on_prototypes, fewshot_accuracy, mean_ci
from contrastlab.ledger import check_effect
from contrastlab.methods.beclr import BECLRNet, DyCEMemory, uniformity_term, embedding_std, opta, opta_transform, train_beclr

def test_splits():
    sp = glyph_splits(0)
    assert (len(sp["base"]), len(sp["val"]), len(sp["novel"])) == (34, 8, 12) and len(GLYPH_CHARS) == 54
    assert sorted(sp["base"] + sp["val"] + sp["novel"]) == sorted(GLYPH_CHARS)
    for grp in CONFUSABLE:
        assert sum(any(c in sp[k] for c in grp) for k in sp) == 1, grp
    assert not set("cosvwxzl") & set(GLYPH_CHARS)
    assert glyph_splits(0) == sp and glyph_splits(1) != sp
    with pytest.raises(ValueError): glyph_splits(0, n_val=30, n_novel=30)

def test_render():
    x, y = render_glyphs("AB", 3, seed=1)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0 <= x.min() and x.max() <= 1 and x.mean() > 0.05
    assert torch.equal(x, render_glyphs("AB", 3, seed=1)[0]) and not torch.equal(x, render_glyphs("AB", 3, seed=2)[0])
    with pytest.raises(ValueError): render_glyphs(["AB"], 2)

def test_episode_sampler():
    y = torch.arange(8).repeat_interleave(20)[torch.randperm(160, generator=torch.Generator().manual_seed(0))]
    ep = EpisodeSampler(y, 5, 2, 7, seed=3).sample(50)
    assert ep["support"].shape == (50, 5, 2) and ep["query"].shape == (50, 5, 7) and ep["classes"].shape == (50, 5)
    for e in range(50):
        assert len(set(ep["classes"][e].tolist())) == 5
        for j in range(5):
            ids = torch.cat([ep["support"][e, j], ep["query"][e, j]])
            assert len(set(ids.tolist())) == 9 and (y[ids] == ep["classes"][e, j]).all()
    again = EpisodeSampler(y, 5, 2, 7, seed=3).sample(50)
    assert all(torch.equal(ep[k], again[k]) for k in ep)
    with pytest.raises(ValueError, match="classes"): EpisodeSampler(y, 9, 1, 1)
    with pytest.raises(ValueError, match="shots"): EpisodeSampler(y, 5, 10, 15)
    with pytest.raises(TypeError): EpisodeSampler(y.float())

def clustered(E=20, N=5, Q=15, D=16, spread=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(E, N, D, generator=g) * 3
    q = (centres.unsqueeze(2) + spread * torch.randn(E, N, Q, D, generator=g)).reshape(E, N * Q, D)
    return centres, q

def test_opta_moves_prototypes_to_query_clusters():
    centres, q = clustered()
    p0 = centres + 1.0 * torch.randn(centres.shape, generator=torch.Generator().manual_seed(5))
    p1 = opta(p0, q, passes=1, eps=0.01)
    cm = q.reshape(20, 5, 15, -1).mean(2)
    assert (p1 - cm).norm(dim=2).max() < 0.05 < (p0 - cm).norm(dim=2).min()
    assert torch.allclose(opta(p0, q, passes=3, ratio=0.0), p0)
    mix = opta(p0, q, passes=1, ratio=0.7)
    assert torch.allclose(mix, 0.7 * opta(p0, q, passes=1) + 0.3 * p0, atol=1e-5)
    with pytest.raises(ValueError): opta(p0, q[:3])
    with pytest.raises(ValueError): opta(p0, q, ratio=1.5)
    bad = q.clone(); bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"): opta(p0, bad)

def test_fewshot_accuracy_and_lr_match_sklearn():
    from sklearn.linear_model import LogisticRegression
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat_interleave(20)
    feats = torch.randn(6, 32, generator=g)[y] * 2 + torch.randn(120, 32, generator=g)
    ep = EpisodeSampler(y, 5, 1, 15, seed=0).sample(30)
    acc = fewshot_accuracy(feats, ep)
    assert acc.shape == (30,) and acc.mean() > 0.9
    sup, qry, yq = episode_features(feats, ep)
    pred = logistic_on_prototypes(sup.mean(2), qry)
    for e in range(5):
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(sup[e].mean(1).numpy(), np.arange(5))
        assert (clf.predict(qry[e].numpy()) == pred[e].numpy()).mean() >= 0.98
    assert torch.allclose(standardize(feats).mean(1), torch.zeros(120), atol=1e-5)
    m, h = mean_ci(torch.tensor([0.5, 0.7, 0.6, 0.6]))
    assert abs(m - 60) < 1e-4 and abs(h - 1.96 * torch.tensor([50., 70, 60, 60]).std().item() / 2) < 1e-4
    with pytest.raises(ValueError): mean_ci(torch.tensor([0.5]))

def blobs(n_cls=8, per=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(n_cls, d, generator=g), dim=1)
    y = torch.arange(n_cls).repeat(per)
    return c[y] + 0.08 * torch.randn(len(y), d, generator=g), y

def test_dyce_memory_fill_cluster_and_nmi():
    z, y = blobs()
    mem = DyCEMemory(16, size=256, n_clusters=8, topk=3, mode="intended", seed=0)
    for i in range(0, 256, 64): mem.enqueue(z[i:i + 64], y[i:i + 64])
    assert mem.full and mem.clustered and mem.nmi() > 0.9
    mem.enqueue(z[256:320], y[256:320])
    assert mem.nmi() > 0.9 and mem.cluster_sizes().sum() == 256
    nb = mem.retrieve(z[320:330])
    assert nb.shape == (10, 3, 16)
    assert ((nb * torch.nn.functional.normalize(z[320:330], dim=1)[:, None]).sum(2) > 0.8).all()   # neighbours from the own blob
    with pytest.raises(ValueError): mem.enqueue(torch.randn(4, 7))
    with pytest.raises(RuntimeError): DyCEMemory(16, 64, 4).retrieve(z[:3])
    with pytest.raises(ValueError): DyCEMemory(16, 64, 4, mode="paper")

def test_official_mode_sign_and_self_retrieval():
    z, y = blobs()
    mems = {m: DyCEMemory(16, size=256, n_clusters=8, mode=m, seed=0) for m in ("official", "intended")}
    for m in mems.values():
        for i in range(0, 256, 64): m.enqueue(z[i:i + 64], y[i:i + 64])
    zn = torch.nn.functional.normalize(z[256:384], dim=1)
    sim = {m: (zn * mem.prototypes[mem.assign_batch(zn)]).sum(1).mean().item() for m, mem in mems.items()}
    assert sim["intended"] > 0.9 and sim["official"] < sim["intended"] - 0.5      # exp(+distance) sends samples far away
    # enqueue-then-retrieve (the official order) finds the sample itself; retrieve-then-enqueue (intended) cannot
    it = mems["intended"]; nb = it.retrieve(z[256:320], 1)[:, 0]
    assert ((nb * torch.nn.functional.normalize(z[256:320], dim=1)).sum(1) < 1 - 1e-4).all()
    it.enqueue(z[256:320]); nb = it.retrieve(z[256:320], 1)[:, 0]
    assert torch.allclose((nb * torch.nn.functional.normalize(z[256:320], dim=1)).sum(1), torch.ones(64), atol=1e-5)

def test_uniformity_term_and_std():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double()
    rows = []
    for i in range(12):
        js = [j for j in range(12) if j != i and j != (i + 6) % 12]
        rows.append(sum(math.exp(float(z[i] @ z[j]) / 2.0) for j in js) / 10)
    assert abs(uniformity_term(z1, z2, 2.0).item() - math.log(sum(rows) / 12)) < 1e-5
    assert embedding_std(torch.ones(10, 8)) == 0.0
    assert abs(embedding_std(torch.randn(20000, 64, generator=g)) - 1 / 8) < 0.01

def test_networks_and_augment():
    x = torch.rand(4, 1, 28, 28)
    assert Conv4()(x).shape == (4, 64)
    net = BECLRNet(); z = net(x)
    assert z.shape == (4, 128) and net.predict(z).shape == (4, 128) and net.features(x).shape == (4, 64)
    wide = BECLRNet(pred_hidden=64, proj_bn=True)
    assert wide.predictor[0].out_features == 64 and isinstance(wide.projector[-1], torch.nn.BatchNorm1d) and wide(x).shape == (4, 128)
    a = GlyphAugment()(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1 and not torch.equal(a, x)
    with pytest.raises(ValueError): Conv4()(torch.rand(4, 28, 28))

@pytest.mark.parametrize("objective,dyce", [("simclr", "intended"), ("simclr", "official"), ("beclr", "intended"), ("beclr", "official")])
def test_tiny_training(objective, dyce):
    x, y = render_glyphs("ABCDEFGH", 24, seed=0)
    model, hist, mem = train_beclr(x, epochs=2, objective=objective, dyce=dyce, batch_size=32, memory_size=128, n_clusters=8,
                                   topk=2, dyce_start=1, labels=y, device="cpu", progress="none")
    assert np.isfinite(hist["loss"]).all() and hist.epochs["enhanced"][-1] == 1.0 and mem.clustered
    assert 0 <= hist.epochs["self_retrieved"][-1] <= 1
    if dyce == "intended": assert hist.epochs["self_retrieved"][-1] == 0.0
    assert np.isfinite(hist.epochs["memory_nmi"][-1])
    with pytest.raises(ValueError): train_beclr(x, epochs=1, dyce="paper")
    with pytest.raises(ValueError): train_beclr(x, epochs=1, labels=y[:5])
    with pytest.raises(TypeError, match="unknown BECLRConfig option"): train_beclr(x, epoch=1)

def test_beclr_knobs_train():
    x, y = render_glyphs("ABCDEFGH", 24, seed=0)
    model, hist, mem = train_beclr(x, epochs=1, objective="beclr", dyce=None, batch_size=32, momentum=(0.9, 1.0), pred_lr=10.0,
                                   pred_hidden=64, proj_bn=True, neg_weight=1.0, device="cpu", progress="none")
    assert np.isfinite(hist["loss"]).all() and mem is None and model.predictor[0].out_features == 64
    with pytest.raises(ValueError): train_beclr(x, epochs=1, pred_lr=0.0)

def opta_gain(feats, y, seed=0):
    ep = EpisodeSampler(y, 5, 1, 15, seed=seed).sample(200)
    m, h = mean_ci(fewshot_accuracy(feats, ep, transform=opta_transform(1)) - fewshot_accuracy(feats, ep))
    return dict(gain=m, ci=h)

def test_opta_check_fails_on_its_control():
    "The notebook's OpTA check (paired gain above 0) passes on separated classes and fails where the query clouds overlap."
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(40)
    centres = torch.randn(10, 32, generator=g)
    good = centres[y] * 2 + torch.randn(400, 32, generator=g) * 1.5
    overlapping = centres[y] * 0.15 + torch.randn(400, 32, generator=g) * 1.5
    holds = lambda r: r["gain"] - r["ci"] > 0
    rec = check_effect("OpTA gain", holds, opta_gain(good, y), {"overlapping classes": opta_gain(overlapping, y)})
    assert rec["controls"] == {"overlapping classes": False}
    with pytest.raises(AssertionError, match="effect not shown"):
        check_effect("OpTA gain", holds, opta_gain(overlapping, y), {"good": opta_gain(good, y)})

def test_dyce_nmi_rise_fails_for_a_frozen_encoder():
    "The notebook's DyCE check asks the memory's NMI to rise; a memory fed from fixed embeddings does not."
    z, y = blobs(n_cls=8, per=96)
    mem = DyCEMemory(16, size=256, n_clusters=8, seed=0)
    nmis = []
    for i in range(0, len(z), 64):
        mem.enqueue(z[i:i + 64], y[i:i + 64]); nmis.append(mem.nmi())
    nmis = [v for v in nmis if np.isfinite(v)]
    assert abs(nmis[-1] - nmis[0]) < 0.05
