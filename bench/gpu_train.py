"""``python -m bench gpu-train``: the training step on the GPU against PyTorch eager on the same GPU.

The step of ``bench/train_step.py`` (784-400-20, ReLU, Bernoulli, Adam, float32, data already on
the device) for every minivae backend on a GPU (``cupy``, ``numba-cuda``), PyTorch eager on CUDA
(the peer: no ``torch.compile``, whose builds would eat the time of a short GPU session), and JAX
``jit`` *labelled by the device it ran on* (``jax-jit (gpu)``: the GPU peer it is on a GPU machine).
JAX is asked not to preallocate 75% of the GPU (``XLA_PYTHON_CLIENT_PREALLOCATE=false``, set here
before JAX is imported), and a JAX or PyTorch that fails to start is a failed row, never the end of
the run. Rounds are interleaved; each step ends with its loss on the host (a step is done when its
scalar is back), so wall time per step is the step's time. Each batch size's rows are handed to
``on_result`` as soon as that batch is done.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from bench import train_step
from bench.kernels import rotated
from minivae import backends

GPU_BACKENDS = ("cupy", "numba-cuda")


def jax_device() -> str | None:
    """The platform JAX computes on ("gpu", "cpu", ...), or None when JAX is not installed."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax

        return jax.default_backend()
    except ImportError:
        return None
    except Exception as e:  # a JAX that cannot start (driver, plugin): named, never fatal
        return f"unusable: {type(e).__name__}: {e}"


def no_gpu_reason() -> str | None:
    """None when a minivae GPU backend or PyTorch can use a GPU here, else why none can."""
    status = backends.available()
    if any(status.get(n) == "ok" and backends.get_backend(n).on_gpu for n in GPU_BACKENDS):
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return None
        torch_says = "PyTorch sees no CUDA device"
    except ImportError:
        torch_says = "PyTorch is not installed"
    return "; ".join(f"{n}: {status.get(n)}" for n in GPU_BACKENDS) + f"; {torch_says}"


def implementations(batch: int, failed: list[str]) -> dict[str, Callable[[int], float]]:
    """Every GPU implementation of the step at ``batch`` that starts; ``failed`` gets why the others
    did not."""
    impls: dict[str, Callable[[int], float]] = {}
    status = backends.available()
    for name in GPU_BACKENDS:
        if status.get(name) != "ok":
            failed.append(f"minivae-{name} at batch {batch}: {status.get(name)}")
            continue
        try:
            if backends.get_backend(name).on_gpu:
                impls[f"minivae-{name}"] = train_step.minivae_step(batch, backend=name)
        except Exception as e:
            failed.append(f"minivae-{name} at batch {batch}: {type(e).__name__}: {e}")
    starts = {"torch-eager-cuda": lambda: train_step.torch_step(batch, variant="eager", device="cuda")}
    platform = jax_device()
    if platform is not None and platform.startswith("unusable"):
        failed.append(f"jax-jit at batch {batch}: {platform}")
    elif platform is not None:
        starts[f"jax-jit ({platform})"] = lambda: train_step.jax_step(batch)
    for name, start in starts.items():
        try:
            step = start()
        except Exception as e:  # a peer that cannot start here is a row saying so
            failed.append(f"{name} at batch {batch}: {type(e).__name__}: {e}")
            continue
        if step is None:
            failed.append(f"{name} at batch {batch}: not installed or no CUDA device")
        else:
            impls[name] = step
    return impls


def run(batches=(128, 1024), rounds: int = 5, steps: int = 20, warmup: int = 5,
        on_result: Callable[[dict], None] | None = None) -> dict:
    out: dict = {"jax_platform": jax_device(), "results": [], "failed": []}
    for batch in batches:
        impls = implementations(batch, out["failed"])
        for name, fn in list(impls.items()):
            try:
                for i in range(warmup):
                    fn(i)
            except Exception as e:
                out["failed"].append(f"{name} at batch {batch}: {type(e).__name__}: {e}")
                del impls[name]
        times: dict[str, list[float]] = {k: [] for k in impls}
        names = list(impls)
        for r in range(rounds):
            for name in rotated(names, r):
                t = time.perf_counter()
                for i in range(warmup + r * steps, warmup + (r + 1) * steps):
                    impls[name](i)  # each returns its loss as a host float: the step is done
                times[name].append((time.perf_counter() - t) / steps)
        flops = train_step.step_flops(batch)
        rows = []
        for name in impls:
            med = statistics.median(times[name])
            rows.append({"batch": batch, "impl": name, "median_ms": med * 1e3,
                         "min_ms": min(times[name]) * 1e3, "examples_per_s": batch / med,
                         "gflops": flops / med / 1e9})
        peer = times.get("torch-eager-cuda")
        for name in impls:
            if name.startswith("minivae-") and peer:
                rows.append({"batch": batch, "impl": f"ratio {name} / torch-eager-cuda (median throughput)",
                             "ratio": statistics.median(peer) / statistics.median(times[name])})
        for row in rows:
            out["results"].append(row)
            if on_result is not None:
                on_result(row)
    return out


def table(res: dict) -> str:
    lines = [f"GPU training step, 784-400-20 (JAX on: {res.get('jax_platform')}); each step ends with its "
             "loss on the host.", "",
             "| batch | implementation | median ms/step | min ms/step | examples/s | GFLOP/s |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in res["results"]:
        if "ratio" in r:
            lines.append(f"| {r['batch']} | **{r['impl']}** | | | **{r['ratio']:.2f}x** | |")
        else:
            lines.append(f"| {r['batch']} | {r['impl']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | "
                         f"{r['examples_per_s']:.0f} | {r['gflops']:.1f} |")
    lines += [f"\nnot run: {f}" for f in res["failed"]]
    return "\n".join(lines)
