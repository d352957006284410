"""``python -m bench ladder``: every version of every kernel op, validated and timed, rung by rung.

The study room of each op of the backend table, in the manner of llm.c's ``dev/cuda/<op>.cu``: the
reference, the numbered versions, every one validated, every one timed, the napkin math beside the
numbers. For each op (``FAMILIES``: linear, latent, bernoulli, importance_weights, adam) and each of
its directions, every version that exists:

* ``numpy``: the NumPy reference of ``minivae/``; on the CPU it is also the vendor way (BLAS and
  NumPy passes), the baseline of the "vs vendor" column;
* ``numba-cpu``: ``kernels/<op>/numba_cpu.py``;
* ``numba-cuda``: ``kernels/<op>/numba_cuda.py``; the linear op's every rung of its
  ``FORWARD_VERSIONS`` / ``BACKWARD_VERSIONS``;
* ``cuda-c``: ``kernels/<op>/cuda_c.cu`` through its launcher ``cuda_c.py``; the linear op's rungs
  ``cuda_c.FORWARD`` (1-4) and ``cuda_c.BACKWARD`` (1, 4), each described by
  ``kernels/linear/__init__.py``'s ``RUNGS``;
* ``cupy-vendor`` (on a GPU): the same NumPy reference functions on CuPy arrays, cuBLAS and CuPy's
  elementwise kernels: the vendor way on the GPU, as ``bench kernels``' row of that name.

Validation: every version on a small odd size (``VALIDATE``: a multiple of no tile or block), and
every timed version again at each timed size, before and after timing, against the float64
reference computed from the same float32 inputs. Elementwise, |got - want| <= tol * scale, NaN
exactly where the reference has NaN, an infinity only where the reference has the same one; an
output that sums R terms gets tol = ELEMENTWISE_TOL + 4 (R + 10) u (u = 2^-24, the float32 sum's
error bound) with scale the sum of the terms' magnitudes, as bench/smoke.py and the kernel tests
derive theirs. Adam is validated over ADAM_STEPS steps (a call each) from a running state (m and v
not zero, step ADAM_STEP0), on its p, m and v alike. A version that fails validation is reported
failed and never timed, and ``python -m bench ladder`` then exits 1.

Adam has one more version: ``numba-cpu adam_many``, the numba backend's optimiser step (one call
over every tensor), timed beside ``numba-cpu`` (``adam`` called per tensor) on the 784-400-20
model's 8 tensors (``MODEL_784_400_20``) as well as on one tensor.

Timing (``SIZES``): on the device where the version runs. CPU versions interleaved with one
another and with the probes of the row's ceilings, by bench/kernels.py's method, each version's
probes on as many threads as it runs on (its ``threads``: the Numba kernel's from its module's
PARALLEL_MIN_ELEMENTS, one for NumPy's passes); GPU versions with
bench/gpu_timing.py. Without a GPU the CUDA C versions run on the host emulator
(kernels/wiring/emulate.py) and the Numba CUDA ones in Numba's simulator: validated, shown as
"emulated: not timed", never given a speed. The simulator must be chosen before ``numba.cuda`` is
first imported: ``select_simulator`` does it (``python -m bench ladder`` calls it first thing).

The table, one per op family: each version's time (median, spread), GFLOP/s or GB/s, its floor
and the ceiling that binds (``bench.kernels.napkin``), the share of that ceiling, the ratio to
the rung below (same variant) and to the vendor way on its device (``numpy`` on the CPU,
``cupy-vendor`` on a GPU); each ratio is that row's median time divided into the other's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import product
from typing import Any

import numpy as np

from bench import kernels
from bench.validate import ELEMENTWISE_TOL, Expect, U, check, to_host  # noqa: F401  (the ladder's rule)
from minivae.backends import NUMPY
from minivae.kernels.linear import PRODUCTION_RUNG, RUNGS
from minivae.kernels.wiring import simulator

FAMILIES = kernels.FAMILIES
ACT = "relu"  # the VAE's hidden layers
KEY = (1234, 5)  # the Philox stream (seed, offset) the latent versions draw eps from
KL_WEIGHT = 0.7
ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
# Adam is validated over ADAM_STEPS steps from the state after ADAM_STEP0 (m and v not zero, the
# bias corrections not 1 - beta), so that p, m and v each show a wrong beta, step or moment.
ADAM_STEP0 = 10
ADAM_STEPS = 3
# The 784-400-20 model's parameter tensors (encoder 784 -> 400 -> 2 x 20, decoder 20 -> 400 -> 784):
# 652,824 entries, what one optimiser step updates.
MODEL_784_400_20 = ((400, 784), (400,), (40, 400), (40,), (400, 20), (400,), (784, 400), (784,))
# Validation: small sizes that are multiples of no tile or block (linear: N, D_in, D_out; latent:
# N, d; bernoulli: N, D; importance weights: K, N; adam: P entries, or the shapes of a model's
# tensors), small so that Numba's simulator stays quick (a Python thread per CUDA thread).
VALIDATE = {"linear": (33, 70, 17), "latent": (33, 5), "bernoulli": (33, 70), "importance_weights": (3, 33),
            "adam": ((7, 33), (7,), (333,))}
# Timing: the training sizes of the VAE's 784-400-20 model at batch 128 (quick), and larger ones.
SIZES = {True: {"linear": [(128, 784, 400)], "latent": [(128, 20)], "bernoulli": [(128, 784)],
                "importance_weights": [(50, 128)], "adam": [(313_600,), MODEL_784_400_20]},
         False: {"linear": [(128, 784, 400), (1024, 784, 400), (4096, 1024, 1024)],
                 "latent": [(128, 20), (8192, 20)], "bernoulli": [(128, 784), (1024, 784)],
                 "importance_weights": [(50, 128), (50, 1024), (50, 65536)],
                 "adam": [(313_600,), (2_000_000,), MODEL_784_400_20]}}
EMULATED = "emulated: not timed"
VARIANTS = ("numpy", "numba-cpu", "numba-cuda", "cuda-c", "cupy-vendor")
# What each variant adds, for the ops without a ladder of their own (the linear op's rungs say it
# in kernels/linear/__init__.py's RUNGS).
ADDS = {
    "numpy": "the reference: separate NumPy passes, each with its temporaries",
    "numba-cpu": "one fused Numba @njit pass, float32 exp/log vectorised (kernels/common/vecmath.py)",
    "numba-cuda": "the fused op as Numba @cuda.jit kernels",
    "cuda-c": "the fused op as CUDA C kernels",
    "cupy-vendor": "the reference on CuPy arrays: a CuPy kernel per NumPy pass",
}
ADDS_BY_OP = {
    "linear_forward": {"numpy": "the reference: BLAS GEMM, then NumPy passes for the bias and relu",
                       "numba-cpu": "BLAS GEMM, then the bias and relu fused in one @njit pass",
                       "cupy-vendor": "the reference on CuPy arrays: cuBLAS, then CuPy passes for the bias "
                                      "and relu"},
    "linear_backward": {"numpy": "the reference: a NumPy pass for relu', BLAS GEMMs for dx and dW, a sum "
                                 "for db",
                        "numba-cpu": "relu' and db fused in one @njit pass, then BLAS GEMMs for dx and dW",
                        "cupy-vendor": "the reference on CuPy arrays: a CuPy pass for relu', cuBLAS for dx "
                                       "and dW, a CuPy sum for db"},
    "importance_weights": {"numba-cpu": "three @njit passes over log_w in memory order (max, exps and "
                                        "their sums, scaling)"},
    "adam": {"numba-cpu": "one @njit pass over p, g, m, v (bit for bit the reference's ~12 passes), one "
                          "call per tensor"},
}
# kernels/adam/numba_cpu.py's adam_many, the numba backend's optimiser step: a version of its own
ADAM_MANY_ADDS = "one call over every tensor of a model (adam_many: bit for bit adam's rule)"


# ---- where each variant runs -----------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """Where a variant runs here: ``label`` for the table, whether it is on a GPU and timed, the array
    module of its inputs, and (CUDA C) the launchers' backend argument."""

    label: str
    on_gpu: bool
    timed: bool
    xp: Any
    backend: str = ""


