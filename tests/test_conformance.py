"""The conformance suite: one parametrised test per property, over every registered loss (layers' and papers').

A new paper gets these checks by registering its losses (`contrastlab.registry.register_loss`); nothing here names a paper."""
import math
import pytest, torch
from contrastlab.registry import losses, papers, get_loss
from contrastlab.distributed import compare_with_single_process

SPECS = losses()
IDS = [s.name for s in SPECS]
ERRORS = (ValueError, TypeError)

def _call(spec, inputs, params, module=False, module_params=None):
    if module:
        m = spec.module(**(params if module_params is None else module_params))
        return spec.loss_value(m(**inputs))
    return spec.loss_value(spec.fn(**inputs, **params))

def _cast(inputs, dtype):
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in inputs.items()}

def _rows(spec, inputs):
    return len(inputs[spec.batch_args[0]])

def test_the_registry_holds_the_lab():
    keys = {p.key for p in papers()}
    assert {"simclr", "laf", "sepclr", "hydra", "beclr", "aro", "dcl", "swav"} <= keys, keys
    for p in papers():
        for name in p.losses: assert get_loss(name).paper in (p.key, None), (p.key, name)
    for s in SPECS:
        assert s.module is not None and callable(s.example), s.name
        assert set(s.embedding_args) <= set(inspect_params(s.fn)) and set(s.batch_args) <= set(inspect_params(s.fn)), s.name

def inspect_params(fn):
    import inspect
    return list(inspect.signature(fn).parameters)

@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_function_equals_module(spec):
    ex = spec.example(torch.float64, 0)
    f = _call(spec, ex.inputs, ex.params)
    m = _call(spec, ex.inputs, ex.params, module=True, module_params=ex.module_params)
    assert f.ndim == 0 and torch.isfinite(f), f
    torch.testing.assert_close(m.double(), f.double(), rtol=1e-6, atol=1e-9)

@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_gradcheck_float64(spec):
    if not spec.gradcheck: pytest.skip(f"{spec.name}: a statistic is stop-gradient by design; its gradient is checked against a reference with it frozen")
    ex = spec.example(torch.float64, 1)
    names = list(spec.embedding_args)
    leaves = [ex.inputs[n].detach().clone().requires_grad_() for n in names]
    def f(*xs): return _call(spec, {**ex.inputs, **dict(zip(names, xs))}, ex.params)
    assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-5, rtol=1e-3)

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_half_precision_inputs(spec, dtype):
    ex = spec.example(torch.float32, 2)
    ref = _call(spec, ex.inputs, ex.params)
    half = _call(spec, _cast(ex.inputs, dtype), ex.params)
    assert torch.isfinite(half), half
    assert half.dtype in (torch.float32, torch.float64), f"{spec.name} returned {half.dtype}: reduce in float32"
    assert abs(half.item() - ref.item()) <= spec.half_tol * max(1.0, abs(ref.item())), (half.item(), ref.item())

@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_permutation_invariance(spec):
    if not spec.permutation_invariant: pytest.skip(f"{spec.name} does not claim invariance to permuting the batch")
    ex = spec.example(torch.float64, 3)
    perm = torch.randperm(_rows(spec, ex.inputs), generator=torch.Generator().manual_seed(0))
    permuted = {k: (v[perm] if k in spec.batch_args else v) for k, v in ex.inputs.items()}
    a, b = _call(spec, ex.inputs, ex.params), _call(spec, permuted, ex.params)
    assert abs(a.item() - b.item()) <= 1e-9 * max(1.0, abs(a.item())), (a.item(), b.item())

def _expect_error(spec, inputs, params, *must_contain):
    with pytest.raises(ERRORS) as e: _call(spec, inputs, params)
    msg = str(e.value)
    for alternatives in must_contain:
        alts = alternatives if isinstance(alternatives, tuple) else (alternatives,)
        assert any(a in msg for a in alts), f"{spec.name}: {msg!r} should name one of {alts}"

@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_bad_rank(spec):
    ex = spec.example(torch.float64, 4)
    for name in spec.embedding_args:
        bad = ex.inputs[name].unsqueeze(0)
        _expect_error(spec, {**ex.inputs, name: bad}, ex.params, name, str(tuple(bad.shape)))

@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_mismatched_batch_sizes(spec):
    if len(spec.batch_args) < 2: pytest.skip(f"{spec.name} has one batch input")
    ex = spec.example(torch.float64, 5)
    for name in spec.batch_args:
        bad = ex.inputs[name][:-1]
        _expect_error(spec, {**ex.inputs, name: bad}, ex.params, tuple(spec.batch_args), str(len(bad)))

@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_empty_batch(spec):
    ex = spec.example(torch.float64, 6)
    empty = {k: (v[:0] if k in spec.batch_args else v) for k, v in ex.inputs.items()}
    _expect_error(spec, empty, ex.params, tuple(spec.batch_args), ("empty", "(0,", "at least"))

@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_non_finite_inputs(spec, value):
    ex = spec.example(torch.float64, 7)
    for name in spec.embedding_args:
        bad = ex.inputs[name].clone(); bad[0, 0] = value
        _expect_error(spec, {**ex.inputs, name: bad}, ex.params, name, "non-finite")

@pytest.mark.parametrize("value", [0.0, -0.1, float("nan")], ids=["zero", "negative", "nan"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_bad_temperature(spec, value):
    if spec.temperature_arg is None: pytest.skip(f"{spec.name} has no temperature")
    ex = spec.example(torch.float64, 8)
    _expect_error(spec, ex.inputs, {**ex.params, spec.temperature_arg: value}, spec.temperature_arg)

DIST = [s for s in SPECS if s.distributed]

@pytest.mark.parametrize("spec", DIST, ids=[s.name for s in DIST])
def test_two_gloo_ranks_equal_one_process(spec):
    ex = spec.example(torch.float64, 9)
    n = _rows(spec, ex.inputs); sizes = [n // 2 + 1, n - n // 2 - 1]          # uneven: a short last batch
    r = compare_with_single_process(spec, ex.inputs, sizes, ex.params)
    assert r["loss_diff"] < 1e-10 and r["grad_diff"] < 1e-10, r
