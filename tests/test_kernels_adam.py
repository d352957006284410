"""The Adam / AdamW step (kernels/adam/) in every variant against ``minivae.optim``'s Adam and AdamW
(PyTorch's single-tensor rule), on tensors of sizes that are multiples of no block, with blocks and
grids smaller than the work (grid-stride loops) on the GPU variants.

numba_cpu is held to the reference bit for bit: it runs the same rule in the same order without
fused multiply-adds (kernels/adam/numba_cpu.py). The GPU variants are held to ``RTOL`` (1e-5 in
float32, 1e-12 in float64) of the magnitudes of the terms that make each value: nvcc contracts
multiply-adds into fma, and libdevice's sqrt and division round as they may. Variants, ids and
where they run: tests/kernel_variants.py.
"""

from __future__ import annotations

import dataclasses

from kernel_variants import select_simulator

select_simulator()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kernel_variants import (  # noqa: E402
    TIMEOUT,
    VARIANT_DTYPES,
    assert_close,
    assert_rejects,
    cuda_c_backend,
    examples,
    host,
    kernel_module,
    numba_cuda_outputs_start_as_nan,  # noqa: F401  (an autouse fixture)
    params,
    to_device,
    variants,
)

from minivae import optim  # noqa: E402
from minivae.backends import get_backend  # noqa: E402

pytestmark = TIMEOUT
SEEDS = st.integers(0, 2**32 - 1)
SHAPES = st.sampled_from([(1,), (17,), (129,), (3, 65), (64, 33)])
# numba_cpu: the serial and the parallel path (the threshold moved below every test shape or above it)
PATHS = {"serial": 1 << 62, "parallel": 0}


def launches(variant: str) -> st.SearchStrategy:
    """A variant's own launch knobs: numba_cpu's path; a GPU variant's block and grid."""
    if variant == "numba_cpu":
        return st.sampled_from(list(PATHS))
    blocks = [kernel_module("adam", variant).BLOCK, 32] if variant == "numba_cuda" else [1, 17, 32, 50, 256]
    return st.fixed_dictionaries({"block": st.sampled_from(blocks), "grid": st.sampled_from([None, 1, 2])})


def adam_step(variant: str, launch, p, g, m, v, *, step: int, lr: float, betas: tuple[float, float],
              weight_decay: float, decoupled: bool, eps: float = 1e-8) -> None:
    """One step of ``variant``'s kernel, p, m, v updated in place."""
    mod = kernel_module("adam", variant)
    if variant == "numba_cpu":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mod, "PARALLEL_MIN_ELEMENTS", PATHS[launch])
            mod.adam(p, g, m, v, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay,
                     decoupled=decoupled, step=step)
        return
    where = {} if variant == "numba_cuda" else {"backend": cuda_c_backend(variant)}
    mod.adam_step(p, g, m, v, step=step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                  decoupled=decoupled, **where, **launch)


@pytest.mark.parametrize(("variant", "dtype"), VARIANT_DTYPES)
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_adam_matches_minivae_optim(variant, dtype, cls):
    """Up to 3 steps from zero moments; beta1 = 0.3 takes the other form of PyTorch's lerp (weight
    >= 0.5), beta1 = 0 the degenerate one; gradients from 1e-3 to 100."""

    @examples(variant, n=10)
    @given(shape=SHAPES, steps=st.integers(1, 3), weight_decay=st.sampled_from([0.0, 0.1]),
           lr=st.sampled_from([1e-3, 0.1]), betas=st.sampled_from([(0.9, 0.999), (0.3, 0.9), (0.0, 0.5)]),
           data=st.data(), seed=SEEDS)
    def check(shape, steps, weight_decay, lr, betas, data, seed):
        launch = data.draw(launches(variant), label="launch")
        rng = np.random.default_rng(seed)
        p0 = rng.normal(size=shape).astype(dtype)
        ref_p = p0.copy()  # the reference updates it in place
        ref = cls({"p": ref_p}, lr=lr, betas=betas, weight_decay=weight_decay)
        p, m, v = (to_device(variant, a) for a in (p0.copy(), np.zeros_like(p0), np.zeros_like(p0)))
        for step in range(1, steps + 1):
            g = (rng.normal(size=shape) * rng.choice([1e-3, 1, 100])).astype(dtype)
            before = ref_p.astype(np.float64)
            ref.step({"p": g.copy()})
            adam_step(variant, launch, p, to_device(variant, g), m, v, step=step, lr=lr, betas=betas,
                      weight_decay=weight_decay, decoupled=cls is optim.AdamW)
            state = ref.state_dict()
            want_m, want_v = state["exp_avg/p"], state["exp_avg_sq/p"]
            if variant == "numba_cpu":
                np.testing.assert_array_equal(m, want_m, err_msg=f"exp_avg at step {step}")
                np.testing.assert_array_equal(v, want_v, err_msg=f"exp_avg_sq at step {step}")
                np.testing.assert_array_equal(p, ref_p, err_msg=f"param at step {step}")
                continue
            g64 = np.abs(g.astype(np.float64)) + weight_decay * np.abs(before)
            assert_close(f"exp_avg at step {step}", m, want_m.astype(np.float64), np.abs(want_m) + g64, dtype)
            assert_close(f"exp_avg_sq at step {step}", v, want_v.astype(np.float64), np.abs(want_v) + g64**2,
                         dtype)
            assert_close(f"param at step {step}", p, ref_p.astype(np.float64),
                         np.abs(before) + np.abs(ref_p - before), dtype)

    check()


