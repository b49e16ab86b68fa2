"""DefSent+ (Liu 2024): grouping definitions into entries, entry embeddings, the ICA transform (against scikit-learn's
pipeline as the official code runs it, and its isotropy), the loss (hand-worked, a slow float64 loop, the official
construction: a frozen bias-free linear layer + cross-entropy), the frozen head, and the trainer `train_defsent`."""
import math
import numpy as np
import pytest
import torch
from torch import nn
from contrastlab.metrics import isotropy_partition
from contrastlab.zoo.defsent import (group_definitions, entry_embeddings, ica_isotropize, defsent_loss, DefSentLoss,
                                     EntryEmbeddingHead)

ROWS = [dict(headword="bank", definition="the edge of a river"), dict(headword="cat", definition="a small feline"),
        dict(headword="bank", definition="a place that keeps money"), dict(headword="dog", definition="the barking animal")]

def _toy_embed(texts):
    "A deterministic embedder: letter counts of a, e, o, s, t (5 dims)."
    return torch.tensor([[t.count(c) for c in "aeost"] for t in texts], dtype=torch.float32)

# ---- entries ----------------------------------------------------------------------------------------------------
def test_group_definitions_numbers_entries_in_order_of_first_appearance():
    keys, tg = group_definitions(ROWS)
    assert keys == ["bank", "cat", "dog"] and tg.tolist() == [0, 1, 0, 2] and tg.dtype == torch.long

def test_group_definitions_rejects_bad_rows():
    with pytest.raises(ValueError, match="entries"): group_definitions([])
    with pytest.raises(TypeError, match="entries"): group_definitions("bank")
    with pytest.raises(TypeError, match=r"entries\[1\]"): group_definitions([ROWS[0], dict(headword="x")])

def test_entry_embeddings_are_means_of_definitions_at_any_batch_size():
    want = _toy_embed([r["definition"] for r in ROWS])
    for bs in (1, 3, 256):
        E, keys, tg = entry_embeddings(_toy_embed, ROWS, batch_size=bs)
        torch.testing.assert_close(E[0], (want[0] + want[2]) / 2); torch.testing.assert_close(E[1], want[1])
        torch.testing.assert_close(E[2], want[3]); assert E.shape == (3, 5) and keys == ["bank", "cat", "dog"]

def test_entry_embeddings_checks_the_embedder():
    with pytest.raises(TypeError, match="embed"): entry_embeddings("not callable", ROWS)
    with pytest.raises(ValueError, match="one row per text"): entry_embeddings(lambda t: torch.ones(1, 2), ROWS)
    with pytest.raises(ValueError, match="non-finite"): entry_embeddings(lambda t: torch.full((len(t), 2), float("nan")), ROWS)
    with pytest.raises(ValueError, match="batch_size"): entry_embeddings(_toy_embed, ROWS, batch_size=0)

# ---- ICA --------------------------------------------------------------------------------------------------------
def _anisotropic(n=1500, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, d, generator=g, dtype=torch.float64) - 0.5
    s = -u.sign() * torch.log1p(-2 * u.abs())                                 # Laplace sources
    return s @ (torch.randn(d, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 4.0, d, dtype=torch.float64)) + 3.0

def test_ica_matches_the_official_pipeline():
    # the official script: StandardScaler, then FastICA(n_components=D, whiten="unit-variance", fun="logcosh", tol=1e-4)
    from sklearn.preprocessing import StandardScaler
    from sklearn.decomposition import FastICA
    X = _anisotropic()
    ref = FastICA(n_components=X.shape[1], whiten="unit-variance", fun="logcosh", tol=1e-4, max_iter=1000,
                  random_state=3).fit_transform(StandardScaler().fit_transform(X.numpy()))
    ours = ica_isotropize(X.float(), seed=3, scale=1.0)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ica_isotropize(X.float(), seed=3, scale=100.0).numpy(), 100 * ref, rtol=1e-3, atol=1e-1)

def test_ica_output_is_white_and_isotropic_and_the_raw_matrix_is_not():
    X = _anisotropic().float()
    Y = ica_isotropize(X, seed=0).double()
    torch.testing.assert_close(torch.cov(Y.T, correction=0), torch.eye(X.shape[1], dtype=torch.float64), rtol=0, atol=1e-4)
    assert isotropy_partition(Y) > 0.5
    assert isotropy_partition(X) < 0.01                                       # the control: the raw matrix fails