def cupy_on_a_gpu() -> Any:
    """The cupy module when CuPy sees a GPU, else None."""
    try:
        from minivae.kernels.wiring.cupy_backend import _cupy_with_a_gpu

        return _cupy_with_a_gpu()
    except ImportError:
        return None


def select_simulator() -> None:
    """Make ``numba.cuda`` Numba's CUDA simulator unless CuPy sees a GPU, the environment already
    chose (NUMBA_ENABLE_CUDASIM), or ``numba.cuda`` is imported (kernels/wiring/simulator.py)."""
    simulator.select_simulator(gpu=cupy_on_a_gpu() is not None)


def places() -> dict[str, Place | str]:
    """Each variant's Place here, or the reason it cannot run."""
    out: dict[str, Place | str] = {"numpy": Place("cpu", False, True, np)}
    cupy = cupy_on_a_gpu()
    gpu_name = None
    if cupy is not None:
        gpu_name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    try:
        import minivae.kernels.wiring.numba_cpu  # noqa: F401
        out["numba-cpu"] = Place("cpu", False, True, np)
    except ImportError as e:
        out["numba-cpu"] = f"Numba is not installed ({e})"
    try:
        from minivae.kernels.wiring import numba_cuda as nbc

        if nbc.SIMULATED:
            out["numba-cuda"] = Place("cpu (Numba's CUDA simulator)", False, False, np)
        elif nbc.gpu_available() and cupy is not None:
            out["numba-cuda"] = Place(gpu_name, True, True, cupy)
        else:
            out["numba-cuda"] = ("numba.cuda was imported for a GPU and finds none (start a fresh "
                                 "python -m bench ladder: it selects Numba's simulator first)")
    except ImportError as e:
        out["numba-cuda"] = f"numba.cuda cannot be imported ({e})"
    if cupy is not None:
        out["cuda-c"] = Place(gpu_name, True, True, cupy, "cupy")
        out["cupy-vendor"] = Place(gpu_name, True, True, cupy)
    else:
        from minivae.kernels.wiring import emulate

        out["cuda-c"] = (Place("cpu (CUDA C emulator)", False, False, np, "emulate") if emulate.compiler()
                         else f"the CUDA C emulator needs a C++20 compiler: {emulate.CXX!r} is not on PATH")
        out["cupy-vendor"] = "no GPU"
    return out


# ---- validation ------------------------------------------------------------------------------------

def f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)


# ---- the problems: inputs, references, versions ---------------------------------------------------

@dataclass(frozen=True)
class Version:
    """One version of an op: ``prepare(inputs, place)`` (inputs on the version's device) returns
    the op as a zero-argument callable that returns its outputs."""

    name: str
    variant: str
    rung: int | None
    adds: str
    prepare: Callable[[dict, Place], Callable[[], tuple]]
    # the threads it runs on at a size, on the CPU (default: the Numba CPU kernel's, Case.threads,
    # for numba-cpu; one for the rest)
    threads: Callable[[tuple], int] | None = None


