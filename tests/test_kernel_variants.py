"""What every op's kernel test file leans on (tests/kernel_variants.py): the comparisons fail on a
NaN, an infinity, a wrong shape and an error past the bound; the variants' ids and dtypes."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_variants import DTYPES, VARIANT_DTYPES, VARIANTS, assert_close, assert_within


def test_the_comparisons_fail_on_nan_on_inf_on_shape_and_on_error():
    want = np.ones(3)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_within("x", np.array([1, np.nan, 1], np.float32), want, want)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_within("x", np.array([1, np.inf, 1]), want, want)
    with pytest.raises(AssertionError, match="shape"):
        assert_within("x", np.ones(4), want, want)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within("x", np.array([1, 1.1, 1], np.float32), want, 0.01 * want)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close("x", np.array([1, 1.0001, 1], np.float32), want, want, np.float32)
    assert_within("x", np.array([1, 1.001, 1]), want, 0.01 * want)  # inside the bound: passes
    assert_close("x", np.array([1, 1 + 1e-13, 1]), want, want, np.float64)


def test_the_variants_are_named_as_the_files_of_an_op_folder():
    """numba_cpu.py, numba_cuda.py and cuda_c.cu (on the emulator, and through CuPy as ``cupy``), with
    the dtypes each computes in: only the CUDA C kernels are float32 alone."""
    ids = [p.id for p in VARIANTS]
    assert ids == ["numba_cpu", "numba_cuda", "cuda_c", "cupy"]
    assert {p.id for p in VARIANT_DTYPES} == {f"{v}-{np.dtype(d)}" for v in ids for d in DTYPES[v]}
    assert DTYPES["cuda_c"] == DTYPES["cupy"] == (np.float32,)
