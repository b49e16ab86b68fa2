"Unit tests for contrastlab.methods.aro: the scene world, the perturbations, tie-aware scoring, the towers and NegCLIP's loss."
import math
import numpy as np
import pytest
import torch
from contrastlab.losses import contrastive_loss
from contrastlab.data import SceneWorld, swap_scenes, perturb_words, ORDER_PERTURBATIONS, SWAPS, FLIP, tagged
from contrastlab.metrics import tie_aware_accuracy, DualEncoderScorer
from contrastlab.nets import TinyCLIP, BagOfWordsText, TextTransformer, ImageTower
from contrastlab.methods.aro import (swap_probe, order_probe, retrieval, hard_negative_captions, negclip_loss, train_negclip,
                                     bow_index, modality_gap, clip_scorer)


@pytest.fixture(scope="module")
def world(): return SceneWorld(8, 6, 4)


def test_world_sizes_and_sampling(world):
    assert world.n_captions == 8 * 7 * 6 * 5 * 4 and world.n_scenes == world.n_captions // 2
    assert SceneWorld(2, 2, 4).n_captions == 16
    sc = world.sample(2000, seed=3)
    assert sc.shape == (2000, 5) and (sc[:, 0] != sc[:, 3]).all() and (sc[:, 1] != sc[:, 4]).all()
    assert torch.equal(sc, world.sample(2000, seed=3)) and not torch.equal(sc, world.sample(2000, seed=4))
    with pytest.raises(ValueError): SceneWorld(9, 6)
    with pytest.raises(ValueError): SceneWorld(4, 4, 3)
    with pytest.raises(TypeError): world.sample(2.5)


def test_render_places_objects_on_the_stated_side(world):
    sc = world.sample(400, seed=1); im = world.render(sc, seed=2)
    assert im.dtype == torch.uint8 and im.shape == (400, 3, 32, 32)
    rgb = {i: torch.tensor(v) for i, v in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 255), (255, 128, 0)])}
    for (c1, s1, r, c2, s2), x in zip(sc.tolist(), im):
        def centre(c):
            m = (x == rgb[c][:, None, None]).all(0)
            ys, xs = torch.nonzero(m, as_tuple=True)
            return xs.float().mean(), ys.float().mean()
        (ax, ay), (bx, by) = centre(c1), centre(c2)
        if r == 0: assert ax < bx - 5
        if r == 1: assert ax > bx + 5
        if r == 2: assert ay < by - 5
        if r == 3: assert ay > by + 5


def _centre(x, c):
    rgb = torch.tensor([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 255), (255, 128, 0)][c])
    ys, xs = torch.nonzero((x == rgb[:, None, None]).all(0), as_tuple=True)
    return xs.float().mean(), ys.float().mean()


def test_render_does_not_leak_the_caption_order(world):
    "Sampling and rendering use separate streams: with the same seed, the drawn distance must not depend on the first colour."
    sc = world.sample(3000, seed=7); im = world.render(sc, seed=7)
    dist = torch.tensor([float(abs(_centre(x, s[0])[0] - _centre(x, s[3])[0]) + abs(_centre(x, s[0])[1] - _centre(x, s[3])[1]))
                         for s, x in zip(sc.tolist(), im)])
    means = torch.stack([dist[sc[:, 0] == c].mean() for c in range(8)])
    assert float(means.max() - means.min()) < 2.0, means
    assert not torch.equal(im, world.render(sc, seed=8))


def test_captions_parse_canonical(world):
    s = (0, 0, 1, 2, 1)
    cap = world.caption(s)
    assert cap == "a red circle right of a blue square"
    assert world.parse(cap) == s and world.parse("a red circle next to a blue square") is None
    assert world.canonical(s) == (2, 1, 0, 0, 0)
    assert world.describes("a blue square left of a red circle", s)
    assert not world.describes("a red circle left of a blue square", s)
    tok = world.tokenize([cap, "a red circle above a blue square"])
    assert tok.shape == (2, 8) and tok[1, -1] == 0 and tok[0, -1] != 0
    with pytest.raises(ValueError): world.tokenize(["a purple circle above a blue square"])
    with pytest.raises(TypeError): world.tokenize("a red circle above a blue square")