@dataclass(frozen=True)
class Problem:
    """One direction of an op: its inputs for a size (float32, seeded), the float64 reference's
    outputs for them, its napkin counts (``bench.kernels``' Case of that size), and its versions.
    ``stateful``: the op updates its inputs (Adam), so every validation starts from fresh ones;
    ``calls``: the calls a validation makes of one instance, the last one's outputs checked."""

    family: str
    data: Callable[[tuple], dict[str, np.ndarray]]
    reference: Callable[[dict], list[Expect]]
    case: Callable[[tuple], kernels.Case]
    versions: Callable[[], list[Version]]
    stateful: bool = False
    calls: int = 1


def _adds(op: str, variant: str) -> str:
    return ADDS_BY_OP.get(op, {}).get(variant, ADDS[variant])


def _kernel_module(family: str, variant: str) -> Any:
    """kernels/<family>/<numba_cpu|numba_cuda|cuda_c>.py."""
    import importlib

    return importlib.import_module(f"minivae.kernels.{family}.{variant.replace('-', '_')}")


def _versions(op: str, plain: dict[str, Callable], rungs: dict[str, tuple[list[int], Callable]]
              | None = None) -> list[Version]:
    """The Version list of one direction of an op (``op``: the key of ADDS_BY_OP): ``plain``
    variant -> prepare, and for the linear op, variant -> (its rungs, prepare(inputs, place, rung))."""
    out = []
    for variant in VARIANTS:
        if rungs and variant in rungs:
            numbers, prepare = rungs[variant]
            out += [Version(f"{variant} {v}", variant, v, RUNGS[v],
                            lambda d, p, v=v, prepare=prepare: prepare(d, p, v)) for v in numbers]
        elif variant in plain:
            out.append(Version(variant, variant, None, _adds(op, variant), plain[variant]))
    return out


def _linear_data(shape: tuple) -> dict[str, np.ndarray]:
    d = kernels.linear_inputs(*shape)
    # the forward's float32 output: what every backward version reads act' from, so that a
    # pre-activation rounding to the other side of 0 is no difference between them
    d["y"] = NUMPY.linear_forward(d["x"], d["W"], d["b"], ACT)[0]
    return d


def _linear_forward_reference(d: dict) -> list[Expect]:
    x, W, b = f64(d["x"]), f64(d["W"]), f64(d["b"])
    y = NUMPY.linear_forward(x, W, b, ACT)[0]
    return [Expect("y", y, np.abs(x) @ np.abs(W).T + np.abs(b), terms=x.shape[1], elementwise=0.0)]


def _act_cache(x: Any, W: Any, y: Any) -> tuple:
    """linear_act_forward's cache, built from the given y: the linear op's (x, W), the activation's
    name, and its cache (relu keeps its output)."""
    return (x, W), ACT, y


def _linear_backward_reference(d: dict) -> list[Expect]:
    x, W, dy, y = f64(d["x"]), f64(d["W"]), f64(d["dy"]), f64(d["y"])
    dx, dW, db = NUMPY.linear_backward(dy, _act_cache(x, W, y), True)
    g = np.abs(dy)  # >= |dy * relu'|
    n, d_out = dy.shape
    return [Expect("dx", dx, g @ np.abs(W), terms=d_out, elementwise=0.0),
            Expect("dW", dW, g.T @ np.abs(x), terms=n, elementwise=0.0),
            Expect("db", db, g.sum(axis=0), terms=n, elementwise=0.0)]


def _linear_forward_versions() -> list[Version]:
    def numpy(d, p):
        return lambda: (NUMPY.linear_forward(d["x"], d["W"], d["b"], ACT)[0],)

    def numba_cpu(d, p):
        mod = _kernel_module("linear", "numba-cpu")
        return lambda: (mod.linear_forward(d["x"], d["W"], d["b"], ACT)[0],)

    def numba_cuda(d, p, v):
        mod = _kernel_module("linear", "numba-cuda")
        return lambda: (mod.forward(d["x"], d["W"], d["b"], ACT, version=v),)

    def cuda_c(d, p, v):
        mod = _kernel_module("linear", "cuda-c")
        return lambda: (mod.forward(d["x"], d["W"], d["b"], ACT, version=v, backend=p.backend),)

    return _versions("linear_forward", {"numpy": numpy, "numba-cpu": numba_cpu, "cupy-vendor": numpy},
                     {"numba-cuda": (_numba_cuda_rungs("FORWARD_VERSIONS"), numba_cuda),
                      "cuda-c": (list(_kernel_module("linear", "cuda-c").FORWARD), cuda_c)})


def _linear_backward_versions() -> list[Version]:
    def numpy(d, p):
        cache = _act_cache(d["x"], d["W"], d["y"])
        return lambda: NUMPY.linear_backward(d["dy"], cache, True)

    def numba_cpu(d, p):
        mod = _kernel_module("linear", "numba-cpu")
        cache = mod.linear_forward(d["x"], d["W"], d["b"], ACT)[1]
        return lambda: mod.linear_backward(d["dy"], cache, True)

    def numba_cuda(d, p, v):
        mod = _kernel_module("linear", "numba-cuda")
        return lambda: mod.backward(d["dy"], d["x"], d["W"], d["y"], ACT, version=v)

    def cuda_c(d, p, v):
        mod = _kernel_module("linear", "cuda-c")
        return lambda: mod.backward(d["dy"], d["x"], d["W"], d["y"], ACT, version=v, backend=p.backend)

    return _versions("linear_backward", {"numpy": numpy, "numba-cpu": numba_cpu, "cupy-vendor": numpy},
                     {"numba-cuda": (_numba_cuda_rungs("BACKWARD_VERSIONS"), numba_cuda),
                      "cuda-c": (list(_kernel_module("linear", "cuda-c").BACKWARD), cuda_c)})


