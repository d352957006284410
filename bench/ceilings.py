"""What a kernel row is rated against: probes of this machine's ceilings, timed beside the row.

A probe is a callable and the amount of one resource a call of it uses: bytes moved, FLOPs, or
exp / log evaluations. ``python -m bench kernels`` and ``python -m bench ladder`` time a row's
probes interleaved with the row itself, by the same method (``bench.kernels.time_interleaved`` on
the CPU, ``bench.gpu_timing.time_on_device`` on a GPU), so a ceiling is measured on the same
working set and under the same load as what it rates. From the best sample of each probe comes a
rate, and from the row's counts a floor for each resource: the row's time cannot be below the
largest floor, which names the ceiling that binds (``bench.kernels.napkin``).

On the CPU:

* memory: exactly the row's bytes moved two ways, and the faster counts: a copy (dst = src, half the
  bytes read, half written) and an in-place update (a += b: two thirds read, one third written
  back where it was read). A copy alone is not a ceiling for an op that updates in place: a plain
  store first reads the line it writes (write-allocate), which an update of lines it has just
  read does not pay, and a large copy (glibc's memcpy, under np.copyto) switches to stores that
  bypass the cache, so it meets DRAM's speed where the working set would fit in the last-level
  cache. Adam had run at 121% of the copy alone (bench/results/amd-epyc-2026-12-01); at its 2M
  parameters (56 MB) one measurement on a 2-core Xeon with a 480 MiB L3 gave 10.8 GB/s for the
  copy and 45.6 GB/s for the update;
* compute (GEMMs): the vendor BLAS's float32 product of two ``MATMUL_PROBE_N`` square matrices;
* exp and log: the fastest float32 exp (and log) here, in elements per second, on arrays that stay
  in cache: NumPy's ``np.exp`` / ``np.log`` (one thread) and ``kernels/common/vecmath.py``'s
  vectorised ``exp_f32`` / ``log_f32`` on every Numba thread (when Numba is installed).

On a GPU the same resources are probed on the device (``bench.gpu_timing.CupyDevice``): cuBLAS
SGEMM, a device copy of the row's bytes, and ``expf`` / ``__expf`` / ``logf`` / ``__logf`` in
registers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

F32 = 4  # bytes
MATMUL_PROBE_N = 1024  # 2.1 GFLOP: near the BLAS's peak, and short enough to sample every round
# exp/log probes: 8192 float32 in, 8192 out (64 KiB, in L2 on any CPU this runs on), swept
# back and forth INNER_SWEEPS times per call so that a call outlasts its dispatch many times over
TRANSCENDENTAL_ELEMENTS = 8192
INNER_SWEEPS = 16
MEMORY = ("copy", "update")  # the memory probes' names
RESOURCES = ("memory", "compute", "exp", "log")


@dataclass(frozen=True)
class Probe:
    """``fn()`` uses ``amount`` of ``resource`` (bytes, FLOPs or evaluations) per call."""

    resource: str
    fn: Callable[[], object]
    amount: float


def memory_probes(nbytes: float) -> dict[str, Probe]:
    """A copy and an in-place update, each moving ``nbytes`` in all (at least one element each)."""
    half = max(int(nbytes) // (2 * F32), 1)
    src, dst = np.ones(half, np.float32), np.empty(half, np.float32)
    third = max(int(nbytes) // (3 * F32), 1)
    # b = 0: a keeps its values however often it is updated, and an add costs no more than a copy
    a, b = np.ones(third, np.float32), np.zeros(third, np.float32)
    return {"copy": Probe("memory", lambda: np.copyto(dst, src), 2.0 * F32 * half),
            "update": Probe("memory", lambda: np.add(a, b, out=a), 3.0 * F32 * third)}


def matmul_probe(n: int = MATMUL_PROBE_N) -> Probe:
    """One float32 n x n x n product of the vendor BLAS (2 n^3 FLOPs)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    return Probe("compute", lambda: np.matmul(a, b, out=out), 2.0 * n**3)


def transcendental_probes() -> dict[str, Probe]:
    """float32 exp and log: NumPy's on one thread, and (with Numba) common/vecmath's on every Numba
    thread. The Numba kernels map their arrays onto themselves (x -> e^-x keeps [0, 1]; x ->
    log(x + 2) keeps [0, 2]), so every sweep depends on the one before and the compiler can drop
    none of them."""
    n = TRANSCENDENTAL_ELEMENTS
    rng = np.random.default_rng(0)
    a, c = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32) + np.float32(1)
    out = np.empty_like(a)

    def np_exp():
        for _ in range(INNER_SWEEPS):
            np.exp(a, out=out)

    def np_log():
        for _ in range(INNER_SWEEPS):
            np.log(c, out=out)

    probes = {"numpy exp": Probe("exp", np_exp, float(n * INNER_SWEEPS)),
              "numpy log": Probe("log", np_log, float(n * INNER_SWEEPS))}
    kernels = _vecmath_kernels()
    if kernels is not None:
        exp_kernel, log_kernel, threads = kernels
        x = np.random.default_rng(0).random((threads, n), dtype=np.float32)
        y = np.empty_like(x)
        count = float(2 * threads * n * INNER_SWEEPS)  # two sweeps (x -> y -> x) per inner step
        probes["vecmath exp"] = Probe("exp", lambda: exp_kernel(x, y, INNER_SWEEPS), count)
        probes["vecmath log"] = Probe("log", lambda: log_kernel(x, y, INNER_SWEEPS), count)
    return probes


@functools.cache
def _vecmath_kernels():
    """(exp kernel, log kernel, Numba's thread count), compiled once; None without Numba."""
    try:
        import numba
        from numba import njit, prange

        from minivae.kernels.common.vecmath import exp_f32, log_f32
        from minivae.kernels.wiring import numba_threads  # noqa: F401  (before any parallel region)
    except ImportError:
        return None
    two = np.float32(2)

    @njit(parallel=True, fastmath={"contract"}, error_model="numpy")
    def exp_kernel(x, y, sweeps):
        for t in prange(x.shape[0]):  # a row per thread, in that thread's cache
            for _ in range(sweeps):
                for i in range(x.shape[1]):
                    y[t, i] = exp_f32(-x[t, i])
                for i in range(x.shape[1]):
                    x[t, i] = exp_f32(-y[t, i])

    @njit(parallel=True, fastmath={"contract"}, error_model="numpy")
    def log_kernel(x, y, sweeps):
        for t in prange(x.shape[0]):
            for _ in range(sweeps):
                for i in range(x.shape[1]):
                    y[t, i] = log_f32(x[t, i] + two)
                for i in range(x.shape[1]):
                    x[t, i] = log_f32(y[t, i] + two)

    return exp_kernel, log_kernel, numba.get_num_threads()


def rates(probes: dict[str, Probe], best_s: dict[str, float]) -> dict[str, float]:
    """Each resource's best rate among the probes (amount per second, from each probe's fastest
    sample ``best_s[name]``): memory in GB/s, compute in GFLOP/s, exp and log per second."""
    out: dict[str, float] = {}
    for name, probe in probes.items():
        rate = probe.amount / best_s[name]
        if probe.resource in ("memory", "compute"):
            rate /= 1e9
        out[probe.resource] = max(out.get(probe.resource, 0.0), rate)
    return out
