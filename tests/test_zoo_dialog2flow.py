"""Dialog2Flow: the soft SupCon loss on a hand-worked case, against a float64 loop (value and gradient), its hard-SupCon limits,
the dialog generator's determinism and frames, and the anisotropy and few-shot readouts."""
import math
import numpy as np, pytest, torch
from contrastlab.core import generator
from contrastlab.data.dialog import tod_utterances, action_labels
from contrastlab.zoo.dialog2flow import soft_supcon_loss, SoftSupConLoss, label_targets, anisotropy, fewshot_f1, macro_f1

def _loop(a, b, y, le, tau, tau_l):
    a = torch.nn.functional.normalize(a.double(), dim=1); b = torch.nn.functional.normalize(b.double(), dim=1); n = len(a)
    if le is None: T = [[float(y[i] == y[j]) / sum(float(y[i] == y[k]) for k in range(n)) for j in range(n)] for i in range(n)]
    else:
        e = torch.nn.functional.normalize(le.double(), dim=1)
        T = [[torch.exp(e[y[i]] @ e[y[j]] / tau_l) / sum(torch.exp(e[y[i]] @ e[y[k]] / tau_l) for k in range(n)) for j in range(n)] for i in range(n)]
    def one(s):
        return sum(-T[i][j] * (s[i, j] / tau - torch.logsumexp(s[i] / tau, 0)) for i in range(n) for j in range(n)) / n
    return (one(a @ b.T) + one(b @ a.T)) / 2

def test_hand_worked():
    e = torch.eye(2, dtype=torch.float64); y = torch.tensor([0, 1]); s = math.e / (1 + math.e)
    assert abs(soft_supcon_loss(e, e, y, None, 1.0).item() - math.log(1 + math.exp(-1))) < 1e-12
    assert abs(soft_supcon_loss(e, e, y, torch.eye(2), 1.0, 1.0).item() + s * math.log(s) + (1 - s) * math.log(1 - s)) < 1e-12

@pytest.mark.parametrize("soft", [True, False])
def test_against_float64_loop(soft):
    g = generator(2)
    a = torch.randn(5, 3, dtype=torch.float64, generator=g).requires_grad_(); b = torch.randn(5, 3, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.tensor([0, 1, 0, 2, 1]); le = torch.randn(3, 4, dtype=torch.float64, generator=g) if soft else None
    ours, ref = soft_supcon_loss(a, b, y, le, 0.1, 0.35), _loop(a, b, y.tolist(), le, 0.1, 0.35)
    assert abs(ours.item() - ref.item()) < 1e-10
    for x, r in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(ref, (a, b))): torch.testing.assert_close(x, r, rtol=1e-9, atol=1e-10)

def test_reduces_to_hard_supcon():
    g = generator(3); a, b = torch.randn(6, 4, dtype=torch.float64, generator=g), torch.randn(6, 4, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 1, 1, 2, 0, 3]); hard = soft_supcon_loss(a, b, y)
    assert abs(soft_supcon_loss(a, b, y, torch.eye(4), 0.05, 1e-4).item() - hard.item()) < 1e-12
    assert abs(soft_supcon_loss(a, b, y, torch.randn(4, 5, generator=g), 0.05, 1e-4).item() - hard.item()) < 1e-9
    assert SoftSupConLoss(temperature=0.05)(a, b, y).item() == hard.item()
    torch.testing.assert_close(label_targets(y).sum(1), torch.ones(6, dtype=torch.float64))

def test_bad_inputs():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"): soft_supcon_loss(z, z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="label_emb"): soft_supcon_loss(z, z, torch.tensor([0, 1, 2, 9]), torch.randn(3, 2))
    with pytest.raises(ValueError, match="label_temperature"): soft_supcon_loss(z, z, torch.tensor([0, 1, 2, 0]), torch.randn(3, 2), 0.05, 0.0)

def test_generator():
    u = tod_utterances(300, seed=5); assert u["texts"] == tod_utterances(300, seed=5)["texts"]
    labs = action_labels(); assert u["label_texts"] == labs
    for i in range(300):
        assert u["frames"][i] == {u["domain"][i]: {u["intent"][i]: {} if u["slot"][i] is None else {u["slot"][i]: u["value"][i]}}}
        assert labs[u["labels"][i]].startswith(u["act"][i])
    with pytest.raises(ValueError, match="unknown"): tod_utterances(3, domains=("spa",))

def test_metrics():
    z = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    assert anisotropy(z, [0, 0, 1, 1]) == dict(intra=1.0, inter=0.0, delta=1.0)
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0 and abs(macro_f1([0, 0, 1, 1], [0, 1, 1, 1]) - (2 / 3 + 0.8) / 2) < 1e-12
    assert fewshot_f1(z, [0, 0, 1, 1], 1, episodes=3) == 1.0
