"""``python -m bench smoke``: every GPU kernel launched once and compared with the NumPy reference.

Each CUDA C kernel (every ``extern "C" __global__`` kernel of ``kernels/*/*.cu``: every rung of the
linear ladder, the latent, Bernoulli, importance-weight and Adam kernels) through its launcher on
the ``cupy`` path, and each Numba CUDA kernel launch (``kernels/*/numba_cuda.py``), on one small case
whose sizes are multiples of no tile or block (33 examples, 70 inputs, 17 outputs, 5 latent
dimensions, 2 samples, 3 importance samples). One JSON line per kernel: ``ok``, ``error`` (the
worst |kernel - reference| in units of its bound; at most 1 passes), the seconds its case took
(compilation included), and the exception if one was raised. Outputs are compared with the float64
reference computed from the same float32 inputs, each within a bound derived from its arithmetic
(as the kernel tests derive theirs), so a wrong index, a missed tail or a broken launch fails while
float32 rounding passes.

Where the kernels run: on the GPU (default; exit status 3 and one line saying why when CuPy sees
none); or, with ``--cpu``, the CUDA C kernels on the CPU emulator (``kernels/emulate.py``) and the
Numba CUDA kernels in Numba's simulator (``NUMBA_ENABLE_CUDASIM=1`` must be in the environment
before numba is imported): the same cases, which is how CI and a dry run of ``bench/gpu_check.sh``
check this code without a GPU. ``tests/test_cuda_launch_sites.py`` also runs these cases to check
every launch's arguments against the kernel's signature.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.gpu_check import NO_GPU
from minivae.backends import NUMPY

N, D_IN, D_OUT, LATENT, SAMPLES, IWAE_K = 33, 70, 17, 5, 2, 3
ACT = "tanh"  # a curved activation whose derivative is read from y: both directions exercised
KEY = (1234, 5)  # (seed, offset) of the Philox stream the latent kernels draw from
KL_WEIGHT, DLOGP = 0.7, -0.25
ADAM = {"lr": 0.01, "weight_decay": 0.1}
U = 2.0**-24  # float32's unit roundoff


@dataclass
class Check:
    """One output of one kernel: |got - want| <= tol * scale elementwise passes."""

    kernel: str
    got: Any
    want: np.ndarray
    scale: Any
    tol: float

    def error(self) -> float:
        """The worst |got - want| / (tol * scale); inf if ``got`` has the wrong shape or a NaN/inf."""
        got = np.asarray(self.got.get() if hasattr(self.got, "get") else self.got, np.float64)
        if got.shape != self.want.shape or not np.isfinite(got).all():
            return float("inf")
        bound = self.tol * np.broadcast_to(np.asarray(self.scale, np.float64), self.want.shape)
        return float(np.max(np.abs(got - self.want) / (bound + 1e-300)))


@dataclass(frozen=True)
class Case:
    """One launcher call: ``impl`` ("cuda-c" or "numba-cuda"), the kernels it launches (one JSON
    line each), and ``run(where)`` returning a Check per output; ``where`` is the CUDA C launchers'
    backend ("cupy" or "emulate"), unused by the Numba ones (numba.cuda chose at import)."""

    impl: str
    name: str
    kernels: tuple[str, ...]
    run: Callable[[str], list[Check]]


def data(seed: int = 0) -> dict[str, np.ndarray]:
    """The float32 inputs of every case, from one seeded generator."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return {
        "x": rng.standard_normal((N, D_IN)).astype(f32),
        "W": (rng.standard_normal((D_OUT, D_IN)) / np.sqrt(D_IN)).astype(f32),
        "b": rng.standard_normal(D_OUT).astype(f32),
        "dy": rng.standard_normal((N, D_OUT)).astype(f32),
        "h": rng.standard_normal((N, 2 * LATENT)).astype(f32),
        "dz": rng.standard_normal((SAMPLES, N, LATENT)).astype(f32),
        "pixels": (rng.random((N, D_IN)) < 0.4).astype(f32),
        "logits": (3 * rng.standard_normal((N, D_IN))).astype(f32),
        "p": rng.standard_normal(D_IN).astype(f32),
        "g": rng.standard_normal(D_IN).astype(f32),
        "log_w": (5 * rng.standard_normal((IWAE_K, N))).astype(f32),
    }


def f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)


# ---- the references and their bounds ------------------------------------------------------------
# A float32 sum of K products is within K u sum|terms| of the exact value; tanh' = 1 - y^2 <= 1 from a
# float32 y adds a few u of |dy|: the GEMMs' bounds are 4 (K + 10) u times the sum of |terms|.