def test_ica_rejects_bad_inputs():
    X = _anisotropic().float()
    with pytest.raises(ValueError, match="K > D"): ica_isotropize(X[:5])
    with pytest.raises(ValueError, match="constant"): ica_isotropize(torch.cat([X, torch.ones(len(X), 1)], 1))
    with pytest.raises(ValueError, match="scale"): ica_isotropize(X, scale=0)
    with pytest.raises(TypeError, match="seed"): ica_isotropize(X, seed=1.5)
    bad = X.clone(); bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"): ica_isotropize(bad)

# ---- the loss ---------------------------------------------------------------------------------------------------
def test_loss_hand_worked():
    # entries e1 = (1, 0), e2 = (0, 1); definitions z = (2, 0) of entry 1 and (1, 1) of entry 2, τ = 1:
    #   row 1: logits (2, 0) → log(1 + e^-2);  row 2: logits (1, 1) → log 2
    E = torch.eye(2, dtype=torch.float64); z = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    want = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert math.isclose(defsent_loss(z, E, torch.tensor([0, 1])).item(), want, rel_tol=1e-12)
    assert math.isclose(defsent_loss(z, E, torch.tensor([0, 1]), temperature=0.5).item(),
                        (math.log(1 + math.exp(-4)) + math.log(2)) / 2, rel_tol=1e-12)

def _slow(z, E, y, tau):
    total = 0.0
    for i in range(len(z)):
        logits = torch.stack([(z[i] * E[k]).sum() / tau for k in range(len(E))])
        total = total + torch.logsumexp(logits, 0) - logits[int(y[i])]
    return total / len(z)

@pytest.mark.parametrize("b,k,d,tau,scale", [(1, 2, 3, 1.0, 1.0), (6, 9, 4, 0.05, 0.3), (16, 40, 8, 1.0, 10.0)])
def test_loss_against_the_slow_loop_and_the_official_construction(b, k, d, tau, scale):
    g = torch.Generator().manual_seed(b)
    z = (scale * torch.randn(b, d, generator=g, dtype=torch.float64)).requires_grad_()
    E = torch.randn(k, d, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, k, (b,), generator=g)
    ours, ref = defsent_loss(z, E, y, tau), _slow(z, E, y, tau)
    head = nn.Linear(d, k, bias=False).double(); head.weight = nn.Parameter(E.detach().clone(), requires_grad=False)
    official = nn.CrossEntropyLoss()(head(z) / tau, y)                        # the official code: frozen tied linear + CE
    assert abs(ours.item() - ref.item()) <= 1e-10 * max(1, abs(ref.item())) and abs(ours.item() - official.item()) <= 1e-10 * max(1, abs(ref.item()))
    for a, c in zip(torch.autograd.grad(ours, (z, E), retain_graph=True), torch.autograd.grad(ref, (z, E), retain_graph=True)):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(official, z)[0], rtol=1e-9, atol=1e-10)

def test_loss_rejects_bad_inputs():
    z, E = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="width"): defsent_loss(z, torch.randn(5, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="targets"): defsent_loss(z, E, torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="targets"): defsent_loss(z, E, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="targets"): defsent_loss(z, E, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="temperature"): defsent_loss(z, E, torch.tensor([0, 1, 2]), 0.0)

def test_module_equals_function():
    z, E, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64), torch.tensor([5, 0, 0, 2])
    assert DefSentLoss(temperature=0.2)(z, E, y).item() == defsent_loss(z, E, y, 0.2).item()

# ---- the head ---------------------------------------------------------------------------------------------------
def test_head_is_frozen_and_equals_the_loss():
    head = EntryEmbeddingHead.from_definitions(_toy_embed, ROWS, temperature=0.5)
    assert list(head.parameters()) == [] and "weight" in head.state_dict() and head.keys == ["bank", "cat", "dog"]
    E, _, tg = entry_embeddings(_toy_embed, ROWS)
    z = torch.randn(4, 5, requires_grad=True)
    torch.testing.assert_close(head(z), z @ E.T / 0.5)
    torch.testing.assert_close(head.loss_at(z, torch.arange(4)), defsent_loss(z, E, tg, 0.5))
    head.loss_at(z, torch.arange(4)).backward()
    assert z.grad is not None and head.weight.grad is None

def test_head_checks_its_inputs():
    with pytest.raises(ValueError, match="keys"): EntryEmbeddingHead(torch.randn(3, 2), keys=["a"])
    with pytest.raises(ValueError, match="targets"): EntryEmbeddingHead(torch.randn(3, 2), targets=torch.tensor([3]))
    with pytest.raises(TypeError, match="ica"): EntryEmbeddingHead.from_definitions(_toy_embed, ROWS, ica="yes")
    with pytest.raises(ValueError, match="targets"): EntryEmbeddingHead(torch.randn(3, 2)).loss_at(torch.randn(1, 2), torch.tensor([0]))