def _numba_cuda_rungs(name: str) -> list[int]:
    """kernels/linear/numba_cuda.py's rungs (its FORWARD_VERSIONS or BACKWARD_VERSIONS); the
    production rung alone where numba.cuda cannot be imported or the module has no such list (its
    row then says why)."""
    try:
        return list(getattr(_kernel_module("linear", "numba-cuda"), name))
    except (ImportError, AttributeError):
        return [PRODUCTION_RUNG]


def _latent_forward_reference(d: dict) -> list[Expect]:
    h = f64(d["h"])
    mu, logvar = np.split(h, 2, axis=1)
    z, kl, _ = NUMPY.latent_forward(h, 1, key=KEY)
    # eps's float32 error (minivae/philox.py: 1e-5 relative and absolute) grows by exp(logvar / 2)
    z_scale = (1 + np.abs(z)) * (1 + np.exp(0.5 * np.abs(logvar)))
    kl_terms = 0.5 * np.sum(mu * mu + np.abs(np.expm1(logvar)) + np.abs(logvar), axis=1)
    return [Expect("z", z, z_scale), Expect("kl", kl, kl_terms, terms=mu.shape[1])]


def _latent_backward_reference(d: dict) -> list[Expect]:
    h = f64(d["h"])
    cache = NUMPY.latent_forward(h, 1, key=KEY)[2]
    dh = NUMPY.latent_backward(f64(d["dz"]), KL_WEIGHT, cache)
    # as bench/smoke.py: eps's error, times exp(logvar / 2) and the incoming gradient
    return [Expect("dh", dh, (np.abs(dh) + 1) * (1 + np.exp(0.5 * np.abs(h)).max()))]


def _latent_forward_versions() -> list[Version]:
    def numpy(d, p):
        return lambda: NUMPY.latent_forward(d["h"], 1, key=KEY)[:2]

    def numba_cpu(d, p):
        mod = _kernel_module("latent", "numba-cpu")
        return lambda: mod.latent_forward(d["h"], 1, key=KEY)[:2]

    def numba_cuda(d, p):
        mod = _kernel_module("latent", "numba-cuda")
        return lambda: mod.forward(d["h"], 1, key=KEY)

    def cuda_c(d, p):
        mod = _kernel_module("latent", "cuda-c")
        half = d["h"].shape[1] // 2  # mu and logvar read in place as the halves of h
        return lambda: mod.forward(d["h"][:, :half], d["h"][:, half:], *KEY, 1, backend=p.backend)

    return _versions("latent", {"numpy": numpy, "numba-cpu": numba_cpu, "numba-cuda": numba_cuda,
                                "cuda-c": cuda_c, "cupy-vendor": numpy})


def _latent_backward_versions() -> list[Version]:
    def numpy(d, p):
        cache = NUMPY.latent_forward(d["h"], 1, key=KEY)[2]
        return lambda: (NUMPY.latent_backward(d["dz"], KL_WEIGHT, cache),)

    def numba_cpu(d, p):
        mod = _kernel_module("latent", "numba-cpu")
        cache = mod.latent_forward(d["h"], 1, key=KEY)[2]
        return lambda: (mod.latent_backward(d["dz"], KL_WEIGHT, cache),)

    def numba_cuda(d, p):
        mod = _kernel_module("latent", "numba-cuda")
        return lambda: (mod.backward(d["dz"], d["h"], KL_WEIGHT, key=KEY),)

    def cuda_c(d, p):
        mod = _kernel_module("latent", "cuda-c")
        h = d["h"]
        half = h.shape[1] // 2

        def run():
            dh = p.xp.empty(h.shape, np.float32)  # written half by half, as the cupy backend does
            mod.backward(d["dz"], h[:, :half], h[:, half:], *KEY, KL_WEIGHT, backend=p.backend,
                         out=(dh[:, :half], dh[:, half:]))
            return (dh,)

        return run

    return _versions("latent", {"numpy": numpy, "numba-cpu": numba_cpu, "numba-cuda": numba_cuda,
                                "cuda-c": cuda_c, "cupy-vendor": numpy})


def _bernoulli_reference(d: dict) -> list[Expect]:
    logits, dlogp = f64(d["logits"]), float(d["dlogp"])
    logp, dlogits = NUMPY.bernoulli(f64(d["x"]), logits, dlogp)
    # each term x l - softplus(l) is at most 2 |l| + 1 in size; |x - sigmoid(l)| <= 1
    return [Expect("logp", logp, np.sum(2 * np.abs(logits) + 1, axis=1), terms=logits.shape[1]),
            Expect("dlogits", dlogits, abs(dlogp))]


def _bernoulli_versions() -> list[Version]:
    def call(fn):
        return lambda d, p: lambda: fn()(d["x"], d["logits"], float(d["dlogp"]))

    def cuda_c(d, p):
        mod = _kernel_module("bernoulli", "cuda-c")
        return lambda: mod.bernoulli_forward_backward(d["x"], d["logits"], float(d["dlogp"]),
                                                      backend=p.backend)

    return _versions("bernoulli", {
        "numpy": call(lambda: NUMPY.bernoulli),
        "numba-cpu": call(lambda: _kernel_module("bernoulli", "numba-cpu").bernoulli),
        "numba-cuda": call(lambda: _kernel_module("bernoulli", "numba-cuda").bernoulli),
        "cuda-c": cuda_c, "cupy-vendor": call(lambda: NUMPY.bernoulli)})


def _iw_reference(d: dict) -> list[Expect]:
    from minivae.iwae import importance_weights

    bound, w = importance_weights(f64(d["log_w"]))
    k = d["log_w"].shape[0]
    return [Expect("bound", bound, 1 + np.abs(bound), terms=k), Expect("w", w, 1.0, terms=k)]