def linear_reference(d: dict) -> dict:
    x, W, b, dy = (f64(d[k]) for k in ("x", "W", "b", "dy"))
    y, cache = NUMPY.linear_forward(x, W, b, ACT)
    dx, dW, db = NUMPY.linear_backward(dy, cache, True)
    g = 2 * np.abs(dy)  # >= |dy * act'| with room for act' formed from a rounded y
    return {"y": y, "y32": y.astype(np.float32), "dx": dx, "dW": dW, "db": db,
            "y_scale": np.abs(x) @ np.abs(W).T + np.abs(b) + np.abs(y), "y_tol": 4 * (D_IN + 10) * U,
            "dx_scale": g @ np.abs(W), "dx_tol": 4 * (D_OUT + 10) * U,
            "dW_scale": g.T @ np.abs(x), "db_scale": g.sum(axis=0), "dW_tol": 4 * (N + 10) * U}


def latent_reference(d: dict) -> dict:
    h, dz = f64(d["h"]), f64(d["dz"])
    z, kl, cache = NUMPY.latent_forward(h, SAMPLES, key=KEY)
    dh = NUMPY.latent_backward(dz, KL_WEIGHT, cache)
    growth = 1 + np.exp(0.5 * np.abs(h[:, LATENT:]))  # exp(logvar / 2) multiplies eps's error
    return {"z": z, "kl": kl, "dh": dh, "z_scale": (1 + np.abs(z)) * growth, "kl_scale": np.abs(kl) + LATENT,
            "dh_scale": (np.abs(dh) + 1) * (1 + np.exp(0.5 * np.abs(h)).max())}


def bernoulli_reference(d: dict) -> dict:
    logp, dlogits = NUMPY.bernoulli(f64(d["pixels"]), f64(d["logits"]), DLOGP)
    return {"logp": logp, "dlogits": dlogits, "logp_scale": np.sum(np.abs(f64(d["logits"])) + 1, axis=1)}


def iwae_reference(d: dict) -> dict:
    from minivae.iwae import importance_weights

    bound, w = importance_weights(f64(d["log_w"]))
    return {"bound": bound, "w": w, "bound_scale": 1 + np.abs(bound)}


def adam_reference(d: dict) -> np.ndarray:
    from minivae.optim import Adam

    params = {"p": f64(d["p"])}
    Adam(params, **ADAM).step({"p": f64(d["g"])})
    return params["p"]


# ---- CUDA C --------------------------------------------------------------------------------------

def _to(where: str, a: np.ndarray) -> Any:
    if where == "cupy":
        import cupy

        return cupy.asarray(a)
    return a.copy()


def cuda_c_cases() -> list[Case]:
    from minivae.kernels.adam import cuda_c as optim
    from minivae.kernels.bernoulli import cuda_c as likelihood
    from minivae.kernels.importance_weights import cuda_c as iwae
    from minivae.kernels.latent import cuda_c as latent
    from minivae.kernels.linear import cuda_c as linear

    d = data()
    cases = []
    for v, rung in linear.FORWARD.items():
        def forward(where, v=v, rung=rung):
            ref = linear_reference(d)
            x, W, b = (_to(where, d[k]) for k in ("x", "W", "b"))
            y = linear.forward(x, W, b, ACT, version=v, backend=where)
            return [Check(rung.kernel, y, ref["y"], ref["y_scale"], ref["y_tol"])]

        cases.append(Case("cuda-c", f"linear forward, rung {v}", (rung.kernel,), forward))
    for v, (dx_rung, dw_rung) in linear.BACKWARD.items():
        def backward(where, v=v, dx_rung=dx_rung, dw_rung=dw_rung):
            ref = linear_reference(d)
            dy, x, W = (_to(where, d[k]) for k in ("dy", "x", "W"))
            dx, dW, db = linear.backward(dy, x, W, _to(where, ref["y32"]), ACT, version=v, backend=where)
            return [Check(dx_rung.kernel, dx, ref["dx"], ref["dx_scale"], ref["dx_tol"]),
                    Check(dw_rung.kernel, dW, ref["dW"], ref["dW_scale"], ref["dW_tol"]),
                    Check(dw_rung.kernel, db, ref["db"], ref["db_scale"], ref["dW_tol"])]

        cases.append(Case("cuda-c", f"linear backward, rung {v}", (dx_rung.kernel, dw_rung.kernel), backward))

    def latent_forward(where):
        ref = latent_reference(d)
        h = _to(where, d["h"])  # mu and logvar read in place as the halves of h, as the backend does
        z, kl = latent.forward(h[:, :LATENT], h[:, LATENT:], *KEY, SAMPLES, backend=where)
        return [Check("latent_forward", z, ref["z"], ref["z_scale"], 1e-5),
                Check("latent_forward", kl, ref["kl"], ref["kl_scale"], 1e-5)]

    def latent_backward(where):
        ref = latent_reference(d)
        h, dz = _to(where, d["h"]), _to(where, d["dz"])
        dmu, dlogvar = latent.backward(dz, h[:, :LATENT], h[:, LATENT:], *KEY, KL_WEIGHT, backend=where)
        halves = (slice(None), slice(None, LATENT)), (slice(None), slice(LATENT, None))
        return [Check("latent_backward", got, ref["dh"][half], ref["dh_scale"][half], 1e-5)
                for got, half in zip((dmu, dlogvar), halves, strict=True)]

    def bernoulli(where):
        ref = bernoulli_reference(d)
        x, logits = _to(where, d["pixels"]), _to(where, d["logits"])
        logp, dlogits = likelihood.bernoulli_forward_backward(x, logits, DLOGP, backend=where)
        return [Check("bernoulli_forward_backward", logp, ref["logp"], ref["logp_scale"], 1e-5),
                Check("bernoulli_forward_backward", dlogits, ref["dlogits"], abs(DLOGP), 2e-5)]

    def adam(where):
        want = adam_reference(d)
        p, g = _to(where, d["p"]), _to(where, d["g"])
        m, v = _to(where, np.zeros_like(d["p"])), _to(where, np.zeros_like(d["p"]))
        optim.adam_step(p, g, m, v, step=1, backend=where, **ADAM)
        return [Check("adam_step", p, want, np.abs(f64(d["p"])) + ADAM["lr"], 1e-5)]

    def importance_weights(where):
        ref = iwae_reference(d)
        bound, w = iwae.importance_weights(_to(where, d["log_w"]), backend=where)
        return [Check("importance_weights", bound, ref["bound"], ref["bound_scale"], 1e-5),
                Check("importance_weights", w, ref["w"], 1.0, 1e-5)]

    return cases + [Case("cuda-c", "latent forward", ("latent_forward",), latent_forward),
                    Case("cuda-c", "latent backward", ("latent_backward",), latent_backward),
                    Case("cuda-c", "bernoulli", ("bernoulli_forward_backward",), bernoulli),
                    Case("cuda-c", "importance weights", ("importance_weights",), importance_weights),
                    Case("cuda-c", "adam", ("adam_step",), adam)]