def test_swaps_are_false_and_keep_the_bag(world):
    sc = world.sample(500, seed=2)
    caps = world.captions(sc)
    for kind in SWAPS:
        neg = world.captions(swap_scenes(sc, kind))
        assert all(not world.describes(n, s) for n, s in zip(neg, sc.tolist()))
        if kind != "relation_flip": assert all(sorted(a.split()) == sorted(b.split()) for a, b in zip(caps, neg))
    rf = swap_scenes(sc, "relation_flip")
    assert torch.equal(rf[:, [0, 1, 3, 4]], sc[:, [0, 1, 3, 4]])             # the relation flip keeps the object order
    assert set(hard_negative_captions(world, sc)) == set(SWAPS)
    with pytest.raises(ValueError): swap_scenes(sc, "colour_swap")


def test_order_perturbations():
    rng = np.random.default_rng(0)
    words, roles = tagged("a red/J car/N is parked behind a white/J van/N")
    for kind in ORDER_PERTURBATIONS:
        p = perturb_words(words, roles, kind, rng)
        assert p is not None and p != words and sorted(p) == sorted(words)
    p = perturb_words(words, roles, "shuffle_nouns_and_adj", rng)
    assert [w for w, r in zip(p, roles) if r not in ("NOUN", "ADJ")] == [w for w, r in zip(words, roles) if r not in ("NOUN", "ADJ")]
    p = perturb_words(words, roles, "shuffle_within_trigrams", rng)
    assert all(sorted(p[i:i + 3]) == sorted(words[i:i + 3]) for i in range(0, len(words), 3))
    assert perturb_words(["the", "dog"], ["OTHER", "NOUN"], "shuffle_nouns_and_adj", rng) is None    # cannot differ: no duplicate option
    with pytest.raises(ValueError): perturb_words(words, roles[:-1], "shuffle_trigrams", rng)


def test_tie_aware_accuracy():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.2]])
    assert tie_aware_accuracy(s, 0) == dict(accuracy=0.5, ties=2, n=4)
    s5 = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    assert math.isclose(tie_aware_accuracy(s5, 0)["accuracy"], 1 / 3)
    assert tie_aware_accuracy(s5, torch.tensor([3]))["accuracy"] == 0.0
    with pytest.raises(ValueError): tie_aware_accuracy(torch.ones(3, 1))
    with pytest.raises(TypeError): tie_aware_accuracy(torch.ones(3, 2, dtype=torch.long))


def test_bag_of_words_control_ties_exactly(world):
    torch.manual_seed(0)
    m = TinyCLIP(world, "bow").eval()
    sc = world.sample(300, seed=5); im = world.render(sc, seed=5)
    scorer = clip_scorer(m)
    for kind in ("attribute_swap", "object_swap"):
        r = swap_probe(scorer, im, sc, world, kind)
        assert r["accuracy"] == 0.5 and r["ties"] == 300 and (r["margins"] == 0).all()
    r = order_probe(scorer, im, sc, world)
    assert r["ties"] == 300 and abs(r["accuracy"] - 0.2) < 1e-12
    bi = bow_index(m.embed_texts, world.captions(sc[:50]), world)
    assert all(bi[k]["index"] > 1 - 1e-6 for k in ORDER_PERTURBATIONS)
    # the control: a text transformer with positions, untrained, must not tie (else the tie check could not fail)
    t = clip_scorer(TinyCLIP(world, "transformer", pos_std=0.1).eval())
    assert all(swap_probe(t, im, sc, world, kind)["ties"] < 300 for kind in ("attribute_swap", "object_swap"))