def _iw_versions() -> list[Version]:
    def call(fn):
        return lambda d, p: lambda: fn()(d["log_w"])

    def cuda_c(d, p):
        mod = _kernel_module("importance_weights", "cuda-c")
        return lambda: mod.importance_weights(d["log_w"], backend=p.backend)

    from minivae.iwae import importance_weights as reference

    return _versions("importance_weights", {
        "numpy": call(lambda: reference),
        "numba-cpu": call(lambda: _kernel_module("importance_weights", "numba-cpu").importance_weights),
        "numba-cuda": call(lambda: _kernel_module("importance_weights", "numba-cuda").importance_weights),
        "cuda-c": cuda_c, "cupy-vendor": call(lambda: reference)})


def _adam_shapes(size: tuple) -> tuple[tuple[int, ...], ...]:
    """The parameter tensors' shapes of an Adam size: (P,) is one tensor of P entries, a tuple of
    shapes is a model's tensors."""
    return (size,) if all(isinstance(n, int) for n in size) else size


def _adam_case(size: tuple) -> kernels.Case:
    """bench kernels' Adam case of the size's entries in all, named for a model's tensors."""
    shapes = _adam_shapes(size)
    total = sum(int(np.prod(s)) for s in shapes)
    case = kernels.adam_cases([total])[0]
    if len(shapes) > 1:
        case = replace(case, size=f"{len(shapes)} tensors, {total}",
                       threads=max(kernels.kernel_threads("adam", (int(np.prod(s)),)) for s in shapes))
    return case


def _adam_data(size: tuple) -> dict[str, Any]:
    """p, g, m, v for each tensor (lists), as after ADAM_STEP0 steps: m of either sign, v >= m^2 (as
    the two running means keep it), the first entries of each zero (a fresh parameter's)."""
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"p": [], "g": [], "m": [], "v": []}
    for shape in _adam_shapes(size):
        m = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        v = (m.astype(np.float64) ** 2 + 0.01 * rng.random(shape)).astype(np.float32)
        m.reshape(-1)[:3], v.reshape(-1)[:3] = 0, 0
        out["p"].append(rng.standard_normal(shape).astype(np.float32))
        out["g"].append(rng.standard_normal(shape).astype(np.float32))
        out["m"].append(m)
        out["v"].append(v)
    return out


def _adam_optimizer(d: dict, backend=None) -> tuple[Any, list[str]]:
    """minivae.optim.Adam over d's tensors (as p0, p1, ...), its state d's m and v after ADAM_STEP0
    steps; and the parameters' names."""
    from minivae.optim import Adam

    names = [f"p{i}" for i in range(len(d["p"]))]
    opt = Adam(dict(zip(names, d["p"], strict=True)), lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]),
               eps=ADAM["eps"], weight_decay=ADAM["weight_decay"], backend=backend)
    state = {"step": np.array(ADAM_STEP0, np.int64)}
    for name, m, v in zip(names, d["m"], d["v"], strict=True):
        state |= {f"exp_avg/{name}": m, f"exp_avg_sq/{name}": v}
    opt.load_state_dict(state)
    return opt, names


def _adam_reference(d: dict) -> list[Expect]:
    """p, m and v (every tensor's, flattened one after another) after ADAM_STEPS steps of the float64
    reference. Each is a few float32 operations on its inputs, so each is held to the elementwise
    bound of its inputs' sizes: |p| + its move, |m| + |g|, v + g^2."""
    d64 = {k: [f64(a) for a in arrays] for k, arrays in d.items()}
    opt, names = _adam_optimizer(d64)
    for _ in range(ADAM_STEPS):
        opt.step(dict(zip(names, d64["g"], strict=True)))
    state = opt.state_dict()

    def flat(arrays):
        return np.concatenate([a.reshape(-1) for a in arrays])

    p0, p, g = flat(d64["p"]), flat(opt.params[n] for n in names), flat(d64["g"])
    m = flat(state[f"exp_avg/{n}"] for n in names)
    v = flat(state[f"exp_avg_sq/{n}"] for n in names)
    return [Expect("p", p, np.abs(p0) + np.abs(p - p0) + ADAM["lr"]),
            Expect("m", m, np.abs(flat(d64["m"])) + np.abs(g)),
            Expect("v", v, flat(d64["v"]) + g * g)]


def _adam_versions() -> list[Version]:
    """Each version takes one step per call, from step ADAM_STEP0 + 1 on, and returns (p, m, v),
    each the list of the tensors it updated in place."""
    def reference(d, p):
        # on CuPy arrays: the reference's ufunc passes as CuPy kernels (bench kernels' cupy-vendor)
        opt, names = _adam_optimizer(d, kernels.cupy_vendor_backend() if p.on_gpu else None)
        grads = dict(zip(names, d["g"], strict=True))
        # the optimiser's own buffers, which it updates in place (load_state_dict copied d's into them)
        state = opt._state
        out = ([opt.params[n] for n in names], [state["exp_avg"][n] for n in names],
               [state["exp_avg_sq"][n] for n in names])
        return lambda: (opt.step(grads), *out)[1:]

    def stepper(update):
        """A call per step: ``update(d, step)`` updates d's tensors in place."""
        def prepare(d, p):
            step = [ADAM_STEP0]

            def run():
                step[0] += 1
                update(d, p, step[0])
                return d["p"], d["m"], d["v"]

            return run

        return prepare

    def per_tensor(variant):
        def update(d, p, step):
            mod = _kernel_module("adam", variant)
            for args in zip(d["p"], d["g"], d["m"], d["v"], strict=True):
                if variant == "numba-cpu":
                    mod.adam(*args, decoupled=False, step=step, **ADAM)
                else:
                    extra = {"backend": p.backend} if variant == "cuda-c" else {}
                    mod.adam_step(*args, step=step, lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]),
                                  eps=ADAM["eps"], weight_decay=ADAM["weight_decay"], decoupled=False,
                                  **extra)

        return stepper(update)

    def many(d, p, step):
        _kernel_module("adam", "numba-cpu").adam_many(d["p"], d["g"], d["m"], d["v"], decoupled=False,
                                                      step=step, **ADAM)

    versions = _versions("adam", {"numpy": reference, "numba-cpu": per_tensor("numba-cpu"),
                                  "numba-cuda": per_tensor("numba-cuda"), "cuda-c": per_tensor("cuda-c"),
                                  "cupy-vendor": reference})
    at = next(i for i, v in enumerate(versions) if v.variant == "numba-cpu") + 1
    versions.insert(at, Version("numba-cpu adam_many", "numba-cpu", None, ADAM_MANY_ADDS, stepper(many),
                                lambda size: kernels.kernel_threads("adam_many", _adam_shapes(size))))
    return versions


