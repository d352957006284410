"""Optimisers and gradient clipping: PyTorch parity (when torch is installed), hand-computed
steps, state round-trips, in-place updates without temporaries, and argument validation.

Parity tolerance: after every step, max |ours - torch| <= RTOL * scale for every parameter, where
scale is the largest |value| any parameter has taken so far in the run (so a parameter whose
update cancels it to near zero is not held to an impossible relative bound). The remaining
differences are rounding: PyTorch's CPU kernels use fused multiply-adds (addcmul, lerp, add with
alpha), which NumPy cannot express.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import rng_of, seeds

from minivae.optim import SGD, Adam, AdamW, clip_grad_norm, make_optimizer

TORCH_REASON = "parity with PyTorch needs torch (pip install minivae[torch])"
RTOL = {np.float32: 1e-6, np.float64: 1e-12}

dtypes = st.sampled_from([np.float32, np.float64])
shape_lists = st.lists(
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6), min_size=1, max_size=4
)
n_steps = st.integers(10, 15)


def _params(rng, shapes, dtype):
    return {f"layer{i}.W": np.asarray(rng.normal(0, 1, s), dtype) for i, s in enumerate(shapes)}


def _grads(rng, params, scale=1.0):
    return {k: np.asarray(rng.normal(0, 1, p.shape) * scale, p.dtype) for k, p in params.items()}


def _max_abs(arrays):
    return max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)


def _assert_close(ours, ref, rtol, scale, what):
    """max |ours - ref| <= rtol * max(scale, max |ref|)."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, what
    if ref.size == 0:
        return
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64))))
    scale = max(float(np.max(np.abs(ref))), scale)
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


def _check_parity(torch, make_ours, make_theirs, params, grad_seed, steps, grad_scale=1.0):
    """Step both optimisers with the same random gradients (halving lr midway, as a schedule
    would) and compare every parameter after every step; also check grads are left untouched."""
    dtype = next(iter(params.values())).dtype.type
    rtol = RTOL[dtype]
    scale = _max_abs(params.values())
    tparams = {k: torch.nn.Parameter(torch.from_numpy(p.copy())) for k, p in params.items()}
    ours, theirs = make_ours(params), make_theirs(list(tparams.values()))
    rng = rng_of(grad_seed)
    for step in range(steps):
        if step == steps // 2:
            ours.lr = ours.lr / 2
            for group in theirs.param_groups:
                group["lr"] = group["lr"] / 2
        grads = _grads(rng, params, grad_scale)
        kept = {k: g.copy() for k, g in grads.items()}
        for k, t in tparams.items():
            t.grad = torch.from_numpy(grads[k].copy())
        ours.step(grads)
        theirs.step()
        ref = {k: t.detach().numpy() for k, t in tparams.items()}
        scale = max(scale, _max_abs(ref.values()))
        for k, p in params.items():
            np.testing.assert_array_equal(grads[k], kept[k], err_msg=f"grads[{k!r}] modified")
            _assert_close(p, ref[k], rtol, scale, f"step {step + 1}, {k}")
    assert ours.step_count == steps


@st.composite
def sgd_kwargs(draw):
    momentum = draw(st.sampled_from([0.0, 0.9]) | st.floats(0.0, 0.95))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.5]) | st.floats(0.0, 1.0))
    return {"lr": draw(st.floats(1e-4, 0.1)), "momentum": momentum, "dampening": dampening,
            "weight_decay": draw(st.sampled_from([0.0]) | st.floats(0.0, 0.1)),
            "nesterov": nesterov}


L2_DECAY = st.sampled_from([0.0]) | st.floats(0.0, 0.1)
DECOUPLED_DECAY = st.sampled_from([1e-2]) | st.floats(0.0, 1.0)


