"""Every costly op, every available backend, over a size sweep, against the machine's ceilings.

For each op (linear forward and backward, the fused latent sampling + KL forward and backward, the
Bernoulli likelihood, the importance weights of the K-sample bound, the Adam update) and each
backend available here, the op is first validated against the NumPy reference, then timed (median
and minimum after warm-up, backends interleaved round by round), then validated again: a run that
fails validation is reported as failed, never as a speed. Napkin math turns times into GFLOP/s
(GEMMs: 2 M N K per product) or GB/s (elementwise: bytes that must cross memory at least once), and
into a share of the ceiling measured in the same run: the float32 matmul peak of the vendor BLAS
(cuBLAS on a GPU) and the memory copy bandwidth.

On the CPU the ``numpy`` backend *is* the vendor-library way (BLAS GEMM, then separate NumPy passes
for bias and activation), so the value of fusion is the ratio beside it. On a GPU the same NumPy
reference functions run on CuPy arrays (cuBLAS, then separate elementwise kernels) as the
``cupy-vendor`` row, and the CUDA C linear op's ladder (kernels/linear/cuda_c.cu's rungs 1-4 forward, 1 and 4
backward) has rows of its own beside the production rung.

GPU rows are timed by ``bench/gpu_timing.py``: many back-to-back calls between one pair of CUDA
events, held behind a spin kernel until all are queued, the L2 flushed before every sample of every
row; the host's dispatch time per call is measured beside it. Their ceilings are measured the same
way: cuBLAS SGEMM, and a device copy of each op's own working set. Each row is handed to ``on_row``
as soon as its case is done (``python -m bench kernels`` appends it to ``<name>.jsonl``), so a run
cut short keeps every finished case.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench import gpu_timing
from minivae import backends as backends_mod
from minivae.backends import NUMPY, Backend

F32 = 4  # bytes


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


def _rand(xp, shape, rng, scale=1.0, dtype=np.float32):
    return xp.asarray((rng.standard_normal(shape) * scale).astype(dtype))


def _make_linear_forward(m: int, k: int, n: int):
    def make(be):
        rng = np.random.default_rng(0)
        x, W, b = _rand(be.xp, (m, k), rng), _rand(be.xp, (n, k), rng, 0.05), _rand(be.xp, n, rng)
        return lambda: (be.linear_forward(x, W, b, "relu")[0],)

    return make


def linear_cases(sizes) -> list[Case]:
    out = []
    for m, k, n in sizes:
        make_fwd = _make_linear_forward(m, k, n)

        def make_bwd(be, m=m, k=k, n=n):
            rng = np.random.default_rng(0)
            x, W, b = _rand(be.xp, (m, k), rng), _rand(be.xp, (n, k), rng, 0.05), _rand(be.xp, n, rng)
            _, cache = be.linear_forward(x, W, b, "relu")
            dy = _rand(be.xp, (m, n), rng)
            return lambda: be.linear_backward(dy, cache, True)

        # forward: x, W, b in, y out; backward: dy, x, W, y in, dx, dW, db out
        out.append(Case("linear_forward (relu)", f"{m}x{k}->{n}", 2 * m * n * k, "flops", make_fwd,
                        F32 * (m * k + n * k + n + m * n)))
        out.append(Case("linear_backward (relu)", f"{m}x{k}->{n}", 4 * m * n * k, "flops", make_bwd,
                        F32 * (2 * m * n + 2 * m * k + 2 * n * k + n)))
    return out


def ladder_cases(sizes) -> list[Case]:
    """The CUDA C linear op rung by rung (kernels/linear/cuda_c.cu; rung 4 is what the ``cupy``
    backend runs), on the ``cupy`` backend only: each rung's GFLOP/s beside the one below it. The
    reference is the numpy backend's op, as for every case."""
    from minivae.kernels.linear import cuda_c

    out = []
    for m, k, n in sizes:
        def inputs(be, m=m, k=k, n=n):
            rng = np.random.default_rng(0)
            x, W, b = _rand(be.xp, (m, k), rng), _rand(be.xp, (n, k), rng, 0.05), _rand(be.xp, n, rng)
            # NumPy arrays: the kernels on the CPU emulator (how the tests run these cases)
            return x, W, b, _rand(be.xp, (m, n), rng), "emulate" if be.xp is np else "cupy"

        for v in cuda_c.FORWARD:
            def make_fwd(be, v=v, inputs=inputs):
                x, W, b, _, where = inputs(be)
                if be is NUMPY:
                    return lambda: (NUMPY.linear_forward(x, W, b, "relu")[0],)
                return lambda: (cuda_c.forward(x, W, b, "relu", version=v, backend=where),)

            out.append(Case(f"linear_forward (relu) rung {v}", f"{m}x{k}->{n}", 2 * m * n * k, "flops",
                            make_fwd, F32 * (m * k + n * k + n + m * n), backends=("cupy",)))
        for v in cuda_c.BACKWARD:
            def make_bwd(be, v=v, inputs=inputs):
                x, W, b, dy, where = inputs(be)
                if be is NUMPY:
                    cache = NUMPY.linear_forward(x, W, b, "relu")[1]
                    return lambda: NUMPY.linear_backward(dy, cache, True)
                y = cuda_c.forward(x, W, b, "relu", backend=where)
                return lambda: cuda_c.backward(dy, x, W, y, "relu", version=v, backend=where)

            out.append(Case(f"linear_backward (relu) rung {v}", f"{m}x{k}->{n}", 4 * m * n * k, "flops",
                            make_bwd, F32 * (2 * m * n + 2 * m * k + 2 * n * k + n), backends=("cupy",)))
    return out