def problems() -> list[Problem]:
    def inputs(build: Callable) -> Callable[[tuple], dict]:
        return lambda shape: build(*shape)  # bench kernels' builder of the op's inputs

    return [
        Problem("linear", _linear_data, _linear_forward_reference, lambda s: kernels.linear_cases([s])[0],
                _linear_forward_versions),
        Problem("linear", _linear_data, _linear_backward_reference, lambda s: kernels.linear_cases([s])[1],
                _linear_backward_versions),
        Problem("latent", inputs(kernels.latent_inputs), _latent_forward_reference,
                lambda s: kernels.latent_cases([s])[0], _latent_forward_versions),
        Problem("latent", inputs(kernels.latent_inputs), _latent_backward_reference,
                lambda s: kernels.latent_cases([s])[1], _latent_backward_versions),
        Problem("bernoulli", inputs(kernels.bernoulli_inputs), _bernoulli_reference,
                lambda s: kernels.bernoulli_cases([s])[0], _bernoulli_versions),
        Problem("importance_weights", inputs(kernels.importance_weights_inputs), _iw_reference,
                lambda s: kernels.iwae_cases([s])[0], _iw_versions),
        Problem("adam", _adam_data, _adam_reference, _adam_case, _adam_versions, stateful=True,
                calls=ADAM_STEPS),
    ]


# ---- running the ladder -----------------------------------------------------------------------------

def _on(place: Place, data: dict) -> dict:
    """The inputs on the version's device, each a fresh copy (a version may update its inputs);
    a list's arrays each."""
    def fresh(v):
        if isinstance(v, list):
            return [fresh(a) for a in v]
        return place.xp.asarray(v.copy()) if isinstance(v, np.ndarray) else v

    return {k: fresh(v) for k, v in data.items()}


def _passes(outputs: tuple, expect: list[Expect]) -> str | None:
    """None if every output passes its Expect, else the first reason it does not."""
    if len(outputs) != len(expect):
        return f"{len(outputs)} outputs, expected {len(expect)} ({', '.join(e.name for e in expect)})"
    for got, e in zip(outputs, expect, strict=True):
        why = check(got, e)
        if why is not None:
            return why
    return None


def _attempt(run: Callable[[], tuple], expect: list[Expect], calls: int = 1) -> str | None:
    """``run`` called ``calls`` times: None if the last call's outputs pass, else why not."""
    try:
        for _ in range(calls - 1):
            run()
        return _passes(run(), expect)
    except Exception as e:  # a version that cannot run is reported failed, by name
        return f"{type(e).__name__}: {e}".strip()


def _validate(version: Version, place: Place, data: dict, expect: list[Expect], calls: int = 1) -> str | None:
    """A fresh instance of ``version`` on ``data``, called ``calls`` times: None if it passes, else
    why not."""
    try:
        fn = version.prepare(_on(place, data), place)
    except Exception as e:  # e.g. a launcher refusing its arguments
        return f"{type(e).__name__}: {e}".strip()
    return _attempt(fn, expect, calls)


def run(families: tuple[str, ...] = FAMILIES, quick: bool = True, rounds: int | None = None, log=print,
        on_row=None, device=None) -> dict:
    """Every version of every op of ``families`` (see the module docstring); ``on_row(row)`` gets
    each row as soon as its size is done; ``device``: where GPU versions are timed (default:
    CuPy's current device, when one is here)."""
    where = places()
    gpu_here = any(isinstance(p, Place) and p.on_gpu for p in where.values())
    if device is None and gpu_here:
        from bench import gpu_timing

        device = gpu_timing.CupyDevice()
    timer = kernels.Timer(rounds or (5 if quick else 9), kernels.cpu_ceilings(),
                          kernels.gpu_ceilings(device) if gpu_here else None, device)
    rows: list[dict] = []
    for problem in problems():
        if problem.family not in families:
            continue
        versions = problem.versions()
        placed = {v.name: where[v.variant] for v in versions}
        small = problem.data(VALIDATE[problem.family])
        small_expect = problem.reference(small)
        small_size = problem.case(VALIDATE[problem.family]).size
        verdict = {v.name: _validate(v, placed[v.name], small, small_expect, problem.calls)
                   for v in versions if isinstance(placed[v.name], Place)}
        for size in SIZES[quick][problem.family]:
            case = problem.case(size)
            size_rows = _size_rows(problem, case, size, versions, placed, verdict, small_size, timer)
            rows += size_rows
            for row in size_rows:
                if on_row is not None:
                    on_row(row)
            log(f"{case.op} {case.size}: " + ", ".join(
                f"{r['version']} {r['median_us']:.0f} us" if "median_us" in r else
                f"{r['version']} {r.get('note') or r['status']}" for r in size_rows))
    return {"ceilings": timer.cpu, "gpu_ceilings": timer.gpu, "rounds": timer.rounds, "quick": quick,
            "families": list(families), "validated_at": {f: VALIDATE[f] for f in families},
            "places": {k: p.label if isinstance(p, Place) else f"not here: {p}" for k, p in where.items()},
            "rows": rows}