@st.composite
def adam_cases(draw, weight_decay=L2_DECAY):
    """(dtype, Adam kwargs). beta1 < 0.5 takes torch's other lerp branch (b - (b - a) * (1 - w)).
    float32 keeps beta2 >= 0.5: with beta2 ~ 0 the denominator is |g| of a single step, and when
    L2 decay cancels the gradient to near zero the trajectory amplifies 1-ulp differences past
    1e-6 (float64, where the same cases agree to ~1e-16, covers beta2 down to 0)."""
    dtype = draw(dtypes)
    beta1 = draw(st.sampled_from([0.0, 0.9]) | st.floats(0.0, 0.99))
    min_beta2 = 0.5 if dtype == np.float32 else 0.0
    beta2 = draw(st.sampled_from([min_beta2, 0.999]) | st.floats(min_beta2, 0.9999))
    return dtype, {"lr": draw(st.floats(1e-4, 0.1)), "betas": (beta1, beta2),
                   "eps": draw(st.sampled_from([1e-8, 1e-6, 1e-3])),
                   "weight_decay": draw(weight_decay)}


# -- parity with torch --------------------------------------------------------------------------
@given(shapes=shape_lists, dtype=dtypes, kw=sgd_kwargs(), seed=seeds, steps=n_steps)
def test_sgd_matches_torch(shapes, dtype, kw, seed, steps):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    params = _params(rng_of(seed), shapes, dtype)
    _check_parity(torch, lambda p: SGD(p, **kw),
                  lambda tp: torch.optim.SGD(tp, foreach=False, **kw), params, seed + 1, steps)


