"""What a kernel row is rated against: probes of this machine's ceilings, timed beside the row.

A probe is a callable and the amount of one resource a call of it uses: bytes moved, FLOPs, or
exp / log evaluations. ``python -m bench kernels`` and ``python -m bench ladder`` time a row's
probes interleaved with the row itself, by the same method (``bench.kernels.time_interleaved`` on
the CPU, ``bench.gpu_timing.time_on_device`` on a GPU), so a ceiling is measured on the same
working set and under the same load as what it rates. From the best sample of each probe comes a
rate, and from the row's counts a floor for each resource: the row's time cannot be below the
largest floor, which names the ceiling that binds (``bench.kernels.napkin``).

On the CPU every probe runs on as many threads as the kernel it rates (``threads``): a row whose
kernel runs on one thread (NumPy's passes; a Numba kernel below its module's
PARALLEL_MIN_ELEMENTS) is rated against one-thread probes, a row whose Numba kernel shares its
loop between threads (``prange``) against probes that share theirs between as many. A one-thread
ceiling under a two-thread kernel was what put Adam at 2M entries at 101-122% of its memory
ceiling. Each row records which probe set each ceiling and on how many threads
(``best``).

* memory: exactly the row's bytes moved two ways, and the faster counts: a copy (dst = src, half the
  bytes read, half written) and an in-place update (a += b: two thirds read, one third written
  back where it was read). A copy alone is not a ceiling for an op that updates in place: a plain
  store first reads the line it writes (write-allocate), which an update of lines it has just
  read does not pay, and a large copy (glibc's memcpy, under np.copyto) switches to stores that
  bypass the cache, so it meets DRAM's speed where the working set would fit in the last-level
  cache. Adam had run at 121% of the copy alone (bench/results/amd-epyc-2026-12-01); at its 2M
  parameters (56 MB) one measurement on a 2-core Xeon with a 480 MiB L3 gave 10.8 GB/s for the
  copy and 45.6 GB/s for the update. One thread: ``np.copyto`` and ``np.add(a, b, out=a)``; every
  Numba thread: the same two as Numba ``prange`` loops;
* compute (GEMMs): the vendor BLAS's float32 product of two ``MATMUL_PROBE_N`` square matrices (on
  the BLAS's own threads, as the GEMMs it rates);
* exp and log: the fastest float32 exp (and log) here, in elements per second, on arrays that stay
  in cache. One thread: NumPy's ``np.exp`` / ``np.log`` and ``kernels/common/vecmath.py``'s
  vectorised ``exp_f32`` / ``log_f32`` in a serial Numba loop; every Numba thread: vecmath's in a
  ``prange`` loop, a row per thread.

On a GPU the same resources are probed on the device (``bench.gpu_timing.CupyDevice``): cuBLAS
SGEMM, a device copy of the row's bytes, and ``expf`` / ``__expf`` / ``logf`` / ``__logf`` in
registers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

F32 = 4  # bytes per float32: the probes' and bench kernels' cases' traffic
MATMUL_PROBE_N = 1024  # 2.1 GFLOP: near the BLAS's peak, and short enough to sample every round
# A run's header peak (bench train, bench kernels): 17 GFLOP, long enough that one sample is the
# BLAS at its best rather than its ramp-up
MATMUL_PEAK_N = 2048
# exp/log probes: 8192 float32 in, 8192 out (64 KiB, in L2 on any CPU this runs on), swept
# back and forth INNER_SWEEPS times per call so that a call outlasts its dispatch many times over
TRANSCENDENTAL_ELEMENTS = 8192
INNER_SWEEPS = 16
MEMORY = ("copy", "update")  # the memory probes' names
RESOURCES = ("memory", "compute", "exp", "log")


@dataclass(frozen=True)
class Probe:
    """``fn()`` uses ``amount`` of ``resource`` (bytes, FLOPs or evaluations) per call, on
    ``threads`` threads (0: the vendor BLAS's own pool)."""

    resource: str
    fn: Callable[[], object]
    amount: float
    threads: int = 1


def numba_threads() -> int:
    """The threads a Numba ``prange`` loop shares its work between here; 1 without Numba."""
    try:
        import numba
    except ImportError:
        return 1
    return int(numba.get_num_threads())


def memory_probes(nbytes: float, threads: int = 1) -> dict[str, Probe]:
    """A copy and an in-place update, each moving ``nbytes`` in all (at least one element each):
    NumPy's on one thread, or (``threads`` > 1, with Numba) ``prange`` loops on every Numba thread."""
    half = max(int(nbytes) // (2 * F32), 1)
    src, dst = np.ones(half, np.float32), np.empty(half, np.float32)
    third = max(int(nbytes) // (3 * F32), 1)
    # b = 0: a keeps its values however often it is updated, and an add costs no more than a copy
    a, b = np.ones(third, np.float32), np.zeros(third, np.float32)
    kernels = _parallel_memory_kernels() if threads > 1 else None
    if kernels is None:
        return {"copy": Probe("memory", lambda: np.copyto(dst, src), 2.0 * F32 * half),
                "update": Probe("memory", lambda: np.add(a, b, out=a), 3.0 * F32 * third)}
    copy, update, n = kernels
    return {"parallel copy": Probe("memory", lambda: copy(dst, src), 2.0 * F32 * half, n),
            "parallel update": Probe("memory", lambda: update(a, b), 3.0 * F32 * third, n)}


@functools.cache
def _parallel_memory_kernels():
    """(copy kernel, update kernel, Numba's thread count), compiled once; None without Numba."""
    try:
        from numba import njit, prange

        from minivae.kernels.wiring import numba_threads as layer  # noqa: F401  (before any parallel region)
    except ImportError:
        return None

    @njit(parallel=True)
    def copy(dst, src):
        for i in prange(src.size):
            dst[i] = src[i]

    @njit(parallel=True)
    def update(a, b):
        for i in prange(a.size):
            a[i] += b[i]

    return copy, update, numba_threads()


def matmul_probe(n: int = MATMUL_PROBE_N) -> Probe:
    """One float32 n x n x n product of the vendor BLAS (2 n^3 FLOPs)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    return Probe("compute", lambda: np.matmul(a, b, out=out), 2.0 * n**3, threads=0)


def matmul_sampler(n: int = MATMUL_PEAK_N) -> Callable[[], float]:
    """A function that times one ``matmul_probe(n)`` product, in GFLOP/s (the product is run once
    here, untimed, so that no sample pays for its first touch of the output)."""
    probe = matmul_probe(n)
    probe.fn()

    def sample() -> float:
        t = time.perf_counter()
        probe.fn()
        return probe.amount / (time.perf_counter() - t) / 1e9

    return sample


def matmul_peak(n: int = MATMUL_PEAK_N, repeats: int = 5) -> float:
    """float32 GFLOP/s of the vendor BLAS on an n x n x n product (best of ``repeats``)."""
    sample = matmul_sampler(n)
    return max(sample() for _ in range(repeats))


def transcendental_probes(threads: int = 1) -> dict[str, Probe]:
    """float32 exp and log. One thread (``threads`` 1): NumPy's, and (with Numba) common/vecmath's
    in a serial loop; more: vecmath's on every Numba thread, a row each (NumPy's alone without
    Numba). The Numba kernels map their arrays onto themselves (x -> e^-x keeps [0, 1]; x ->
    log(x + 2) keeps [0, 2]), so every sweep depends on the one before and the compiler can drop
    none of them."""
    n = TRANSCENDENTAL_ELEMENTS
    kernels = _vecmath_kernels()
    if kernels is not None and threads > 1:
        exp_kernel, log_kernel, pool = kernels[1]
        return _vecmath_probes(exp_kernel, log_kernel, pool, "vecmath")
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
    if kernels is not None:
        probes |= _vecmath_probes(*kernels[0], 1, "vecmath 1-thread")
    return probes


def _vecmath_probes(exp_kernel, log_kernel, rows: int, name: str) -> dict[str, Probe]:
    """The vecmath exp and log probes on ``rows`` rows of TRANSCENDENTAL_ELEMENTS (a row a thread)."""
    n = TRANSCENDENTAL_ELEMENTS
    x = np.random.default_rng(0).random((rows, n), dtype=np.float32)
    y = np.empty_like(x)
    count = float(2 * rows * n * INNER_SWEEPS)  # two sweeps (x -> y -> x) per inner step
    return {f"{name} exp": Probe("exp", lambda: exp_kernel(x, y, INNER_SWEEPS), count, rows),
            f"{name} log": Probe("log", lambda: log_kernel(x, y, INNER_SWEEPS), count, rows)}


@functools.cache
def _vecmath_kernels():
    """((serial exp, serial log), (parallel exp, parallel log, Numba's thread count)), compiled
    once; None without Numba."""
    try:
        from numba import njit, prange

        from minivae.kernels.common.vecmath import exp_f32, log_f32
        from minivae.kernels.wiring import numba_threads as layer  # noqa: F401  (before any parallel region)
    except ImportError:
        return None
    two = np.float32(2)
    jit = {"fastmath": {"contract"}, "error_model": "numpy"}

    @njit(**jit)
    def exp_row(x, y, t, sweeps):
        for _ in range(sweeps):
            for i in range(x.shape[1]):
                y[t, i] = exp_f32(-x[t, i])
            for i in range(x.shape[1]):
                x[t, i] = exp_f32(-y[t, i])

    @njit(**jit)
    def log_row(x, y, t, sweeps):
        for _ in range(sweeps):
            for i in range(x.shape[1]):
                y[t, i] = log_f32(x[t, i] + two)
            for i in range(x.shape[1]):
                x[t, i] = log_f32(y[t, i] + two)

    def rows(row, parallel):
        loop = prange if parallel else range

        @njit(parallel=parallel, **jit)
        def kernel(x, y, sweeps):
            for t in loop(x.shape[0]):  # a row per thread, in that thread's cache
                row(x, y, t, sweeps)

        return kernel

    return ((rows(exp_row, False), rows(log_row, False)),
            (rows(exp_row, True), rows(log_row, True), numba_threads()))


def rates(probes: dict[str, Probe], best_s: dict[str, float]) -> dict[str, float]:
    """Each resource's best rate among the probes (amount per second, from each probe's fastest
    sample ``best_s[name]``): memory in GB/s, compute in GFLOP/s, exp and log per second."""
    return {resource: rate for resource, (rate, _) in best(probes, best_s).items()}


def best(probes: dict[str, Probe], best_s: dict[str, float]) -> dict[str, tuple[float, str]]:
    """``rates``, each with the probe that set it: resource -> (rate, its probe's name)."""
    out: dict[str, tuple[float, str]] = {}
    for name, probe in probes.items():
        rate = probe.amount / best_s[name]
        if probe.resource in ("memory", "compute"):
            rate /= 1e9
        if rate > out.get(probe.resource, (0.0, ""))[0]:
            out[probe.resource] = (rate, name)
    return out


def described(probe: Probe) -> str:
    """A probe's thread count, as a row records it."""
    if probe.threads == 0:
        return "the BLAS's threads"
    return f"{probe.threads} thread" + "s" * (probe.threads > 1)
