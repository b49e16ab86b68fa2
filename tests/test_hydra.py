"Unit tests for contrastlab.methods.hydra: masks, gated logits, the multi-positive loss against a float64 reference, gates, errors."
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from contrastlab.core import check_labels
from contrastlab.data import mnist1d_templates
from contrastlab.metrics import within_between_ratio
from contrastlab.methods.hydra import (LabelGate, OpenGate, gate_stats, gates_selective, pair_gates, partner_labels, hydra_masks,
                                       gated_logits, gated_multipos_loss, hydra_loss, HydraNet, HydraConfig, hydra_step)
from contrastlab.nets import Conv1dEncoder
from contrastlab.data import Augment1D, TwoViews


from contrastlab.losses.reference import reference_multipositive as reference


def setup(seed=0, B=10, D=5, C=3):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, D, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(B, D, dtype=torch.float64, generator=g)
    gate = torch.rand(B, D, dtype=torch.float64, generator=g)
    y = torch.arange(B) % C
    yp = y[torch.randperm(B, generator=g)]
    return z1, z2, gate, y, yp


def test_masks_worked_example():
    y = torch.tensor([0, 1, 2, 0]); yp = torch.tensor([1, 1, 0, 0])
    pos, excl = hydra_masks(y, yp, y)
    assert pos.int().tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1], [1, 0, 0, 1]]
    assert excl.int().tolist() == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert not (pos & excl).any()


@pytest.mark.parametrize("denominator", ["own", "all"])
@pytest.mark.parametrize("weighting", ["row", "total"])
@pytest.mark.parametrize("collapse", [True, False])
def test_loss_matches_reference(denominator, weighting, collapse):
    z1, z2, gate, y, yp = setup()
    pos, excl = hydra_masks(y, yp, y)
    L = gated_logits(z1, z2, gate, 7.0)
    ours = gated_multipos_loss(L, pos, excl, denominator=denominator, weighting=weighting, collapse=collapse)
    ref = reference(L, pos, excl, denominator, weighting)
    assert abs(ours.item() - ref.item()) < 1e-10
    g1 = torch.autograd.grad(ours, z1, retain_graph=True)[0]; g2 = torch.autograd.grad(ref, z1)[0]
    assert torch.allclose(g1, g2, atol=1e-10)


def test_logits_forms():
    z1, z2, gate, *_ = setup()
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    head = gated_logits(z1, z2, gate, 3.0, "head")
    assert torch.allclose(head, 3.0 * torch.einsum("ik,ik,jk->ij", a, gate * gate, b))
    ren = gated_logits(z1, z2, gate, 3.0, "renorm")
    u = F.normalize(gate * z1, dim=1)                                   # (B, D)
    v = F.normalize(gate.unsqueeze(1) * z2.unsqueeze(0), dim=2)          # (B, B', D): candidates gated by the anchor's gate
    assert torch.allclose(ren, 3.0 * torch.einsum("ik,ijk->ij", u, v), atol=1e-12)
    # open gates: both forms reduce to the scaled cosine
    ones = torch.ones_like(gate)
    assert torch.allclose(gated_logits(z1, z2, ones, 2.0, "head"), 2.0 * a @ b.T)
    assert torch.allclose(gated_logits(z1, z2, ones, 2.0, "renorm"), 2.0 * a @ b.T)


def test_missing_positives_reported():
    y = torch.tensor([0, 0, 1, 1]); L = torch.randn(4, 4)
    pos, excl = hydra_masks(y, torch.tensor([2, 2, 2, 2]), y)
    with pytest.raises(ValueError, match="no anchor of the batch"): gated_multipos_loss(L, pos, excl)
    with pytest.raises(ValueError, match="no anchor of the batch"): gated_multipos_loss(L, pos, excl, missing="skip")
    pos, excl = hydra_masks(y, torch.tensor([1, 2, 0, 2]), y)
    with pytest.raises(ValueError, match="2 of 4 anchors have no positive"): gated_multipos_loss(L, pos, excl)
    st = {}
    loss = gated_multipos_loss(L, pos, excl, missing="skip", stats=st)
    assert st == dict(n_anchors=4, n_missing=2, n_pairs=4) and torch.isfinite(loss)
    with pytest.raises(ValueError, match="overlap"): gated_multipos_loss(L, pos, pos)
    with pytest.raises(ValueError, match="bool mask"): gated_multipos_loss(L, pos.float(), excl)