# ---- Numba CUDA ----------------------------------------------------------------------------------

def numba_cuda_cases() -> list[Case]:
    from minivae.kernels.adam import numba_cuda as optim
    from minivae.kernels.bernoulli import numba_cuda as likelihood
    from minivae.kernels.importance_weights import numba_cuda as iwae
    from minivae.kernels.latent import numba_cuda as latent
    from minivae.kernels.linear import numba_cuda as linear
    from minivae.kernels.wiring import numba_cuda as nbc

    d = data()

    def dev(a: np.ndarray) -> Any:
        return nbc.array_module().asarray(a.copy())

    def linear_forward(_):
        ref = linear_reference(d)
        y = linear.forward(dev(d["x"]), dev(d["W"]), dev(d["b"]), ACT)
        return [Check("linear/numba_cuda.py forward", y, ref["y"], ref["y_scale"], ref["y_tol"])]

    def linear_backward(_):
        ref = linear_reference(d)
        dx, dW, db = linear.backward(dev(d["dy"]), dev(d["x"]), dev(d["W"]), dev(ref["y32"]), ACT)
        return [Check("linear/numba_cuda.py backward (dx)", dx, ref["dx"], ref["dx_scale"], ref["dx_tol"]),
                Check("linear/numba_cuda.py backward (dW, db)", dW, ref["dW"], ref["dW_scale"],
                      ref["dW_tol"]),
                Check("linear/numba_cuda.py backward (dW, db)", db, ref["db"], ref["db_scale"],
                      ref["dW_tol"])]

    def latent_forward(_):
        ref = latent_reference(d)
        z, kl = latent.forward(dev(d["h"]), SAMPLES, key=KEY)
        return [Check("latent/numba_cuda.py forward", z, ref["z"], ref["z_scale"], 1e-5),
                Check("latent/numba_cuda.py forward", kl, ref["kl"], ref["kl_scale"], 1e-5)]

    def latent_backward(_):
        ref = latent_reference(d)
        dh = latent.backward(dev(d["dz"]), dev(d["h"]), KL_WEIGHT, key=KEY)
        return [Check("latent/numba_cuda.py backward", dh, ref["dh"], ref["dh_scale"], 1e-5)]

    def bernoulli(_):
        ref = bernoulli_reference(d)
        logp, dlogits = likelihood.bernoulli(dev(d["pixels"]), dev(d["logits"]), DLOGP)
        return [Check("bernoulli/numba_cuda.py bernoulli", logp, ref["logp"], ref["logp_scale"], 1e-5),
                Check("bernoulli/numba_cuda.py bernoulli", dlogits, ref["dlogits"], abs(DLOGP), 2e-5)]

    def importance_weights(_):
        ref = iwae_reference(d)
        bound, w = iwae.importance_weights(dev(d["log_w"]))
        return [Check("importance_weights/numba_cuda.py importance_weights", bound, ref["bound"],
                      ref["bound_scale"], 1e-5),
                Check("importance_weights/numba_cuda.py importance_weights", w, ref["w"], 1.0, 1e-5)]

    def adam(_):
        want = adam_reference(d)
        p, g, m, v = dev(d["p"]), dev(d["g"]), dev(np.zeros_like(d["p"])), dev(np.zeros_like(d["p"]))
        optim.adam_step(p, g, m, v, step=1, **ADAM)
        return [Check("adam/numba_cuda.py adam_step", p, want, np.abs(f64(d["p"])) + ADAM["lr"], 1e-5)]

    return [Case("numba-cuda", "linear forward", ("linear/numba_cuda.py forward",), linear_forward),
            Case("numba-cuda", "linear backward",
                 ("linear/numba_cuda.py backward (dx)", "linear/numba_cuda.py backward (dW, db)"),
                 linear_backward),
            Case("numba-cuda", "latent forward", ("latent/numba_cuda.py forward",), latent_forward),
            Case("numba-cuda", "latent backward", ("latent/numba_cuda.py backward",), latent_backward),
            Case("numba-cuda", "bernoulli", ("bernoulli/numba_cuda.py bernoulli",), bernoulli),
            Case("numba-cuda", "importance weights", ("importance_weights/numba_cuda.py importance_weights",),
                 importance_weights),
            Case("numba-cuda", "adam", ("adam/numba_cuda.py adam_step",), adam)]