@pytest.mark.parametrize("variant", variants("cuda_c", "cupy"))
def test_adam_step_with_the_largest_block_and_a_two_dimensional_parameter(variant):
    rng = np.random.default_rng(3)
    p = rng.normal(size=(3, 500)).astype(np.float32)
    ref_p = p.copy()
    g = rng.normal(size=(3, 500)).astype(np.float32)
    optim.Adam({"p": ref_p}, lr=0.01).step({"p": g})
    p_dev, m, v = (to_device(variant, a) for a in (p, np.zeros_like(p), np.zeros_like(p)))
    adam_step(variant, {"block": 1024}, p_dev, to_device(variant, g), m, v, step=1, lr=0.01,
              betas=(0.9, 0.999), weight_decay=0.0, decoupled=False)
    assert_close("param", host(p_dev), ref_p.astype(np.float64), np.abs(ref_p) + 0.01, np.float32)


def test_numba_cpu_takes_hyperparameters_as_python_floats_of_any_numeric_type():
    """np.float32(0.5), 0.5 and a 0-d array give the same step (optim.Adam's double-precision
    scalars), whichever came first: the cached scalars are keyed by value as a Python float."""
    optim_cpu = kernel_module("adam", "numba_cpu")
    results = []
    for lr in (np.float32(0.5), 0.5, np.array(0.5)):
        p, g = np.ones(5), np.linspace(-1, 1, 5)
        m, v = np.zeros(5), np.zeros(5)
        optim_cpu.adam(p, g, m, v, lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                       decoupled=False, step=3)
        results.append(p)
    want = {"w": np.ones(5)}
    opt = optim.Adam(want, lr=0.5)
    opt._step = 2
    opt.step({"w": np.linspace(-1, 1, 5)})
    for got in results:
        np.testing.assert_array_equal(got, want["w"])


# ---- launcher checks: each names the argument (a raw kernel would silently misread the memory) -----