@given(shapes=shape_lists, case=adam_cases(), seed=seeds, steps=n_steps,
       grad_scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_adam_matches_torch(shapes, case, seed, steps, grad_scale):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    dtype, kw = case
    params = _params(rng_of(seed), shapes, dtype)
    _check_parity(torch, lambda p: Adam(p, **kw),
                  lambda tp: torch.optim.Adam(tp, foreach=False, **kw), params, seed + 1, steps,
                  grad_scale)


@given(shapes=shape_lists, case=adam_cases(weight_decay=DECOUPLED_DECAY), seed=seeds,
       steps=n_steps, grad_scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_adamw_matches_torch(shapes, case, seed, steps, grad_scale):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    dtype, kw = case
    params = _params(rng_of(seed), shapes, dtype)
    _check_parity(torch, lambda p: AdamW(p, **kw),
                  lambda tp: torch.optim.AdamW(tp, foreach=False, **kw), params, seed + 1, steps,
                  grad_scale)


@given(shapes=shape_lists, dtype=dtypes, seed=seeds, max_norm=st.just(0.0) | st.floats(1e-6, 10.0),
       grad_scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_clip_grad_norm_matches_torch(shapes, dtype, seed, max_norm, grad_scale):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    rng = rng_of(seed)
    grads = _grads(rng, _params(rng, shapes, dtype), grad_scale)
    tparams = []
    for g in grads.values():
        t = torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype))
        t.grad = torch.from_numpy(g.copy())
        tparams.append(t)
    total = clip_grad_norm(grads, max_norm)
    ref = torch.nn.utils.clip_grad_norm_(tparams, max_norm, foreach=False).item()
    rtol = RTOL[dtype]
    assert isinstance(total, float)
    assert math.isclose(total, ref, rel_tol=rtol, abs_tol=1e-300), (total, ref)
    for (k, g), t in zip(grads.items(), tparams, strict=True):
        _assert_close(g, t.grad.numpy(), rtol, 0.0, k)


# -- hand-computed steps ------------------------------------------------------------------------
def test_adam_first_step_moves_by_lr_times_sign():
    p = {"w": np.array([1.0, -2.0, 0.5, 3.0])}
    g = {"w": np.array([0.3, -7.0, 1e-3, 0.0])}
    Adam(p, lr=0.01).step(g)
    # m_hat = g and v_hat = g^2 after one step, so the move is lr * g / (|g| + eps).
    expected = np.array([1.0, -2.0, 0.5, 3.0]) - 0.01 * g["w"] / (np.abs(g["w"]) + 1e-8)
    np.testing.assert_allclose(p["w"], expected, rtol=1e-15)
    np.testing.assert_allclose(p["w"][:3], [0.99, -1.99, 0.49], rtol=1e-6)
    assert p["w"][3] == 3.0  # zero gradient: no move at all


def test_adam_second_step_by_hand():
    lr, b1, b2, eps = 0.1, 0.8, 0.9, 1e-8
    p = {"w": np.array([2.0])}
    opt = Adam(p, lr=lr, betas=(b1, b2), eps=eps)
    opt.step({"w": np.array([1.0])})
    opt.step({"w": np.array([-3.0])})
    m = b1 * (1 - b1) * 1.0 + (1 - b1) * -3.0
    v = b2 * (1 - b2) * 1.0 + (1 - b2) * 9.0
    p1 = 2.0 - lr * 1.0 / (1.0 + eps)  # m_hat = 1, sqrt(v_hat) = 1
    p2 = p1 - lr / (1 - b1**2) * m / (math.sqrt(v) / math.sqrt(1 - b2**2) + eps)
    assert p["w"][0] == pytest.approx(p2, rel=1e-14)
    st_ = opt.state_dict()
    assert st_["exp_avg/w"][0] == pytest.approx(m, rel=1e-14)
    assert st_["exp_avg_sq/w"][0] == pytest.approx(v, rel=1e-14)


def test_adam_l2_decay_vs_adamw_decoupled_decay():
    p_adam = {"w": np.array([2.0, -4.0])}
    p_adamw = {"w": np.array([2.0, -4.0])}
    g = {"w": np.array([0.5, 0.5])}
    Adam(p_adam, lr=0.1, weight_decay=1.0).step(g)
    AdamW(p_adamw, lr=0.1, weight_decay=1.0).step(g)
    # Adam: L2 enters the gradient (g + wd * p = [2.5, -3.5]), so each entry moves by ~lr * sign.
    np.testing.assert_allclose(p_adam["w"], [1.9, -3.9], rtol=1e-7)
    # AdamW: p *= 1 - lr * wd first, then the plain Adam move of ~lr * sign(g).
    np.testing.assert_allclose(p_adamw["w"], [2.0 * 0.9 - 0.1, -4.0 * 0.9 - 0.1], rtol=1e-7)
    np.testing.assert_array_equal(g["w"], [0.5, 0.5])  # caller's gradient untouched


def test_sgd_steps_by_hand():
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 4.0])
    p0 = np.array([1.0, 1.0])
    lr, mu, damp, wd = 0.1, 0.9, 0.25, 0.01

    p = {"w": p0.copy()}
    opt = SGD(p, lr=lr)
    opt.step({"w": g1})
    np.testing.assert_array_equal(p["w"], p0 - lr * g1)

    p = {"w": p0.copy()}
    opt = SGD(p, lr=lr, momentum=mu, dampening=damp, weight_decay=wd)
    opt.step({"w": g1})
    d1 = g1 + wd * p0
    buf = d1  # first step: buffer is the gradient itself, no dampening
    pa = p0 - lr * buf
    np.testing.assert_allclose(p["w"], pa, rtol=1e-15)
    opt.step({"w": g2})
    buf = mu * buf + (1 - damp) * (g2 + wd * pa)
    np.testing.assert_allclose(p["w"], pa - lr * buf, rtol=1e-15)
    np.testing.assert_allclose(opt.state_dict()["momentum_buffer/w"], buf, rtol=1e-15)

    p = {"w": p0.copy()}
    opt = SGD(p, lr=lr, momentum=mu, nesterov=True)
    opt.step({"w": g1})
    np.testing.assert_allclose(p["w"], p0 - lr * (g1 + mu * g1), rtol=1e-15)
    opt.step({"w": g2})
    buf = mu * g1 + g2
    np.testing.assert_allclose(p["w"], p0 - lr * (1 + mu) * g1 - lr * (g2 + mu * buf), rtol=1e-15)