# ---- running them ----------------------------------------------------------------------------------

def run_case(case: Case, where: str, device: str) -> list[dict]:
    """One JSON-ready line per kernel of ``case``: its worst error (the worst of its outputs) or the
    exception that stopped the case."""
    t = time.perf_counter()
    try:
        errors = [(c.kernel, c.error()) for c in case.run(where)]
        failure = None
    except Exception as e:  # reported on the case's lines; the next case still runs
        errors, failure = [], f"{type(e).__name__}: {e}".strip()
        traceback.print_exc(file=sys.stderr)
    seconds = time.perf_counter() - t
    lines = []
    for kernel in case.kernels:
        mine = [err for k, err in errors if k == kernel]
        worst = max(mine) if mine else None
        lines.append({"impl": case.impl, "kernel": kernel, "case": case.name, "device": device,
                      "ok": failure is None and worst is not None and worst <= 1, "error": worst,
                      "seconds": round(seconds, 3), "exception": failure})
    return lines


def main(cpu: bool, out_path: str | None = None) -> int:
    """Run every case; print and (``out_path``) write the JSON lines as they come; 0 if every kernel
    matched, 1 if one did not, NO_GPU without a GPU (and without ``cpu``)."""
    if cpu:
        where, devices = "emulate", {"cuda-c": "cpu (CUDA C emulator)", "numba-cuda": "cpu (Numba simulator)"}
    else:
        from minivae.kernels.wiring.cupy_backend import _cupy_with_a_gpu

        try:
            cupy = _cupy_with_a_gpu()
        except ImportError as e:
            print(f"no GPU: {e}")
            return NO_GPU
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
        where, devices = "cupy", {"cuda-c": name, "numba-cuda": name}
    cases = cuda_c_cases() + numba_cases_for(cpu)
    passed = total = 0
    out = open(out_path, "w") if out_path else None  # written line by line, as the cases finish
    try:
        for case in cases:
            for line in run_case(case, where, devices[case.impl]):
                text = json.dumps(line)
                print(text, flush=True)
                if out is not None:
                    out.write(text + "\n")
                    out.flush()
                passed += line["ok"]
                total += 1
    finally:
        if out is not None:
            out.close()
    print(f"smoke: {passed}/{total} kernels match the reference", flush=True)
    return 0 if passed == total else 1


def numba_cases_for(cpu: bool) -> list[Case]:
    """The Numba CUDA cases, if numba.cuda is where they are to run (the simulator with ``cpu``, the
    GPU without); else one case that fails saying why."""
    try:
        cases = numba_cuda_cases()
        from minivae.kernels.wiring import numba_cuda as nbc

        if nbc.SIMULATED != cpu:
            raise RuntimeError(f"numba.cuda is {'the simulator' if nbc.SIMULATED else 'the real target'}, "
                               f"but the kernels are to run {'in the simulator' if cpu else 'on the GPU'} "
                               "(NUMBA_ENABLE_CUDASIM must be set before numba is imported, or unset)")
        return cases
    except Exception as e:  # numba-cuda unusable here: reported failed, by name
        failure = f"{type(e).__name__}: {e}"
        return [Case("numba-cuda", "numba-cuda", ("numba.cuda",), lambda _: _raise(failure))]


def _raise(message: str) -> list[Check]:
    raise RuntimeError(message)