def failed(res: dict) -> list[str]:
    """The rows of a run that failed validation, as "op size version"."""
    return [f"{r['op']} {r['size']} {r['version']}" for r in res["rows"]
            if str(r["status"] or "").startswith("failed")]


def _size_rows(problem: Problem, case: kernels.Case, size: tuple, versions: list[Version],
               placed: dict[str, Place | str], verdict: dict[str, str | None], small_size: str,
               timer: kernels.Timer) -> list[dict]:
    """The rows of one op at one timed size: the timed versions validated at this size, timed
    together (CPU ones interleaved with the probes), validated again; the others as they stand."""
    data = problem.data(size)
    timed = [v for v in versions if isinstance(placed[v.name], Place) and placed[v.name].timed
             and verdict[v.name] is None]
    expect = problem.reference(data) if timed else []
    fns, status = {}, {}
    for v in timed:
        place = placed[v.name]
        try:
            fns[v.name] = v.prepare(_on(place, data), place)
        except Exception as e:
            status[v.name] = f"{type(e).__name__}: {e}".strip()
            continue
        # also the first warm-up calls (and the compile)
        status[v.name] = _attempt(fns[v.name], expect, problem.calls)
    ok = {k: fn for k, fn in fns.items() if status[k] is None}
    threads = {v.name: _threads(v, case, size) for v in timed}
    samples, rates = timer.measure(case, ok, {k: placed[k].on_gpu for k in ok}, threads) if ok else ({}, {})
    for v in timed:
        if v.name in samples:
            # again after timing: the timed instance's own outputs; Adam's state moved on with every
            # timed step, so a fresh instance of it
            status[v.name] = (_validate(v, placed[v.name], data, expect, problem.calls) if problem.stateful
                              else _attempt(fns[v.name], expect))
    rows = []
    for v in versions:
        place = placed[v.name]
        row = {"family": problem.family, "op": case.op, "size": case.size, "version": v.name,
               "variant": v.variant, "rung": v.rung, "adds": v.adds, "validated_at": small_size,
               "where": place.label if isinstance(place, Place) else "", "status": None}
        if not isinstance(place, Place):
            row["status"] = f"not run: {place}"
        elif verdict[v.name] is not None:
            row["status"] = f"failed at {small_size}: {verdict[v.name]}"
        elif not place.timed:
            row["note"] = EMULATED
        elif status.get(v.name) is not None:
            row["status"] = f"failed at {case.size}: {status[v.name]}"
        else:
            row |= {"on_gpu": place.on_gpu} | kernels.timed_row(case, samples[v.name], rates[v.name])
        rows.append(row)
    ratios(rows)
    return rows


def _threads(version: Version, case: kernels.Case, size: tuple) -> int:
    """The threads ``version`` runs on at ``size`` on the CPU, which its probes run on too."""
    if version.threads is not None:
        return version.threads(size)
    return case.threads if version.variant == "numba-cpu" else 1


def ratios(rows: list[dict]) -> None:
    """Each timed row's ratio to the rung below it (the nearest lower timed rung of its variant) and
    to the vendor way on its device (``numpy`` on the CPU, ``cupy-vendor`` on a GPU): the other's
    median time over its own, so above 1 is faster."""
    timed = [r for r in rows if "median_us" in r]
    for r in timed:
        if r["rung"] is not None:
            lower = [q for q in timed if q["variant"] == r["variant"] and q["rung"] is not None
                     and q["rung"] < r["rung"]]
            if lower:
                below = max(lower, key=lambda q: q["rung"])
                r["previous"], r["vs_previous"] = below["version"], below["median_us"] / r["median_us"]
        vendor = next((q for q in timed if q["variant"] == ("cupy-vendor" if r["on_gpu"] else "numpy")), None)
        if vendor is not None:
            r["vendor"], r["vs_vendor"] = vendor["version"], vendor["median_us"] / r["median_us"]


# ---- the table and the plot ----------------------------------------------------------------------------

COLUMNS = ("Each version is validated on a small odd size (a multiple of no tile or block; the "
           "\"validated at\" line) and, when timed, at its timed size before and after timing, against "
           "the float64 NumPy reference of the same float32 inputs. median us: of {rounds} samples; "
           "spread: the fastest sample to the upper quartile; floor us: the largest of FLOPs / matmul "
           "rate, bytes / memory rate, exp and log evaluations / their rates, all measured in this run "
           "(CPU: beside the row, on its working set, on as many threads as the row's kernel: the threads "
           "column; the JSON's ceiling_probes names the probe that set each ceiling); bound: which one "
           "that is; share: floor / median; a share over 100% is footnoted with both numbers; "
           "vs rung below: the median of the nearest lower rung of the same variant over this one's; vs "
           "vendor: the median of the vendor way on the same device (numpy on the CPU: BLAS and NumPy "
           "passes; cupy-vendor on a GPU: cuBLAS and CuPy kernels) over this one's. \"{emulated}\": run on "
           "the CPU by the CUDA C emulator or Numba's simulator, validated, never timed.")


