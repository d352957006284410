"""Every layer's backward agrees with central finite differences in float64 (see strategies.RTOL)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import ATOL, RTOL, away_from_zero, batch, rng_of, seeds, width

from minivae.gradcheck import check_layer
from minivae.layers import (
    ACTIVATIONS,
    MLP,
    Activation,
    Linear,
    linear_act_backward,
    linear_act_forward,
    linear_init,
    sigmoid,
    softplus,
)

KINKED = {"relu", "leaky_relu", "elu"}  # non-differentiable (or not twice so) at 0


def _check(layer, x, seed):
    res = check_layer(layer, x, rng=rng_of(seed + 1), rtol=RTOL, atol=ATOL)
    assert res.ok, str(res)
    assert all(r.n_kinks == 0 for r in res.rows), str(res)


@given(n=batch, d_in=width, d_out=width, seed=seeds)
def test_linear_backward_matches_finite_differences(n, d_in, d_out, seed):
    rng = rng_of(seed)
    layer = Linear(d_in, d_out, rng, np.float64)
    _check(layer, rng.normal(0, 2, (n, d_in)), seed)


@given(name=st.sampled_from(sorted(ACTIVATIONS)), n=batch, d=width, seed=seeds,
       scale=st.sampled_from([1.0, 5.0, 30.0]))
def test_activation_backward_matches_finite_differences(name, n, d, seed, scale):
    rng = rng_of(seed)
    x = away_from_zero(rng, (n, d), scale=scale) if name in KINKED else rng.normal(0, scale, (n, d))
    _check(Activation(name), x, seed)


class _LinearAct:
    """The numpy backend's linear op (a Linear layer and its activation) as a layer."""

    def __init__(self, d_in: int, d_out: int, act: str | None, rng):
        W, b = linear_init(d_in, d_out, rng, np.float64)
        self.params, self.act = {"W": W, "b": b}, act

    def forward(self, x):
        return linear_act_forward(x, self.params["W"], self.params["b"], self.act)

    def backward(self, dy, cache):
        dx, dW, db = linear_act_backward(dy, cache)
        return dx, {"W": dW, "b": db}


@pytest.mark.parametrize("act", [None, *sorted(ACTIVATIONS)])
@given(n=batch, d_in=width, d_out=width, seed=seeds)
def test_linear_act_backward_matches_finite_differences(act, n, d_in, d_out, seed):
    """The op every MLP layer runs on the numpy backend, for every activation (a ReLU-like one may
    land a pre-activation on its kink, which the checker reports as a kink, not a failure)."""
    rng = rng_of(seed)
    layer = _LinearAct(d_in, d_out, act, rng)
    res = check_layer(layer, rng.normal(0, 2, (n, d_in)), rng=rng_of(seed + 1), rtol=RTOL, atol=ATOL)
    assert res.ok, str(res)
    if act not in KINKED:
        assert all(r.n_kinks == 0 for r in res.rows), str(res)


@given(n=batch, sizes=st.lists(width, min_size=2, max_size=4), seed=seeds,
       act=st.sampled_from(["tanh", "softplus", "elu", "sigmoid"]))
def test_mlp_backward_matches_finite_differences(n, sizes, seed, act):
    rng = rng_of(seed)
    mlp = MLP(sizes, act, rng, np.float64)
    _check(mlp, rng.normal(0, 1, (n, sizes[0])), seed)


def test_relu_kink_is_reported_as_kink_not_failure():
    x = np.array([[0.0, 1.5, -2.0]])
    res = check_layer(Activation("relu"), x, rng=rng_of(0))
    assert res.ok and res.rows[0].n_kinks == 1 and res.rows[0].kink_indices == [(0, 0)]


def test_linear_init_follows_pytorch_bounds():
    d_in, d_out = 400, 300
    layer = Linear(d_in, d_out, rng_of(0), np.float32)
    bound = 1 / np.sqrt(d_in)
    for name in ("W", "b"):
        v = layer.params[name]
        assert v.dtype == np.float32
        assert np.abs(v).max() <= bound
        assert np.abs(v).max() > 0.98 * bound  # uniform over the whole interval, not narrower
    assert abs(layer.params["W"].std() - bound / np.sqrt(3)) < 0.01 * bound


@given(x=st.floats(-1e4, 1e4))
def test_stable_sigmoid_and_softplus_never_overflow(x):
    a = np.array([x])
    s, sp = sigmoid(a)[0], softplus(a)[0]
    assert np.isfinite(s) and 0 <= s <= 1 and np.isfinite(sp) and sp >= 0
    assert sp == pytest.approx(np.logaddexp(0.0, x), rel=1e-12, abs=1e-300)
    assert s == pytest.approx(np.exp(-np.logaddexp(0.0, -x)), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "gelu"}, "activation must be one of"),
    ({"name": "relu", "slope": 0.1}, "takes no argument 'slope'"),
    ({"name": "leaky_relu", "slope": -1}, "slope must be"),
])
def test_bad_activation_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Activation(**kwargs)


@pytest.mark.parametrize("sizes", [(3,), (3, 0, 2), (3, -1), (3, 2.5)])
def test_bad_sizes_are_rejected(sizes):
    with pytest.raises(ValueError, match="sizes"):
        MLP(sizes, "relu", rng_of(0))