def _cpu(mod, zeros, **changed):
    """numba_cpu's adam on 3 zeros with sound hyperparameters, ``changed`` replaced."""
    args = {"p": zeros(3), "g": zeros(3), "m": zeros(3), "v": zeros(3), "lr": 0.1, "beta1": 0.9,
            "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0, "decoupled": False, "step": 1} | changed
    return mod.adam(args.pop("p"), args.pop("g"), args.pop("m"), args.pop("v"), **args)


def _gpu(mod, zeros, **changed):
    """A GPU variant's adam_step on 4 zeros, ``changed`` replaced."""
    args = {"param": zeros(4), "grad": zeros(4), "exp_avg": zeros(4), "exp_avg_sq": zeros(4), "step": 1,
            "lr": 0.1} | changed
    return mod.adam_step(args.pop("param"), args.pop("grad"), args.pop("exp_avg"), args.pop("exp_avg_sq"),
                         **args)


REJECTED = [
    params("numba_cpu", lambda mod, z: _cpu(mod, z, g=z(4)), "g must be", id="g shape"),
    params("numba_cpu", lambda mod, z: _cpu(mod, z, step=0), "step", id="step 0"),
    params("numba_cpu", lambda mod, z: _cpu(mod, z, beta1=1.0), r"betas must be in \[0, 1\)", id="beta1 1"),
    params("numba_cpu", lambda mod, z: _cpu(mod, z, lr=float("nan")), "lr must be", id="lr nan"),
    params("numba_cpu", lambda mod, z: _cpu(mod, z, p=z(3, dtype=np.int64)), "p must be", id="p int64"),
    params("numba_cpu", lambda mod, z: _cpu(mod, z, p=z(3, 2), g=z(3, 2), m=z(2, 3).T, v=z(3, 2)),
           "C-contiguous", id="m transposed"),
    params("numba_cuda", lambda mod, z: _gpu(mod, z, grad=z(3)), r"grad must .* \(4,\)", id="grad shape"),
    params("numba_cuda", lambda mod, z: _gpu(mod, z, step=0), "step", id="step 0"),
    params("cuda_c", lambda mod, z: _gpu(mod, z, exp_avg_sq=z(5)), r"exp_avg_sq must be .* shape \(4,\)",
           id="exp_avg_sq shape"),
    params("cuda_c", lambda mod, z: _gpu(mod, z, grad=z(4, dtype=np.float64)), "grad must be .*float32",
           id="grad float64"),
    params("cuda_c", lambda mod, z: _gpu(mod, z, step=0), r"step must be an integer in \[1,", id="step 0"),
    params("cuda_c", lambda mod, z: _gpu(mod, z, block=2048), r"block must be an integer in \[1, 1024\]",
           id="block 2048"),
    params("cuda_c", lambda mod, z: _gpu(mod, z, betas=(1.0, 0.9)), r"betas must be in \[0, 1\)",
           id="beta1 1"),
]


@pytest.mark.parametrize(("variant", "call", "match"), REJECTED)
def test_launchers_reject_bad_arguments_naming_them(variant, call, match):
    assert_rejects("adam", variant, call, match)


# ---- numba_cpu's adam_many: every parameter of a model in one call -----------------------------------
# The numba backend's optim.Adam takes it (kernels/adam/numba_cpu.py): the single-tensor rule bit for
# bit, on its serial and parallel paths, with tensors that straddle the chunks it splits them into.

CHUNK = 64  # chunks of 64 entries, so small tensors straddle several
MANY_SHAPES = [(1,), (CHUNK,), (CHUNK + 3,), (5, 29), (3 * CHUNK - 1,), (2, 2 * CHUNK)]
MANY_HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False)


@pytest.fixture
def adam_cpu():
    pytest.importorskip("numba", reason="numba_cpu needs numba (the `numba` extra)")
    return kernel_module("adam", "numba_cpu")


@pytest.fixture(params=["serial", "parallel"])
def many_path(request, monkeypatch, adam_cpu):
    monkeypatch.setattr(adam_cpu, "MANY_CHUNK", CHUNK)
    adam_cpu._chunks.cache_clear()
    monkeypatch.setattr(adam_cpu, "MANY_PARALLEL_MIN_ELEMENTS", 0 if request.param == "parallel" else 1 << 62)
    yield request.param
    adam_cpu._chunks.cache_clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("cls", "weight_decay", "betas"), [(optim.Adam, 0.0, (0.9, 0.999)),
                                                            (optim.Adam, 0.1, (0.3, 0.9)),
                                                            (optim.AdamW, 0.1, (0.0, 0.5))])