def test_label_errors():
    gate = LabelGate(3, 8)
    with pytest.raises(ValueError, match=r"\[0, 3\)"): gate(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"min -1"): gate(torch.tensor([-1, 0]), torch.tensor([0, 0]))
    with pytest.raises(TypeError, match="integer tensor"): gate(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="torch.Tensor"): check_labels([0, 1], 3)
    with pytest.raises(ValueError, match="1-D"): check_labels(torch.zeros(2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="same length"): gate(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"): partner_labels(torch.tensor([5]), "arbitrary", 3)
    with pytest.raises(ValueError, match="pairing must be one of"): partner_labels(torch.tensor([0]), "random", 3)


def test_gate_forms():
    torch.manual_seed(0)
    fused, prod = LabelGate(4, 6, form="fused").eval(), LabelGate(4, 6, form="product").eval()
    a, b = torch.tensor([0, 1, 3]), torch.tensor([2, 1, 0])
    g = fused(a, b)
    assert g.shape == (3, 6) and ((g > 0) & (g < 1)).all()
    assert torch.allclose(g, fused(b, a))                             # fused gates are symmetric in the pair
    assert torch.allclose(prod(a, b), prod(a) * prod(b))              # product = product of the single-class gates
    G = pair_gates(prod)
    assert G.shape == (4, 4, 6) and torch.allclose(G[0, 2], prod(a[:1], b[:1])[0].detach())
    assert prod.training is False
    assert (OpenGate(4, 6)(a, b) == 1).all()


def test_partner_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (50,), generator=g)
    assert torch.equal(partner_labels(y, "identical", 5), y)
    d = partner_labels(y, "distinct", 5, g)
    assert (d != y).all() and ((d >= 0) & (d < 5)).all()
    a = partner_labels(y, "arbitrary", 5, g)
    assert sorted(a.tolist()) == sorted(y.tolist())


def test_gate_stats_and_scale_clamp():
    s = gate_stats(torch.full((4, 8), 0.5))
    assert abs(s["entropy"] - math.log(2)) < 1e-6 and s["gate_mean"] == 0.5 and s["activation"] == 4.0 and s["mid_fraction"] == 1.0
    assert gate_stats(torch.ones(2, 3))["entropy"] < 1e-5
    with pytest.raises(ValueError, match=r"\[0, 1\]"): gate_stats(torch.full((2, 2), 1.5))
    m = HydraNet(Conv1dEncoder(), 3)
    assert abs(m.scale.item() - 10.0) < 1e-5
    with torch.no_grad(): m.logit.log_scale.fill_(10.0)
    assert m.scale.item() == 100.0
    with pytest.raises(ValueError, match="exceeds max_scale"): HydraNet(Conv1dEncoder(), 3, init_temperature=0.001)


def test_within_between_ratio():
    y = torch.tensor([0, 0, 1, 1])
    z = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    assert within_between_ratio(z, y) == 0.0
    z2 = torch.tensor([[1.0, 0], [3, 0], [0, 1], [0, 3]])   # Σ_W = 1+1+1+1 = 4, Σ_B = 4 × (1² + 1²) = 8
    assert abs(within_between_ratio(z2, y) - 4 / 8) < 1e-12


def test_step_runs_and_logs():
    torch.manual_seed(0)
    x = torch.randn(64, 40); y = torch.arange(64) % 4
    for pairing, sym, form in (("arbitrary", False, "head"), ("identical", True, "renorm"), ("distinct", False, "head")):
        m = HydraNet(Conv1dEncoder(), 4)
        step = hydra_step(TwoViews(Augment1D()), x, y, HydraConfig(pairing=pairing, logits_form=form, symmetric=sym, missing="skip"))
        out = step(m, torch.arange(32))
        assert torch.isfinite(out["loss"]) and 0 < out["gate_mean"] < 1 and out["scale"] == pytest.approx(10.0)
        out["loss"].backward()
        assert m.gate.embedding.weight.grad is not None and m.logit.log_scale.grad is not None
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        hydra_step(TwoViews(Augment1D()), x, y + 1, HydraConfig())(HydraNet(Conv1dEncoder(), 4), torch.arange(64))


def test_templates():
    from mnist1d.data import get_templates
    t = mnist1d_templates(30, seed=0)
    assert t["x"].shape == (30, 12) and list(t["y"]) == list(range(30))
    assert np.allclose(t["x"][:10], get_templates()["x"])
    assert np.allclose(t["x"][:, 0], 0)
    assert np.allclose(t["x"], mnist1d_templates(30, seed=0)["x"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gate_check_fails_on_its_controls(seed):
    "The notebook's gate check must fail on an untrained gate (as HydraNet initialises it) and on forced-open gates."
    torch.manual_seed(seed)
    for C in (10, 30):
        m = HydraNet(Conv1dEncoder(), C)
        s = gate_stats(pair_gates(m.gate))
        assert s["entropy"] > 0.6 and not gates_selective(s), s
        assert not gates_selective(gate_stats(pair_gates(OpenGate(C, 64))))
    assert gates_selective(dict(entropy=0.3, gate_mean=0.3))
    assert not gates_selective(dict(entropy=0.05, gate_mean=0.3))     # saturated
