"""Every costly op, every available backend, over a size sweep, against the machine's ceilings.

For each op (linear forward and backward, the fused latent sampling + KL forward and backward, the
Bernoulli likelihood, the importance weights of the K-sample bound, the Adam update) and each
backend available here, the op is first validated against the NumPy reference, then timed, then
validated again: a run that fails validation is reported as failed, never as a speed. The rule is
bench ladder's (``bench/validate.py``: NaN-aware, a tolerance grown with the longest sum an output
is, ``reduction_terms``), each output scaled by its reference's largest magnitude.

How a CPU row is timed (``time_interleaved``): each callable is warmed up for ``WARMUP_S`` (and at
least ``WARMUP_CALLS`` calls: caches, the BLAS's threads and the allocator in their steady state,
whatever ran before), then timed in rounds, each round one sample of every backend *and of the
ceilings' probes*, in an order rotated from round to round; a sample is as many back-to-back
calls as fill ``SAMPLE_S``. A row reports the median and the spread of its samples (the fastest,
the quartiles). Rows measured minutes apart can still differ by more than either spread: on a
shared machine the load changes (two cores, and a two-thread GEMM runs ~1.5x slower while another
process holds one of them). So when a call is timed a second time in one run (the scaling sweep
repeats the linear rows; the production rung of a ladder is its backend's op), the two must agree
(``agree``); if they do not, both instances are timed again side by side, interleaved, and both
rows report that measurement.

Napkin math turns times into GFLOP/s (GEMMs: 2 M N K per product) or GB/s (elementwise: bytes that
must cross memory at least once), and each row gets floors from ceilings measured beside it, on
its own working set (``bench/ceilings.py``): FLOPs / the BLAS's matmul rate, bytes / the faster of
a copy and an in-place update of exactly those bytes, and exp + log evaluations (the count beside
each op, ``exp_log_count``) / the fastest float32 exp and log here. The largest floor is the one
that binds (the ``bound`` column); the share of the ceiling is that floor over the row's median.
Each CPU row's probes run on as many threads as its kernel (``Case.threads`` for the Numba kernel,
one for NumPy's passes), and the row records them (``threads``, ``ceiling_probes``). A row faster
than its floor is marked, never shown above 100% silently: its footnote gives both numbers and says
"not explained", for no reason has been measured.

On the CPU the ``numpy`` backend *is* the vendor-library way (BLAS GEMM, then separate NumPy passes
for bias and activation), so the value of fusion is the ratio beside it. On a GPU the same NumPy
reference functions run on CuPy arrays (cuBLAS, then separate elementwise kernels) as the
``cupy-vendor`` row, and the CUDA C linear op's ladder (kernels/linear/cuda_c.cu's rungs 1-4
forward, 1 and 4 backward) has rows of its own beside the production rung. ``python -m bench
ladder`` shows every version of every op, rung by rung.

GPU rows are timed by ``bench/gpu_timing.py``: many back-to-back calls between one pair of CUDA
events, held behind a spin kernel until all are queued, the L2 flushed before every sample of every
row; the host's dispatch time per call is measured beside it. Their ceilings are measured the same
way: cuBLAS SGEMM, a device copy of each op's own working set, and exp / log in registers. Each row
is handed to ``on_row`` as soon as its case is done (``python -m bench kernels`` appends it to
``<name>.jsonl``), so a run cut short keeps every finished case.
"""

from __future__ import annotations

import functools
import math
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench import ceilings, gpu_timing, validate
from bench.ceilings import F32
from minivae import backends as backends_mod
from minivae.backends import NUMPY, Backend

FAMILIES = ("linear", "latent", "bernoulli", "importance_weights", "adam")  # the backend table's ops


@dataclass
class Case:
    """One op at one size: ``make(backend)`` returns a zero-argument callable that runs the op and
    returns its outputs (host arrays for validation are taken with ``backend.to_host``)."""

    op: str
    size: str
    work: float  # FLOPs (kind "flops") or bytes (kind "bytes")
    kind: str
    make: Callable[[Backend], Callable[[], tuple]]
    traffic: float = 0.0  # for a GEMM: the bytes it must move at least (operands in, result out)
    backends: tuple[str, ...] | None = None  # the only backends that run it (None: every one)
    exps: float = 0.0  # exp evaluations it needs at least (exp_log_count)
    logs: float = 0.0  # log evaluations it needs at least
    call: str = ""  # the op whose call it times, when that is another case's op (a repeat)
    threads: int = 1  # the threads the Numba CPU kernel runs on at this size (kernel_threads)

    @property
    def same_call(self) -> str:
        return self.call or self.op


def family(op: str) -> str:
    """The backend table's op a row belongs to (linear, latent, ...): one figure each."""
    return next(f for f in FAMILIES if op.startswith(f))


