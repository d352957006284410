"""The variants every kernel op is written in, as the one parametrisation each op's test file
(tests/test_kernels_<op>.py) runs its tests over, and what those files share.

The variants, by test id:

* ``numba_cpu``: kernels/<op>/numba_cpu.py (@njit), on the CPU;
* ``numba_cuda``: kernels/<op>/numba_cuda.py (@cuda.jit), on a GPU when CuPy sees one, otherwise in
  Numba's CUDA simulator, which an op file selects with ``select_simulator()`` before anything
  imports numba.cuda;
* ``cuda_c``: kernels/<op>/cuda_c.cu through its launcher cuda_c.py on the CPU emulator
  (kernels/wiring/emulate.py), skipped without a C++20 compiler;
* ``cupy``: the same launcher with ``backend="cupy"`` on a GPU, skipped without one.

``-k "numba_cuda or cupy"`` selects what runs on a GPU. A variant that cannot run here is skipped
with the reason; Numba CUDA imported for the real target without a GPU is a failure instead (a
module collected earlier imported numba.cuda at its top: a skip would hide every Numba CUDA test).

The comparisons: ``assert_within`` (|got - want| <= bound elementwise, every value finite, so an
output element a kernel never wrote, preset to NaN, fails) and ``assert_close`` (the same with the
bound ``RTOL[dtype]`` times the summed magnitudes of the terms that make the value). References are
float64 from the same inputs.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

import numpy as np
import pytest
from hypothesis import Phase, settings

from minivae.kernels.wiring import emulate, simulator

HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def cupy_sees_a_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean "no GPU here"
        return False


GPU = cupy_sees_a_gpu()
NO_GPU = "no CUDA GPU: CuPy sees no device (this variant runs on a GPU only)"
NO_COMPILER = f"the CUDA emulator needs a C++20 compiler ({emulate.CXX} not on PATH)"
NO_NUMBA = "numba is not installed (the `numba` extra)"


def select_simulator() -> None:
    """Make numba.cuda the simulator unless a GPU is here or the choice is already made
    (kernels/wiring/simulator.py says how). Every test module that runs Numba CUDA kernels calls
    this at its top, before importing anything that imports numba.cuda."""
    simulator.select_simulator(gpu=GPU)


MARKS = {
    "numba_cpu": pytest.mark.skipif(not HAVE_NUMBA, reason=NO_NUMBA),
    "numba_cuda": pytest.mark.skipif(not HAVE_NUMBA, reason=NO_NUMBA),
    "cuda_c": pytest.mark.skipif(emulate.compiler() is None, reason=NO_COMPILER),
    "cupy": pytest.mark.skipif(not GPU, reason=NO_GPU),
}
# The dtypes each variant computes in: the CUDA C kernels are float32 only.
DTYPES = {"numba_cpu": (np.float32, np.float64), "numba_cuda": (np.float32, np.float64),
          "cuda_c": (np.float32,), "cupy": (np.float32,)}
VARIANTS = [pytest.param(v, id=v, marks=MARKS[v]) for v in MARKS]
VARIANT_DTYPES = [pytest.param(v, d, id=f"{v}-{np.dtype(d)}", marks=MARKS[v])
                  for v in MARKS for d in DTYPES[v]]


def variants(*names: str) -> list:
    """The parametrisation of ``names`` alone (for a test of some variants' own knobs)."""
    return [pytest.param(v, id=v, marks=MARKS[v]) for v in names]


def params(variant: str, *values: Any, id: str) -> Any:
    """One case of a test parametrised over (variant, ...), carrying the variant's skip mark."""
    return pytest.param(variant, *values, id=f"{variant}-{id}", marks=MARKS[variant])


@functools.cache
def _numba_cuda_backend():
    from minivae.backends import BackendUnavailable, get_backend
    from minivae.kernels.wiring import numba_cuda as nbc

    if not (nbc.SIMULATED or nbc.gpu_available()):
        pytest.fail("numba.cuda was imported for the real target before the simulator was selected and "
                    "there is no GPU: a module collected earlier imports numba.cuda at its top (move that "
                    "import into its tests), or run with NUMBA_ENABLE_CUDASIM=1", pytrace=False)
    try:
        return get_backend("numba-cuda")
    except BackendUnavailable as e:  # a GPU without CuPy
        pytest.skip(str(e))


def numba_cuda_simulated() -> bool:
    from minivae.kernels.wiring import numba_cuda as nbc

    return nbc.SIMULATED


def kernel_module(op: str, variant: str) -> Any:
    """kernels/<op>/<file>.py of ``variant`` (the cupy variant's is cuda_c.py)."""
    if variant == "numba_cuda":
        _numba_cuda_backend()
    return importlib.import_module(f"minivae.kernels.{op}.{'cuda_c' if variant == 'cupy' else variant}")


def cuda_c_backend(variant: str) -> str:
    """The ``backend`` argument of a CUDA C launcher for ``variant``."""
    return "cupy" if variant == "cupy" else "emulate"


def to_device(variant: str, a: np.ndarray) -> Any:
    """``a`` where ``variant``'s kernels take their arrays."""
    if variant == "numba_cuda":
        return _numba_cuda_backend().asarray(a)
    if variant == "cupy":
        import cupy

        return cupy.asarray(a)
    return a


def zeros_on(variant: str):
    """``zeros(*shape, dtype=float32)`` on ``variant``'s device: what a launcher-check case builds its
    arguments from."""
    def zeros(*shape, dtype=np.float32):
        return to_device(variant, np.zeros(shape, dtype))

    return zeros


def assert_rejects(op: str, variant: str, call, match: str) -> None:
    """``call(module, zeros)`` raises ValueError matching ``match``: ``module`` is ``variant``'s file
    of ``op``, ``zeros`` builds arrays on its device (``zeros_on``)."""
    with pytest.raises(ValueError, match=match):
        call(kernel_module(op, variant), zeros_on(variant))


def host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def nan_like(variant: str, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
    """An output preset to NaN, on ``variant``'s device."""
    return to_device(variant, np.full(shape, np.nan, dtype))


class _NanFilled:
    """The Numba CUDA launchers' array module, with every fresh output preset to NaN."""

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        return getattr(self._xp, name)

    def empty(self, shape, dtype):
        return self._xp.full(shape, np.nan, dtype)

    def empty_like(self, a):
        return self._xp.full_like(a, np.nan)


@pytest.fixture(autouse=True, scope="module")
def numba_cuda_outputs_start_as_nan():
    """In a module that imports this fixture: every output a Numba CUDA launcher allocates starts as
    NaN, so an element a kernel forgets to write fails the comparison."""
    if not HAVE_NUMBA:
        yield
        return
    from minivae.kernels.wiring import numba_cuda as nbc

    real = nbc.array_module
    if not nbc.SIMULATED and not GPU:  # the real target without a GPU: the tests fail, saying why
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nbc, "array_module", lambda: _NanFilled(real()))
        yield


# A simulator deadlock (a barrier some threads never reach) would hang the run: fail it instead.
TIMEOUT = pytest.mark.timeout(300)
# Each launch costs the simulator up to a second (a Python thread per CUDA thread).
SIMULATOR_EXAMPLES = 3


def examples(variant: str, n: int | None = None, simulator: int = SIMULATOR_EXAMPLES) -> settings:
    """Hypothesis settings for one variant's draws: ``n`` examples (None: the profile's count), or
    ``simulator`` in Numba's CUDA simulator, there without shrinking: shrinking a failure would
    outlast the timeout, so the failing draw is reported as drawn (its shapes are small anyway)."""
    if variant == "numba_cuda" and numba_cuda_simulated():
        return settings(max_examples=simulator, phases=(Phase.explicit, Phase.reuse, Phase.generate))
    return settings() if n is None else settings(max_examples=n)


# ---- comparisons -----------------------------------------------------------------------------------

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}  # elementwise math, relative
TINY = {np.dtype(np.float32): float(np.finfo(np.float32).tiny), np.dtype(np.float64): 1e-300}