def test_lr_is_settable_and_used():
    p = {"w": np.array([1.0])}
    opt = SGD(p, lr=0.1)
    opt.lr = 0.5
    opt.step({"w": np.array([1.0])})
    assert p["w"][0] == 0.5 and opt.lr == 0.5
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.lr = float("nan")
    assert opt.lr == 0.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arithmetic_stays_in_parameter_dtype(dtype):
    p = {"w": np.ones(5, dtype), "b": np.zeros((), dtype)}
    for opt in (SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1), Adam(p), AdamW(p)):
        opt.step({k: np.full(v.shape, 0.1, dtype) for k, v in p.items()})
        assert all(v.dtype == dtype for v in p.values())
        assert all(v.dtype == dtype for k, v in opt.state_dict().items() if k != "step")


# -- in place, no temporaries, state --------------------------------------------------------------
CONFIGS = [
    (SGD, {"lr": 0.1}),
    (SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    (SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (Adam, {"lr": 0.01}),
    (Adam, {"lr": 0.01, "betas": (0.3, 0.9), "weight_decay": 0.1}),
    (AdamW, {"lr": 0.01, "weight_decay": 0.1}),
]
CONFIG_IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CONFIGS)]


@pytest.mark.parametrize(("cls", "kw"), CONFIGS, ids=CONFIG_IDS)
def test_step_updates_the_callers_arrays_in_place(cls, kw):
    rng = rng_of(0)
    base = rng.normal(0, 1, 30)
    params = {"W": rng.normal(0, 1, (4, 3)), "b": np.zeros(2, np.float32),
              "view": base[5:15], "T": np.asfortranarray(rng.normal(0, 1, (3, 5)))}
    arrays = dict(params)
    before = {k: v.copy() for k, v in params.items()}
    base_before = base.copy()
    opt = cls(params, **kw)
    for _ in range(3):
        opt.step(_grads(rng, params))
    for k, v in params.items():
        assert v is arrays[k] and opt.params[k] is v
        assert not np.array_equal(v, before[k]), k
    np.testing.assert_array_equal(base[5:15], params["view"])  # the view wrote through
    np.testing.assert_array_equal(base[:5], base_before[:5])  # and nothing around it
    np.testing.assert_array_equal(base[15:], base_before[15:])


