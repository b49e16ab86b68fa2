"SPACE-2: the multi-view tree score on hand-worked frames, its batched form, and the semi-supervised loss in its SupCon and NT-Xent limits."
import math
import pytest, torch
from contrastlab.losses import sup_con_loss, info_nce_loss
from contrastlab.zoo.space2 import (VIEWS, semantic_tree, tree_multiview_score, tree_incidence, tree_scores, semi_supcon_loss,
                                    space2_loss, turn_frame)

INFORM = {"hotel": {"inform": {"area": ["north"]}, "find_hotel": {}}}
REQUEST = {"hotel": {"request": {"area": []}, "find_hotel": {}}}
BYE_TAXI = {"taxi": {"goodbye": {}, "book_taxi": {}}}
BYE_TRAIN = {"train": {"goodbye": {}, "find_train": {}}}
TWO_SLOTS = {"hotel": {"inform": {"area": "south", "stars": ["four stars"]}, "find_hotel": {}}}
FRAMES = [INFORM, REQUEST, BYE_TAXI, BYE_TRAIN, TWO_SLOTS]

def test_views_of_a_tree():
    t = semantic_tree(INFORM)
    assert set(t) == set(VIEWS) and len(VIEWS) == 10
    assert t["domain"] == {"hotel"} and t["act"] == {"inform", "find_hotel"} and t["value"] == {"north"}
    assert t["act-slot-value"] == {("inform", "area", "north")} and t["domain-act-slot-value"] == {("hotel", "inform", "area", "north")}

def test_hand_worked_scores():
    assert math.isclose(tree_multiview_score(INFORM, REQUEST), 4 / 15, rel_tol=1e-15)      # (1 + 1/3 + 1 + 1/3) / 10
    assert math.isclose(tree_multiview_score(BYE_TAXI, BYE_TRAIN), 1 / 9, rel_tol=1e-15)   # (0 + 1/3 + 0) / 3 views present
    # two slots against one: domain 1, acts 1, slots 1/2, values 0, domain-act 1, act-slot 1/2, slot-value 0,
    # domain-act-slot 1/2, act-slot-value 0, domain-act-slot-value 0
    assert math.isclose(tree_multiview_score(INFORM, TWO_SLOTS), (1 + 1 + 0.5 + 0 + 1 + 0.5 + 0 + 0.5 + 0 + 0) / 10, rel_tol=1e-15)

@pytest.mark.parametrize("a", FRAMES)
def test_identical_is_one_and_symmetric(a):
    assert tree_multiview_score(a, a) == 1.0
    for b in FRAMES: assert tree_multiview_score(a, b) == tree_multiview_score(b, a)

def test_disjoint_and_empty_are_zero():
    assert tree_multiview_score(INFORM, BYE_TAXI) == 0.0
    assert tree_multiview_score({}, INFORM) == 0.0 and tree_multiview_score({}, {}) == 0.0

def test_labels_are_cleaned():
    assert tree_multiview_score({" HOTEL ": {"Inform": {"area": "north"}, "find_hotel": {}}}, INFORM) == 1.0

def test_batched_equals_pairwise():
    fs = FRAMES + [None]
    x, v, voc = tree_incidence(fs)
    s = tree_scores(x, v)
    ref = torch.tensor([[tree_multiview_score(a or {}, b or {}) for b in fs] for a in fs], dtype=torch.float64)
    torch.testing.assert_close(s, ref, rtol=0, atol=1e-12)
    assert not x[-1].any()
    torch.testing.assert_close(tree_scores(x[:2], v, x), ref[:2], rtol=0, atol=1e-12)

def _batch(b=8, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, dtype=torch.float64, generator=g), torch.randn(b, d, dtype=torch.float64, generator=g)

def test_loss_reduces_to_hard_supcon_with_01_weights():
    a, b = _batch(); y = torch.tensor([0, 1, 1, 2, 0, 3, 2, 2])
    hard = sup_con_loss(torch.cat([a, b]), torch.cat([y, y]), 0.1)
    same = (y[:, None] == y[None]).double()
    torch.testing.assert_close(semi_supcon_loss(a, b, same, torch.ones(8, dtype=torch.bool), 0.1), hard, rtol=0, atol=1e-12)
    onehot = torch.nn.functional.one_hot(y).bool()
    torch.testing.assert_close(space2_loss(a, b, onehot, torch.zeros(4, dtype=torch.int64), 0.1), hard, rtol=0, atol=1e-12)

def test_loss_reduces_to_nt_xent_without_labels():
    a, b = _batch(seed=1)
    w = torch.rand(8, 8, dtype=torch.float64)
    torch.testing.assert_close(semi_supcon_loss(a, b, w, torch.zeros(8, dtype=torch.bool), 0.1), info_nce_loss(a, b, 0.1), rtol=0, atol=1e-12)
    x, v, _ = tree_incidence([None] * 8)
    torch.testing.assert_close(space2_loss(a, b, x, v, 0.1), info_nce_loss(a, b, 0.1), rtol=0, atol=1e-12)

def test_hand_worked_loss():
    e = torch.eye(2, dtype=torch.float64)
    x, v, _ = tree_incidence([INFORM, REQUEST])
    assert math.isclose(space2_loss(e, e, x, v, 1.0).item(), math.log(math.e + 2) - 1 / (1 + 8 / 15), rel_tol=1e-12)

def test_validation_messages():
    a, b = _batch(); lab = torch.ones(8, dtype=torch.bool); w = torch.ones(8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"weights must be \(8, 8\)"): semi_supcon_loss(a, b, w[:7], lab)
    with pytest.raises(ValueError, match="weights must be ≥ 0"): semi_supcon_loss(a, b, -w, lab)
    with pytest.raises(TypeError, match="labelled must be a bool tensor"): semi_supcon_loss(a, b, w, lab.long())
    with pytest.raises(ValueError, match="nothing to contrast"): semi_supcon_loss(a, b, w, ~lab, 0.1, 0.0)
    x, v, _ = tree_incidence([INFORM, REQUEST])
    with pytest.raises(ValueError, match=r"trees must have one row per row of z1 \(8\)"): space2_loss(a, b, x, v)
    with pytest.raises(TypeError, match="trees must be a bool tensor"): tree_scores(x.float(), v)
    with pytest.raises(ValueError, match="views must give the view of each"): tree_scores(x, v[:-1])
    with pytest.raises(TypeError, match=r"frame\['hotel'\] must be a dict"): semantic_tree({"hotel": ["inform"]})
    with pytest.raises(TypeError, match="every value of a frame must be a non-empty string"): semantic_tree({"hotel": {"inform": {"area": [3]}}})
    with pytest.raises(ValueError, match="a value needs a slot"): turn_frame("hotel", "find_hotel", "inform", None, "north")

def test_turn_frame():
    assert turn_frame("hotel", "find_hotel", "inform", "area", "north") == INFORM
    assert turn_frame("taxi", "book_taxi", "goodbye") == BYE_TAXI
