"""The environment a benchmark ran in: recorded next to every result."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info

        return [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                for d in threadpool_info()]
    except ImportError:
        return []


def gpu_name() -> str | None:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # no cupy, no driver, no device: a CPU machine
        return None
    return None


def device_name() -> str:
    """The GPU when there is one, else the CPU: what the results folder is named after."""
    return gpu_name() or cpu_model()


def environment() -> dict:
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "gpu": gpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
    }
    for mod in ("numba", "cupy", "numba_cuda", "jax"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        env["torch"] = None
    return env


def results_dir(device: str) -> Path:
    """bench/results/<device>-<date>/, or $MINIVAE_BENCH_OUT when set (bench/gpu_check.sh sets it,
    so that the benchmarks write where the script reports)."""
    if os.environ.get("MINIVAE_BENCH_OUT"):
        out = Path(os.environ["MINIVAE_BENCH_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        return out
    day = _dt.date.today().isoformat()
    safe = "".join(c if c.isalnum() else "-" for c in device).strip("-").lower()[:40]
    out = Path(__file__).parent / "results" / f"{safe}-{day}"
    out.mkdir(parents=True, exist_ok=True)
    return out