def test_the_optimiser_through_adam_many_equals_the_reference_bit_for_bit(adam_cpu, many_path, dtype, cls,
                                                                          weight_decay, betas):
    """optim.Adam on the numba backend takes adam_many (a spy proves it); beta1 = 0.3 takes the
    other form of PyTorch's lerp."""
    rng = np.random.default_rng(7)
    params = {f"p{i}": rng.normal(size=s).astype(dtype) for i, s in enumerate(MANY_SHAPES)}
    ref_p = {k: v.copy() for k, v in params.items()}
    calls = []
    backend = get_backend("numba")
    spy = dataclasses.replace(backend, adam_many=lambda *a, **k: (calls.append(1),
                                                                  adam_cpu.adam_many(*a, **k)))
    ref = cls(ref_p, lr=0.01, betas=betas, weight_decay=weight_decay)
    ker = cls(params, lr=0.01, betas=betas, weight_decay=weight_decay, backend=spy)
    for step in range(1, 4):
        grads = {k: (rng.normal(size=v.shape) * rng.choice([1e-3, 1, 100])).astype(dtype)
                 for k, v in params.items()}
        ref.step({k: g.copy() for k, g in grads.items()})
        ker.step(grads)
        a, b = ref.state_dict(), ker.state_dict()
        for name in a:
            np.testing.assert_array_equal(b[name], a[name], err_msg=f"{name} at step {step}")
        for k in params:
            np.testing.assert_array_equal(params[k], ref_p[k], err_msg=f"{k} at step {step}")
    assert len(calls) == 3


def test_adam_many_equals_adam_on_each_tensor(adam_cpu, many_path):
    rng = np.random.default_rng(3)
    ps = [rng.normal(size=s).astype(np.float32) for s in MANY_SHAPES]
    gs = [rng.normal(size=s).astype(np.float32) for s in MANY_SHAPES]
    ms, vs = [np.abs(rng.normal(size=s)).astype(np.float32) for s in MANY_SHAPES], [np.zeros(s, np.float32)
                                                                               for s in MANY_SHAPES]
    one = [[a.copy() for a in arrays] for arrays in (ps, gs, ms, vs)]
    p_before = [p.copy() for p in ps]
    adam_cpu.adam_many(ps, gs, ms, vs, step=2, **MANY_HYPER)
    for p, g, m, v in zip(*one, strict=True):
        adam_cpu.adam(p, g, m, v, step=2, **MANY_HYPER)
    for got, want in zip(ps + ms + vs, one[0] + one[2] + one[3], strict=True):
        np.testing.assert_array_equal(got, want)
    assert all(not np.array_equal(p, p0) for p, p0 in zip(ps, p_before, strict=True))  # all stepped


def _arrays(n=2, dtype=np.float32):
    return [np.zeros(5, dtype) for _ in range(n)]


@pytest.mark.parametrize(("call", "match"), [
    (lambda mod: mod.adam_many([], [], [], [], step=1, **MANY_HYPER), "non-empty sequences of one length"),
    (lambda mod: mod.adam_many(_arrays(2), _arrays(1), _arrays(2), _arrays(2), step=1, **MANY_HYPER),
     "non-empty sequences of one length, got 2, 1, 2, 2"),
    (lambda mod: mod.adam_many([np.zeros(5, np.float32), np.zeros(5)], _arrays(2), _arrays(2), _arrays(2),
                                step=1, **MANY_HYPER), r"params\[1\] must be a float32 or float64 array"),
    (lambda mod: mod.adam_many(_arrays(1), [np.zeros(4, np.float32)], _arrays(1), _arrays(1), step=1,
                                **MANY_HYPER), r"grads\[0\] must be an array of shape \(5,\)"),
    (lambda mod: mod.adam_many([np.zeros((3, 2), np.float32)], [np.zeros((3, 2), np.float32)],
                                [np.zeros((2, 3), np.float32).T], [np.zeros((3, 2), np.float32)], step=1,
                                **MANY_HYPER), r"exp_avgs\[0\] must be C-contiguous"),
    (lambda mod: mod.adam_many(_arrays(1), _arrays(1), _arrays(1), _arrays(1), step=0, **MANY_HYPER),
     "step must be an integer >= 1"),
    (lambda mod: mod.adam_many(_arrays(1), _arrays(1), _arrays(1), _arrays(1), step=1,
                                **{**MANY_HYPER, "beta1": 1.0}), r"betas must be in \[0, 1\)"),
])
def test_adam_many_rejects_bad_arguments_naming_them(adam_cpu, call, match):
    with pytest.raises(ValueError, match=match):
        call(adam_cpu)


def test_the_numba_backend_offers_adam_many(adam_cpu):
    backend = get_backend("numba")
    assert backend.adam_many is adam_cpu.adam_many and backend.adam is adam_cpu.adam
