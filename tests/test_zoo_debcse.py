"""DebCSE: hand-worked propensity weights, the IPW balance property, the loss against the core's float64 reference (values and
gradients), its joint-permutation invariance, input validation and the trainer's interface."""
import pytest, torch
from contrastlab.core import generator
from contrastlab.losses.reference import reference_loss
from contrastlab.sentence import simcse_loss
from contrastlab.zoo.debcse import (surface_features, surface_cells, cell_propensity, propensity_weights, IPWPairSampler,
                                    debcse_batch, debcse_loss, DebCSELoss, length_probe, semantic_gate)

def test_hand_worked_weights():
    c = torch.tensor([[0, 0], [0, 1]])
    torch.testing.assert_close(cell_propensity(c), torch.tensor([[.75, .75], [.75, .25]], dtype=torch.float64))
    torch.testing.assert_close(propensity_weights(c), torch.tensor([[2 / 3, 2 / 3], [2 / 3, 2.]], dtype=torch.float64))

def test_weighted_histograms_are_uniform_over_cells():
    g = generator(0)
    cells = torch.multinomial(torch.tensor([1., 2, 4, 8]), 500, replacement=True, generator=g)
    h = torch.bincount(cells, weights=propensity_weights(cells), minlength=4) / 500
    torch.testing.assert_close(h, torch.full((4,), .25, dtype=torch.float64))

def test_negative_weights_hand_worked():
    nw = IPWPairSampler(clip=None).negative_weights(["a b c d", "e f g h", "i j k l"], ["a b c d", "e f g a", "i j k l"])
    want = torch.full((3, 3), 3 / 5, dtype=torch.float64); want.fill_diagonal_(0); want[0, 1] = 3.0
    torch.testing.assert_close(nw, want)

@pytest.mark.parametrize("b,tau", [(2, 1.0), (5, 0.1), (8, 0.05)])
def test_loss_against_float64_reference(b, tau):
    g = generator(b)
    z1 = torch.randn(b, 4, dtype=torch.float64, generator=g).requires_grad_(); z2 = torch.randn(b, 4, dtype=torch.float64, generator=g).requires_grad_()
    W = torch.rand(b, b, dtype=torch.float64, generator=g) * 2
    a, p = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    ref = reference_loss(a @ p.T, torch.eye(b, dtype=torch.bool), tau, neg_weight=W)
    ours = debcse_loss(z1, z2, W, tau)
    assert abs(ours.item() - ref.item()) < 1e-10
    for x, y in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(ref, (z1, z2))): torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(debcse_loss(z1, z2, None, tau), simcse_loss(z1, z2, tau))
    assert DebCSELoss(temperature=tau)(z1, z2, W).item() == ours.item()

def test_joint_permutation_invariance():
    g = generator(1); z1, z2 = torch.randn(6, 3, dtype=torch.float64, generator=g), torch.randn(6, 3, dtype=torch.float64, generator=g)
    W = torch.rand(6, 6, dtype=torch.float64, generator=g); perm = torch.randperm(6, generator=g)
    assert abs(debcse_loss(z1, z2, W).item() - debcse_loss(z1[perm], z2[perm], W[perm][:, perm]).item()) < 1e-12

def test_bad_inputs_name_the_parameter():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="neg_weight"): debcse_loss(z, z, torch.ones(3, 4))
    with pytest.raises(ValueError, match="neg_weight"): debcse_loss(z, z, -torch.ones(4, 4))
    with pytest.raises(ValueError, match="temperature"): debcse_loss(z, z, None, 0.0)
    with pytest.raises(ValueError, match="features"): surface_cells(torch.tensor([[1.5, 0.]]))
    with pytest.raises(ValueError, match="clip"): propensity_weights(torch.tensor([0, 1]), clip=0.5)
    with pytest.raises(TypeError, match="mask"): propensity_weights(torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="same length"): surface_features(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="a must be a list"): surface_features("a b", ["a"])
    with pytest.raises(ValueError, match="augmentations"): IPWPairSampler(augmentations=("crop",))
    with pytest.raises(TypeError, match="sampler"): debcse_batch(["a b", "c d"], None, generator(0))
    with pytest.raises(ValueError, match="semantic"): semantic_gate(torch.ones(2, 2, dtype=torch.float64), torch.ones(3, 3), 0.9)

def test_batch_and_probe_shapes():
    out = debcse_batch(["the cat sat on the mat", "a dog ran", "birds sing in the morning"], IPWPairSampler(), generator(2))
    assert len(out["positives"]) == 3 and out["neg_weight"].shape == (3, 3) and float(out["neg_weight"].diagonal().abs().sum()) == 0
    pr = length_probe(["the cat sat"], ["the cat sat on the mat"], [0.5])
    fm, fx = surface_features(pr["match_a"], pr["match_b"]), surface_features(pr["mismatch_a"], pr["mismatch_b"])
    assert fm[0, 0] == 1 and fx[0, 0] < 1 and torch.allclose(fm[:, 1], fx[:, 1])
