"""The Bernoulli log-likelihood and its gradient in one pass (kernels/bernoulli/) in every variant
against ``minivae.likelihoods.Bernoulli``: logp[n] = sum_j x l - softplus(l) (a row sum: one block
reduction per row on the GPU variants) and dlogits = dlogp (x - sigmoid(l)).

Inputs hold grey and binary x with both edges of the support, and logits as large as +-1e4 (no
overflow in exp). Every comparison is ``RTOL`` (1e-5 in float32, 1e-12 in float64) of the summed
magnitudes of the terms, so a cancellation does not demand digits the dtype cannot hold. Outputs
start as NaN (the CUDA C outputs are handed in so; the Numba CUDA launchers allocate so here; the
Numba CPU kernels are run on NaN outputs by ``test_numba_cpu_kernels_write_every_output_element``).
Variants, ids and where they run: tests/kernel_variants.py.
"""

from __future__ import annotations

from kernel_variants import select_simulator

select_simulator()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kernel_variants import (  # noqa: E402
    DTYPES,
    TIMEOUT,
    VARIANT_DTYPES,
    assert_close,
    cuda_c_backend,
    examples,
    kernel_module,
    nan_like,
    numba_cuda_outputs_start_as_nan,  # noqa: F401  (an autouse fixture)
    params,
    to_device,
    zeros_on,
)

from minivae.likelihoods import Bernoulli  # noqa: E402

pytestmark = TIMEOUT
WIDTHS = st.sampled_from([1, 2, 3, 5, 17, 31, 33, 64, 65, 129])
# numba_cpu's parallel float32 kernel shares rows in blocks of 64: rows past two blocks; the GPU
# variants launch a block per row, which the simulator pays for thread by thread.
ROWS = {"numba_cpu": st.sampled_from([1, 2, 3, 5, 17, 65, 129])}
GPU_ROWS = st.sampled_from([1, 2, 5, 17])
PATHS = {"serial": 1 << 62, "parallel": 0}


def launches(variant: str) -> st.SearchStrategy:
    """A variant's own launch knobs: numba_cpu's path; a GPU variant's block and grid."""
    if variant == "numba_cpu":
        return st.sampled_from(list(PATHS))
    own = kernel_module("bernoulli", variant).BLOCK
    blocks = [own, 16] if variant == "numba_cuda" else [32, 64, own, 160]
    return st.fixed_dictionaries({"block": st.sampled_from(blocks), "grid": st.sampled_from([None, 1, 3])})


def bernoulli(variant: str, launch, x: np.ndarray, logits: np.ndarray, dlogp: float):
    """(logp, dlogits) of ``variant``'s kernel."""
    mod = kernel_module("bernoulli", variant)
    if variant == "numba_cpu":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mod, "PARALLEL_MIN_ELEMENTS", PATHS[launch])
            mp.setattr(mod, "F32_PARALLEL_MIN_ELEMENTS", PATHS[launch])
            return mod.bernoulli(x, logits, dlogp)
    x_dev, logits_dev = to_device(variant, x), to_device(variant, logits)
    if variant == "numba_cuda":
        return mod.bernoulli(x_dev, logits_dev, dlogp, **launch)
    n, d = x.shape
    return mod.bernoulli_forward_backward(x_dev, logits_dev, dlogp, backend=cuda_c_backend(variant),
                                          out=(nan_like(variant, n), nan_like(variant, (n, d))), **launch)


