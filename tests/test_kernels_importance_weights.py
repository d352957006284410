"""The importance weights of the K-sample bound (the log-mean-exp of K log-weights per column and
its softmax): the NumPy reference ``minivae.iwae.importance_weights`` against its definition, then
every variant of kernels/importance_weights/ against the reference.

Shapes include K = 1, N = 1 and sizes that are no multiple of any block; grids smaller than the
work exercise the grid-stride loops; columns hold -inf weights (a sample the model finds
impossible), a NaN (reported upstream, propagated here) and log-weights far from 0 (|log w| ~ 1e4,
where an unshifted exp would overflow). Tolerances: float64 to 1e-12; float32 to 2e-6 relative on
the weights and K-scaled absolute on the bound (each shifted exp within a few ulps, their sum of K
terms within K ulps). Variants, ids and where they run: tests/kernel_variants.py.
"""

from __future__ import annotations

from kernel_variants import select_simulator

select_simulator()

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kernel_variants import (  # noqa: E402
    TIMEOUT,
    VARIANT_DTYPES,
    cuda_c_backend,
    examples,
    host,
    kernel_module,
    numba_cuda_outputs_start_as_nan,  # noqa: F401  (an autouse fixture)
    to_device,
    variants,
)

from minivae.iwae import importance_weights  # noqa: E402

pytestmark = TIMEOUT
SHAPES = st.tuples(st.sampled_from([1, 2, 3, 5, 17, 50]), st.sampled_from([1, 2, 7, 33, 100]))


def _log_weights(rng: np.random.Generator, k: int, n: int, dtype, scale: float = 30.0) -> np.ndarray:
    """Log-weights of the size the model meets (tens of nats apart), a column offset far from 0,
    and -inf entries (never a whole column)."""
    lw = rng.standard_normal((k, n)) * scale + rng.uniform(-1e4, 1e4, n)
    if k > 1:
        lw[rng.integers(0, k - 1, n // 3), rng.integers(0, n, n // 3)] = -np.inf
        lw[k - 1] = np.where(np.isinf(lw[k - 1]), 0.0, lw[k - 1])
    return lw.astype(dtype)


def _naive(lw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The definition, in exact-enough arithmetic: Python floats on the shifted exps."""
    k, n = lw.shape
    bound, w = np.empty(n), np.empty((k, n))
    for i in range(n):
        col = [float(v) for v in lw[:, i]]
        m = max(col)
        e = [math.exp(v - m) for v in col]
        s = math.fsum(e)
        bound[i] = m + math.log(s / k)
        w[:, i] = [v / s for v in e]
    return bound, w


def _close(got, want, dtype, k: int) -> None:
    bound, w = got
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    scale = np.abs(want[0]) + 1.0
    np.testing.assert_allclose(bound, want[0], rtol=0, atol=float((k + 4) * rtol) * scale.max())
    np.testing.assert_allclose(w, want[1], rtol=rtol * (k + 4), atol=rtol * 1e-3)


@given(shape=SHAPES, dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_the_reference_is_the_definition(shape, dtype, seed):
    lw = _log_weights(np.random.default_rng(seed), *shape, dtype)
    bound, w = importance_weights(lw)
    assert bound.dtype == w.dtype == dtype and bound.shape == (shape[1],) and w.shape == shape
    _close((bound, w), _naive(lw.astype(np.float64)), dtype, shape[0])
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=shape[0] * np.finfo(dtype).eps)


def test_the_reference_by_hand_and_its_edges():
    lw = np.array([[0.0, 5.0, -np.inf], [np.log(3.0), 5.0, 2.0]])
    bound, w = importance_weights(lw)
    # column 0: (1 + 3) / 2 -> log 2, weights 1/4, 3/4; column 1: equal weights, bound 5
    np.testing.assert_allclose(bound, [np.log(2.0), 5.0, 2.0 - np.log(2.0)], rtol=1e-15)
    np.testing.assert_allclose(w, [[0.25, 0.5, 0.0], [0.75, 0.5, 1.0]], rtol=1e-15)
    one_sample = np.array([[-3.5, 7.25]])  # K = 1: the bound is the log-weight, the weight 1
    np.testing.assert_array_equal(importance_weights(one_sample)[0], one_sample[0])
    np.testing.assert_array_equal(importance_weights(one_sample)[1], [[1.0, 1.0]])
    shifted = importance_weights(lw + 1e3)  # adding c to a column adds c to its bound only
    np.testing.assert_allclose(shifted[0], bound + 1e3, rtol=1e-15)
    np.testing.assert_allclose(shifted[1], w, rtol=1e-12)  # log 3 + 1e3 rounds differently
    bad = importance_weights(np.array([[np.nan, -np.inf], [0.0, -np.inf]]))
    assert np.isnan(bad[0]).all() and np.isnan(bad[1]).all()  # reported by the model, not hidden


def _check_kernel(variant: str, lw: np.ndarray, **launch) -> None:
    """``variant``'s kernel on ``lw`` against the reference: NaN columns where the reference has
    them, the others within ``_close``."""
    mod = kernel_module("importance_weights", variant)
    where = {"backend": cuda_c_backend(variant)} if variant in ("cuda_c", "cupy") else {}
    got = mod.importance_weights(to_device(variant, lw), **where, **launch)
    got = (host(got[0]), host(got[1]))
    want = importance_weights(lw)
    nan = np.isnan(want[0])
    np.testing.assert_array_equal(np.isnan(got[0]), nan)
    keep = ~nan
    _close((got[0][keep], got[1][:, keep]), (want[0][keep], want[1][:, keep]), lw.dtype, lw.shape[0])


@pytest.mark.parametrize(("variant", "dtype"), VARIANT_DTYPES)
def test_importance_weights_match_the_reference(variant, dtype):
    """A NaN log-weight in a column of every shape wider than 3 (the column's bound and weights NaN)."""

    @examples(variant)
    @given(shape=SHAPES, seed=st.integers(0, 2**32 - 1))
    def check(shape, seed):
        lw = _log_weights(np.random.default_rng(seed), *shape, dtype)
        if shape[1] > 3:
            lw[0, 2] = np.nan
        _check_kernel(variant, lw)

    check()


@pytest.mark.parametrize("variant", variants("numba_cuda", "cuda_c", "cupy"))
@pytest.mark.parametrize(("k", "n", "block", "grid"), [(1, 1, 32, None), (5, 33, 32, 1), (50, 100, 64, 2),
                                                       (3, 257, 256, None), (17, 7, 96, 3)])
def test_blocks_and_grids_of_every_size_match_the_reference(variant, k, n, block, grid):
    """One block short of the columns, a grid of one block (every thread strides), blocks not a
    power of 2, a grid wider than the work."""
    lw = _log_weights(np.random.default_rng(k * 1000 + n), k, n, np.float32)
    if n > 3:
        lw[0, 2] = np.nan
    _check_kernel(variant, lw, block=block, grid=grid)