def exp_log_count(op: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(exp, log) evaluations ``op`` needs at least on inputs of ``shape``: the fewest over its
    versions (the NumPy reference and every kernel), read from their code; expm1 counts as an exp,
    log1p as a log. Square roots and divisions are not counted."""
    if op == "latent_forward":  # (N, d), one sample
        n, d = shape
        # exp(logvar / 2) and expm1(logvar) per element; eps's Box-Muller radius takes one log per
        # pair of normals (minivae/philox.py; its sin and cos are not counted)
        return 2.0 * n * d, 0.5 * n * d
    if op == "latent_backward":  # (N, d)
        n, d = shape
        # expm1(logvar) of the KL's gradient; the reference keeps exp(logvar / 2) and eps from its
        # forward (the GPU kernels evaluate both again)
        return 1.0 * n * d, 0.0
    if op == "bernoulli":  # (N, D): e = exp(-|l|), shared by softplus and sigmoid; log1p(e)
        n, d = shape
        return 1.0 * n * d, 1.0 * n * d
    if op == "importance_weights":  # (K, N): exp(log w - max) per weight; log of each column's sum
        k, n = shape
        return 1.0 * k * n, 1.0 * n
    return 0.0, 0.0  # the linear op with relu; Adam (a square root and a division per element)


def kernel_threads(op: str, shape: tuple) -> int:
    """The threads the Numba CPU kernel of ``op`` runs on at ``shape`` (float32): every Numba thread
    from its module's PARALLEL_MIN_ELEMENTS on (kernels/<op>/numba_cpu.py), else one; 1 without
    Numba. ``adam``: one tensor of ``shape[0]`` entries; ``adam_many``: tensors of ``shape``."""
    try:
        if op.startswith("linear"):  # the fused pass over y (forward) or dy (backward): N x D_out
            from minivae.kernels.linear import numba_cpu as mod

            parallel = shape[0] * shape[2] >= mod.PARALLEL_MIN_ELEMENTS
        elif op == "bernoulli":
            from minivae.kernels.bernoulli import numba_cpu as mod

            parallel = shape[0] * shape[1] >= mod.F32_PARALLEL_MIN_ELEMENTS
        elif op in ("adam", "adam_many"):
            from minivae.kernels.adam import numba_cpu as mod

            parallel = (shape[0] >= mod.PARALLEL_MIN_ELEMENTS if op == "adam" else
                        sum(math.prod(s) for s in shape) >= mod.MANY_PARALLEL_MIN_ELEMENTS)
        else:  # the latent op and the importance weights have serial kernels only
            parallel = False
    except ImportError:
        return 1
    return ceilings.numba_threads() if parallel else 1


def _rand(xp, shape, rng, scale=1.0, dtype=np.float32):
    return xp.asarray((rng.standard_normal(shape) * scale).astype(dtype))


# Each op's inputs, one builder per op: bench kernels' cases and bench ladder's problems (seed 0,
# NumPy float32; a case moves them onto its backend's device)

def linear_inputs(m: int, k: int, n: int) -> dict[str, np.ndarray]:
    """x (m, k), W (n, k) scaled by 1/sqrt(k) so that y stays of order 1 at any k, b (n,), dy (m, n)."""
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((m, k)).astype(np.float32),
            "W": (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32),
            "b": rng.standard_normal(n).astype(np.float32),
            "dy": rng.standard_normal((m, n)).astype(np.float32)}


def latent_inputs(n: int, d: int) -> dict[str, np.ndarray]:
    """h = [mu | logvar] (n, 2d) and dz (1, n, d): one sample's gradient."""
    rng = np.random.default_rng(0)
    return {"h": rng.standard_normal((n, 2 * d)).astype(np.float32),
            "dz": rng.standard_normal((1, n, d)).astype(np.float32)}


def bernoulli_inputs(n: int, d: int) -> dict[str, np.ndarray]:
    """x in {0, 1} (30% ones), logits of scale 3 (into softplus's tails), dlogp = -1/n (a mean's)."""
    rng = np.random.default_rng(0)
    return {"x": (rng.random((n, d)) < 0.3).astype(np.float32),
            "logits": (3 * rng.standard_normal((n, d))).astype(np.float32),
            "dlogp": np.float32(-1.0 / n)}


def importance_weights_inputs(k: int, n: int) -> dict[str, np.ndarray]:
    """log_w (k, n) of scale 5 (weights spread over orders of magnitude), one of them -inf: a sample
    of zero weight, which gets weight 0 while its column stays finite."""
    log_w = (5 * np.random.default_rng(0).standard_normal((k, n))).astype(np.float32)
    log_w[0, 0] = -np.inf
    return {"log_w": log_w}


def _moved(be: Backend, d: dict[str, np.ndarray], *names: str) -> list:
    return [be.xp.asarray(d[name]) for name in names]


def _make_linear_forward(m: int, k: int, n: int):
    def make(be):
        x, W, b = _moved(be, linear_inputs(m, k, n), "x", "W", "b")
        return lambda: (be.linear_forward(x, W, b, "relu")[0],)

    return make


def _counts(op: str, shape: tuple[int, ...]) -> dict[str, float]:
    """A Case's exps and logs (``exp_log_count``)."""
    exps, logs = exp_log_count(op, shape)
    return {"exps": exps, "logs": logs}


def linear_cases(sizes) -> list[Case]:
    out = []
    for m, k, n in sizes:
        make_fwd = _make_linear_forward(m, k, n)

        def make_bwd(be, m=m, k=k, n=n):
            x, W, b, dy = _moved(be, linear_inputs(m, k, n), "x", "W", "b", "dy")
            _, cache = be.linear_forward(x, W, b, "relu")
            return lambda: be.linear_backward(dy, cache, True)

        # forward: x, W, b in, y out; backward: dy, x, W, y in, dx, dW, db out
        threads = kernel_threads("linear", (m, k, n))
        out.append(Case("linear_forward (relu)", f"{m}x{k}->{n}", 2 * m * n * k, "flops", make_fwd,
                        F32 * (m * k + n * k + n + m * n), threads=threads))
        out.append(Case("linear_backward (relu)", f"{m}x{k}->{n}", 4 * m * n * k, "flops", make_bwd,
                        F32 * (2 * m * n + 2 * m * k + 2 * n * k + n), threads=threads))
    return out


def ladder_cases(sizes) -> list[Case]:
    """The CUDA C linear op rung by rung (kernels/linear/cuda_c.cu; rung 4 is what the ``cupy``
    backend runs), on the ``cupy`` backend only: each rung's GFLOP/s beside the one below it. The
    reference is the numpy backend's op, as for every case."""
    from minivae.kernels.linear import cuda_c

    out = []
    for m, k, n in sizes:
        def inputs(be, m=m, k=k, n=n):
            # NumPy arrays: the kernels on the CPU emulator (how the tests run these cases)
            return (*_moved(be, linear_inputs(m, k, n), "x", "W", "b", "dy"),
                    "emulate" if be.xp is np else "cupy")

        for v in cuda_c.FORWARD:
            def make_fwd(be, v=v, inputs=inputs):
                x, W, b, _, where = inputs(be)
                if be is NUMPY:
                    return lambda: (NUMPY.linear_forward(x, W, b, "relu")[0],)
                return lambda: (cuda_c.forward(x, W, b, "relu", version=v, backend=where),)

            out.append(Case(f"linear_forward (relu) rung {v}", f"{m}x{k}->{n}", 2 * m * n * k, "flops",
                            make_fwd, F32 * (m * k + n * k + n + m * n), backends=("cupy",),
                            call="linear_forward (relu)" if v == cuda_c.PRODUCTION else ""))
        for v in cuda_c.BACKWARD:
            def make_bwd(be, v=v, inputs=inputs):
                x, W, b, dy, where = inputs(be)
                if be is NUMPY:
                    cache = NUMPY.linear_forward(x, W, b, "relu")[1]
                    return lambda: NUMPY.linear_backward(dy, cache, True)
                y = cuda_c.forward(x, W, b, "relu", backend=where)
                return lambda: cuda_c.backward(dy, x, W, y, "relu", version=v, backend=where)

            out.append(Case(f"linear_backward (relu) rung {v}", f"{m}x{k}->{n}", 4 * m * n * k, "flops",
                            make_bwd, F32 * (2 * m * n + 2 * m * k + 2 * n * k + n), backends=("cupy",),
                            call="linear_backward (relu)" if v == cuda_c.PRODUCTION else ""))
    return out


def scaling_cases(quick: bool) -> list[Case]:
    """How the fused linear forward's cost grows: with the batch at the VAE's 784 -> 400, and with
    the width (square layers) at batch 128. Each row says whether the roofline puts it on the
    compute or on the memory side, so the sweep shows where each backend turns compute-bound. A
    size the linear cases time too is the same call, timed again (``agree``)."""
    batches = [1, 32, 128, 1024] if quick else [1, 8, 32, 128, 512, 2048, 8192]
    widths = [64, 256, 1024] if quick else [16, 64, 256, 1024, 4096]
    shapes = ([("linear_forward vs batch (784->400)", m, 784, 400) for m in batches]
              + [("linear_forward vs width (batch 128)", 128, w, w) for w in widths])
    return [Case(op, f"{m}x{k}->{n}", 2 * m * n * k, "flops", _make_linear_forward(m, k, n),
                 F32 * (m * k + n * k + n + m * n), call="linear_forward (relu)",
                 threads=kernel_threads("linear", (m, k, n))) for op, m, k, n in shapes]


def latent_cases(sizes) -> list[Case]:
    out = []
    for n, d in sizes:
        def make_fwd(be, n=n, d=d):
            (h,) = _moved(be, latent_inputs(n, d), "h")
            return lambda: be.latent_forward(h, 1, key=(7, 0))[:2]

        def make_bwd(be, n=n, d=d):
            h, dz = _moved(be, latent_inputs(n, d), "h", "dz")
            _, _, cache = be.latent_forward(h, 1, key=(7, 0))
            return lambda: (be.latent_backward(dz, 0.01, cache),)

        # forward reads [mu|logvar], writes z and kl; backward reads dz and [mu|logvar], writes dh
        out.append(Case("latent_forward", f"{n}x{d}", F32 * (3 * n * d + n), "bytes", make_fwd,
                        **_counts("latent_forward", (n, d))))
        out.append(Case("latent_backward", f"{n}x{d}", F32 * 5 * n * d, "bytes", make_bwd,
                        **_counts("latent_backward", (n, d))))
    return out


def bernoulli_cases(sizes) -> list[Case]:
    out = []
    for n, d in sizes:
        def make(be, n=n, d=d):
            inputs = bernoulli_inputs(n, d)
            x, logits = _moved(be, inputs, "x", "logits")
            return lambda: be.bernoulli(x, logits, float(inputs["dlogp"]))

        out.append(Case("bernoulli", f"{n}x{d}", F32 * (3 * n * d + n), "bytes", make,
                        threads=kernel_threads("bernoulli", (n, d)), **_counts("bernoulli", (n, d))))
    return out


def iwae_cases(sizes) -> list[Case]:
    """The importance weights of K samples for N examples: the K-sample bound's log-mean-exp and
    softmax over the samples."""
    out = []
    for k, n in sizes:
        def make(be, k=k, n=n):
            (log_w,) = _moved(be, importance_weights_inputs(k, n), "log_w")
            return lambda: be.importance_weights(log_w)

        # reads log_w, writes the weights and the bound
        out.append(Case("importance_weights", f"{k}x{n}", F32 * (2 * k * n + n), "bytes", make,
                        **_counts("importance_weights", (k, n))))
    return out


def adam_cases(sizes) -> list[Case]:
    out = []
    for p in sizes:
        def make(be, p=p):
            if be.adam is None:  # the reference's ufunc passes (CuPy's, on a GPU)
                from minivae.optim import Adam

                rng = np.random.default_rng(0)
                params = {"w": _rand(be.xp, p, rng)}
                opt = Adam(params, lr=1e-3, backend=be)
                g = {"w": _rand(be.xp, p, rng)}
                return lambda: (opt.step(g), params["w"])[1:]
            rng = np.random.default_rng(0)
            w, g = _rand(be.xp, p, rng), _rand(be.xp, p, rng)
            m, v = be.xp.zeros_like(w), be.xp.zeros_like(w)

            def run():
                be.adam(w, g, m, v, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                        decoupled=False, step=1)
                return (w,)

            return run

        # reads p, g, m, v and writes p, m, v
        out.append(Case("adam", f"{p}", F32 * 7 * p, "bytes", make, threads=kernel_threads("adam", (p,))))
    return out


def all_cases(quick: bool) -> list[Case]:
    if quick:
        lin = [(128, 784, 400), (128, 400, 40), (1024, 784, 400)]
        lat, brn, adm = [(128, 20), (8192, 20)], [(128, 784), (1024, 784)], [313_600, 2_000_000]
        iw = [(5, 128), (50, 1024)]
    else:
        lin = [(128, 784, 400), (128, 400, 40), (128, 20, 400), (128, 400, 784), (1024, 784, 400),
               (4096, 1024, 1024), (8192, 4096, 4096)]
        lat = [(128, 20), (1024, 20), (8192, 64), (65536, 64)]
        brn = [(128, 784), (1024, 784), (8192, 784), (8192, 4096)]
        adm = [313_600, 2_000_000, 16_000_000]
        iw = [(5, 128), (50, 1024), (50, 65536)]
    ladder = [(128, 784, 400), (1024, 784, 400)] + ([] if quick else [(4096, 1024, 1024)])
    return (linear_cases(lin) + ladder_cases(ladder) + latent_cases(lat) + bernoulli_cases(brn)
            + iwae_cases(iw) + adam_cases(adm) + scaling_cases(quick))


# ------------------------------------------------------------------------------------------------
# timing

SAMPLE_S = 2e-3  # a sample: back-to-back calls filling this long, 10^4 times the timer's resolution
WARMUP_S = 20e-3  # each callable's warm-up, right before its rounds, whatever ran before it
WARMUP_CALLS = 3
# Two instances of one call are allocated apart, so their arrays sit at other addresses (alignment,
# cache sets): a difference the samples of one instance cannot show. ``agree`` allows this much.
AGREE_SLACK = 0.02


@dataclass
class Samples:
    """Seconds per call of one callable, one value per sample, and what the row reports beside
    them (page faults per call on the CPU; dispatch time and batch size on a GPU)."""

    seconds: list[float]
    extra: dict = field(default_factory=dict)

    @property
    def min_s(self) -> float:
        return min(self.seconds)

    @property
    def median_s(self) -> float:
        return float(np.median(self.seconds))

    def spread_us(self) -> dict[str, float]:
        """The median, the fastest sample and the quartiles, in microseconds."""
        q1, median, q3 = np.percentile(self.seconds, [25, 50, 75])
        return {"median_us": float(median) * 1e6, "min_us": self.min_s * 1e6, "q1_us": float(q1) * 1e6,
                "q3_us": float(q3) * 1e6}


def rotated(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order of ``names``: each round starts one further on, so that nothing always
    runs after the same one (whose data it would find in the cache, or have evicted)."""
    k = r % len(names)
    return names[k:] + names[:k]


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, sample_s: float = SAMPLE_S,
                     warmup_s: float = WARMUP_S) -> dict[str, Samples]:
    """Each callable of ``fns`` warmed up, then timed in ``rounds`` rounds of one sample each, the
    order rotated every round (no callable always runs after the same one, whose data it would
    find in the cache or evict). A sample is ``reps`` back-to-back calls, ``reps`` sized from the
    warm-up so that it lasts about ``sample_s``."""
    reps: dict[str, int] = {}
    for name, fn in fns.items():
        calls, start, last = 0, time.perf_counter(), 0.0
        while calls < WARMUP_CALLS or time.perf_counter() - start < warmup_s:
            t = time.perf_counter()
            fn()
            last = time.perf_counter() - t
            calls += 1
        reps[name] = max(1, math.ceil(sample_s / max(last, 1e-9)))
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    faults: dict[str, list[float]] = {name: [] for name in fns}  # allocation churn shows here
    names = list(fns)
    for r in range(rounds):
        for name in rotated(names, r):
            fn, n = fns[name], reps[name]
            flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.perf_counter()
            for _ in range(n):
                fn()
            seconds[name].append((time.perf_counter() - t) / n)
            faults[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt) / n)
    return {name: Samples(seconds[name], {"page_faults_per_call": float(np.median(faults[name])),
                                          "calls_per_sample": reps[name]}) for name in names}


def agree(a: dict, b: dict) -> bool:
    """Whether two rows timing the same call agree: their ranges from the fastest sample to the
    upper quartile overlap, each widened by AGREE_SLACK."""
    lo_a, hi_a = a["min_us"] * (1 - AGREE_SLACK), a["q3_us"] * (1 + AGREE_SLACK)
    lo_b, hi_b = b["min_us"] * (1 - AGREE_SLACK), b["q3_us"] * (1 + AGREE_SLACK)
    return bool(lo_a <= hi_b and lo_b <= hi_a)


# ------------------------------------------------------------------------------------------------
# ceilings


def memory_bandwidth(nbytes: int, rounds: int = 5) -> float:
    """GB/s of the faster of a copy and an in-place update moving ``nbytes`` in all (each one's
    best sample): the memory ceiling of an op with that working set (bench/ceilings.py)."""
    probes = ceilings.memory_probes(nbytes)
    samples = time_interleaved({k: p.fn for k, p in probes.items()}, rounds)
    return ceilings.rates(probes, {k: samples[k].min_s for k in probes})["memory"]


def cpu_ceilings(n: int = ceilings.MATMUL_PEAK_N, memory_mib: int = 256) -> dict:
    """The run's CPU ceilings, in the table's header: the BLAS's float32 matmul peak on an n^3
    product, the memory bandwidth of ``memory_mib`` MiB (DRAM, one thread) and the fastest float32
    exp and log on one thread and (``parallel_*``, with Numba) on every Numba thread. A row's
    compute ceiling is the better of the peak and its own probe; its memory and exp/log ceilings
    are its own probes', on its own thread count (these stand in only where it has none)."""
    out = {"matmul_gflops": ceilings.matmul_peak(n), "memory_gbs": memory_bandwidth(memory_mib * 2**20)}
    pool = ceilings.numba_threads()
    for prefix, threads in (("", 1), ("parallel_", pool)) if pool > 1 else (("", 1),):
        probes = ceilings.transcendental_probes(threads)
        samples = time_interleaved({k: p.fn for k, p in probes.items()}, rounds=5)
        fastest = ceilings.rates(probes, {k: samples[k].min_s for k in probes})
        out |= {f"{prefix}exp_per_s": fastest["exp"], f"{prefix}log_per_s": fastest["log"]}
    if pool > 1:
        out["parallel_threads"] = pool
    return out


def case_probes(case: Case, threads: int = 1) -> dict[str, ceilings.Probe]:
    """The probes timed beside a case's CPU rows that run on ``threads`` threads: memory on exactly
    its bytes, the matmul rate for a GEMM, exp and log for an op that evaluates them."""
    nbytes = case.traffic if case.kind == "flops" else case.work
    probes = dict(ceilings.memory_probes(nbytes, threads)) if nbytes else {}
    if case.kind == "flops":
        probes["matmul"] = _matmul_probe()
    if case.exps or case.logs:
        probes |= ceilings.transcendental_probes(threads)
    return probes


@functools.cache
def _matmul_probe() -> ceilings.Probe:
    """One matmul probe per process: every probe set of a case shares it (one name, one timing)."""
    return ceilings.matmul_probe()


def gpu_ceilings(device=None, n: int = 8192, copy_mib: int = 1024) -> dict:
    """The GPU's ceilings, timed as every GPU row is (``gpu_timing.time_on_device``): float32 SGEMM
    through cuBLAS (TF32 off unless CUPY_TF32=1, which is recorded), a device-to-device copy of
    ``copy_mib`` MiB (DRAM bandwidth: twice the L2 and more), and the fastest float32 exp and log
    in registers (``expf`` or ``__expf``, ``logf`` or ``__logf``). ``device``: CuPy's current one
    unless given."""
    import os

    device = device or gpu_timing.CupyDevice()
    gemm, copy = device.sgemm(n), device.copy(copy_mib * 2**20)
    gemm(), copy()
    gemm_s = gpu_timing.time_on_device(gemm, device).min_s
    copy_s = gpu_timing.time_on_device(copy, device).min_s
    fastest = {"exp": 0.0, "log": 0.0}
    for func in fastest:
        for fast in (False, True):
            fn, count = device.exp_log(func, fast)
            fn()
            fastest[func] = max(fastest[func], count / gpu_timing.time_on_device(fn, device).min_s)
    return {"matmul_gflops": 2 * n**3 / gemm_s / 1e9, "copy_gbs": copy_mib * 2**20 / copy_s / 1e9,
            "exp_per_s": fastest["exp"], "log_per_s": fastest["log"], "l2_bytes": int(device.l2_bytes),
            "tf32": os.environ.get("CUPY_TF32", "0") == "1", "device": device.name}


def gpu_copy_bandwidth(device, cache: dict[float, float], nbytes: float) -> float:
    """GB/s of a device copy moving ``nbytes`` in all, timed as the GPU rows are (so an op whose
    working set sits in the L2 meets an L2 ceiling), measured once per size in a run."""
    if nbytes not in cache:
        copy = device.copy(int(nbytes))
        copy()
        cache[nbytes] = nbytes / gpu_timing.time_on_device(copy, device).min_s / 1e9
    return cache[nbytes]


def cupy_vendor_backend() -> Backend | None:
    """The vendor-library way on a GPU: the NumPy reference functions on CuPy arrays (cuBLAS GEMMs,
    then CuPy's separate elementwise kernels), so the value of fusion is the ratio beside it."""
    try:
        cupy_be = backends_mod.get_backend("cupy")
    except backends_mod.BackendUnavailable:
        return None
    return Backend("cupy-vendor", cupy_be.xp, NUMPY.linear_forward, NUMPY.linear_backward,
                   NUMPY.latent_forward, NUMPY.latent_backward, NUMPY.bernoulli, on_gpu=True)


def napkin(work: float, kind: str, traffic: float, exps: float, logs: float, median_s: float,
           rates: dict[str, float]) -> dict:
    """A row's rate (GFLOP/s for kind "flops", GB/s for "bytes"), its floors in microseconds (FLOPs
    at ``rates["compute"]`` GFLOP/s; bytes - ``traffic`` for a GEMM - at ``rates["memory"]`` GB/s;
    exp and log evaluations at ``rates["exp"]`` and ``rates["log"]`` per second), the floor that
    binds (the largest), and the share of that ceiling: the floor over the median. A row faster
    than its floor gets ``over_ceiling``: both numbers, and no reason, since none was measured."""
    floors = {}
    if kind == "flops":
        floors["compute"] = work / (rates["compute"] * 1e9)
    nbytes = traffic if kind == "flops" else work
    if nbytes:
        floors["memory"] = nbytes / (rates["memory"] * 1e9)
    if exps or logs:
        floors["exp/log"] = exps / rates["exp"] + logs / rates["log"]
    bound = max(floors, key=floors.__getitem__)
    share = floors[bound] / median_s
    row = {"rate": work / median_s / 1e9, "unit": "GFLOP/s" if kind == "flops" else "GB/s",
           "floors_us": {k: v * 1e6 for k, v in floors.items()}, "roofline_us": floors[bound] * 1e6,
           "bound": bound, "share_of_ceiling": share, "ceilings": dict(rates)}
    if share > 1:
        rates_of = {"compute": f"{work / median_s / 1e9:.1f} GFLOP/s against the ceiling's "
                               f"{rates['compute']:.1f} GFLOP/s",
                    "memory": f"{nbytes / median_s / 1e9:.1f} GB/s against the ceiling's "
                              f"{rates['memory']:.1f} GB/s",
                    "exp/log": f"{(exps + logs) / median_s / 1e9:.2f} G exp and log/s against the ceilings' "
                               f"{rates['exp'] / 1e9:.2f} G exp/s and {rates['log'] / 1e9:.2f} G log/s"}
        row["over_ceiling"] = (f"not explained: median {median_s * 1e6:.1f} us under the {bound} floor of "
                               f"{floors[bound] * 1e6:.1f} us ({rates_of[bound]})")
    return row


# ------------------------------------------------------------------------------------------------
# validation and timing


def reduction_terms(op: str, shape: tuple[int, ...]) -> int:
    """The most terms one output of ``op`` sums, which its validation's tolerance grows with: the
    linear forward's K, its backward's larger of M (dW, db) and N (dx), a row's D (the latent
    op's KL, Bernoulli's log p), the K samples of the importance weights, 1 for Adam."""
    if op.startswith("linear_forward"):
        return shape[1]
    if op.startswith("linear_backward"):
        return max(shape[0], shape[2])
    if op.startswith(("latent", "bernoulli")):
        return shape[1]
    if op == "importance_weights":
        return shape[0]
    return 1


def _close(got: tuple, ref: tuple, be: Backend, case: Case) -> str | None:
    """None if every output passes bench ladder's rule (bench/validate.py: NaN-aware, the
    tolerance grown with the case's ``reduction_terms``) against the numpy backend's output, each
    output's scale its reference's largest finite magnitude; else why not."""
    terms = reduction_terms(case.op, _dims(case.size))
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        if g is None and r is None:
            continue
        want = NUMPY.to_host(r).astype(np.float64)
        finite = np.abs(want[np.isfinite(want)])
        scale = max(float(finite.max(initial=0.0)), 1e-30)
        why = validate.check(be.to_host(g), validate.Expect(f"output {i}", want, scale, terms=terms))
        if why is not None:
            return why
    return None


@dataclass
class Timer:
    """How one run times its rows: its rounds, its run-wide ceilings (``cpu_ceilings``,
    ``gpu_ceilings``) and the GPU device (``python -m bench ladder`` times its versions so too)."""

    rounds: int
    cpu: dict
    gpu: dict | None
    device: object = None
    gpu_copy: dict[float, float] = field(default_factory=dict)

    def measure(self, case: Case, fns: dict[str, Callable[[], object]], on_gpu: dict[str, bool],
                threads: dict[str, int] | None = None) -> tuple[dict[str, Samples], dict[str, dict]]:
        """Samples of every callable, and the rates each one is rated against (by name): the CPU
        ones interleaved with the case's probes on as many threads as each runs on (``threads``,
        1 where not given), the GPU ones on the device. A CPU callable's samples carry its thread
        count and which probe set each ceiling (``ceiling_probes``)."""
        samples: dict[str, Samples] = {}
        rates: dict[str, dict[str, float]] = {}
        cpu_fns = {k: fn for k, fn in fns.items() if not on_gpu[k]}
        if cpu_fns:
            threads = {k: (threads or {}).get(k, 1) for k in cpu_fns}
            sets = {t: case_probes(case, t) for t in sorted(set(threads.values()))}
            probes = {name: p for probe_set in sets.values() for name, p in probe_set.items()}
            timed = time_interleaved({**cpu_fns, **{f"probe {k}": p.fn for k, p in probes.items()}},
                                     self.rounds)
            for k in cpu_fns:
                samples[k] = timed[k]
                rates[k], samples[k].extra["ceiling_probes"] = self._cpu_rates(
                    sets[threads[k]], {n: timed[f"probe {n}"].min_s for n in sets[threads[k]]}, threads[k])
                samples[k].extra["threads"] = threads[k]
        for name in [k for k in fns if on_gpu[k]]:  # the device is not shared: one at a time
            t = gpu_timing.time_on_device(fns[name], self.device, samples=self.rounds)
            samples[name] = Samples(t.device_s, {"dispatch_us": t.dispatch_s * 1e6, "reps": t.reps,
                                                 "host_gaps": t.host_gaps})
        if any(on_gpu.values()):
            nbytes = case.traffic if case.kind == "flops" else case.work
            memory = gpu_copy_bandwidth(self.device, self.gpu_copy, nbytes) if nbytes else 0.0
            for name in [k for k in fns if on_gpu[k]]:
                rates[name] = {"compute": self.gpu["matmul_gflops"], "memory": memory,
                               "exp": self.gpu["exp_per_s"], "log": self.gpu["log_per_s"]}
        return samples, rates

    def _cpu_rates(self, probes: dict[str, ceilings.Probe], best_s: dict[str, float],
                   threads: int) -> tuple[dict[str, float], dict[str, str]]:
        """A CPU row's rates from its probes (``threads`` of them), the run's where it has none
        (and the run's matmul peak where that is faster), and which probe set each."""
        found = ceilings.best(probes, best_s)
        parallel = "parallel_" if threads > 1 and "parallel_exp_per_s" in self.cpu else ""
        run_wide = {"compute": (self.cpu["matmul_gflops"], "the run's matmul peak"),
                    "memory": (self.cpu["memory_gbs"], "the run's 256 MiB probe, 1 thread"),
                    "exp": (self.cpu[f"{parallel}exp_per_s"], f"the run's exp probes, {threads} thread(s)"),
                    "log": (self.cpu[f"{parallel}log_per_s"], f"the run's log probes, {threads} thread(s)")}
        rates, source = {}, {}
        for kind, (rate, what) in run_wide.items():
            if kind in found and (kind != "compute" or found[kind][0] >= rate):
                rate, name = found[kind]
                what = f"{name} on {ceilings.described(probes[name])}"
            rates[kind], source[kind] = rate, what
        return rates, source


def timed_row(case: Case, samples: Samples, rates: dict[str, float]) -> dict:
    """A timed row's numbers: its spread, what its samples carry beside them, and its napkin math;
    a row over its ceiling names the probes that set it."""
    row = samples.spread_us() | samples.extra | napkin(case.work, case.kind, case.traffic, case.exps,
                                                       case.logs, samples.median_s, rates)
    source = row.get("ceiling_probes", {})
    resources = ("exp", "log") if row["bound"] == "exp/log" else (row["bound"],)
    if "over_ceiling" in row and all(r in source for r in resources):
        row["over_ceiling"] += "; ceiling from " + " and ".join(source[r] for r in resources)
    return row


def run(quick: bool = False, backend_names=None, rounds: int | None = None, log=print, on_row=None,
        device=None) -> dict:
    """Every case on every backend (see the module docstring). ``on_row(row)`` gets each row as
    soon as its case is done (and a row timed again beside its repeat once more, marked
    ``restated``); ``device`` is what GPU rows are timed on (default: CuPy's current device, when
    a GPU backend is among those run)."""
    names = backend_names or [n for n, s in backends_mod.available().items() if s == "ok"]
    bes, unavailable = [], {}
    for n in names:
        if n == "cupy-vendor":
            continue
        try:
            be = backends_mod.get_backend(n)
        except backends_mod.BackendUnavailable as e:  # the others still run; the results say why not
            unavailable[n] = str(e)
            log(f"skipped: {e}")
            continue
        if n == "numba-cuda" and not be.on_gpu:
            unavailable[n] = (f"backend {n!r} runs in Numba's CUDA simulator here, which is never timed "
                              "(python -m bench ladder validates its kernels)")
            log(f"skipped: {unavailable[n]}")
            continue
        bes.append(be)
    vendor = cupy_vendor_backend() if any(be.on_gpu for be in bes) else None
    if vendor is not None:
        bes.append(vendor)
    names = [be.name for be in bes]
    if device is None and any(be.on_gpu for be in bes):
        device = gpu_timing.CupyDevice()
    state = Timer(rounds or (5 if quick else 9), cpu_ceilings(),
                 gpu_ceilings(device) if any(be.on_gpu for be in bes) else None, device)
    rows: list[dict] = []
    seen: dict[tuple[str, str, str], tuple[int, Case]] = {}  # a call timed before: its row, its case

    def emit(row: dict) -> None:
        if on_row is not None:
            on_row(row)

    for case in all_cases(quick):
        runners = [be for be in bes if case.backends is None or be.name in case.backends]
        if not runners:
            continue
        ref = case.make(NUMPY)()
        fns, status = {}, {}
        for be in runners:
            try:
                fn = case.make(be)
                got = fn()  # also the first warm-up call (and the JIT compile)
                status[be.name] = _close(got, ref, be, case)
                fns[be.name] = fn
            except Exception as e:  # a backend that cannot run this case is reported, not timed
                status[be.name] = f"{type(e).__name__}: {e}"
        on_gpu = {be.name: be.on_gpu for be in runners}
        ok = {k: fn for k, fn in fns.items() if status[k] is None}
        samples, rates = state.measure(case, ok, on_gpu, {k: case.threads if k == "numba" else 1 for k in ok})
        for be in runners:
            name = be.name
            if name in samples:
                # validated again after timing: the timed instance's own output; Adam's state
                # moved on with every timed step, so a fresh instance of it
                status[name] = _close((case.make(be) if case.op == "adam" else fns[name])(), ref, be, case)
            row = {"op": case.op, "size": case.size, "backend": name, "status": status.get(name)}
            if row["status"] is None and name in samples:
                row |= timed_row(case, samples[name], rates[name])
                key = (case.same_call, case.size, name)
                if key in seen:
                    row = _repeat(state, rows, seen[key], row, case, be, fns[name], emit)
                else:
                    seen[key] = (len(rows), case)
            rows.append(row)
            emit(row)
        log(f"{case.op} {case.size}: " + ", ".join(
            f"{r['backend']} {r['median_us']:.0f} us" if r.get("median_us") else
            f"{r['backend']} FAILED ({r['status']})" for r in rows[-len(runners):]))
    return {"ceilings": state.cpu, "gpu_ceilings": state.gpu, "backends": names, "unavailable": unavailable,
            "rounds": state.rounds, "rows": rows}


def _repeat(state: Timer, rows: list[dict], first: tuple[int, Case], row: dict, case: Case, be: Backend,
            fn: Callable[[], object], emit: Callable[[dict], None]) -> dict:
    """``row`` times a call that ``rows[first[0]]`` timed earlier: if the two disagree, both
    instances are timed again side by side and both rows report that (the earlier one is emitted
    again, ``restated``). Returns the row, with ``repeats`` (the earlier row's index) and
    ``agrees``."""
    index, first_case = first
    earlier = rows[index]
    if not agree(earlier, row):
        again = first_case.make(be)
        again()  # the warm-up's first call: allocation and compilation out of the samples
        threads = case.threads if be.name == "numba" else 1
        samples, rates = state.measure(case, {"earlier": again, "later": fn},
                                       {"earlier": be.on_gpu, "later": be.on_gpu},
                                       {"earlier": threads, "later": threads})
        rows[index] = earlier = {**earlier, **timed_row(first_case, samples["earlier"], rates["earlier"]),
                                 "first_median_us": earlier["median_us"], "timed_again_with": len(rows)}
        emit({**earlier, "restated": True})
        row = {**row, **timed_row(case, samples["later"], rates["later"]),
               "first_median_us": row["median_us"]}
    return {**row, "repeats": index, "agrees": agree(earlier, row)}


def ceilings_line(res: dict) -> str:
    """The run's ceilings, for the header of a table."""
    c, g = res["ceilings"], res.get("gpu_ceilings")
    return (f"Ceilings measured in this run: float32 matmul {c['matmul_gflops']:.0f} GFLOP/s; memory "
            f"{c['memory_gbs']:.1f} GB/s at 256 MiB (the faster of a copy and an in-place update); "
            f"float32 exp {c['exp_per_s'] / 1e9:.2f} G/s, log {c['log_per_s'] / 1e9:.2f} G/s (in cache, one "
            "thread" + (f"; {c['parallel_exp_per_s'] / 1e9:.2f} and {c['parallel_log_per_s'] / 1e9:.2f} G/s "
                        f"on {c['parallel_threads']} Numba threads" if "parallel_threads" in c else "")
            + "). Each CPU row is rated against probes timed beside it, interleaved, on its own working set "
            "and on as many threads as its kernel (the row's threads and ceiling probes; bench/ceilings.py)."
            + (f" GPU ({g.get('device', 'device 0')}): cuBLAS SGEMM {g['matmul_gflops']:.0f} GFLOP/s "
               f"(TF32 {'on' if g['tf32'] else 'off'}), device copy {g['copy_gbs']:.0f} GB/s at 1 GiB, exp "
               f"{g['exp_per_s'] / 1e9:.0f} G/s, log {g['log_per_s'] / 1e9:.0f} G/s; GPU rows are device "
               "time per call of back-to-back calls held behind a spin kernel until all are queued, the L2 "
               "flushed before each sample (bench/gpu_timing.py); host us/call is the host's dispatch time "
               "per call, measured meanwhile." if g else ""))


def table(res: dict) -> str:
    lines = [ceilings_line(res),
             "", COLUMNS.format(rounds=res.get("rounds", "several"), slack=100 * AGREE_SLACK), "",
             "| op | size | backend | median us | spread us | host us/call | rate | floor us | bound "
             "| share of ceiling | page faults/call | vs vendor |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    # the vendor-library way on the same device: numpy (BLAS + NumPy passes), cupy-vendor on a GPU;
    # a ladder rung's vendor is its op's
    vendor = {(r["op"], r["size"], r["backend"] == "cupy-vendor"): r.get("median_us") for r in res["rows"]
              if r["backend"] in ("numpy", "cupy-vendor")}
    notes: list[str] = []
    for r in res["rows"]:
        if r.get("median_us") is None:
            lines.append(f"| {r['op']} | {r['size']} | {r['backend']} | failed: {r['status']} "
                         "| | | | | | | | |")
            continue
        gpu_row = r["backend"] in ("cupy", "numba-cuda", "cupy-vendor")
        base = vendor.get((r["op"].split(" rung ")[0], r["size"], gpu_row))
        speed = f"{base / r['median_us']:.2f}x" if base else ""
        pf, host = r.get("page_faults_per_call"), r.get("dispatch_us")
        median = f"{r['median_us']:.1f}" + (" (host gaps)" if r.get("host_gaps") else "")
        share = f"{100 * r['share_of_ceiling']:.0f}%"
        for note in row_notes(r):
            notes.append(f"{len(notes) + 1}. {r['op']} {r['size']} {r['backend']}: {note}.")
            if note.startswith("over 100%"):
                share += f" ({len(notes)})"
            else:
                median += f" ({len(notes)})"
        lines.append(f"| {r['op']} | {r['size']} | {r['backend']} | {median} | "
                     f"{r['min_us']:.1f}-{r['q3_us']:.1f} | {'' if host is None else f'{host:.1f}'} | "
                     f"{r['rate']:.1f} {r['unit']} | {r['roofline_us']:.1f} | {r['bound']} | {share} | "
                     f"{'' if pf is None else f'{pf:.0f}'} | {speed} |")
    return "\n".join(lines + ([""] + notes if notes else []))


COLUMNS = ("median us: of {rounds} samples per row; spread: the fastest sample to the upper quartile "
           "(two rows timing the same call must overlap there, give or take {slack:.0f}%); floor us: the "
           "largest of FLOPs / matmul rate, bytes / memory rate, exp and log evaluations / their rates; "
           "bound: which one that is; share: floor / median.")


def row_notes(r: dict) -> list[str]:
    """What a timed row's numbers need said beside them: a share over 100% and why, a call timed
    again beside its repeat, a repeat that still disagrees."""
    notes = []
    if "over_ceiling" in r:
        notes.append(f"over 100%, {r['over_ceiling']}")
    if "first_median_us" in r:
        notes.append(f"first timed at {r['first_median_us']:.1f} us, apart from the row timing the same "
                     "call; both timed again side by side")
    if r.get("agrees") is False:
        notes.append("disagrees with the earlier row timing the same call, even side by side")
    return notes


FONT_PT = 9  # the smallest text of a figure


def _dims(size: str) -> tuple[int, ...]:
    """A row's size as its numbers: "128x784->400" -> (128, 784, 400)."""
    return tuple(int(n) for n in re.findall(r"\d+", size))


def is_sweep(sizes: list[str]) -> bool:
    """Whether sizes are a sweep, whose points a line may join: one dimension varies (the batch), or
    the dimensions that vary are equal in every size (square layers' width). Other shapes
    (128x784->400 beside 128x400->40: two layers) are unrelated."""
    dims = [_dims(s) for s in sizes]
    if len({len(d) for d in dims}) != 1:
        return False
    varying = [i for i in range(len(dims[0])) if len({d[i] for d in dims}) > 1]
    return len(varying) <= 1 or all(len({d[i] for i in varying}) == 1 for d in dims)


def save_figures(named_figures, path, dpi: int) -> list:
    """Each (family, Figure) written beside ``path`` as ``<stem>-<family>.png``; the paths written
    (the ladder's figures too)."""
    from pathlib import Path

    path = Path(path)
    written = []
    for fam, fig in named_figures:
        written.append(path.with_name(f"{path.stem}-{fam}{path.suffix}"))
        fig.savefig(written[-1], dpi=dpi)
    return written


def plot(res: dict, path) -> list:
    """``figures``, each written beside ``path`` as ``<stem>-<family>.png``; the paths written."""
    return save_figures(figures(res), path, dpi=90)


def figures(res: dict):
    """One figure per family of ops (linear, latent, bernoulli, importance_weights, adam), as
    (family, Figure): a column per op, its median time per size (log
    scale, one series per backend or rung, the CPU floor dashed) above its share of the ceiling.
    Sizes stand in order of their product; a series whose sizes are a sweep (``is_sweep``) is a
    line, one of unrelated shapes separate points."""
    from matplotlib.figure import Figure

    rows = [r for r in res["rows"] if r.get("median_us")]

    def line(r):  # a ladder rung is a series of its op's panel
        op, _, rung = r["op"].partition(" rung ")
        return op, f"{r['backend']} rung {rung}" if rung else r["backend"]

    for fam in FAMILIES:
        mine = [r for r in rows if family(r["op"]) == fam]
        if not mine:
            continue
        ops = list(dict.fromkeys(line(r)[0] for r in mine))
        fig = Figure(figsize=(max(5.0, 4.5 * len(ops)), 7.5), constrained_layout=True)
        axes = fig.subplots(2, len(ops), squeeze=False)
        for j, op in enumerate(ops):
            on = [r for r in mine if line(r)[0] == op]
            sizes = sorted(dict.fromkeys(r["size"] for r in on), key=lambda s: math.prod(_dims(s)))
            for label in dict.fromkeys(line(r)[1] for r in on):
                pts = sorted((sizes.index(r["size"]), r["median_us"], 100 * r["share_of_ceiling"])
                             for r in on if line(r)[1] == label)
                xs, ts, ss = zip(*pts, strict=True)
                style = "o-" if is_sweep([sizes[x] for x in xs]) else "o"
                axes[0][j].plot(xs, ts, style, label=label)
                axes[1][j].plot(xs, ss, style, label=label)
            floor: dict[str, float] = {}
            for r in on:  # the CPU's floor (the largest of compute, memory and exp/log), its lowest
                if not r["backend"].startswith(("cupy", "numba-cuda")):
                    floor[r["size"]] = min(floor.get(r["size"], math.inf), r["roofline_us"])
            if floor:
                xs = sorted(sizes.index(s) for s in floor)
                style = "k_--" if is_sweep([sizes[x] for x in xs]) else "k_"
                axes[0][j].plot(xs, [floor[sizes[x]] for x in xs], style, ms=16, label="CPU floor")
            for ax in axes[:, j]:
                ax.set_xticks(range(len(sizes)), sizes, rotation=30, fontsize=FONT_PT)
                ax.tick_params(axis="y", labelsize=FONT_PT)
                ax.grid(alpha=0.3)
            axes[0][j].set_yscale("log")
            axes[0][j].set_title(op, fontsize=FONT_PT + 1)
            axes[0][j].set_ylabel("median time per call (us)", fontsize=FONT_PT)
            axes[1][j].set_ylabel("% of the binding ceiling", fontsize=FONT_PT)
            axes[1][j].axhline(100, color="k", lw=0.8)
            axes[1][j].set_ylim(bottom=0)
            axes[0][j].legend(fontsize=FONT_PT)
        fig.suptitle(f"{fam}: time and share of the measured ceiling per size (lines join sweeps; "
                     "unrelated shapes are separate points)", fontsize=FONT_PT + 2)
        yield fam, fig