def test_registered_claims_name_the_notebooks_metrics():
    "Every claim of the paper compares two of the per-seed metrics the notebook records (<model>_<probe>)."
    from contrastlab.registry import get_paper
    p = get_paper("aro")
    models = ("clip", "clip_ft", "negclip", "bow", "untrained", "clip_2x2")
    probes = ("attribute_swap", "object_swap", "relation_flip", "order", "R1", "R5")
    known = {f"{m}_{k}" for m in models for k in probes}
    assert p.claims and p.deviations
    for c in p.claims:
        assert all(t.strip() in known for t in c.metric.split(" - ")), c.metric
    assert any("clip_ft" in c.metric for c in p.claims)                      # the paper's control is in the claims


def test_transformer_text_is_order_sensitive(world):
    torch.manual_seed(0)
    t = TextTransformer(len(world.vocab), pos_std=1.0).eval()
    tok = world.tokenize(["a red circle left of a blue square", "a blue square left of a red circle"])
    z = t(tok)
    assert not torch.allclose(z[0], z[1])
    b = BagOfWordsText(len(world.vocab)).eval()(tok)
    assert torch.equal(b[0], b[1])


def test_image_tower_pooling():
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert ImageTower(pool="flatten")(x).shape == (2, 64) and ImageTower(pool="avg")(x).shape == (2, 64)
    assert ImageTower().fc.in_features == 128 * 16 and ImageTower(pool="avg").fc.in_features == 128
    with pytest.raises(ValueError): ImageTower()(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError): ImageTower(pool="max")


def test_retrieval_counts_same_scene_twins(world):
    sc = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 0, 0], [2, 2, 2, 3, 3]])       # rows 0 and 1: the same scene, two captions
    ids = world.scene_ids(sc)
    assert ids[0] == ids[1] != ids[2]
    class Fixed:                                                                # a scorer that always retrieves caption 0
        def __call__(self, images, texts): return torch.tensor([[1.0, 0.0, 0.0]] * len(images))
    r = retrieval(Fixed(), torch.zeros(3, 3, 32, 32), sc, world)
    assert math.isclose(r["R@1"], 2 / 3) and math.isclose(r["R@1_strict"], 1 / 3) and math.isclose(r["twin_fraction"], 2 / 3)


def test_negclip_loss_is_the_loss_core():
    torch.manual_seed(0)
    i, t, n = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 8)
    scale = torch.tensor(10.0)
    nz = lambda z: z / z.norm(dim=1, keepdim=True)
    i2t = torch.nn.functional.cross_entropy(scale * nz(i) @ torch.cat([nz(t), nz(n)]).T, torch.arange(6))
    t2i = torch.nn.functional.cross_entropy(scale * nz(t) @ nz(i).T, torch.arange(6))
    assert torch.allclose(negclip_loss(i, t, n, scale), (i2t + t2i) / 2, atol=1e-6)
    # a hard negative identical to the true caption costs exactly log 2 more in the image→text direction than none at all
    same = negclip_loss(i, t, t, scale) - (torch.nn.functional.cross_entropy(scale * nz(i) @ nz(t).T, torch.arange(6)) + t2i) / 2
    assert torch.allclose(same, torch.tensor(math.log(2) / 2), atol=1e-5)
    with pytest.raises(ValueError): negclip_loss(i, t, n[:5], scale)


def test_train_negclip_runs_and_changes_weights(world):
    torch.manual_seed(0)
    m = TinyCLIP(world, "transformer")
    sc = world.sample(256, seed=1); im = world.render(sc, seed=1)
    before = [p.detach().clone() for p in m.parameters()]
    h = train_negclip(m, im, sc, epochs=1, batch_size=128, progress="none")
    assert len(h["loss"]) == 2 and all(math.isfinite(v) for v in h["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_modality_gap_and_scorer():
    z = torch.randn(10, 4)
    assert modality_gap(z, z) == 0.0 and modality_gap(z, -z) > 0
    sc = DualEncoderScorer(lambda x: x, lambda t: torch.stack([torch.tensor([1.0, 0.0]) if s == "x" else torch.tensor([0.0, 1.0]) for s in t]))
    imgs = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(sc(imgs, ["x", "y"]), torch.eye(2)) and torch.allclose(sc.pairs(imgs, ["y", "y"]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError): sc.pairs(imgs, ["x"])