def unit(dtype: Any) -> float:
    """The unit roundoff u of ``dtype``."""
    return float(np.finfo(dtype).eps) / 2


def f64(a: Any) -> np.ndarray:
    return np.asarray(host(a), np.float64)


def assert_within(name: str, got: Any, want: np.ndarray, bound: Any) -> None:
    """|got - want| <= bound elementwise, and got all finite (an output never written stays NaN)."""
    got, want = f64(got), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{name}: {bad.sum()} non-finite values, first at {tuple(np.argwhere(bad)[0])}"
    if not got.size:
        return
    bound = np.broadcast_to(np.asarray(bound, np.float64), want.shape)
    err = np.abs(got - want)
    excess = err / np.maximum(bound, np.finfo(np.float64).tiny)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert err[worst] <= bound[worst], (
        f"{name}: {(err > bound).sum()} of {err.size} out of bound; |got - want| = {err[worst]:.3g} at "
        f"{worst} (got {got[worst]!r}, want {want[worst]!r}) exceeds the bound {bound[worst]:.3g}")


def assert_close(name: str, got: Any, want: np.ndarray, scale: Any, dtype: Any) -> None:
    """|got - want| <= RTOL[dtype] * max(scale, the dtype's smallest normal), got all finite."""
    dtype = np.dtype(dtype)
    assert_within(name, got, want, RTOL[dtype] * np.maximum(scale, TINY[dtype]))
