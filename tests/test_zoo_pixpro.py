"""PixPro: the PPM on a hand-worked case, the positive-pair mask on hand-made boxes, the loss against a float64 literal-loop
transcription of the official `regression_loss` (no public package implements PixPro, so parity is with that transcription),
gradients, the crops, the momentum schedule and bad inputs."""
import math
import pytest, torch
import torch.nn.functional as F
from contrastlab.zoo.pixpro import (PixelPropagation, positive_pair_mask, cell_centers, pixpro_loss, PixProLoss, momentum_schedule,
                                    coord_crop, paste_digits, cell_labels, dense_setting, DenseEncoder, PixProModel)

R = 2 ** -0.5
WHOLE, FLIPPED = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0, 1.0]])

def reference_ppm(x, gamma, value):
    "y_i = Σ_j max(cos(x_i, x_j), 0)^γ · v_j / ‖v_j‖ with explicit loops (x, value: (C, N) float64)."
    n = x.shape[1]
    out = torch.zeros_like(value)
    for i in range(n):
        for j in range(n):
            w = max(F.cosine_similarity(x[:, i], x[:, j], dim=0).item(), 0.0) ** gamma
            out[:, i] += w * value[:, j] / value[:, j].norm()
    return out

def reference_loss(q, k, cq, ck, ratio=0.7):
    "The official regression_loss, one image and one cell pair at a time."
    total = 0.0
    for b in range(q.shape[0]):
        H, W = q.shape[-2:]; Hk, Wk = k.shape[-2:]
        (qx0, qy0, qx1, qy1), (kx0, ky0, kx1, ky1) = cq[b], ck[b]
        bwq, bhq, bwk, bhk = (qx1 - qx0) / W, (qy1 - qy0) / H, (kx1 - kx0) / Wk, (ky1 - ky0) / Hk
        diag = max(math.hypot(bwq, bhq), math.hypot(bwk, bhk))
        s, n = 0.0, 0
        for i in range(H * W):
            for j in range(Hk * Wk):
                pq = (qx0 + (i % W + 0.5) * bwq, qy0 + (i // W + 0.5) * bhq)
                pk = (kx0 + (j % Wk + 0.5) * bwk, ky0 + (j // Wk + 0.5) * bhk)
                if math.dist(pq, pk) / diag < ratio:
                    s = s + F.cosine_similarity(q[b, :, i // W, i % W], k[b, :, j // Wk, j % Wk], dim=0); n += 1
        total = total + s / (n + 1e-6)
    return -2 * total / q.shape[0]

def _maps(seed=0, b=3, c=4, hq=3, hk=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, hq, hq, dtype=torch.float64, generator=g, requires_grad=True),
            torch.randn(b, c, hk, hk, dtype=torch.float64, generator=g, requires_grad=True))

CQ = torch.tensor([[0.0, 0.0, 0.8, 0.7], [0.9, 0.1, 0.2, 1.0], [0.3, 0.3, 0.6, 0.6]], dtype=torch.float64)
CK = torch.tensor([[0.2, 0.1, 1.0, 0.9], [0.0, 0.0, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]], dtype=torch.float64)

# ---- PPM ------------------------------------------------------------------------------------------------------
def test_ppm_hand_worked_three_pixels():
    ppm = PixelPropagation(2, gamma=2, n_layers=0)
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]).T.reshape(1, 2, 1, 3)
    torch.testing.assert_close(ppm.weights(x)[0], torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(ppm(x)[0, :, 0].T, torch.tensor([[1 + 0.5 * R, 0.5 * R], [0.5 + R, R], [-1.0, 0.0]]))

@pytest.mark.parametrize("gamma,n_layers", [(2.0, 1), (1.0, 0), (3.0, 2)])
def test_ppm_against_loops(gamma, n_layers):
    torch.manual_seed(0)
    ppm = PixelPropagation(5, gamma=gamma, n_layers=n_layers).double().eval()
    x = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    y = ppm(x)
    for b in range(2):
        ref = reference_ppm(x[b].flatten(1), gamma, ppm.transform(x[b:b + 1])[0].flatten(1))
        torch.testing.assert_close(y[b].flatten(1), ref, rtol=1e-9, atol=1e-12)

def test_ppm_gradcheck():
    torch.manual_seed(0)
    ppm = PixelPropagation(3).double()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ppm, (x,))

def test_ppm_bad_inputs():
    with pytest.raises(ValueError, match="channels"): PixelPropagation(4)(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"x must have 4 dimensions.*\(3, 2, 2\)"): PixelPropagation(3)(torch.randn(3, 2, 2))
    with pytest.raises(ValueError, match="non-finite"): PixelPropagation(1)(torch.tensor([[[[float("nan")]]]]))
    with pytest.raises(ValueError, match="gamma"): PixelPropagation(3, gamma=0)
    with pytest.raises(ValueError, match="n_layers"): PixelPropagation(3, n_layers=3)
    with pytest.raises(ValueError, match="clamp"): PixelPropagation(3, clamp=1.5)

# ---- positives ------------------------------------------------------------------------------------------------
def test_cell_centres_of_a_flipped_box():
    c, d = cell_centers(FLIPPED, (2, 2))
    torch.testing.assert_close(c[0], torch.tensor([[0.75, 0.25], [0.25, 0.25], [0.75, 0.75], [0.25, 0.75]]))
    torch.testing.assert_close(d, torch.tensor([R]))

def test_positive_mask_on_hand_made_boxes():
    swap = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(positive_pair_mask(WHOLE, FLIPPED, (2, 2))[0], swap)
    assert torch.equal(positive_pair_mask(WHOLE, WHOLE, (2, 2))[0], torch.eye(4, dtype=torch.bool))
    assert positive_pair_mask(WHOLE, WHOLE, (2, 2), pos_ratio=0.75)[0].sum().item() == 12      # the 4-neighbours join
    # disjoint boxes: no positives; the threshold uses the larger of the two cell diagonals
    assert not positive_pair_mask(torch.tensor([[0.0, 0.0, 0.4, 0.4]]), torch.tensor([[0.6, 0.6, 1.0, 1.0]]), (2, 2)).any()
    small, big = torch.tensor([[0.0, 0.0, 0.2, 0.2]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    m = positive_pair_mask(small, big, (1, 1))           # centres 0.1·√2 and 0.5·√2 apart = 0.566 < 0.7 × 1.414 (big's diagonal)
    assert m.item()

# ---- the loss -------------------------------------------------------------------------------------------------
def test_loss_hand_worked_flip():
    torch.manual_seed(0)
    y = torch.randn(1, 3, 2, 2)
    assert abs(pixpro_loss(y, y.flip(-1), WHOLE, FLIPPED).item() + 2) < 1e-5
    cos = F.cosine_similarity(y, y.flip(-1), dim=1).mean()                     # unflipped target: mirror cells compared
    assert abs(pixpro_loss(y, y, WHOLE, FLIPPED).item() + 2 * cos.item()) < 1e-5

def test_loss_against_the_literal_reference_values_and_gradients():
    q, k = _maps()
    ours, ref = pixpro_loss(q, k, CQ, CK), reference_loss(q, k, CQ.tolist(), CK.tolist())
    assert abs(ours.item() - ref.item()) < 1e-12, (ours.item(), ref.item())
    for a, b in zip(torch.autograd.grad(ours, (q, k)), torch.autograd.grad(ref, (q, k))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

def test_symmetric_loss_is_the_sum_of_both_directions():
    q, k = _maps(1, hq=3, hk=3); q2, k2 = _maps(2, hq=3, hk=3)
    both = pixpro_loss(q, k, CQ, CK, y_k=q2, x_q=k2)
    ref = reference_loss(q, k, CQ.tolist(), CK.tolist()) + reference_loss(q2, k2, CK.tolist(), CQ.tolist())
    assert abs(both.item() - ref.item()) < 1e-12
    torch.testing.assert_close(PixProLoss(0.7)(q, k, CQ, CK, y_k=q2, x_q=k2), both)

def test_image_without_positives_adds_zero():
    q, k = _maps(3, b=2)
    far = torch.tensor([[0.0, 0.0, 0.3, 0.3], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    other = torch.tensor([[0.7, 0.7, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    only_second = pixpro_loss(q[1:], k[1:], far[1:], other[1:])
    assert abs(pixpro_loss(q, k, far, other).item() - only_second.item() / 2) < 1e-9

def test_loss_gradcheck():
    q, k = _maps(4, b=2, hq=2, hk=2)
    assert torch.autograd.gradcheck(lambda a, b: pixpro_loss(a, b, CQ[:2], CK[:2]), (q, k))

def test_loss_bad_inputs():
    q, k = _maps()
    with pytest.raises(ValueError, match=r"y_q must have 4 dimensions.*\(4, 3, 3\)"): pixpro_loss(q[0], k, CQ, CK)
    with pytest.raises(ValueError, match="share the batch size.*2"): pixpro_loss(q, k[:2], CQ, CK)
    with pytest.raises(ValueError, match="same channels"): pixpro_loss(q, k[:, :3], CQ, CK)
    with pytest.raises(ValueError, match=r"coords_k must be \(B, 4\)"): pixpro_loss(q, k, CQ, CK[:, :3])
    with pytest.raises(ValueError, match="coords_q contains 1 non-finite"):
        bad = CQ.clone(); bad[0, 0] = float("nan"); pixpro_loss(q, k, bad, CK)
    with pytest.raises(ValueError, match="pos_ratio"): pixpro_loss(q, k, CQ, CK, pos_ratio=0)
    with pytest.raises(ValueError, match="y_k and x_q go together"): pixpro_loss(q, k, CQ, CK, y_k=q)
    with pytest.raises(TypeError, match="floating-point"): pixpro_loss(q.long(), k, CQ, CK)
    with pytest.raises(ValueError, match="at least 1 row"): pixpro_loss(q[:0], k[:0], CQ[:0], CK[:0])

# ---- schedule, crops, data, model -------------------------------------------------------------------------------
def test_momentum_schedule():
    assert momentum_schedule(0, 10) == pytest.approx(0.99) and momentum_schedule(10, 10) == pytest.approx(1.0)
    vals = [momentum_schedule(k, 10, 0.9) for k in range(11)]
    assert all(a <= b for a, b in zip(vals, vals[1:])) and vals[5] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="base"): momentum_schedule(0, 10, 1.5)

def test_coord_crop_boxes_map_back():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    img = torch.stack([xx / 23, yy / 23])[None].repeat(8, 1, 1, 1)          # channels hold each pixel's own coordinates
    v, box = coord_crop(img, size=9, g=g)
    assert v.shape == (8, 2, 9, 9) and box.shape == (8, 4)
    # the corner pixels of a view sit at its box's corners; a flipped view runs from x0 > x1
    torch.testing.assert_close(v[:, 0, 0, 0], box[:, 0], atol=1e-5, rtol=0); torch.testing.assert_close(v[:, 1, 0, 0], box[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(v[:, 0, -1, -1], box[:, 2], atol=1e-5, rtol=0); torch.testing.assert_close(v[:, 1, -1, -1], box[:, 3], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="scale"): coord_crop(img, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="flip_p"): coord_crop(img, flip_p=2.0)

def test_paste_digits_and_cell_labels():
    d = torch.zeros(2, 1, 8, 8); d[:, 0, 2:6, 2:6] = 1.0
    x, y = paste_digits(d, torch.tensor([3, 7]), 5, canvas=24, per_canvas=3, g=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 24, 24) and y.shape == (5, 24, 24)
    assert ((y > 0) == (x[:, 0] > 0.3)).all() and set(y.unique().tolist()) <= {0, 4, 8}
    assert ((y > 0).sum((1, 2)) == 3 * 16).all()                              # three digits, never overlapping
    lab = torch.zeros(1, 4, 4, dtype=torch.long); lab[0, 0, 0] = 5; lab[0, 0, 1] = 5; lab[0, 2, 2] = 2
    assert cell_labels(lab).tolist() == [[[5, 0], [0, 0]]]                     # a 2-of-4 tie goes to the digit; 1 of 4 does not
    with pytest.raises(ValueError, match="per_canvas"): paste_digits(d, torch.tensor([3, 7]), 1, canvas=16, per_canvas=5)

def test_model_shapes_and_teacher():
    m = PixProModel(width=8, hidden=16, out_dim=8)
    x = torch.randn(2, 1, 16, 16)
    assert m.features(x).shape == (2, 8, 8, 8) and m(x).shape == (2, 8, 8, 8) and m.ppm(m(x)).shape == (2, 8, 8, 8)
    assert all(not p.requires_grad for p in m.teacher.parameters())
    assert len(m.online_parameters()) == len([p for p in m.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="DenseEncoder expects"): DenseEncoder()(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="batch_size"): dense_setting("ci", batch_size=10_000)
