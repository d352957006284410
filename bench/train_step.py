"""Training-step throughput: every minivae backend against PyTorch (eager, fused Adam,
``torch.compile``) and JAX ``jit`` (with an optax Adam), on the same threads, in the same run.

The classic model of the VAE paper's MNIST experiments: 784-400-20 (ReLU, Bernoulli likelihood,
Adam, batch 128, float32) on 28x28 inputs. The inputs are seeded random binary images: speed does
not depend on what the pixels show, and the benchmark needs no download.

Honest measuring on a noisy shared machine: the implementations run interleaved (ABAB rounds) in
one process, each round a fixed number of steps after warm-up, started once every other library's
threads have stopped spinning (``settle``) and after one untimed step; we report the median and the
minimum per step and the ratio of medians measured in the same run. The float32 matmul peak is
the best of a 2048^3 matmul sampled at the start and once in every round, beside the steps, and
the step's FLOP count (the GEMMs; elementwise work is not counted) gives the share of that peak
the step reaches.

The GEMM floor: the step's own eleven GEMMs (four forward, four dW, three dx; the data needs no
gradient) at the step's shapes and operand layouts, timed alone through the vendor BLAS into
preallocated outputs, as one more implementation of the interleaved rounds. No step that computes
those GEMMs with that BLAS can be faster, so each CPU implementation's time is also reported as a
multiple of it: what the multiple says above 1 is everything that is not GEMM (elementwise passes,
the optimiser, allocation, Python and dispatch, thread wake-ups). Where PyTorch or the ``blis``
package is installed, the same products through its GEMMs (``gemm-floor-torch``,
``gemm-floor-blis``) show what another BLAS would give.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np

from bench.ceilings import matmul_peak, matmul_sampler
from bench.kernels import rotated
from minivae import backends, philox
from minivae.model import VAE
from minivae.optim import Adam

X_DIM, HIDDEN, Z_DIM = 784, 400, 20
N_TRAIN = 2048  # a pool of distinct batches, so no batch is always hot in cache


def step_flops(batch: int, x_dim: int = X_DIM, hidden: int = HIDDEN, z_dim: int = Z_DIM) -> int:
    """GEMM FLOPs of one training step: forward (2 m n k per Linear), dW for every layer, dX for
    every layer but the first (the data needs no gradient)."""
    layers = [(x_dim, hidden), (hidden, 2 * z_dim), (z_dim, hidden), (hidden, x_dim)]
    fwd = sum(2 * batch * a * b for a, b in layers)
    dx = sum(2 * batch * a * b for a, b in layers[1:])
    return 2 * fwd + dx


def step_gemms(batch: int, x_dim: int = X_DIM, hidden: int = HIDDEN,
               z_dim: int = Z_DIM) -> list[tuple[str, tuple[int, int], tuple[int, int], bool, bool]]:
    """The GEMMs of one training step of the x-h-z model, as (name, A shape, B shape, A transposed,
    B transposed) with C = op(A) op(B), in the layouts the step runs them: forward ``x W^T`` (W is
    (out, in), PyTorch's layout), backward ``dW = G^T x`` and ``dx = G W``, no dx for the first
    layer."""
    layers = [("enc.0", x_dim, hidden), ("enc.1", hidden, 2 * z_dim), ("dec.0", z_dim, hidden),
              ("dec.1", hidden, x_dim)]
    out = [(f"{n} forward", (batch, d_in), (d_out, d_in), False, True) for n, d_in, d_out in layers]
    for i, (n, d_in, d_out) in reversed(list(enumerate(layers))):
        out.append((f"{n} dW", (batch, d_out), (batch, d_in), True, False))
        if i > 0:
            out.append((f"{n} dx", (batch, d_out), (d_out, d_in), False, False))
    return out


def gemm_floor_step(batch: int, seed: int = 0, library: str = "numpy") -> Callable[[int], float] | None:
    """The step's GEMMs alone (``step_gemms``), float32, into preallocated outputs: through NumPy's
    BLAS (``library="numpy"``), the time no implementation of the step on this BLAS can beat; or,
    for comparison, what the same products cost on another BLAS from the package registry:
    PyTorch's CPU GEMMs (``"torch"``: MKL or oneDNN on x86) or the ``blis`` package (``"blis"``).
    None when that library is not installed."""
    rng = np.random.default_rng(seed)
    if library == "torch":
        try:
            import torch
        except ImportError:
            return None
        matmul, wrap = torch.matmul, torch.from_numpy
    elif library == "blis":  # the `blis` package: BLIS's kernels, called with transpose flags
        try:
            from blis.py import gemm
        except ImportError:
            return None
        wrap = np.asarray
    else:
        matmul, wrap = np.matmul, np.asarray
    calls, flags = [], []
    for _, a_shape, b_shape, ta, tb in step_gemms(batch):
        a = wrap(rng.standard_normal(a_shape, dtype=np.float32))
        b = wrap(rng.standard_normal(b_shape, dtype=np.float32))
        flags.append((a, b, ta, tb))
        a, b = (a.T if ta else a), (b.T if tb else b)  # views, as the step hands the BLAS
        calls.append((a, b, wrap(np.empty((a.shape[0], b.shape[1]), np.float32))))

    def step(i: int) -> float:
        if library == "blis":
            for (a, b, ta, tb), (_, _, c) in zip(flags, calls, strict=True):
                gemm(a, b, out=c, trans1=ta, trans2=tb, beta=0.0)
            return 0.0
        for a, b, c in calls:
            matmul(a, b, out=c)
        return 0.0

    step.calls = calls  # (A, B, C) of every product, for a reader (and a test) to check
    return step


def minivae_step(batch: int, seed: int = 0, backend: str = "numpy") -> Callable[[int], float]:
    """One training step of minivae on ``backend``; eps from the Philox stream (in-kernel on the
    kernel backends), data already on the backend's device."""
    rng = np.random.default_rng(seed)
    model = VAE(X_DIM, Z_DIM, (HIDDEN,), rng=rng, backend=backend)
    x = model._dev((rng.random((N_TRAIN, X_DIM)) < 0.3).astype(np.float32))
    opt = Adam(model.params, lr=1e-3, backend=model.backend)
    stream = philox.Stream(seed)
    n_batches = N_TRAIN // batch

    def step(i: int) -> float:
        k = i % n_batches
        res = model.loss(x[k * batch:(k + 1) * batch], rng=stream, check=False)
        opt.step(res.grads)
        return res.loss

    return step


def step_breakdown(batch: int, backend: str = "numba", steps: int = 60, seed: int = 0) -> dict[str, float]:
    """Where one minivae step's time goes: the median over ``steps`` steps of each part of
    ``breakdown_rows`` (medians: the parts add up to the step's median only roughly)."""
    rows = breakdown_rows(batch, backend, steps, seed)
    return {name: statistics.median(r[name] for r in rows) for name in rows[0]}


def breakdown_rows(batch: int, backend: str = "numba", steps: int = 60,
                   seed: int = 0) -> list[dict[str, float]]:
    """Per step, ms of each backend op (every call of it in the step summed; the linear ops include
    their GEMMs), of the optimiser's step beyond its update kernel (the finite check of the
    gradients, Python), of the rest of the step (the model's Python, dispatch, allocation: ``step``
    less all of those), and of the whole ``step``. Each op is timed by a wrapper around the
    backend's function, which adds about a microsecond per call. Beside every CPU step, in the same
    loop, the step's GEMMs alone (``gemm_floor_step``) are timed as ``GEMM floor``, not a part of
    the step: the linear ops less the floor of the same row is what their fused passes, allocation
    and dispatch cost, within one measurement."""
    import dataclasses

    spent: dict[str, float] = {}
    be = backends.get_backend(backend)

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
            return out
        return wrapper

    ops = ("linear_forward", "linear_backward", "latent_forward", "latent_backward", "bernoulli",
           "adam_many" if be.adam_many is not None else "adam")
    wrapped = dataclasses.replace(be, **{op: timed(op, getattr(be, op)) for op in ops
                                         if getattr(be, op) is not None})
    rng = np.random.default_rng(seed)
    model = VAE(X_DIM, Z_DIM, (HIDDEN,), rng=rng, backend=wrapped)
    x = model._dev((rng.random((N_TRAIN, X_DIM)) < 0.3).astype(np.float32))
    opt = Adam(model.params, lr=1e-3, backend=model.backend)
    opt_step = timed("optimiser step", opt.step)
    stream = philox.Stream(seed)
    n_batches = N_TRAIN // batch
    floor = None if be.on_gpu else gemm_floor_step(batch, seed)
    rows = []
    for i in range(steps + 5):  # 5 of warm-up
        spent.clear()
        t = time.perf_counter()
        k = i % n_batches
        res = model.loss(x[k * batch:(k + 1) * batch], rng=stream, check=False)
        opt_step(res.grads)
        if be.on_gpu:
            _device_sync()
        total = time.perf_counter() - t
        if i < 5:
            continue
        update = spent.get("adam_many", spent.get("adam", 0.0))
        row = {**{op: spent.get(op, 0.0) for op in ops},
               "optimiser: finite check and Python": spent["optimiser step"] - update,
               "step": total}
        parts = sum(row.values()) - total
        row["rest: model Python, dispatch, allocation"] = total - parts
        if floor is not None:
            t = time.perf_counter()
            floor(i)
            row["GEMM floor"] = time.perf_counter() - t
        rows.append({name: v * 1e3 for name, v in row.items()})
    return rows


def torch_step(batch: int, seed: int = 0, variant: str = "eager",
               device: str = "cpu") -> Callable[[int], float] | None:
    """PyTorch on ``device`` ("cpu", or "cuda" for the GPU peer): "eager", "fused-adam" (Adam's
    fused kernel) or "compile" (torch.compile of the loss). None when torch is not installed or
    cannot use the device."""
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    torch.manual_seed(seed)
    nn, F = torch.nn, torch.nn.functional

    class TorchVAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1, self.enc2 = nn.Linear(X_DIM, HIDDEN), nn.Linear(HIDDEN, 2 * Z_DIM)
            self.dec1, self.dec2 = nn.Linear(Z_DIM, HIDDEN), nn.Linear(HIDDEN, X_DIM)

        def forward(self, x):
            h = self.enc2(F.relu(self.enc1(x)))
            mu, logvar = h[:, :Z_DIM], h[:, Z_DIM:]
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            logits = self.dec2(F.relu(self.dec1(z)))
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            return (recon + kl) / x.shape[0]

    rng = np.random.default_rng(seed)
    x = torch.from_numpy((rng.random((N_TRAIN, X_DIM)) < 0.3).astype(np.float32)).to(device)
    model = TorchVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=variant == "fused-adam")
    forward = torch.compile(model) if variant == "compile" else model
    n_batches = N_TRAIN // batch

    def step(i: int) -> float:
        k = i % n_batches
        opt.zero_grad(set_to_none=False)
        loss = forward(x[k * batch:(k + 1) * batch])
        loss.backward()
        opt.step()
        return loss.item()  # waits for the step on a GPU too

    return step