def scaling_cases(quick: bool) -> list[Case]:
    """How the fused linear forward's cost grows: with the batch at the VAE's 784 -> 400, and with
    the width (square layers) at batch 128. Each row says whether the roofline puts it on the
    compute or on the memory side, so the sweep shows where each backend turns compute-bound."""
    batches = [1, 32, 128, 1024] if quick else [1, 8, 32, 128, 512, 2048, 8192]
    widths = [64, 256, 1024] if quick else [16, 64, 256, 1024, 4096]
    shapes = ([("linear_forward vs batch (784->400)", m, 784, 400) for m in batches]
              + [("linear_forward vs width (batch 128)", 128, w, w) for w in widths])
    return [Case(op, f"{m}x{k}->{n}", 2 * m * n * k, "flops", _make_linear_forward(m, k, n),
                 F32 * (m * k + n * k + n + m * n)) for op, m, k, n in shapes]


def latent_cases(sizes) -> list[Case]:
    out = []
    for n, d in sizes:
        def make_fwd(be, n=n, d=d):
            h = _rand(be.xp, (n, 2 * d), np.random.default_rng(0))
            return lambda: be.latent_forward(h, 1, key=(7, 0))[:2]

        def make_bwd(be, n=n, d=d):
            rng = np.random.default_rng(0)
            h = _rand(be.xp, (n, 2 * d), rng)
            _, _, cache = be.latent_forward(h, 1, key=(7, 0))
            dz = _rand(be.xp, (1, n, d), rng)
            return lambda: (be.latent_backward(dz, 0.01, cache),)

        # forward reads [mu|logvar], writes z and kl; backward reads dz and [mu|logvar], writes dh
        out.append(Case("latent_forward", f"{n}x{d}", F32 * (3 * n * d + n), "bytes", make_fwd))
        out.append(Case("latent_backward", f"{n}x{d}", F32 * 5 * n * d, "bytes", make_bwd))
    return out


def bernoulli_cases(sizes) -> list[Case]:
    out = []
    for n, d in sizes:
        def make(be, n=n, d=d):
            rng = np.random.default_rng(0)
            x = be.xp.asarray((rng.random((n, d)) < 0.3).astype(np.float32))
            logits = _rand(be.xp, (n, d), rng, 3.0)
            return lambda: be.bernoulli(x, logits, -1.0 / n)

        out.append(Case("bernoulli", f"{n}x{d}", F32 * (3 * n * d + n), "bytes", make))
    return out


def iwae_cases(sizes) -> list[Case]:
    """The importance weights of K samples for N examples: the K-sample bound's log-mean-exp and
    softmax over the samples."""
    out = []
    for k, n in sizes:
        def make(be, k=k, n=n):
            log_w = _rand(be.xp, (k, n), np.random.default_rng(0), 5.0)
            return lambda: be.importance_weights(log_w)

        # reads log_w, writes the weights and the bound
        out.append(Case("importance_weights", f"{k}x{n}", F32 * (2 * k * n + n), "bytes", make))
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
        out.append(Case("adam", f"{p}", F32 * 7 * p, "bytes", make))
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
# ceilings


