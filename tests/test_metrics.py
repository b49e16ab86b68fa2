"Metrics on constructed cases whose answer is known."
import math, pytest, torch
import torch.nn.functional as F
from contrastlab.metrics import (alignment, uniformity, mean_cosine, isotropy_partition, explained_variance,
                                 effective_rank, linear_cka, knn_accuracy, linear_probe)

def test_uniformity_of_sphere_points():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(3000, 512, dtype=torch.float64), dim=1)
    assert abs(uniformity(z) + 4) < 0.03             # mean squared distance 2 → log E e^{-2·2} = -4
    z2 = F.normalize(torch.randn(4000, 2, dtype=torch.float64), dim=1)   # uniform on a circle: log(I0(4) e^-4)
    assert abs(uniformity(z2) - math.log(11.301921952136330 * math.exp(-4))) < 0.03

def test_alignment_known():
    z = F.normalize(torch.randn(100, 5, dtype=torch.float64), dim=1)
    assert alignment(z, z) == 0 and abs(alignment(z, -z) - 4) < 1e-12 and abs(alignment(z, -z, alpha=1) - 2) < 1e-12

def test_effective_rank_of_rank_k():
    for k in (1, 3, 10):
        q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
        m = q[:, :k] @ q[:k, :]
        assert abs(effective_rank(m) - k) < 1e-6

def test_isotropy_measures():
    g = torch.randn(4000, 8, dtype=torch.float64)
    assert abs(mean_cosine(g)) < 0.01 and isotropy_partition(g) > 0.8
    cone = 0.1 * g + torch.ones(8); assert mean_cosine(cone) > 0.95 and abs(isotropy_partition(cone) - math.exp(-math.sqrt(8))) < 0.02   # Z along the mean direction dominates
    assert abs(explained_variance(g, 8) - 1) < 1e-12
    line = torch.randn(500, 1, dtype=torch.float64) * torch.ones(1, 8)
    assert explained_variance(line, 1) > 1 - 1e-9

def test_cka():
    x = torch.randn(300, 6, dtype=torch.float64); q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert abs(linear_cka(x, x) - 1) < 1e-12 and abs(linear_cka(x, 2 * x @ q) - 1) < 1e-12
    assert linear_cka(x, torch.randn(300, 6, dtype=torch.float64)) < 0.1
    with pytest.raises(ValueError, match="same inputs"): linear_cka(x, x[:10])

def test_knn_and_probe():
    torch.manual_seed(0)
    y = torch.arange(400) % 4; c = torch.randn(4, 16) * 6; x = c[y] + torch.randn(400, 16)
    assert knn_accuracy(x[:300], y[:300], x[300:], y[300:]) == 1.0
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) == 1.0
    n = torch.randn(400, 16)
    assert knn_accuracy(n[:300], y[:300], n[300:], y[300:]) < 0.45
    with pytest.raises(ValueError, match="non-finite"): knn_accuracy(torch.full((3, 2), float("nan")), y[:3], x[:2, :2], y[:2])