def jax_step(batch: int, seed: int = 0) -> Callable[[int], float] | None:
    """The same step as one ``jax.jit`` of loss, gradient and an optax Adam update (the strongest
    CPU peer measured so far); None when jax or optax is not installed (the ``bench`` extra)."""
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None
    rng = np.random.default_rng(seed)

    def linear(d_in: int, d_out: int):  # nn.Linear's init: U(-1/sqrt(d_in), 1/sqrt(d_in))
        bound = 1 / np.sqrt(d_in)
        return (jnp.asarray(rng.uniform(-bound, bound, (d_out, d_in)).astype(np.float32)),
                jnp.asarray(rng.uniform(-bound, bound, d_out).astype(np.float32)))

    params = [linear(X_DIM, HIDDEN), linear(HIDDEN, 2 * Z_DIM), linear(Z_DIM, HIDDEN), linear(HIDDEN, X_DIM)]

    def loss_fn(params, x, key):
        (w1, b1), (w2, b2), (w3, b3), (w4, b4) = params
        h = jax.nn.relu(x @ w1.T + b1) @ w2.T + b2
        mu, logvar = h[:, :Z_DIM], h[:, Z_DIM:]
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        logits = jax.nn.relu(z @ w3.T + b3) @ w4.T + b4
        recon = jnp.sum(jax.nn.softplus(logits) - x * logits)  # -log Bernoulli(x | logits)
        kl = -0.5 * jnp.sum(1 + logvar - mu**2 - jnp.exp(logvar))
        return (recon + kl) / x.shape[0]

    opt = optax.adam(1e-3)

    @jax.jit
    def train_step(params, opt_state, x, key):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, sub)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    data = (rng.random((N_TRAIN, X_DIM)) < 0.3).astype(np.float32)
    n_batches = N_TRAIN // batch
    batches = [jnp.asarray(data[k * batch:(k + 1) * batch]) for k in range(n_batches)]
    state = [params, opt.init(params), jax.random.PRNGKey(seed)]

    def step(i: int) -> float:
        state[0], state[1], state[2], loss = train_step(*state[:2], batches[i % n_batches], state[2])
        return float(loss)  # waits for the step: JAX dispatches asynchronously

    return step


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _gpu_matmul_peak() -> float | None:
    """float32 GFLOP/s of cuBLAS SGEMM (TF32 off): through CuPy when it sees a GPU, else torch."""
    try:
        from bench.kernels import gpu_ceilings

        return gpu_ceilings()["matmul_gflops"]
    except Exception:  # no CuPy or no device: try torch's cuBLAS
        pass
    if not _torch_cuda():
        return None
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.rand(8192, 8192, device="cuda")
    torch.mm(a, a)
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(a, a)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / best / 1e9


