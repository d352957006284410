"""Tests of minivae.gradcheck: right gradients pass, wrong ones fail at the wrong element, genuine
kinks (and only those) are excused, parameters come back bit for bit, bad input is refused.

Only ``minivae.gradcheck`` is imported: the layers checked here are written in this file.
"""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minivae.gradcheck as gradcheck_module
from minivae.gradcheck import (
    Float32GradcheckWarning,
    GradcheckError,
    GradcheckResult,
    ParamCheck,
    check_function,
    check_layer,
    gradcheck,
)

COLUMNS = ("name", "shape", "max abs err", "max rel err", "worst index", "analytic", "numeric",
           "tol share", "kinks", "status")
small_values = st.floats(-3, 3, allow_nan=False, allow_infinity=False)
seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def tanh_problem(A: np.ndarray, x: np.ndarray):
    """f = sum(tanh(A @ x)) as a closure over A and x, and its exact gradients."""

    def f() -> float:
        return float(np.sum(np.tanh(A @ x)))

    t = 1.0 - np.tanh(A @ x) ** 2
    return f, {"A": np.outer(t, x), "x": A.T @ t}


def relu_problem(z: np.ndarray, w: np.ndarray):
    """f = sum(w * relu(z)) and the usual backward, which returns 0 at z == 0."""

    def f() -> float:
        return float(np.sum(w * np.maximum(z, 0.0)))

    return f, w * (z > 0)


def dense_problem(rng: np.random.Generator, n_out: int = 200, n_in: int = 300, batch: int = 4):
    """f = sum(dy * tanh(W @ X + b)) with a 200x300 W: 60,200 parameters."""
    W = 0.1 * rng.standard_normal((n_out, n_in))
    b = rng.standard_normal(n_out)
    X = rng.standard_normal((n_in, batch))
    dy = rng.standard_normal((n_out, batch))

    def f() -> float:
        return float(np.sum(dy * np.tanh(W @ X + b[:, None])))

    t = dy * (1.0 - np.tanh(W @ X + b[:, None]) ** 2)
    return f, {"W": W, "b": b}, {"W": t @ X.T, "b": t.sum(axis=1)}


def row(result: GradcheckResult, name: str) -> ParamCheck:
    return next(r for r in result.rows if r.name == name)


