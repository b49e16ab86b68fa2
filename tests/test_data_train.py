"Data, augmentations, samplers, and the training loop (atomic checkpoints, exact resume)."
import os, pytest, torch, torch.nn as nn
from contrastlab.core import generator, get_device, choose
from contrastlab.data import (make_mnist1d, load_digits_data, Augment1D, Augment2D, TwoViews, BatchSampler,
                              BalancedBatchSampler, shift_1d, crop_resize_1d)
from contrastlab.train import fit, save_checkpoint, load_checkpoint

def test_datasets_offline():
    d = make_mnist1d(500, seed=1); assert d["x"].shape == (400, 40) and d["x"].dtype == torch.float32
    assert torch.equal(d["x"], make_mnist1d(500, seed=1)["x"])
    g = load_digits_data(); assert g["x"].shape[1:] == (1, 8, 8) and len(g["x"]) + len(g["x_test"]) == 1797

def test_augmentations_are_seeded_and_sane():
    x = torch.randn(16, 40)
    a, b = Augment1D()(x, generator(3)), Augment1D()(x, generator(3)); assert torch.equal(a, b)
    assert torch.allclose(shift_1d(x, 0.0), x) and torch.allclose(crop_resize_1d(x, (1.0, 1.0)), x, atol=1e-5)
    v1, v2 = TwoViews(Augment2D())(torch.rand(4, 1, 28, 28), generator(0)); assert v1.shape == (4, 1, 28, 28) and not torch.equal(v1, v2)

def test_samplers():
    s = BatchSampler(100, 10, seed=0); s.set_epoch(1); e1 = torch.cat(list(s)); s.set_epoch(2); e2 = torch.cat(list(s))
    assert sorted(e1.tolist()) == list(range(100)) and not torch.equal(e1, e2)
    y = torch.arange(200) % 10
    for batch in BalancedBatchSampler(y, 5, 4, seed=0): assert torch.bincount(y[batch]).max() == 4 and len(torch.unique(y[batch])) == 5
    with pytest.raises(ValueError, match="n_classes must be ≤ 10"): BalancedBatchSampler(y, 11, 2)

def test_core_helpers():
    assert get_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="preset must be one of"): choose("big", ci={}, full={})

def _make():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)); return m, torch.optim.Adam(m.parameters(), 1e-2)

X, Y = torch.randn(64, 4), torch.randn(64, 1)
def _step(m, idx): return ((m(X[idx] + 0.1 * torch.randn(len(idx), 4)) - Y[idx]) ** 2).mean()

@pytest.mark.parametrize("n", [3, 4, 6])           # mid-epoch and epoch-boundary stops
def test_exact_resume_is_bit_identical(tmp_path, n):
    m1, o1 = _make(); fit(m1, _step, BatchSampler(64, 16, seed=1), 4, o1, progress="none")          # 2N... all 16 steps
    ck = tmp_path / "ck.pt"
    m2, o2 = _make(); fit(m2, _step, BatchSampler(64, 16, seed=1), 4, o2, checkpoint=ck, max_steps=n, progress="none")
    m3, o3 = _make(); h = fit(m3, _step, BatchSampler(64, 16, seed=1), 4, o3, checkpoint=ck, resume=True, progress="none")
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values()): assert torch.equal(a, b)
    assert len(h["loss"]) == 16

def test_n_plus_n_equals_2n(tmp_path):
    "N steps, save, load, N more steps = 2N steps, bit for bit."
    ck = tmp_path / "ck.pt"
    ma, oa = _make(); fit(ma, _step, BatchSampler(64, 16, seed=2), 2, oa, progress="none")   # 8 steps
    mb, ob = _make(); fit(mb, _step, BatchSampler(64, 16, seed=2), 2, ob, checkpoint=ck, max_steps=4, progress="none")
    mc, oc = _make(); fit(mc, _step, BatchSampler(64, 16, seed=2), 2, oc, checkpoint=ck, resume=True, progress="none")
    assert all(torch.equal(a, b) for a, b in zip(ma.state_dict().values(), mc.state_dict().values()))

def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "ck.pt"; save_checkpoint(p, value=1)
    real_save = torch.save
    def crashing_save(obj, f, *a, **k):
        f.write(b"partial garbage"); raise KeyboardInterrupt("power cut mid-save")
    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt): save_checkpoint(p, value=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(p)["value"] == 1 and [f.name for f in tmp_path.iterdir()] == ["ck.pt"]

def test_fit_rejects_bad_step():
    m, o = _make()
    with pytest.raises(TypeError, match="step_fn must return"): fit(m, lambda m, b: 3.0, BatchSampler(64, 16), 1, o, progress="none")
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        fit(m, lambda m, b: m(X[b]).sum() * float("nan"), BatchSampler(64, 16), 1, o, progress="none")