def _device_sync() -> None:
    """Wait for every queued GPU kernel (CuPy's and torch's), so a round's time includes them."""
    try:
        import cupy

        cupy.cuda.Device().synchronize()
    except Exception:  # no CuPy or no device
        pass
    if _torch_cuda():
        import torch

        torch.cuda.synchronize()


# Seconds every round waits before it starts. The BLAS and OpenMP pools of the libraries in one
# process keep their threads spinning for a while after their last call (OpenBLAS for ~2^28 cycles,
# libgomp for its spin count): a round that starts right after another library's would share the
# cores with those spinning threads. Measured here: the step's GEMMs through PyTorch timed right
# after NumPy's took 6.6 ms a step at batch 128, against 1.5 ms on their own.
SETTLE_S = 0.25


def settle() -> None:
    """Give the cores back to this round: wait until every other pool's threads have gone to sleep."""
    time.sleep(SETTLE_S)


def _round(step: Callable[[int], float], steps: int, start: int,
           sync: Callable[[], None] | None = None) -> tuple[float, int]:
    """Seconds per step over ``steps`` steps (``sync`` waits for a device before the clock stops),
    and the minor page faults per step."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    for i in range(start, start + steps):
        step(i)
    if sync is not None:
        sync()
    dt = (time.perf_counter() - t) / steps
    return dt, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps


def blas_threads() -> int:
    """How many threads NumPy's BLAS runs (threadpoolctl, which scikit-learn brings), else the
    CPU count (OpenBLAS's and MKL's default)."""
    try:
        from threadpoolctl import threadpool_info

        counts = [d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"]
        if counts:
            return max(counts)
    except ImportError:
        pass
    return os.cpu_count() or 1


def same_threads() -> dict:
    """Put PyTorch (intra-op) and Numba on NumPy's BLAS thread count, so every implementation in
    the run computes on the same threads; returns the counts in force."""
    threads = blas_threads()
    out = {"blas_threads": threads, "torch_threads": None, "numba_threads": None}
    try:
        import torch

        torch.set_num_threads(threads)
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        # first: starting Numba's pool (set_num_threads does) fixes its threading layer for good
        import numba

        from minivae.kernels.wiring import numba_threads  # noqa: F401

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        out["numba_threads"] = numba.get_num_threads()
        out["numba_threading_layer"] = numba.threading_layer()
    except ImportError:
        pass
    return out


def run(batches=(128, 1024), rounds: int = 7, steps: int = 20, warmup: int = 10,
        torch_variants=("eager", "fused-adam", "compile"), with_jax: bool = True) -> dict:
    """Interleaved rounds of every implementation at each batch size, all on the same threads."""
    threads = same_threads()
    # The ceiling is sampled again in every round, beside the steps it is compared with: on a
    # shared machine one measurement at the start can land in a slow minute (seen: 137 against
    # 163 GFLOP/s a run earlier), which would flatter every share of it.
    peak_sample = matmul_sampler()
    peak = matmul_peak()
    ok = [n for n, status in backends.available().items() if status == "ok"]
    on_gpu = {f"minivae-{n}" for n in ok if backends.get_backend(n).on_gpu}
    gpu_peak = _gpu_matmul_peak() if on_gpu or _torch_cuda() else None
    out: dict = {"matmul_peak_gflops": peak, "gpu_matmul_peak_gflops": gpu_peak, **threads, "results": []}
    for batch in batches:
        impls = {"gemm-floor": gemm_floor_step(batch)}
        for library in ("torch", "blis"):  # the same products on other BLAS, where installed
            other = gemm_floor_step(batch, library=library)
            if other is not None:
                impls[f"gemm-floor-{library}"] = other
        impls.update({f"minivae-{name}": minivae_step(batch, backend=name) for name in ok})
        for device in ("cpu", "cuda"):
            for variant in torch_variants:
                t = torch_step(batch, variant=variant, device=device)
                if t is not None:
                    name = f"torch-{variant}" + ("-cuda" if device == "cuda" else "")
                    impls[name] = t
                    if device == "cuda":
                        on_gpu.add(name)
        j = jax_step(batch) if with_jax else None
        if j is not None:
            impls["jax-jit"] = j
        for name, fn in list(impls.items()):
            try:
                for i in range(warmup):
                    fn(i)
            except Exception as e:  # e.g. torch.compile without a working compiler here
                out.setdefault("failed", []).append(f"{name} at batch {batch}: {type(e).__name__}: {e}")
                del impls[name]
        times: dict[str, list[float]] = {k: [] for k in impls}
        faults: dict[str, list[float]] = {k: [] for k in impls}
        names = list(impls)
        for r in range(rounds):
            # each round starts with the next implementation: the one after the matmul sample (whose
            # 48 MiB leave the caches cold) changes from round to round
            for name in rotated(names, r):
                fn = impls[name]
                settle()
                fn(warmup + r * steps)  # untimed: wakes this implementation's threads
                dt, pf = _round(fn, steps, warmup + r * steps, _device_sync if name in on_gpu else None)
                times[name].append(dt)
                faults[name].append(pf)
            peak = max(peak, peak_sample())
        flops = step_flops(batch)
        for name in impls:
            med, best = statistics.median(times[name]), min(times[name])
            out["results"].append({
                "batch": batch, "impl": name, "device": "gpu" if name in on_gpu else "cpu",
                "median_ms": med * 1e3, "min_ms": best * 1e3,
                "examples_per_s": batch / med, "gflops": flops / med / 1e9,
                "page_faults_per_step": statistics.median(faults[name]),
            })
        floor = statistics.median(times["gemm-floor"])
        for row in out["results"]:
            if row["batch"] == batch and row.get("device") == "cpu" and "median_ms" in row:
                row["x_gemm_floor"] = row["median_ms"] / 1e3 / floor
        for peer in ("torch-eager", "torch-fused-adam", "jax-jit", "torch-eager-cuda"):
            for name in impls:
                same_device = (name in on_gpu) == (peer in on_gpu)
                if name.startswith("minivae-") and peer in impls and same_device:
                    out["results"].append({
                        "batch": batch, "impl": f"ratio {name} / {peer} (median throughput)",
                        "ratio": statistics.median(times[peer]) / statistics.median(times[name]),
                    })
    out["goals"] = goals(out)
    if "numba" in ok:  # where the step's time goes, measured after the rounds on the same threads
        out["breakdown"] = {str(b): step_breakdown(b, "numba", steps=rounds * steps) for b in batches}
    out["matmul_peak_gflops"] = peak  # the best sample of the whole run
    for row in out["results"]:
        if "gflops" in row:  # a device's step against its own peak
            row["share_of_peak"] = row["gflops"] / (gpu_peak if row["device"] == "gpu" else peak)
    return out


# What the numba backend's step aims for, at every batch size: (what, limit, how the value compares)
GOALS = (("minivae-numba step / GEMM floor", 1.15, "<="),
         ("minivae-numba throughput / jax-jit", 1.4, ">="),
         ("minivae-numba throughput / torch-fused-adam", 1.2, ">="))


def goals(res: dict) -> list[dict]:
    """Each goal of GOALS at each batch size of ``res``: the value measured in this run, and whether
    it is met (None where an implementation it needs did not run)."""
    rows = res["results"]
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        timed = {r["impl"]: r for r in rows if r["batch"] == batch and "median_ms" in r}
        numba = timed.get("minivae-numba")
        for what, limit, sense in GOALS:
            value = None
            if numba is not None and what.endswith("GEMM floor"):
                value = numba.get("x_gemm_floor")
            elif numba is not None and what.split(" / ")[1] in timed:
                value = timed[what.split(" / ")[1]]["median_ms"] / numba["median_ms"]
            met = None if value is None else (value <= limit if sense == "<=" else value >= limit)
            out.append({"batch": batch, "goal": f"{what} {sense} {limit}", "value": value, "met": met})
    return out


def table(res: dict) -> str:
    gpu = res.get("gpu_matmul_peak_gflops")
    lines = [f"float32 matmul peak (2048^3, best sample of the run): {res['matmul_peak_gflops']:.1f} GFLOP/s"
             + (f" (CPU), {gpu:.0f} GFLOP/s (GPU, cuBLAS SGEMM, GPU rows' share)" if gpu else "") + "; "
             f"threads: BLAS {res.get('blas_threads')}, torch {res['torch_threads']}, "
             f"numba {res.get('numba_threads')} ({res.get('numba_threading_layer')} layer)", "",
             "| batch | implementation | median ms/step | min ms/step | x GEMM floor | examples/s "
             "| GFLOP/s | share of peak | page faults/step |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        if "ratio" in r:
            lines.append(f"| {r['batch']} | **{r['impl']}** | | | | **{r['ratio']:.2f}x** | | | |")
        else:
            floor = f"{r['x_gemm_floor']:.2f}x" if "x_gemm_floor" in r else ""
            lines.append(
                f"| {r['batch']} | {r['impl']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | {floor} | "
                f"{r['examples_per_s']:.0f} | {r['gflops']:.1f} | {100 * r['share_of_peak']:.0f}% "
                f"| {r['page_faults_per_step']:.0f} |")
    if res.get("goals"):
        lines += ["", "| batch | goal | measured | met |", "|---:|---|---:|---|"]
        for g in res["goals"]:
            value = "not run" if g["value"] is None else f"{g['value']:.2f}"
            met = "-" if g["met"] is None else ("yes" if g["met"] else "no")
            lines.append(f"| {g['batch']} | {g['goal']} | {value} | {met} |")
    if res.get("breakdown"):
        batches = list(res["breakdown"])
        floors = {str(r["batch"]): r["median_ms"] for r in res["results"] if r.get("impl") == "gemm-floor"}
        steps_in_rounds = {str(r["batch"]): r["median_ms"] for r in res["results"]
                           if r.get("impl") == "minivae-numba"}
        lines += ["", "Where the numba backend's step goes (median ms per step over its own steps, measured "
                  "after the rounds; each op's calls summed; the linear ops include their GEMMs):", "",
                  "| part | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---|" + "---:|" * len(batches)]
        for part in res["breakdown"][batches[0]]:
            cells = " | ".join(f"{res['breakdown'][b][part]:.3f}" for b in batches)
            if part == "GEMM floor":
                part = "GEMM floor (the step's GEMMs alone, timed beside each step)"
            lines.append(f"| {part} | {cells} |")
        if all(b in floors for b in batches):
            lines.append("| GEMM floor in the rounds above | "
                         + " | ".join(f"{floors[b]:.3f}" for b in batches) + " |")
            lines.append("| step in the rounds above | " + " | ".join(
                f"{steps_in_rounds[b]:.3f}" for b in batches) + " |")
    return "\n".join(lines)