@pytest.mark.parametrize(("cls", "kw"), CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip_continues_bitwise(cls, kw):
    rng = rng_of(2)
    params = {"enc.0.W": rng.normal(0, 1, (5, 4)),
              "enc.0.b": rng.normal(0, 1, 4).astype(np.float32), "s": np.array(0.5)}
    grads = [_grads(rng, params) for _ in range(8)]
    opt = cls(params, **kw)
    for g in grads[:3]:
        opt.step(g)
    saved, saved_params = opt.state_dict(), {k: v.copy() for k, v in params.items()}
    for g in grads[3:]:
        opt.step(g)

    params2 = {k: v.copy() for k, v in saved_params.items()}
    opt2 = cls(params2, **kw)
    opt2.load_state_dict(saved)
    assert opt2.step_count == 3
    for g in grads[3:]:
        opt2.step(g)
    for k in params:
        assert params2[k].dtype == params[k].dtype
        np.testing.assert_array_equal(params2[k], params[k], strict=True)
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(opt2.state_dict()[k], v, strict=True)


def test_state_dict_layout_and_independence():
    params = {"enc.0.W": np.ones((2, 3)), "dec.0.b": np.ones(3, np.float32)}
    opt = Adam(params)
    sd = opt.state_dict()
    assert set(sd) == {"step", "exp_avg/enc.0.W", "exp_avg/dec.0.b", "exp_avg_sq/enc.0.W",
                       "exp_avg_sq/dec.0.b"}
    assert sd["step"].shape == () and sd["step"].dtype == np.int64 and int(sd["step"]) == 0
    assert sd["exp_avg/dec.0.b"].dtype == np.float32
    opt.step({k: np.ones_like(v) for k, v in params.items()})
    assert int(sd["step"]) == 0 and not sd["exp_avg/enc.0.W"].any()  # a copy, not a live view
    assert int(opt.state_dict()["step"]) == 1

    assert set(SGD(params, lr=0.1).state_dict()) == {"step"}
    assert set(SGD(params, lr=0.1, momentum=0.5).state_dict()) == {
        "step", "momentum_buffer/enc.0.W", "momentum_buffer/dec.0.b"}


def test_state_dict_survives_safetensors():
    st_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")
    rng = rng_of(3)
    params = {"enc.0.W": rng.normal(0, 1, (3, 2)), "b": rng.normal(0, 1, 2).astype(np.float32)}
    opt = AdamW(params)
    opt.step(_grads(rng, params))
    restored = st_numpy.load(st_numpy.save(opt.state_dict()))
    opt2 = AdamW({k: v.copy() for k, v in params.items()})
    opt2.load_state_dict(restored)
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(opt2.state_dict()[k], v, strict=True)


@pytest.mark.parametrize(("mutate", "key"), [
    (lambda s: s.pop("exp_avg/W"), "exp_avg/W"),
    (lambda s: s.update({"exp_avg/V": np.zeros(3)}), "exp_avg/V"),
    (lambda s: s.update({"exp_avg_sq/W": np.zeros((3, 2))}), "exp_avg_sq/W"),
    (lambda s: s.update({"exp_avg/b": np.zeros(2, np.float64)}), "exp_avg/b"),
    (lambda s: s.update({"exp_avg/b": [0.0, 0.0]}), "exp_avg/b"),
    (lambda s: s.update({"step": np.array(1.0)}), "step"),
    (lambda s: s.update({"step": np.array([1])}), "step"),
    (lambda s: s.update({"step": np.array(-1)}), "step"),
])
def test_load_state_dict_rejects_mismatches_and_changes_nothing(mutate, key):
    params = {"W": np.ones((2, 3)), "b": np.ones(2, np.float32)}
    opt = Adam(params)
    opt.step({k: np.ones_like(v) for k, v in params.items()})
    good = opt.state_dict()
    bad = {k: np.full_like(v, 7) for k, v in good.items()}
    mutate(bad)
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(bad)
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(v, good[k], strict=True)
    with pytest.raises(ValueError, match="state"):
        opt.load_state_dict([("step", 1)])


# -- validation -----------------------------------------------------------------------------------
P = {"w": np.ones(3)}


@pytest.mark.parametrize(("build", "name"), [
    (lambda: SGD(P, lr=-0.1), "lr"),
    (lambda: SGD(P, lr=float("nan")), "lr"),
    (lambda: Adam(P, lr=float("inf")), "lr"),
    (lambda: Adam(P, lr="fast"), "lr"),
    (lambda: Adam(P, betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda: Adam(P, betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda: AdamW(P, betas=(0.9, 1.5)), r"betas\[1\]"),
    (lambda: Adam(P, betas=(0.9,)), "betas"),
    (lambda: Adam(P, betas=0.9), "betas"),
    (lambda: Adam(P, eps=-1e-8), "eps"),
    (lambda: Adam(P, weight_decay=-0.1), "weight_decay"),
    (lambda: AdamW(P, weight_decay=float("nan")), "weight_decay"),
    (lambda: SGD(P, lr=0.1, momentum=-0.5), "momentum"),
    (lambda: SGD(P, lr=0.1, weight_decay=-1.0), "weight_decay"),
    (lambda: SGD(P, lr=0.1, dampening=float("inf")), "dampening"),
    (lambda: SGD(P, lr=0.1, nesterov=True), "nesterov"),
    (lambda: SGD(P, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (lambda: SGD(P, lr=0.1, momentum=0.9, nesterov="yes"), "nesterov"),
    (lambda: Adam({}), "params"),
    (lambda: Adam([np.ones(3)]), "params"),
    (lambda: Adam({"w": [1.0, 2.0]}), "params"),
    (lambda: Adam({"w": np.ones(3, np.int64)}), "params"),
    (lambda: Adam({1: np.ones(3)}), "params"),
    (lambda: Adam({"w": np.ones(3), "v": np.ones(3, np.complex128)}), r"params\['v'\]"),
    (lambda: Adam({"w": np.broadcast_to(np.ones(1), (3,))}), r"params\['w'\]"),
    (lambda: Adam({"w": P["w"], "alias": P["w"][1:]}), "share memory"),
    (lambda: make_optimizer("rmsprop", P), "'sgd', 'adam', 'adamw'"),
])
def test_bad_arguments_raise_value_error_naming_them(build, name):
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize(("grads", "name"), [
    ({}, "missing"),
    ({"w": np.ones(3), "b": np.ones(2, np.float32)}, "missing"),
    ({"w": np.ones(3), "b": np.ones(2, np.float32), "c": np.ones(3), "x": np.ones(1)}, "'x'"),
    ({"w": np.ones(3), "b": np.ones(2), "c": np.ones(3)}, r"grads\['b'\].*float32"),
    ({"w": np.ones((3, 1)), "b": np.ones(2, np.float32), "c": np.ones(3)}, r"grads\['w'\]"),
    ({"w": [1.0, 1.0, 1.0], "b": np.ones(2, np.float32), "c": np.ones(3)}, r"grads\['w'\]"),
    ([np.ones(3)], "grads"),
])
def test_bad_grads_raise_before_anything_changes(grads, name):
    params = {"w": np.ones(3), "b": np.ones(2, np.float32), "c": np.ones(3)}
    for opt in (SGD(params, lr=0.1, momentum=0.9), Adam(params), AdamW(params)):
        state = opt.state_dict()
        with pytest.raises(ValueError, match=name):
            opt.step(grads)
        assert opt.step_count == 0
        for k, v in opt.state_dict().items():
            np.testing.assert_array_equal(v, state[k])
        for v in params.values():
            np.testing.assert_array_equal(v, 1.0)


def test_make_optimizer_builds_each_kind():
    params = {"w": np.ones(2)}
    assert type(make_optimizer("sgd", params, lr=0.1, momentum=0.9)) is SGD
    adam = make_optimizer("Adam", params, lr=0.01, betas=(0.5, 0.9))
    assert type(adam) is Adam and adam.lr == 0.01 and adam.betas == (0.5, 0.9)
    adamw = make_optimizer("adamw", params)
    assert type(adamw) is AdamW and adamw.weight_decay == 1e-2
    assert "AdamW(lr=0.001" in repr(adamw)


# -- clipping -------------------------------------------------------------------------------------
def test_clip_grad_norm_by_hand():
    g = {"a": np.array([3.0]), "b": np.array([[4.0]], np.float32)}
    total = clip_grad_norm(g, 10.0)
    assert type(total) is float and total == 5.0
    np.testing.assert_array_equal(g["a"], [3.0])  # below max_norm: untouched
    a, b = g["a"], g["b"]
    assert clip_grad_norm(g, 1.0) == 5.0
    assert g["a"] is a and g["b"] is b  # scaled in place
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(g["a"], [3.0 * coef], rtol=1e-15)
    np.testing.assert_allclose(g["b"], [[4.0 * coef]], rtol=1e-7)
    assert clip_grad_norm({}, 1.0) == 0.0
    assert clip_grad_norm({"e": np.zeros((0, 3))}, 1.0) == 0.0


def test_clip_grad_norm_float32_squares_that_overflow_are_not_an_error():
    g = {"a": np.full(4, 1e30, np.float32)}
    assert clip_grad_norm(g, 1.0) == pytest.approx(2e30, rel=1e-6)
    np.testing.assert_allclose(g["a"], 0.5, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_grad_norm_non_finite_raises_naming_the_key(bad):
    g = {"ok": np.ones(3), "dec.0.W": np.array([1.0, bad])}
    with pytest.raises(ValueError, match=r"non-finite.*dec\.0\.W"):
        clip_grad_norm(g, 1.0)
    np.testing.assert_array_equal(g["ok"], 1.0)  # nothing scaled


@pytest.mark.parametrize(("args", "name"), [
    (({"a": np.ones(2)}, -1.0), "max_norm"),
    (({"a": np.ones(2)}, float("nan")), "max_norm"),
    (([np.ones(2)], 1.0), "grads"),
    (({"a": np.ones(2, np.int32)}, 1.0), r"grads\['a'\]"),
])
def test_clip_grad_norm_bad_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        clip_grad_norm(*args)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradients_are_refused_naming_the_parameter(bad):
    """A NaN or inf gradient raises before any parameter or state changes; huge finite gradients
    whose sum overflows are still stepped."""
    params = {"w": np.ones(3), "b": np.ones(2, np.float32)}
    for opt in (SGD(params, lr=0.1, momentum=0.9), Adam(params), AdamW(params)):
        grads = {"w": np.array([0.5, 1.0, 2.0]), "b": np.array([1.0, bad], np.float32)}
        state = opt.state_dict()
        with pytest.raises(FloatingPointError, match=r"grads\['b'\] is not finite \(1 of 2"):
            opt.step(grads)
        assert opt.step_count == 0
        for k, v in opt.state_dict().items():
            np.testing.assert_array_equal(v, state[k])
        for v in params.values():
            np.testing.assert_array_equal(v, 1.0)
    huge = {"w": np.full(3, 1e308), "b": np.full(2, 3e38, np.float32)}  # both sums overflow
    opt = SGD(params, lr=1e-310)
    opt.step(huge)
    assert opt.step_count == 1
    np.testing.assert_array_equal(params["w"], 1.0 - 1e-310 * 1e308)
    np.testing.assert_array_equal(params["b"], np.float32(1.0) - np.float32(1e-310) * np.float32(3e38))


def test_first_nonfinite_names_the_first_bad_gradient_and_passes_huge_finite_ones():
    from minivae.optim import first_nonfinite

    ok = {"a": np.ones(3), "b": np.full(2, 3e38, np.float32)}  # b's float32 sum overflows: still finite
    assert first_nonfinite(ok) is None
    assert first_nonfinite(ok | {"c": np.array([1.0, np.nan]), "d": np.array([np.inf])}) == "c"
    assert first_nonfinite({"a": np.ones(2), "d": np.array([-np.inf])}) == "d"
    params = {"a": np.ones(3)}
    opt = SGD(params, lr=0.1)
    opt.step({"a": np.array([0.0, np.nan, 0.0])}, check_finite=False)  # the caller's choice
    assert np.isnan(params["a"][1]) and params["a"][0] == 1.0


class _DeviceArray:
    """An array of a module that is not NumPy (as a GPU backend's CuPy arrays are not): it offers
    only what an array library offers, so a NumPy-only code path fails on it."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    dtype = property(lambda self: self.a.dtype)

    def reshape(self, *shape):
        return _DeviceArray(self.a.reshape(*shape))  # a view, as for contiguous arrays

    def astype(self, dtype):
        return _DeviceArray(self.a.astype(dtype))

    def all(self):
        return self.a.all()

    def __imul__(self, c):
        self.a *= c
        return self


def _device_module():
    import types

    xp = types.ModuleType("device")
    xp.ndarray = _DeviceArray
    xp.dot = lambda u, v: np.dot(u.a, v.a)
    xp.isfinite = lambda u: _DeviceArray(np.isfinite(u.a))
    return xp


def test_clip_grad_norm_runs_on_another_array_module():
    """The training loop hands a GPU backend's gradients with that backend's array module."""
    xp = _device_module()
    grads = {"w": _DeviceArray(np.array([3.0, 0.0], np.float32)),
             "b": _DeviceArray(np.array([4.0], np.float32))}
    assert clip_grad_norm(grads, 1.0, xp=xp) == 5.0
    np.testing.assert_allclose(grads["w"].a, [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grads["b"].a, [0.8], rtol=1e-6)
    grads["b"].a[0] = np.nan
    with pytest.raises(ValueError, match=r"grads \['b'\] contain NaN or inf"):
        clip_grad_norm(grads, 1.0, xp=xp)
    with pytest.raises(ValueError, match=r"grads\['w'\] must be a floating-point device.ndarray"):
        clip_grad_norm({"w": np.zeros(2)}, 1.0, xp=xp)