def snapshot(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


class Affine:
    """y = x @ W.T + b, with optional deliberate bugs in backward."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator, bug: str | None = None):
        self.params = {"W": rng.standard_normal((n_out, n_in)), "b": rng.standard_normal(n_out)}
        self.bug = bug

    def forward(self, x):
        return x @ self.params["W"].T + self.params["b"], x

    def backward(self, dy, x):
        dx = dy @ self.params["W"]
        dW = dy.T @ x
        db = dy.sum(axis=0)
        if self.bug == "db_mean":
            db = dy.mean(axis=0)
        elif self.bug == "dW_half":
            dW = 0.5 * dW
        elif self.bug == "dx_sign":
            dx = dx.copy()
            dx[0, 0] = -dx[0, 0]
        return dx, {"W": dW, "b": db}


class Tanh:
    params: dict[str, np.ndarray] = {}

    def forward(self, x):
        y = np.tanh(x)
        return y, y

    def backward(self, dy, y):
        return dy * (1.0 - y**2), {}


class ReLU:
    params: dict[str, np.ndarray] = {}

    def forward(self, x):
        return np.maximum(x, 0.0), x

    def backward(self, dy, x):
        return dy * (x > 0), {}


class HalfSquaredNorm:
    """A loss-like layer with a 0-d output; ``ignores_dy`` is the classic bug."""

    def __init__(self, ignores_dy: bool = False):
        self.params: dict[str, np.ndarray] = {}
        self.ignores_dy = ignores_dy

    def forward(self, x):
        return np.asarray(0.5 * np.sum(x**2)), x

    def backward(self, dy, x):
        return (x.copy() if self.ignores_dy else dy * x), {}


# --------------------------------------------------------------------------------------------
# right gradients pass, and the table
# --------------------------------------------------------------------------------------------


@settings(deadline=None)
@given(m=st.integers(1, 5), n=st.integers(1, 5), data=st.data())
def test_correct_gradients_pass(m, n, data):
    A = data.draw(hnp.arrays(np.float64, (m, n), elements=small_values), label="A")
    x = data.draw(hnp.arrays(np.float64, (n,), elements=small_values), label="x")
    f, grads = tanh_problem(A, x)
    res = gradcheck(f, {"A": A, "x": x}, grads)
    assert res.ok, str(res)
    assert [r.name for r in res.rows] == ["A", "x"]
    assert [r.shape for r in res.rows] == [(m, n), (n,)]
    assert all(r.passed and r.n_kinks == 0 and r.tol_share <= 1 for r in res.rows)
    assert res.n_evals == 2 * (m * n + n) + 1
    assert (res.mode, res.dtype, res.rtol, res.atol) == ("full", np.float64, 1e-6, 1e-8)
    assert res.step == pytest.approx(np.cbrt(np.finfo(np.float64).eps)) and res.step_scaled
    assert res.raise_if_failed() is res
    text = str(res)
    assert "PASSED" in text and all(c in text for c in COLUMNS)


def test_table_is_aligned_and_names_every_row():
    rng = np.random.default_rng(3)
    A, x = rng.standard_normal((4, 3)), rng.standard_normal(3)
    f, grads = tanh_problem(A, x)
    grads["x"][1] += 0.5
    res = gradcheck(f, {"A": A, "x": x}, grads)
    lines = str(res).splitlines()
    assert lines[0].startswith("gradcheck FAILED: 1 of 2 rows failed")
    header, dashes, body = lines[1], lines[2], lines[3:5]
    assert set(dashes) == {"-", " "}
    gaps = [i for i, c in enumerate(dashes) if c == " "]
    for line in [header, *body]:
        assert len(line) <= len(dashes)
        assert all(line[i] == " " for i in gaps if i < len(line)), line
    assert body[0].split()[0] == "A" and body[0].rstrip().endswith("pass")
    assert body[1].split()[0] == "x" and body[1].rstrip().endswith("FAIL")
    assert "(1,)" in body[1]


# --------------------------------------------------------------------------------------------
# wrong gradients fail, at the wrong element
# --------------------------------------------------------------------------------------------


@settings(deadline=None)
@given(seed=seeds, m=st.integers(1, 5), n=st.integers(1, 5), data=st.data())
def test_sign_flip_on_one_element_fails_at_that_element(seed, m, n, data):
    rng = np.random.default_rng(seed)
    A, x = rng.standard_normal((m, n)), rng.standard_normal(n)
    f, grads = tanh_problem(A, x)
    i, j = data.draw(st.integers(0, m - 1), label="i"), data.draw(st.integers(0, n - 1), label="j")
    assume(abs(grads["A"][i, j]) > 1e-3)
    grads["A"][i, j] *= -1.0
    res = gradcheck(f, {"A": A, "x": x}, grads)
    assert not res.ok
    bad = row(res, "A")
    assert not bad.passed and bad.n_kinks == 0
    assert bad.worst_index == (i, j)
    assert bad.analytic == grads["A"][i, j]
    assert bad.numeric == pytest.approx(-grads["A"][i, j], rel=1e-6)
    assert bad.tol_share > 1e3
    assert row(res, "x").passed
    with pytest.raises(GradcheckError, match=r"(?s)FAILED.*A .*FAIL") as info:
        res.raise_if_failed()
    assert isinstance(info.value, AssertionError)


@pytest.mark.parametrize("claimed", ["x", "2x"])
def test_dropped_or_extra_factor_fails(claimed):
    # f = 0.5 * sum(x^2): gradient x. Claiming 2x is "factor 1/2 dropped"; claiming x for
    # f = sum(x^2) is the mirror bug.
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 2.0, size=6) * rng.choice([-1.0, 1.0], size=6)
    scale = 0.5 if claimed == "2x" else 1.0

    def f() -> float:
        return float(scale * np.sum(x**2))

    wrong = 2.0 * x if claimed == "2x" else x.copy()
    res = gradcheck(f, {"x": x}, {"x": wrong})
    assert not res.ok and res.rows[0].tol_share > 1e4
    assert res.rows[0].max_rel_err == pytest.approx(0.5, rel=1e-6)
    right = x.copy() if claimed == "2x" else 2.0 * x
    assert gradcheck(f, {"x": x}, {"x": right}).ok


def test_worst_index_is_the_largest_share_not_the_largest_absolute_error():
    c = np.array([1000.0, 0.1, 1.0])
    x = np.array([0.3, -0.2, 0.1])

    def f() -> float:
        return float(c @ x)

    res = gradcheck(f, {"x": x}, {"x": np.array([1001.0, 0.0, 1.0])})
    r = res.rows[0]
    # element 0: |err| = 1 but share ~ 1 / 1e-3 = 1e3; element 1: |err| = 0.1, share ~ 9e5.
    assert r.worst_index == (1,)
    # f ~ 300, so rounding in f(x +- h) costs ~ eps * 300 / h ~ 1e-8 in the numeric slope
    assert r.analytic == 0.0 and r.numeric == pytest.approx(0.1, abs=1e-7)
    # the tolerance includes the rounding floor 8 eps max|f| / 2h (f ~ 30 here)
    noise = 8 * np.finfo(float).eps * abs(f()) / (2 * np.cbrt(np.finfo(float).eps))
    assert r.tol_share == pytest.approx(0.1 / (1e-8 + 1e-6 * 0.1 + noise), rel=1e-2)
    assert r.max_abs_err == pytest.approx(1.0, rel=1e-6)
    assert r.max_rel_err == pytest.approx(1.0)


@pytest.mark.parametrize("target_share", [0.5, 0.9, 1.1, 3.0])
def test_metric_is_the_documented_formula(target_share):
    rtol, atol, slope = 1e-3, 1e-4, 3.0
    x = np.array([0.7])

    def f() -> float:
        return float(slope * x[0])

    # share = e / (atol + rtol * (slope + e))  solved for the error e of the analytic value
    e = target_share * (atol + rtol * slope) / (1.0 - target_share * rtol)
    res = gradcheck(f, {"x": x}, {"x": np.array([slope + e])}, rtol=rtol, atol=atol)
    r = res.rows[0]
    assert (res.rtol, res.atol) == (rtol, atol)
    assert r.tol_share == pytest.approx(target_share, rel=1e-6)
    assert r.max_abs_err == pytest.approx(e, rel=1e-6)
    assert r.max_rel_err == pytest.approx(e / (slope + e), rel=1e-6)
    assert r.passed == (target_share <= 1.0) == res.ok


# --------------------------------------------------------------------------------------------
# kinks
# --------------------------------------------------------------------------------------------


def test_relu_at_exact_zero_is_a_kink_not_a_failure():
    z = np.array([-1.0, 0.0, 2.0, 0.0, -0.0, 0.5])
    w = np.array([0.3, -1.2, 0.8, 2.0, 0.7, -0.4])
    f, g = relu_problem(z, w)
    res = gradcheck(f, {"z": z}, {"z": g})
    r = res.rows[0]
    assert res.ok and r.passed, str(res)
    assert r.n_kinks == 3 and r.kink_indices == [(1,), (3,), (4,)]
    assert r.worst_index not in r.kink_indices and r.tol_share <= 1
    assert r.max_abs_err < 1e-9  # errors are summarised over the non-kink elements only
    assert "kinks in z" in str(res) and "(3,)" in str(res)
    # Without kink detection the very same elements fail: they were real failures of the plain
    # central difference, not something the kink rule had to invent.
    off = gradcheck(f, {"z": z}, {"z": g}, kink_tol=math.inf)
    assert not off.ok and off.rows[0].n_kinks == 0 and off.rows[0].worst_index == (3,)


def test_abs_at_exact_zero_is_a_kink_not_a_failure():
    z = np.array([0.0, -1.5, 0.0, 2.5])

    def f() -> float:
        return float(np.sum(np.abs(z)))

    # A backward returning +1 at 0 (x >= 0 convention) disagrees with the central difference (0).
    res = gradcheck(f, {"z": z}, {"z": np.where(z >= 0, 1.0, -1.0)})
    assert res.ok and res.rows[0].kink_indices == [(0,), (2,)], str(res)
    # sign(0) = 0 is what the symmetric central difference sees: a plain pass, no kink.
    res0 = gradcheck(f, {"z": z}, {"z": np.sign(z)})
    assert res0.ok and res0.rows[0].n_kinks == 0


def test_kink_closer_than_the_step_is_a_kink():
    z = np.array([1e-9, -1e-9, 1.0])
    w = np.array([1.5, -0.5, 2.0])
    f, g = relu_problem(z, w)
    res = gradcheck(f, {"z": z}, {"z": g})
    assert res.ok and res.rows[0].kink_indices == [(0,), (1,)], str(res)


@settings(deadline=None)
@given(data=st.data())
def test_relu_kinks_are_exactly_the_zero_inputs(data):
    n = data.draw(st.integers(1, 12), label="n")
    at_zero = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="zero"))
    mags = data.draw(hnp.arrays(np.float64, n, elements=st.floats(1e-3, 3.0)), label="mags")
    signs = data.draw(hnp.arrays(np.float64, n, elements=st.sampled_from([-1.0, 1.0])))
    w_mag = data.draw(hnp.arrays(np.float64, n, elements=st.floats(1e-3, 3.0)), label="w")
    w_sign = data.draw(hnp.arrays(np.float64, n, elements=st.sampled_from([-1.0, 1.0])))
    z = np.where(at_zero, 0.0, signs * mags)
    f, g = relu_problem(z, w_mag * w_sign)
    res = gradcheck(f, {"z": z}, {"z": g})
    assert res.ok, str(res)
    assert res.rows[0].kink_indices == [(int(i),) for i in np.flatnonzero(at_zero)]


@pytest.mark.parametrize("bug", ["double_smooth_neighbour", "inactive_above_zero"])
def test_wrong_gradient_at_smooth_point_next_to_a_kink_still_fails(bug):
    z = np.array([0.0, 0.5, 1e-3, -2e-3])
    w = np.array([1.3, -0.7, 0.9, 1.1])
    f, g = relu_problem(z, w)
    g = g.copy()
    if bug == "double_smooth_neighbour":
        g[1] *= 2.0
        bad = (1,)
    else:  # an off-by-threshold mask: z = 1e-3 treated as inactive
        g[2] = 0.0
        bad = (2,)
    res = gradcheck(f, {"z": z}, {"z": g})
    r = res.rows[0]
    assert not res.ok and r.worst_index == bad, str(res)
    assert r.kink_indices == [(0,)]  # the genuine kink is still recognised


@pytest.mark.parametrize(
    ("claimed", "expected"),
    [(-1.5, "fail"), (3.0, "fail"), (-0.3, "fail"), (1.5, "kink"), (0.3, "kink"), (0.0, "kink"),
     (0.75, "pass")],
)
def test_gradient_at_a_kink_must_lie_between_the_one_sided_slopes(claimed, expected):
    z, w = np.array([0.0]), np.array([1.5])  # one-sided slopes: 0 (left) and 1.5 (right)
    f, _ = relu_problem(z, w)
    res = gradcheck(f, {"z": z}, {"z": np.array([claimed])})
    r = res.rows[0]
    assert res.ok == (expected != "fail"), str(res)
    assert r.n_kinks == (1 if expected == "kink" else 0)
    if expected == "fail":  # a flipped sign or a factor at a kink is not excused
        assert r.worst_index == (0,)
    if expected == "pass":  # 0.75 is the average slope that the central difference sees
        assert r.tol_share <= 1


@settings(deadline=None)
@given(k=st.integers(1, 50), x0=st.floats(-1.0, 1.0), err=st.floats(1e-4, 1.0),
       sign=st.sampled_from([-1.0, 1.0]))
def test_wrong_gradient_at_a_strongly_curved_smooth_point_is_never_a_kink(k, x0, err, sign):
    # Near a zero of f' = k cos(kx), d+ - d- ~ h f'' exceeds 1e-3 * max(1, |f'|); a rule on the
    # plain one-sided differences would excuse small errors there. The extrapolated slopes agree.
    x = np.array([x0])

    def f() -> float:
        return float(np.sin(k * x[0]))

    res = gradcheck(f, {"x": x}, {"x": np.array([k * np.cos(k * x0) + sign * err])})
    assert not res.ok and res.rows[0].n_kinks == 0, str(res)


@settings(deadline=None)
@given(k=st.integers(20, 50), j=st.integers(0, 3), offset=st.floats(-2e-4, 2e-4),
       frac=st.floats(0.1, 0.9), sign=st.sampled_from([-1.0, 1.0]))
def test_errors_hidden_by_curvature_in_plain_one_sided_differences_still_fail(
    k, j, offset, frac, sign
):
    # Targets the blind spot of a rule on the plain d+, d-: near a zero of f' = k cos(kx) they
    # differ by h |f''| ~ 6e-6 k^2 and bracket every error below h |f''| / 2.
    x0 = (np.pi / 2 + j * np.pi) / k + offset
    x = np.array([x0])

    def f() -> float:
        return float(np.sin(k * x[0]))

    h = np.cbrt(np.finfo(np.float64).eps)
    err = sign * frac * 0.5 * h * k**2 * abs(np.sin(k * x0))
    res = gradcheck(f, {"x": x}, {"x": np.array([k * np.cos(k * x0) + err])})
    assert not res.ok and res.rows[0].n_kinks == 0, str(res)


def test_wrong_gradient_near_a_zero_of_the_derivative_is_not_a_kink():
    k = 50.0
    x = np.array([np.pi / (2 * k) + 1e-4])

    def f() -> float:
        return float(np.sin(k * x[0]))

    true = k * np.cos(k * x[0])  # about -0.25, while f'' is about -2500
    res = gradcheck(f, {"x": x}, {"x": np.array([true + 0.005])})
    assert not res.ok and res.rows[0].n_kinks == 0
    assert gradcheck(f, {"x": x}, {"x": np.array([true])}).ok


# --------------------------------------------------------------------------------------------
# directional mode
# --------------------------------------------------------------------------------------------


def test_directional_mode_passes_on_correct_gradients():
    f, params, grads = dense_problem(np.random.default_rng(0))
    calls = 0

    def counted() -> float:
        nonlocal calls
        calls += 1
        return f()

    res = gradcheck(counted, params, grads, mode="directional", n_directions=4)
    assert res.ok, str(res)
    assert [r.name for r in res.rows] == [f"direction {d}" for d in range(4)]
    assert all(r.shape == (200 * 300 + 200,) and r.worst_index == () for r in res.rows)
    assert res.n_evals == calls == 2 * 4 + 1
    assert all(abs(r.analytic) > 1e-3 for r in res.rows)  # the comparison is not vacuous


@pytest.mark.parametrize("bug", ["half_W", "sign_b", "one_element", "swapped_rows"])
def test_directional_mode_fails_on_wrong_gradients(bug):
    f, params, grads = dense_problem(np.random.default_rng(0))
    grads = {k: v.copy() for k, v in grads.items()}
    if bug == "half_W":
        grads["W"] *= 0.5
    elif bug == "sign_b":
        grads["b"] = -grads["b"]
    elif bug == "one_element":
        grads["W"][17, 42] += 1.0
    else:
        grads["W"][[3, 4]] = grads["W"][[4, 3]]
    res = gradcheck(f, params, grads, mode="directional", n_directions=4)
    assert not res.ok
    assert all(not r.passed for r in res.rows), str(res)
    with pytest.raises(GradcheckError, match="direction 0"):
        res.raise_if_failed()


def test_directional_mode_is_reproducible_and_uses_rng():
    f, params, grads = dense_problem(np.random.default_rng(0), n_out=20, n_in=30)
    a = gradcheck(f, params, grads, mode="directional")
    b = gradcheck(f, params, grads, mode="directional", rng=np.random.default_rng(0))
    c = gradcheck(f, params, grads, mode="directional", rng=np.random.default_rng(1))
    assert [r.analytic for r in a.rows] == [r.analytic for r in b.rows]
    assert [r.analytic for r in a.rows] != [r.analytic for r in c.rows]


def test_directional_mode_across_exact_relu_zeros_is_inconclusive_not_failed():
    z = np.array([0.0, 0.5, 0.0, -1.0, 0.0])
    w = np.array([1.0, -2.0, -0.5, 0.3, 0.8])
    f, g = relu_problem(z, w)
    res = gradcheck(f, {"z": z}, {"z": g}, mode="directional")
    assert res.ok and all(r.n_kinks == 1 and r.worst_index is None for r in res.rows), str(res)
    assert "inconclusive" in str(res)
    assert not gradcheck(f, {"z": z}, {"z": g}, mode="directional", kink_tol=math.inf).ok


# --------------------------------------------------------------------------------------------
# parameters are restored bit for bit
# --------------------------------------------------------------------------------------------

SPECIAL = np.array([-0.0, 0.0, 5e-324, -5e-324, 1e300, -1e-300, 1.0, np.nextafter(1.0, 2.0),
                    -3.3, 1e-7])


def special_params():
    big = np.arange(24, dtype=np.float64).reshape(4, 6) / 7.0
    return {"s": SPECIAL.copy(), "view": big[::2, 1:5]}, big


def special_f(params):
    def f() -> float:
        return float(np.sum(np.tanh(params["s"])) + np.sum(np.sin(params["view"])))

    return f


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_params_restored_bitwise(mode):
    params, big = special_params()
    before, big_before = snapshot(params), big.tobytes()
    grads = {"s": 1.0 - np.tanh(params["s"]) ** 2, "view": np.cos(params["view"])}
    ids = {k: id(v) for k, v in params.items()}
    res = gradcheck(special_f(params), params, grads, mode=mode)
    assert res.ok, str(res)
    assert snapshot(params) == before and big.tobytes() == big_before
    assert {k: id(v) for k, v in params.items()} == ids
    assert np.signbit(params["s"][0])  # -0.0 is still -0.0


@pytest.mark.parametrize("mode", ["full", "directional"])
@pytest.mark.parametrize("fail_at", [1, 2, 3, 5, 6, 7])
def test_params_restored_when_f_raises(mode, fail_at):
    # z[0] = 0 is a kink, so the extra double-step evaluations happen too (calls 6, 7 in full
    # mode; calls 4, 5 in directional mode with one direction).
    z = np.array([0.0, 1.0])
    w = np.array([1.0, 2.0])
    _, g = relu_problem(z, w)
    before = z.tobytes()
    calls = 0

    def f() -> float:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            z[:] = 123.0  # even if f scribbles on the params before raising
            raise RuntimeError("boom")
        return float(np.sum(w * np.maximum(z, 0.0)))

    kwargs = {"n_directions": 1} if mode == "directional" else {}
    n_calls = 7 if mode == "full" else 5
    if fail_at > n_calls:
        res = gradcheck(f, {"z": z}, {"z": g}, mode=mode, **kwargs)
        assert res.ok and res.n_evals == n_calls
    else:
        with pytest.raises(RuntimeError, match="boom"):
            gradcheck(f, {"z": z}, {"z": g}, mode=mode, **kwargs)
    assert z.tobytes() == before


@settings(deadline=None)
@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
                 elements=st.floats(allow_nan=False, allow_infinity=False)),
    mode=st.sampled_from(["full", "directional"]),
)
def test_params_restored_bitwise_for_any_finite_values(x, mode):
    before = x.tobytes()

    def f() -> float:
        return float(np.sum(np.tanh(x)))

    try:
        gradcheck(f, {"x": x}, {"x": 1.0 - np.tanh(x) ** 2}, mode=mode)
    except ValueError as exc:  # a step overflowing near the largest float is reported...
        assert "overflow" in str(exc)
    assert x.tobytes() == before  # ...and whatever happened, x is back bit for bit


# --------------------------------------------------------------------------------------------
# float32, settings and bad input
# --------------------------------------------------------------------------------------------


def test_float32_warns_and_uses_loose_defaults():
    assert issubclass(Float32GradcheckWarning, UserWarning)
    rng = np.random.default_rng(2)
    A = rng.standard_normal((4, 3)).astype(np.float32)
    x = rng.standard_normal(3).astype(np.float32)
    f, grads = tanh_problem(A, x)
    with pytest.warns(Float32GradcheckWarning, match="float64") as record:
        res = gradcheck(f, {"A": A, "x": x}, grads)
    assert record[0].filename == __file__  # points at the caller, not at gradcheck.py
    assert res.ok, str(res)
    assert (res.dtype, res.rtol, res.atol, res.kink_tol) == (np.float32, 1e-2, 1e-3, 1e-1)
    grads["x"][0] *= -1
    with pytest.warns(Float32GradcheckWarning):
        assert not gradcheck(f, {"A": A, "x": x}, grads).ok


def test_float64_does_not_warn():
    rng = np.random.default_rng(2)
    A, x = rng.standard_normal((2, 2)), rng.standard_normal(2)
    f, grads = tanh_problem(A, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gradcheck(f, {"A": A, "x": x}, grads).ok


def test_explicit_step_is_absolute_and_too_small_a_step_is_refused():
    x = np.array([1000.0, -2.0])

    def f() -> float:
        return float(np.sum(np.sin(x / 100.0)))

    g = np.cos(x / 100.0) / 100.0
    res = gradcheck(f, {"x": x}, {"x": g}, step=1e-3)
    assert res.ok and res.step == 1e-3 and not res.step_scaled
    assert "step=0.001," in str(res)
    with pytest.raises(ValueError, match=r"resolution.*'x'|'x'.*resolution"):
        gradcheck(f, {"x": x}, {"x": g}, step=1e-14)


def good_problem():
    rng = np.random.default_rng(5)
    A, x = rng.standard_normal((3, 2)), rng.standard_normal(2)
    f, grads = tanh_problem(A, x)
    return f, {"A": A, "x": x}, grads


@pytest.mark.parametrize(
    ("break_it", "pattern"),
    [
        (lambda p, g: g.pop("x"), r"missing.*'x'"),
        (lambda p, g: g.update(y=np.zeros(2)), r"'y'"),
        (lambda p, g: g.update(A=np.zeros((2, 3))), r"grads\['A'\].*shape.*\(3, 2\)"),
        (lambda p, g: p.update(x=np.array([1, 2])), r"params\['x'\].*floating"),
        (lambda p, g: g.update(x=np.array([1, 2])), r"grads\['x'\].*floating"),
        (lambda p, g: p.update(x=[0.1, 0.2]), r"params\['x'\].*ndarray"),
        (lambda p, g: p["x"].__setitem__(1, np.nan), r"params\['x'\].*finite.*\(1,\)"),
        (lambda p, g: g["A"].__setitem__((2, 0), np.inf), r"grads\['A'\].*finite.*\(2, 0\)"),
        (lambda p, g: p["x"].setflags(write=False), r"params\['x'\].*read-only"),
        (lambda p, g: p.update(x=p["A"][0]), r"'A'.*'x'.*share memory"),
    ],
    ids=["missing", "extra", "shape", "int-param", "int-grad", "list", "nan", "inf", "readonly",
         "alias"],
)
def test_bad_inputs_raise_value_error_naming_the_key(break_it, pattern):
    f, params, grads = good_problem()
    break_it(params, grads)
    with pytest.raises(ValueError, match=pattern):
        gradcheck(f, params, grads)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"mode": "fast"}, "mode"),
        ({"mode": "directional", "n_directions": 0}, "n_directions"),
        ({"step": 0.0}, "step"),
        ({"step": float("nan")}, "step"),
        ({"rtol": -1e-6}, "rtol"),
        ({"atol": float("inf")}, "atol"),
        ({"kink_tol": -1.0}, "kink_tol"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, pattern):
    f, params, grads = good_problem()
    with pytest.raises(ValueError, match=pattern):
        gradcheck(f, params, grads, **kwargs)


def test_non_finite_f_names_the_parameter_and_index():
    x = np.array([2.0, 1e-7, 3.0])

    def f() -> float:
        with np.errstate(invalid="ignore"):
            return float(np.sum(np.log(x)))

    before = x.tobytes()
    with pytest.raises(ValueError, match=r"nan.*params\['x'\]\[\(1,\)\]"):
        gradcheck(f, {"x": x}, {"x": 1.0 / x})
    assert x.tobytes() == before
    with pytest.raises(ValueError, match="unperturbed"):
        gradcheck(lambda: float("inf"), {"x": x}, {"x": 1.0 / x})
    with pytest.raises(ValueError, match="scalar"):
        gradcheck(lambda: x.copy(), {"x": x}, {"x": 1.0 / x})


# --------------------------------------------------------------------------------------------
# check_layer and check_function
# --------------------------------------------------------------------------------------------


def test_check_layer_passes_a_correct_affine_layer_and_touches_nothing():
    rng = np.random.default_rng(7)
    layer = Affine(4, 3, rng)
    x = rng.standard_normal((5, 4))
    x_before, p_before = x.tobytes(), snapshot(layer.params)
    res = check_layer(layer, x)
    assert res.ok, str(res)
    assert [r.name for r in res.rows] == ["x", "W", "b"]
    assert [r.shape for r in res.rows] == [(5, 4), (3, 4), (3,)]
    assert x.tobytes() == x_before and snapshot(layer.params) == p_before
    again = check_layer(layer, x)  # default rng: the same upstream gradient, the same numbers
    assert [r.analytic for r in again.rows] == [r.analytic for r in res.rows]


@pytest.mark.parametrize(("bug", "bad_row"), [("db_mean", "b"), ("dW_half", "W"),
                                              ("dx_sign", "x")])
def test_check_layer_finds_the_buggy_gradient(bug, bad_row):
    rng = np.random.default_rng(7)
    res = check_layer(Affine(4, 3, rng, bug=bug), rng.standard_normal((5, 4)))
    assert not res.ok
    assert [r.name for r in res.rows if not r.passed] == [bad_row], str(res)
    if bug == "dx_sign":
        assert row(res, "x").worst_index == (0, 0)


def test_check_layer_without_params_scalar_output_and_kinks():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4))
    res = check_layer(Tanh(), x)
    assert res.ok and [r.name for r in res.rows] == ["x"]
    assert check_layer(HalfSquaredNorm(), x).ok
    # With a random upstream gradient, forgetting to multiply by dy is caught even for a loss.
    assert not check_layer(HalfSquaredNorm(ignores_dy=True), x).ok
    x[0, :2] = 0.0
    relu = check_layer(ReLU(), x)
    assert relu.ok and relu.rows[0].kink_indices == [(0, 0), (0, 1)], str(relu)


def test_check_layer_directional_on_a_large_layer():
    rng = np.random.default_rng(9)
    layer = Affine(300, 200, rng)
    x = rng.standard_normal((4, 300))
    res = check_layer(layer, x, mode="directional", n_directions=3)
    assert res.ok and len(res.rows) == 3 and res.rows[0].shape == (4 * 300 + 200 * 300 + 200,)
    bad = check_layer(Affine(300, 200, rng, bug="db_mean"), x, mode="directional")
    assert not bad.ok


def test_check_layer_float32_warning_points_at_the_caller():
    rng = np.random.default_rng(7)
    layer = Affine(2, 2, rng)
    layer.params = {k: v.astype(np.float32) for k, v in layer.params.items()}
    with pytest.warns(Float32GradcheckWarning) as record:
        check_layer(layer, rng.standard_normal((3, 2)).astype(np.float32))
    assert record[0].filename == __file__


def test_check_layer_rejects_a_backward_with_the_wrong_keys():
    class NoBias(Affine):
        def backward(self, dy, x):
            dx, grads = super().backward(dy, x)
            return dx, {"W": grads["W"]}

    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match=r"'b'|\['W', 'b'\]"):
        check_layer(NoBias(2, 2, rng), rng.standard_normal((3, 2)))


def matmul_forward(x, W):
    return x @ W, (x, W)


def matmul_backward(dy, cache):
    x, W = cache
    return {"x": dy @ W.T, "W": x.T @ dy}


def test_check_function_with_dict_and_tuple_gradients():
    rng = np.random.default_rng(10)
    inputs = {"x": rng.standard_normal((3, 4)), "W": rng.standard_normal((4, 2))}
    before = snapshot(inputs)
    res = check_function(matmul_forward, matmul_backward, inputs)
    assert res.ok and [r.name for r in res.rows] == ["x", "W"], str(res)

    def as_tuple(dy, cache):
        g = matmul_backward(dy, cache)
        return g["x"], g["W"]

    assert check_function(matmul_forward, as_tuple, inputs).ok
    assert snapshot(inputs) == before

    def transposed_bug(dy, cache):
        g = matmul_backward(dy, cache)
        return g["x"], g["W"] * 1.01

    res = check_function(matmul_forward, transposed_bug, inputs)
    assert [r.name for r in res.rows if not r.passed] == ["W"]


def test_check_function_scalar_output_with_constants():
    rng = np.random.default_rng(11)
    pred, target = rng.standard_normal(6), rng.standard_normal(6)

    def mse_forward(pred, target):
        d = pred - target
        return np.mean(d**2), d

    def mse_backward(dy, d):
        return {"pred": dy * 2.0 * d / d.size, "target": -dy * 2.0 * d / d.size}

    res = check_function(mse_forward, mse_backward, {"pred": pred}, constants={"target": target})
    assert res.ok and [r.name for r in res.rows] == ["pred"], str(res)
    both = check_function(mse_forward, mse_backward, {"pred": pred, "target": target})
    assert both.ok and [r.name for r in both.rows] == ["pred", "target"]


@pytest.mark.parametrize("bug", [False, True])
def test_check_function_reparameterisation(bug):
    rng = np.random.default_rng(12)
    mu, logvar, eps = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal(
        (4, 3))

    def forward(mu, logvar, eps):
        std = np.exp(0.5 * logvar)
        return mu + std * eps, (std, eps)

    def backward(dz, cache):
        std, eps = cache
        factor = 1.0 if bug else 0.5  # the bug drops the 1/2 of d std / d logvar
        return dz, dz * eps * std * factor

    res = check_function(forward, backward, {"mu": mu, "logvar": logvar},
                         constants={"eps": eps})
    assert res.ok != bug
    assert row(res, "mu").passed and row(res, "logvar").passed != bug


def test_check_function_tuple_outputs_and_single_gradient():
    rng = np.random.default_rng(13)
    h = rng.standard_normal((3, 4))

    def split_forward(h):
        return (h[:, :2] * 2.0, np.sin(h[:, 2:])), h

    def split_backward(dys, h):
        d1, d2 = dys
        return np.concatenate([2.0 * d1, d2 * np.cos(h[:, 2:])], axis=1)

    res = check_function(split_forward, split_backward, {"h": h})
    assert res.ok and [r.name for r in res.rows] == ["h"], str(res)


def test_module_docstring_example_runs():
    outcome = doctest.testmod(gradcheck_module, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted > 0 and outcome.failed == 0


def test_a_result_is_true_exactly_when_every_row_passes():
    """``assert check_layer(layer, x)`` is a working check, not one that always passes."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3))
    good = check_layer(Affine(3, 2, rng), x)
    bad = check_layer(Affine(3, 2, rng, bug="dW_half"), x)
    assert good and good.ok and bool(good) is True
    assert not bad and not bad.ok and bool(bad) is False
    with pytest.raises(AssertionError):
        assert check_layer(Affine(3, 2, rng, bug="dx_sign"), x)