def copy_bandwidth(nbytes: int) -> float:
    """GB/s of a memory copy moving ``nbytes`` in all (read + write), best of several: the ceiling
    of an elementwise op with the same working set (in cache when small, DRAM when large)."""
    a = np.ones(max(nbytes // (2 * F32), 1024), np.float32)
    b = np.empty_like(a)
    reps = max(1, int(2e7 // a.nbytes))
    np.copyto(b, a)
    best = min(_time(lambda: [np.copyto(b, a) for _ in range(reps)]) for _ in range(5)) / reps
    return 2 * a.nbytes / best / 1e9


def cpu_ceilings(n: int = 2048, copy_mib: int = 256) -> dict:
    from bench.train_step import matmul_peak

    return {"matmul_gflops": matmul_peak(n), "copy_gbs": copy_bandwidth(copy_mib * 2**20)}


def gpu_ceilings(device=None, n: int = 8192, copy_mib: int = 1024) -> dict:
    """The GPU's ceilings, timed as every GPU row is (``gpu_timing.time_on_device``): float32 SGEMM
    through cuBLAS (TF32 off unless CUPY_TF32=1, which is recorded) and a device-to-device copy of
    ``copy_mib`` MiB (DRAM bandwidth: twice the L2 and more). ``device``: CuPy's current one unless
    given."""
    import os

    device = device or gpu_timing.CupyDevice()
    gemm, copy = device.sgemm(n), device.copy(copy_mib * 2**20)
    gemm(), copy()
    gemm_s = gpu_timing.time_on_device(gemm, device).min_s
    copy_s = gpu_timing.time_on_device(copy, device).min_s
    return {"matmul_gflops": 2 * n**3 / gemm_s / 1e9, "copy_gbs": copy_mib * 2**20 / copy_s / 1e9,
            "l2_bytes": int(device.l2_bytes), "tf32": os.environ.get("CUPY_TF32", "0") == "1",
            "device": device.name}


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


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------
# validation and timing


def _close(got: tuple, ref: tuple, be: Backend, kind: str) -> str | None:
    """None if every output matches the reference, else why not."""
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        if g is None and r is None:
            continue
        g, r = be.to_host(g), NUMPY.to_host(r)
        if g.shape != r.shape:
            return f"output {i} has shape {g.shape}, expected {r.shape}"
        if not np.isfinite(g).all():
            return f"output {i} holds NaN/inf"
        tol = 1e-3 if kind == "flops" else 1e-4  # GEMMs: float32 rounding grows with K
        scale = max(float(np.abs(r).max()), 1e-30)
        err = float(np.abs(g - r).max()) / scale
        if err > tol:
            return f"output {i} is off by {err:.2e} of its scale"
    return None


def _copy_ceiling(cache: dict[float, float], nbytes: float) -> float:
    """copy_bandwidth(nbytes), measured once per size in a run."""
    if nbytes not in cache:
        cache[nbytes] = copy_bandwidth(int(nbytes))
    return cache[nbytes]


def run(quick: bool = False, backend_names=None, rounds: int | None = None, log=print, on_row=None,
        device=None) -> dict:
    """Every case on every backend (see the module docstring). ``on_row(row)`` gets each row as
    soon as its case is done; ``device`` is what GPU rows are timed on (default: CuPy's current
    device, when a GPU backend is among those run)."""
    names = backend_names or [n for n, s in backends_mod.available().items() if s == "ok"]
    bes, unavailable = [], {}
    for n in names:
        if n == "cupy-vendor":
            continue
        try:
            bes.append(backends_mod.get_backend(n))
        except backends_mod.BackendUnavailable as e:  # the others still run; the results say why not
            unavailable[n] = str(e)
            log(f"skipped: {e}")
    vendor = cupy_vendor_backend() if any(be.on_gpu for be in bes) else None
    if vendor is not None:
        bes.append(vendor)
    names = [be.name for be in bes]
    rounds = rounds or (3 if quick else 7)
    ceilings = cpu_ceilings()
    if device is None and any(be.on_gpu for be in bes):
        device = gpu_timing.CupyDevice()
    gpu = gpu_ceilings(device) if any(be.on_gpu for be in bes) else None
    copy_bw: dict[float, float] = {}
    gpu_copy_bw: dict[float, float] = {}
    rows = []
    for case in all_cases(quick):
        runners = [be for be in bes if case.backends is None or be.name in case.backends]
        if not runners:
            continue
        ref = case.make(NUMPY)()
        fns, status = {}, {}
        for be in runners:
            try:
                fn = case.make(be)
                got = fn()  # also the warm-up (and JIT compile)
                status[be.name] = _close(got, ref, be, case.kind)
                fns[be.name] = fn
            except Exception as e:  # a backend that cannot run this case is reported, not timed
                status[be.name] = f"{type(e).__name__}: {e}"
        on_gpu = {be.name: be.on_gpu for be in runners}
        cpu_names = [k for k in fns if status[k] is None and not on_gpu[k]]
        times: dict[str, list[float]] = {k: [] for k in cpu_names}
        reps = 3
        faults: dict[str, list[float]] = {}  # minor page faults per call: allocation churn shows here
        for _ in range(rounds):  # interleaved: every CPU backend once per round
            for name in cpu_names:
                flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t = time.perf_counter()
                for _ in range(reps):
                    fns[name]()
                times[name].append((time.perf_counter() - t) / reps)
                faults.setdefault(name, []).append(
                    (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt) / reps)
        gpu_timings = {}
        for name in [k for k in fns if status[k] is None and on_gpu[k]]:  # the device is not shared
            gpu_timings[name] = gpu_timing.time_on_device(fns[name], device, samples=rounds)
            times[name] = gpu_timings[name].device_s
        for be in runners:
            name = be.name
            if status.get(name) is None and name in times:
                # validated again after timing: the timed instance's own output; Adam's state
                # moved on with every timed step, so a fresh instance of it
                status[name] = _close((case.make(be) if case.op == "adam" else fns[name])(), ref, be,
                                      case.kind)
            row = {"op": case.op, "size": case.size, "backend": name, "status": status.get(name)}
            if row["status"] is None and times.get(name):
                med, best = statistics.median(times[name]), min(times[name])
                rate = case.work / med / 1e9
                if case.kind == "flops":
                    ceiling = gpu["matmul_gflops"] if be.on_gpu else ceilings["matmul_gflops"]
                elif be.on_gpu:  # a device copy of the same working set, timed the same way
                    ceiling = gpu_copy_bandwidth(device, gpu_copy_bw, case.work)
                else:  # a copy of the same working set: cache-resident sizes get a cache ceiling
                    ceiling = _copy_ceiling(copy_bw, case.work)
                if name in faults:
                    row["page_faults_per_call"] = statistics.median(faults[name])
                if name in gpu_timings:
                    g = gpu_timings[name]
                    row |= {"dispatch_us": g.dispatch_s * 1e6, "reps": g.reps, "host_gaps": g.host_gaps}
                row |= {"median_us": med * 1e6, "min_us": best * 1e6,
                        "rate": rate, "unit": "GFLOP/s" if case.kind == "flops" else "GB/s",
                        "ceiling": ceiling, "share_of_ceiling": rate / ceiling, "bound": "memory"}
                if case.kind == "flops" and case.traffic:  # the roofline: the slower of the two limits
                    bw = (gpu_copy_bandwidth(device, gpu_copy_bw, case.traffic) if be.on_gpu
                          else _copy_ceiling(copy_bw, case.traffic))
                    compute_s, memory_s = case.work / (ceiling * 1e9), case.traffic / (bw * 1e9)
                    row |= {"roofline_us": max(compute_s, memory_s) * 1e6,
                            "bound": "compute" if compute_s >= memory_s else "memory"}
            rows.append(row)
            if on_row is not None:
                on_row(row)
        log(f"{case.op} {case.size}: " + ", ".join(
            f"{r['backend']} {r['median_us']:.0f} us" if r.get("median_us") else
            f"{r['backend']} FAILED ({r['status']})" for r in rows[-len(runners):]))
    return {"ceilings": ceilings, "gpu_ceilings": gpu, "backends": names, "unavailable": unavailable,
            "rows": rows}


def table(res: dict) -> str:
    c, g = res["ceilings"], res.get("gpu_ceilings")
    lines = [f"Ceilings measured in this run: float32 matmul {c['matmul_gflops']:.0f} GFLOP/s; "
             f"memory copy {c['copy_gbs']:.1f} GB/s at 256 MiB (elementwise ops are compared with a "
             "copy of their own working set, so cache-resident sizes meet a cache ceiling)."
             + (f" GPU ({g.get('device', 'device 0')}): cuBLAS SGEMM {g['matmul_gflops']:.0f} GFLOP/s "
                f"(TF32 {'on' if g['tf32'] else 'off'}), device copy {g['copy_gbs']:.0f} GB/s at 1 GiB; GPU "
                "rows are device time per call of back-to-back calls held behind a spin kernel until all "
                "are queued, the L2 flushed before each sample (bench/gpu_timing.py); host us/call is "
                "the host's dispatch time per call, measured meanwhile." if g else ""), "",
             "| op | size | backend | median us | min us | host us/call | rate | share of ceiling "
             "| roofline bound | page faults/call | vs vendor |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    # the vendor-library way on the same device: numpy (BLAS + NumPy passes), cupy-vendor on a GPU;
    # a ladder rung's vendor is its op's
    vendor = {(r["op"], r["size"], r["backend"] == "cupy-vendor"): r.get("median_us") for r in res["rows"]
              if r["backend"] in ("numpy", "cupy-vendor")}
    for r in res["rows"]:
        if r.get("median_us") is None:
            lines.append(f"| {r['op']} | {r['size']} | {r['backend']} | failed: {r['status']} "
                         "| | | | | | | |")
            continue
        gpu_row = r["backend"] in ("cupy", "numba-cuda", "cupy-vendor")
        base = vendor.get((r["op"].split(" rung ")[0], r["size"], gpu_row))
        speed = f"{base / r['median_us']:.2f}x" if base else ""
        pf, host = r.get("page_faults_per_call"), r.get("dispatch_us")
        gaps = " (host gaps)" if r.get("host_gaps") else ""
        lines.append(f"| {r['op']} | {r['size']} | {r['backend']} | {r['median_us']:.1f}{gaps} | "
                     f"{r['min_us']:.1f} | {'' if host is None else f'{host:.1f}'} | "
                     f"{r['rate']:.1f} {r['unit']} | {100 * r['share_of_ceiling']:.0f}% | "
                     f"{r.get('bound', '')} | {'' if pf is None else f'{pf:.0f}'} | {speed} |")
    return "\n".join(lines)


def plot(res: dict, path) -> None:
    """Time per op and size, one line per backend (the CUDA C ladder: one panel per direction, a
    line per rung); and the share of the ceiling reached."""
    from matplotlib.figure import Figure

    def panel(r):  # (panel title, line label)
        op, _, rung = r["op"].partition(" rung ")
        return (f"{op}: CUDA C ladder", f"rung {rung}") if rung else (op, r["backend"])

    ops = list(dict.fromkeys(panel(r)[0] for r in res["rows"]))
    fig = Figure(figsize=(4 * len(ops), 7), constrained_layout=True)
    axes = fig.subplots(2, len(ops), squeeze=False)
    for j, op in enumerate(ops):
        rows = [r for r in res["rows"] if panel(r)[0] == op and r.get("median_us")]
        sizes = list(dict.fromkeys(r["size"] for r in rows))
        for name in dict.fromkeys(panel(r)[1] for r in rows):
            pts = [(sizes.index(r["size"]), r["median_us"], r["share_of_ceiling"])
                   for r in rows if panel(r)[1] == name]
            if pts:
                xs, ts, ss = zip(*pts, strict=True)
                axes[0][j].plot(xs, ts, "o-", label=name)
                axes[1][j].plot(xs, [100 * s for s in ss], "o-", label=name)
        cpu_rows = [r for r in rows if not r["backend"].startswith(("cupy", "numba-cuda"))]
        roof = {r["size"]: r["roofline_us"] for r in cpu_rows if "roofline_us" in r}
        if roof:  # the CPU roofline: max(FLOPs / matmul peak, bytes / copy bandwidth)
            axes[0][j].plot([sizes.index(s) for s in roof], list(roof.values()), "k--", label="CPU roofline")
        for ax in axes[:, j]:
            ax.set_xticks(range(len(sizes)), sizes, rotation=45, fontsize=7)
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(op, fontsize=9)
        axes[0][j].set_ylabel("median time (us)")
        axes[1][j].set_ylabel("% of measured ceiling")
        axes[0][j].legend(fontsize=7)
    fig.savefig(path, dpi=90)