@pytest.mark.parametrize(("variant", "dtype"), VARIANT_DTYPES)
def test_bernoulli_matches_the_likelihood(variant, dtype):

    @examples(variant, n=15)
    @given(n=ROWS.get(variant, GPU_ROWS), dim=WIDTHS, grey=st.booleans(),
           extreme=st.sampled_from([3.0, 30.0, 100.0, 1e4]), dlogp=st.floats(-2, 2), data=st.data(),
           seed=st.integers(0, 2**32 - 1))
    def check(n, dim, grey, extreme, dlogp, data, seed):
        launch = data.draw(launches(variant), label="launch")
        rng = np.random.default_rng(seed)
        x = (rng.random((n, dim)) if grey else (rng.random((n, dim)) < 0.5)).astype(dtype)
        x[:, 0] = 0.0  # the support's edges, always
        x[-1, -1] = 1.0
        logits = rng.normal(0, 3, (n, dim))
        logits[rng.random((n, dim)) < 0.2] = extreme * rng.choice([-1.0, 1.0])
        logits = logits.astype(dtype)
        logp, dlogits = bernoulli(variant, launch, x, logits, dlogp)
        lik = Bernoulli(dim, dtype=np.float64)
        x64, l64 = x.astype(np.float64), logits.astype(np.float64)
        want, cache = lik.forward(x64, l64)
        w = float(np.asarray(dlogp, dtype))  # the kernels take dlogp in their dtype
        want_grad, _ = lik.backward(np.full(n, w), cache)
        assert_close("logp", logp, want, np.sum(x64 * np.abs(l64) + np.abs(l64) + np.log(2), axis=1), dtype)
        assert_close("dlogits", dlogits, want_grad, abs(w) * (x64 + 1), dtype)

    check()


@pytest.mark.parametrize("dtype", DTYPES["numba_cpu"])
@pytest.mark.parametrize("serial", [True, False])
def test_numba_cpu_kernels_write_every_output_element(dtype, serial):
    """The launcher allocates with np.empty; here the kernel itself gets outputs preset to NaN (the
    parallel float32 kernel: three row blocks, one short): an element it skipped stays NaN."""
    likelihood_cpu = kernel_module("bernoulli", "numba_cpu")
    rng = np.random.default_rng(5)
    rows, m = 2 * likelihood_cpu.ROW_BLOCK + 3, 129
    logits = rng.standard_normal((rows, m)).astype(dtype)
    x = (rng.random((rows, m)) < 0.5).astype(dtype)
    logp, dlogits = np.full(rows, np.nan, dtype), np.full((rows, m), np.nan, dtype)
    likelihood_cpu.kernel(dtype, not serial)(x, logits, dtype(-0.5), logp, dlogits)
    assert np.isfinite(logp).all() and np.isfinite(dlogits).all()


# ---- launcher checks: each names the argument (a raw kernel would silently misread the memory) -----

REJECTED = [
    params("numba_cpu", lambda z: (z(2, 3), z(2, 4), -1.0), "same shape", id="shapes differ"),
    params("numba_cpu", lambda z: (z(2, 3), z(2, 3, dtype=np.int64), -1.0), "float32 or float64",
           id="logits int64"),
    params("numba_cuda", lambda z: (z(2, 3), z(2, 3, dtype=np.float64), -1.0), "x must be .* float64",
           id="x float32, logits float64"),
    params("numba_cuda", lambda z: (z(2, 3), z(2, 3), float("inf")), "dlogp", id="dlogp inf"),
    params("cuda_c", lambda z: (z(3, 2), z(2, 3), -1.0), r"x must be .* shape \(2, 3\)", id="x shape"),
    params("cuda_c", lambda z: (z(2, 3), z(2, 3, dtype=np.float16), -1.0), "logits must be .*float32",
           id="logits float16"),
    params("cuda_c", lambda z: (z(2, 3), z(2, 3), float("nan")), "dlogp must be a finite number",
           id="dlogp nan"),
]


@pytest.mark.parametrize(("variant", "args", "match"), REJECTED)
def test_launchers_reject_bad_arguments_naming_them(variant, args, match):
    mod = kernel_module("bernoulli", variant)
    launcher = mod.bernoulli_forward_backward if variant == "cuda_c" else mod.bernoulli
    with pytest.raises(ValueError, match=match):
        launcher(*args(zeros_on(variant)))