def table(res: dict) -> str:
    out = [kernels.ceilings_line(res), "", COLUMNS.format(rounds=res["rounds"], emulated=EMULATED), ""]
    out.append("Where the variants ran: " + "; ".join(f"{k}: {v}" for k, v in res["places"].items()) + ".")
    for fam in res["families"]:
        rows = [r for r in res["rows"] if r["family"] == fam]
        if not rows:
            continue
        notes: list[str] = []
        out += ["", f"## {fam}", "",
                f"validated at: {', '.join(dict.fromkeys(r['validated_at'] for r in rows))}", "",
                "| op | size | version | what it adds | where | threads | median us | spread us "
                "| host us/call | rate | floor us | bound | share of ceiling | vs rung below | vs vendor |",
                "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for r in rows:
            head = (f"| {r['op']} | {r['size']} | {r['version']} | {r['adds']} | {r['where']} | "
                    f"{r.get('threads', '')} |")
            if r["status"] is not None:
                out.append(f"{head} {r['status']} | | | | | | | | |")
                continue
            if "median_us" not in r:
                out.append(f"{head} {r.get('note', '')} | | | | | | | | |")
                continue
            share = f"{100 * r['share_of_ceiling']:.0f}%"
            for note in kernels.row_notes(r):
                notes.append(f"{len(notes) + 1}. {r['op']} {r['size']} {r['version']}: {note}.")
                share += f" ({len(notes)})"
            prev = f"{r['vs_previous']:.2f}x ({r['previous']})" if "vs_previous" in r else ""
            vendor = f"{r['vs_vendor']:.2f}x" if "vs_vendor" in r else ""
            host = f"{r['dispatch_us']:.1f}" if "dispatch_us" in r else ""
            out.append(f"{head} {r['median_us']:.1f} | {r['min_us']:.1f}-{r['q3_us']:.1f} | {host} | "
                       f"{r['rate']:.1f} {r['unit']} | {r['roofline_us']:.1f} | {r['bound']} | {share} | "
                       f"{prev} | {vendor} |")
        if notes:
            out += [""] + notes
    return "\n".join(out)


FIGURE_WIDTH_IN = 10.0  # one page's width: every figure is readable at its printed size
FONT_PT = 9  # the smallest text of a figure


def _entry(r: dict) -> str:
    """What a row that has no time shows in its place."""
    if r.get("note"):
        return r["note"]
    status = r["status"] or ""
    return "failed" if status.startswith("failed") else "not run" if status.startswith("not run") else status


def plot(res: dict, path) -> list:
    """``figures``, each written beside ``path`` as ``<stem>-<family>.png``; the paths written."""
    return kernels.save_figures(figures(res), path, dpi=100)


def figures(res: dict):
    """One figure per op (family), as (family, Figure): a grid of panels, a row per direction
    (forward, backward) and a column per size, FIGURE_WIDTH_IN wide.
    Every version is on the y axis: a timed one as its median time with its spread (fastest sample
    to upper quartile, log scale), its floor as a tick and its share of the binding ceiling beside
    it; one without a time labelled in its place ("emulated: not timed", "not run", "failed"). The
    lowest floor of each device's rows is drawn as a reference line."""
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    for fam in res["families"]:
        rows = [r for r in res["rows"] if r["family"] == fam]
        ops = list(dict.fromkeys(r["op"] for r in rows))
        sizes = list(dict.fromkeys(r["size"] for r in rows))
        if not rows:
            continue
        tallest = max(sum(1 for r in rows if (r["op"], r["size"]) == key) for key in product(ops, sizes))
        fig = Figure(figsize=(FIGURE_WIDTH_IN, len(ops) * (1.3 + 0.3 * tallest) + 0.5),
                     constrained_layout=True)
        axes = fig.subplots(len(ops), len(sizes), squeeze=False)
        for i, op in enumerate(ops):
            for j, size in enumerate(sizes):
                ax = axes[i][j]
                mine = [r for r in rows if (r["op"], r["size"]) == (op, size)]
                if not mine:
                    ax.set_visible(False)
                    continue
                _panel(ax, mine, blended_transform_factory(ax.transAxes, ax.transData), first=j == 0)
                ax.set_title(f"{op}, {size}", fontsize=FONT_PT + 1)
        fig.suptitle(f"{fam}: every version, rung by rung (blue CPU, orange GPU; | its floor; dashed: the "
                     "lowest floor on that device)", fontsize=FONT_PT + 1)
        yield fam, fig


def _panel(ax, rows: list[dict], left, first: bool) -> None:
    """One op at one size: every version a line of the y axis (see ``plot``)."""
    timed = [r for r in rows if "median_us" in r]
    for y, r in enumerate(rows):
        if "median_us" not in r:
            ax.text(0.02, y, _entry(r), transform=left, va="center", fontsize=FONT_PT, zorder=3,
                    color="C3" if _entry(r) == "failed" else "0.35",
                    bbox={"fc": "white", "ec": "none", "pad": 1})
            continue
        color = "C1" if r["on_gpu"] else "C0"
        spread = [[r["median_us"] - r["min_us"]], [r["q3_us"] - r["median_us"]]]
        ax.errorbar(r["median_us"], y, xerr=spread, fmt="o", color=color, capsize=3)
        ax.plot(r["roofline_us"], y, "|", color="k", ms=12)
        ax.annotate(f"{100 * r['share_of_ceiling']:.0f}%", (r["q3_us"], y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=FONT_PT)
    ax.set_yticks(range(len(rows)), [r["version"] for r in rows] if first else [], fontsize=FONT_PT)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xscale("log")
    ax.tick_params(axis="x", labelsize=FONT_PT)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("time per call (us)", fontsize=FONT_PT)
    if not timed:
        ax.set_xticks([])
        return
    for on_gpu, color in ((False, "C0"), (True, "C1")):
        floors = [r["roofline_us"] for r in timed if r["on_gpu"] == on_gpu]
        if floors:
            ax.axvline(min(floors), color=color, ls="--", lw=1)
    low = min(min(r["min_us"], r["roofline_us"]) for r in timed)
    # room on the left for the labels of the versions without a time, on the right for the shares
    ax.set_xlim(low / 8, max(r["q3_us"] for r in timed) * 4)
