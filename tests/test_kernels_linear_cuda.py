"""The CUDA C linear kernels (kernels/linear/cuda_c.cu: every rung of the ladder, every activation)
agree with the NumPy reference, and the ``cupy`` backend that runs them agrees with ``numpy``.

Where they run: ``backend="emulate"`` (the CPU emulator, what CI runs) always; ``backend="cupy"`` as
well when CuPy sees a GPU (test ids ``...-cupy``: ``-k "not emulat"`` selects the GPU runs alone).
Shapes stay small (the emulator spends 1-2 us per thread per barrier) but straddle every tile: 1, 17,
33, 63-65, 70 against tiles of 8, 16, 32 and 64; matrices come as row-strided views with leading
dimensions that are and are not multiples of 4, and with bases off 16-byte alignment, so the float4
paths and their scalar fallbacks both run. Every output is a view of an array preset to NaN inside
and a sentinel outside: an element never written fails (NaN), and so does a store past a row.

Tolerances are derived, not tuned (u = 2**-24, float32's unit roundoff). A float32 sum of K products,
in any order, with or without fma, is within K u sum |terms| of the exact value (Higham, "Accuracy
and Stability of Numerical Algorithms", 3.1, to first order); the reference is float64 from the same
float32 inputs. So:

* y: (K + 2) u (|x| @ |W|^T + |b|) for the pre-activation (+2: the bias add and the final rounding),
  carried through unchanged because every activation here is 1-Lipschitz, plus 8 u |y| for the
  activation's own float32 evaluation (CUDA's tanhf, expf, expm1f, log1pf are within 2 ulps);
* G = dy * act'(.), formed in float32 from the float32 output y: within 10 u |dy| s(y), where s(y)
  >= |act'| is the size of the terms act' is made of (1 for relu and leaky_relu, |y| + 1 for elu,
  1 + y^2 for tanh, |y| (1 + |y|) for sigmoid; for softplus act' itself, -expm1(-y), whose relative
  error is at most y's) -- so a cancellation such as elu's y + 1 near y = -1 is not asked for digits
  float32 does not hold, while softplus' tiny slopes far left must keep their digits; with the
  GEMM's K u on top, dx, dW, db are within (K + 10) u of |dy| s(y) multiplied into |W|, |x| or summed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivae.backends import NUMPY, BackendUnavailable, get_backend
from minivae.kernels import linear as linear_codes
from minivae.kernels.linear import cuda_c as linear
from minivae.kernels.wiring import cuda_load, emulate
from minivae.layers import ACTIVATIONS


def _cupy_sees_a_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean "no GPU here"
        return False


GPU = _cupy_sees_a_gpu()
NO_COMPILER = f"the CUDA emulator needs a C++20 compiler ({emulate.CXX} not on PATH)"
needs_compiler = pytest.mark.skipif(emulate.compiler() is None, reason=NO_COMPILER)
gpu_only = pytest.mark.skipif(not GPU, reason="no CUDA GPU")
BACKENDS = [pytest.param("emulate", marks=needs_compiler), pytest.param("cupy", marks=gpu_only)]
ACTS = list(linear_codes.ACT_CODES)
U = 2.0**-24  # float32's unit roundoff
TINY = 1e-37  # absolute slack for values in float32's subnormal range
SENTINEL = -12345.0  # fills the padding around every output view: a store past a row changes it
SIZES = st.sampled_from([1, 2, 3, 5, 8, 17, 31, 33, 63, 64, 65, 70])
# How a matrix of width w sits in memory: (leading dimension, columns skipped before the view):
# contiguous; ld the next multiple of 4 past w, aligned (float4 loads, and the chunk at the tail of a
# row would reach into the next columns if its guard failed); ld odd (scalar loads); ld a multiple
# of 4 but the base 4 bytes off 16-byte alignment (scalar loads: a float4 load there is a GPU fault).
LAYOUTS = ["contiguous", "ld % 4 == 0", "ld odd", "misaligned"]


def leading_dimension(layout: str, w: int) -> tuple[int, int]:
    """(ld, shift) of ``layout`` for a matrix ``w`` columns wide."""
    return {"contiguous": (w, 0), "ld % 4 == 0": (w + 4 - w % 4, 0), "ld odd": (w + 1 + w % 2, 0),
            "misaligned": (w + 4 - w % 4, 1)}[layout]

# The whole module must stay well inside a minute and a half on 2 cores: the emulator is slow.
pytestmark = pytest.mark.timeout(300)


# ---- helpers -------------------------------------------------------------------------------------

def to_device(a: np.ndarray, backend: str):
    if backend == "cupy":
        import cupy

        return cupy.asarray(a)
    return a


def host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def embed(a: np.ndarray, layout: str, backend: str, fill: float | None = None):
    """(view, whole): ``a`` (or ``fill``) as a view with ``layout`` into a wider array whose other
    columns hold SENTINEL; ``whole`` is that array, for checking what a kernel wrote."""
    rows, cols = a.shape
    ld, shift = leading_dimension(layout, cols)
    whole = np.full((rows, shift + ld), SENTINEL, np.float32)
    whole[:, shift:shift + cols] = a if fill is None else fill
    whole = to_device(whole, backend)
    return whole[:, shift:shift + cols], whole


def check_padding(name: str, whole, layout: str, cols: int) -> None:
    shift = leading_dimension(layout, cols)[1]
    w = host(whole)
    outside = np.concatenate([w[:, :shift], w[:, shift + cols:]], axis=1)
    assert (outside == SENTINEL).all(), f"{name}: a kernel wrote outside the view's columns"


def assert_within(name: str, got, want: np.ndarray, bound: np.ndarray) -> None:
    """|got - want| <= bound elementwise, and got finite (NaN-preset outputs never written fail)."""
    got = np.asarray(host(got), np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{name}: {bad.sum()} non-finite values, first at {tuple(np.argwhere(bad)[0])}"
    excess = np.abs(got - want) / (np.broadcast_to(bound, want.shape) + TINY)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= 1, (f"{name}: |got - want| = {abs(got[worst] - want[worst]):.3g} at {worst} "
                                f"(got {got[worst]!r}, want {want[worst]!r}) exceeds the bound "
                                f"{np.broadcast_to(bound, want.shape)[worst]:.3g}")


def layer(seed: int, n: int, d_in: int, d_out: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    W = (rng.standard_normal((d_out, d_in)) * rng.choice([0.3, 1, 3]) / np.sqrt(d_in)).astype(np.float32)
    b = rng.standard_normal(d_out).astype(np.float32)
    dy = rng.standard_normal((n, d_out)).astype(np.float32)
    return x, W, b, dy


def f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)


def terms_of_act_grad(y: np.ndarray, act: str | None) -> np.ndarray:
    """s(y) >= |act'|: the size of what act'(.) is computed from (see the module docstring)."""
    if act == "softplus":  # sigmoid(x) = -expm1(-y): as accurate, relatively, as y itself
        return -np.expm1(-y)
    y = np.abs(y)
    return {"elu": y + 1, "tanh": 1 + y * y, "sigmoid": y * (1 + y)}.get(act, np.ones_like(y))


def test_the_comparison_fails_on_nan_and_on_error():
    want = np.ones(3)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_within("x", np.array([1, np.nan, 1], np.float32), want, want)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within("x", np.array([1, 1.1, 1], np.float32), want, 0.01 * want)


# ---- forward: every rung, every activation -----------------------------------------------------

def run_forward(backend, version, act, x, W, b, layout_x, layout_W, layout_y):
    n, d_out = x.shape[0], W.shape[0]
    xv, _ = embed(x, layout_x, backend)
    Wv, _ = embed(W, layout_W, backend)
    yv, y_whole = embed(np.zeros((n, d_out), np.float32), layout_y, backend, fill=np.nan)
    got = linear.forward(xv, Wv, to_device(b, backend), act, version=version, backend=backend, out=yv)
    assert got is yv
    check_padding("y", y_whole, layout_y, d_out)
    want, _ = NUMPY.linear_forward(f64(x), f64(W), f64(b), act)
    pre_bound = (x.shape[1] + 2) * U * (np.abs(f64(x)) @ np.abs(f64(W)).T + np.abs(f64(b)))
    assert_within(f"y (rung {version}, {act})", yv, want, pre_bound + 8 * U * np.abs(want))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("version", sorted(linear.FORWARD))
@settings(max_examples=8)
@given(n=SIZES, d_in=SIZES, d_out=SIZES, layouts=st.tuples(*[st.sampled_from(LAYOUTS)] * 3),
       seed=st.integers(0, 2**32 - 1))
def test_forward_matches_the_reference(backend, version, act, n, d_in, d_out, layouts, seed):
    x, W, b, _ = layer(seed, n, d_in, d_out)
    run_forward(backend, version, act, x, W, b, *layouts)


# ---- backward: rungs 1 and 4, every activation ----------------------------------------------------

def run_backward(backend, version, act, x, W, b, dy, need_dx, layout_in, layout_out):
    n, d_in, d_out = x.shape[0], x.shape[1], W.shape[0]
    want_y, cache = NUMPY.linear_forward(f64(x), f64(W), f64(b), act)
    y = want_y.astype(np.float32)  # a float32 forward's output: what the kernels keep
    views = [embed(a, layout_in, backend)[0] for a in (dy, x, W, y)]
    dx_v, dx_whole = embed(np.zeros((n, d_in), np.float32), layout_out, backend, fill=np.nan)
    dW_v, dW_whole = embed(np.zeros((d_out, d_in), np.float32), layout_out, backend, fill=np.nan)
    db = to_device(np.full(d_out, np.nan, np.float32), backend)
    dx, dW, db = linear.backward(*views[:3], None if act is None else views[3], act, need_dx=need_dx,
                                 version=version, backend=backend, out=(dx_v if need_dx else None, dW_v, db))
    want_dx, want_dW, want_db = NUMPY.linear_backward(f64(dy), cache, need_dx)
    g_size = np.abs(f64(dy)) * terms_of_act_grad(f64(y), act)  # >= |G|, and G's float32 error / 10 u
    what = f"(rung {version}, {act})"
    if need_dx:
        check_padding("dx", dx_whole, layout_out, d_in)
        assert_within(f"dx {what}", dx, want_dx, (d_out + 10) * U * (g_size @ np.abs(f64(W))))
    else:
        assert dx is None
        assert np.isnan(host(dx_v)).all(), "dx written though need_dx is False"
    check_padding("dW", dW_whole, layout_out, d_in)
    assert_within(f"dW {what}", dW, want_dW, (n + 10) * U * (g_size.T @ np.abs(f64(x))))
    assert_within(f"db {what}", db, want_db, (n + 10) * U * g_size.sum(axis=0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("version", sorted(linear.BACKWARD))
@settings(max_examples=8)
@given(n=SIZES, d_in=SIZES, d_out=SIZES, layouts=st.tuples(*[st.sampled_from(LAYOUTS)] * 2),
       need_dx=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_backward_matches_the_reference(backend, version, act, n, d_in, d_out, layouts, need_dx, seed):
    x, W, b, dy = layer(seed, n, d_in, d_out)
    run_backward(backend, version, act, x, W, b, dy, need_dx, *layouts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_production_kernels_on_several_tiles_in_every_layout(backend, layout):
    """Rung 4 over a 3 x 3 grid of 64-tiles with tails in every dimension (129 = 2 x 64 + 1), each
    layout on every matrix at once: float4 loads and stores, or their scalar fallbacks."""
    x, W, b, dy = layer(7, 129, 70, 130)
    run_forward(backend, 4, "softplus", x, W, b, layout, layout, layout)
    run_backward(backend, 4, "elu", x, W, b, dy, True, layout, layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("version", [1, 4])
def test_extreme_pre_activations(backend, version, act):
    """Pre-activations near +-5, +-20, +-100: exp overflows unless each activation takes its stable
    form, and softplus' slope far left (sigmoid(-20) = 2e-9) must not round to 0 (1 - e^-y would)."""
    x, W, _, dy = layer(3, 9, 5, 6)
    x *= 0.01
    b = np.array([-100, -20, -5, 5, 20, 100], np.float32)
    run_forward(backend, version, act, x, W, b, "contiguous", "contiguous", "contiguous")
    run_backward(backend, version, act, x, W, b, dy, True, "contiguous", "contiguous")


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_are_allocated_when_not_given(backend):
    x, W, b, dy = layer(5, 9, 5, 6)
    y = linear.forward(*(to_device(a, backend) for a in (x, W, b)), "tanh", backend=backend)
    want_y, cache = NUMPY.linear_forward(f64(x), f64(W), f64(b), "tanh")
    assert_within("y", y, want_y, 1e-5)
    got = linear.backward(*(to_device(a, backend) for a in (dy, x, W)), y, "tanh", backend=backend)
    wants = NUMPY.linear_backward(f64(dy), cache, True)
    for name, g, want in zip(("dx", "dW", "db"), got, wants, strict=True):
        assert_within(name, g, want, 1e-5 * (1 + np.abs(want)))


# ---- launch checks ---------------------------------------------------------------------------------

RUNGS = {  # every kernel of kernels/linear/cuda_c.cu -> its Rung (block and tile)
    **{r.kernel: r for r in linear.FORWARD.values()},
    **{r.kernel: r for pair in linear.BACKWARD.values() for r in pair},
}


def raw_args(kernel: str, size: int, act: int):
    """Arguments for ``kernel`` on size x size matrices (every leading dimension = size)."""
    m = np.zeros((size, size), np.float32)
    v, i = np.zeros(size, np.float32), np.int32(size)
    if kernel.startswith("linear_forward"):
        return (m, m, v, m.copy(), i, i, i, i, i, i, np.int32(act))
    if "_dx_" in kernel:
        return (m, m, m, m.copy(), i, i, i, i, i, i, i, np.int32(act))
    return (m, m, m, m.copy(), v.copy(), i, i, i, i, i, i, i, np.int32(act))


@needs_compiler
@pytest.mark.parametrize("kernel", sorted(RUNGS))
@pytest.mark.parametrize("fault", ["block shape", "grid short of the output", "act code 7", "act code -1"])
def test_kernels_trap_on_a_launch_they_were_not_written_for(kernel, fault):
    """__trap(), which the host sees as a launch failure, never a silently partial result."""
    rung = RUNGS[kernel]
    fn = cuda_load.load(linear.SOURCE).get_function(kernel)
    size = 65  # one past a 64-tile, a 32-wide block and a 16-tile
    grid, block, act = linear._grid(rung, size, size), rung.block, 0
    fn(grid, block, raw_args(kernel, size, act))  # the right launch runs
    if fault == "block shape":  # naive kernels take any 2-D block, so give them a 3-D one
        block = (*block, 2) if block == linear.NAIVE_BLOCK else (block[0] // 2, block[1] * 2)
    elif fault == "grid short of the output":
        grid = (grid[0], grid[1] - 1)
    else:
        act = int(fault.split()[-1])
    with pytest.raises(RuntimeError, match=r"launch failure.*__trap\(\) called"):
        fn(grid, block, raw_args(kernel, size, act))


def _f32(*shape):
    return np.zeros(shape, np.float32)


def _forward(**kwargs):
    """The forward of a (2, 3) -> (2, 4) layer, with some arguments replaced."""
    args = {"x": _f32(2, 3), "W": _f32(4, 3), "b": _f32(4), **kwargs}
    return linear.forward(args.pop("x"), args.pop("W"), args.pop("b"), **args)


def _backward(**kwargs):
    """The backward of a (2, 3) -> (2, 4) layer without activation, with some arguments replaced."""
    args = {"dy": _f32(2, 4), "x": _f32(2, 3), "W": _f32(4, 3), "y": None, **kwargs}
    return linear.backward(args.pop("dy"), args.pop("x"), args.pop("W"), args.pop("y"), **args)


@pytest.mark.parametrize("call, match", [
    (lambda: _forward(x=_f32(2, 3).astype(np.float64)), r"x must be a float32 numpy array"),
    (lambda: _forward(W=_f32(4, 2)), r"W must be .* shape \(any, 3\)"),
    (lambda: _forward(b=_f32(3)), r"b must be .* shape \(4,\)"),
    (lambda: _forward(x=_f32(3, 2).T), r"x must be .*adjacent columns.*strides"),
    (lambda: _forward(x=_f32(2, 6)[:, ::2]), r"x must .*got \(24, 8\)"),
    (lambda: _forward(x=_f32(0, 3)), r"x.shape\[0\] must be an integer in \[1,"),
    (lambda: _forward(act="gelu"), r"act must be None or one of relu"),
    (lambda: _forward(version=5), r"version must be one of \[1, 2, 3, 4\]"),
    (lambda: _forward(version=True), r"version must be one of"),
    (lambda: _forward(out=_f32(2, 5)), r"out must be .* shape \(2, 4\)"),
    (lambda: _forward(backend="opencl"), r"backend must be one of"),
    (lambda: _forward(x=_f32(2**21, 1), W=_f32(4, 1), version=2),
     r"2097152 output rows need 131072 row tiles of 16 .* gridDim.y limit of 65535"),
    (lambda: _backward(x=_f32(3, 3)), r"x must be .* \(2, any\)"),
    (lambda: _backward(act="relu"), r"y must be a float32 numpy"),
    (lambda: _backward(version=2), r"version must be one of \[1, 4\]"),
    (lambda: _backward(need_dx=False, out=(_f32(2, 3), _f32(4, 3), _f32(4))), r"out\[0\] \(dx\) must be"),
    (lambda: _backward(out=(None, _f32(4, 3), _f32(3))), r"out\[2\] \(db\) must be .* shape \(4,\)"),
    (lambda: _backward(out=_f32(4, 3)), r"out must be a tuple"),
])
def test_launchers_reject_bad_arguments_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_read_only_output_is_refused():
    out = _f32(2, 4)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out must be writeable"):
        _forward(out=out)


def test_the_kernels_activation_parameters_are_the_layers_defaults():
    """The backend table passes only the activation's name; kernels/linear/cuda_c.cu hard-codes its
    parameter."""
    text = linear.SOURCE.read_text()
    for name, constant in (("leaky_relu", "LEAKY_SLOPE"), ("elu", "ELU_ALPHA")):
        value = float(re.search(rf"constexpr float {constant} = ([0-9.e+-]+)f;", text).group(1))
        assert value == ACTIVATIONS[name][3], name
    codes = dict(re.findall(r"ACT_(\w+) = (\d)", text))
    assert {k.lower(): int(v) for k, v in codes.items()} == {
        "none" if a is None else a: c for a, c in linear_codes.ACT_CODES.items()}


# ---- sanitizers ------------------------------------------------------------------------------------

SANITIZER_ENV = {
    "TSAN_OPTIONS": "halt_on_error=0 exitcode=66",
    "ASAN_OPTIONS": "detect_leaks=0",  # LeakSanitizer needs ptrace rights some CI containers lack
}


def sanitizer_main() -> str:
    """A C++ main launching every kernel once on exactly-sized buffers with tails in every dimension
    (33 x 19 -> 70: tiles of 8, 16, 32 and 64 all end part-way)."""
    n, d_in, d_out = 33, 19, 70
    sizes = {"forward": (n, d_out), "dx": (n, d_in), "dw": (d_out, d_in)}
    args = {"forward": "x.data(), W.data(), b.data(), y.data(), n, d_in, d_out, d_in, d_in, d_out, 6",
            "dx": "dy.data(), y.data(), W.data(), dx.data(), n, d_in, d_out, d_out, d_out, d_in, d_in, 3",
            "dw": "dy.data(), y.data(), x.data(), dW.data(), db.data(), n, d_in, d_out, d_out, d_out, d_in, "
                  "d_in, 3"}
    launches = []
    for name, rung in sorted(RUNGS.items()):
        kind = "forward" if name.startswith("linear_forward") else name.split("_")[2]
        grid = linear._grid(rung, *sizes[kind])
        launches.append(f"    status |= emu::launch({name}, dim3({grid[0]}, {grid[1]}), "
                        f"dim3({rung.block[0]}, {rung.block[1]}), {args[kind]});")
    return "\n".join([
        "#include <vector>",
        "int main() {",
        f"    const int n = {n}, d_in = {d_in}, d_out = {d_out};",
        "    std::vector<float> x(n * d_in, 0.5f), W(d_out * d_in, 0.25f), b(d_out, 0.1f);",
        "    std::vector<float> y(n * d_out, 0.3f), dy(n * d_out, 1.0f), dx(n * d_in), dW(d_out * d_in);",
        "    std::vector<float> db(d_out);",
        "    int status = 0;",
        *launches,
        "    return status;",
        "}"])


@needs_compiler
@pytest.mark.parametrize("sanitize", ["thread", "address"])
def test_every_kernel_runs_clean_under_the_sanitizer(sanitize):
    """ThreadSanitizer: no barrier is missing between the shared-memory stores of a slice and their
    reads (tests/test_cuda_emulation.py shows it reports one that is); AddressSanitizer: no tail
    reads or writes past a buffer."""
    reason = emulate.sanitizer_works(sanitize)
    if reason:
        pytest.skip(reason)
    exe = emulate.build_executable(linear.SOURCE, sanitizer_main(), sanitize)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **SANITIZER_ENV})
    assert done.returncode == 0 and "Sanitizer" not in done.stderr, done.stderr[-3000:]


# ---- nvcc ----------------------------------------------------------------------------------------

PTXAS = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?(\d+) bytes spill stores, "
                   r"(\d+) bytes spill loads.*?Used (\d+) registers", re.S)
R4_REGISTER_CAP = 65536 // (64 * 8)  # __launch_bounds__(64, 8): 8 blocks of 64 threads per SM


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH (the CUDA toolkit is optional)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_linear_cu_compiles_with_nvcc_without_spills(arch, tmp_path):
    """ptxas -v per kernel: no spills (local-memory traffic in the inner loop would undo the register
    blocking), and rung 4 within the 128 registers its occupancy argument assumes."""
    cmd = ["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v", f"-I{cuda_load.COMMON_DIR}", "-o",
           str(tmp_path / "linear.cubin"), str(linear.SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = {m[0]: m[1:] for m in PTXAS.findall(done.stdout + done.stderr)}
    assert set(found) == set(cuda_load.kernel_signatures(linear.SOURCE.read_text())), done.stderr
    report = []
    for name, (got_arch, spill_stores, spill_loads, registers) in sorted(found.items()):
        assert got_arch == arch
        report.append(f"{name}: {registers} registers, spills {spill_stores}/{spill_loads} B")
        assert int(spill_stores) == int(spill_loads) == 0, f"{name} spills on {arch}"
        if name.endswith("_4"):
            assert int(registers) <= R4_REGISTER_CAP, name
    print(f"\n{arch}: " + "; ".join(report))


# ---- the cupy backend ----------------------------------------------------------------------------

@pytest.mark.skipif(GPU, reason="a GPU is here: the backend is available")
def test_without_a_gpu_the_cupy_backend_is_unavailable_naming_why():
    with pytest.raises(BackendUnavailable, match=r"backend 'cupy' is not available: "
                                                 r"(cupy is not installed|no CUDA GPU)"):
        get_backend("cupy")


@gpu_only
def test_the_cupy_backend_is_registered_with_its_device():
    import cupy

    backend = get_backend("cupy")
    assert backend.name == "cupy" and backend.on_gpu and backend.xp is cupy and backend.adam is not None


@gpu_only
@pytest.mark.parametrize(("n_classes", "activation", "noise"), [(0, "tanh", "philox"), (3, "elu", "philox"),
                                                                 (0, "softplus", "generator")])
def test_vae_loss_and_gradients_match_the_numpy_backend(n_classes, activation, noise):
    """One -ELBO evaluation through every kernel (tests/trajectory.py says what is compared), with
    Philox noise or eps handed over."""
    from trajectory import assert_one_loss_matches_numpy

    assert_one_loss_matches_numpy("cupy", 70, 3, (33,), 17, noise=noise, activation=activation,
                                  n_classes=n_classes)


@gpu_only
def test_every_op_of_the_cupy_backend_matches_numpy_on_the_device():
    """The table's latent, Bernoulli and Adam ops (the CUDA C kernels of latent/, bernoulli/,
    adam/) on the GPU, against the reference table; the linear op is covered above."""
    from minivae.optim import Adam

    gpu = get_backend("cupy")
    rng = np.random.default_rng(4)
    n, d, samples = 33, 5, 2
    h = rng.standard_normal((n, 2 * d)).astype(np.float32)
    key = (123, 456)
    z, kl, cache = gpu.latent_forward(gpu.asarray(h), samples, key=key)
    z_ref, kl_ref, cache_ref = NUMPY.latent_forward(f64(h), samples, key=key)
    eps_bound = 1e-5 * (1 + np.abs(z_ref)) * (1 + np.exp(0.5 * np.abs(f64(h[:, d:]))))
    assert_within("z", z, z_ref, eps_bound)
    assert_within("kl", kl, kl_ref, 1e-5 * (np.abs(kl_ref) + d))
    dz = rng.standard_normal((samples, n, d)).astype(np.float32)
    dh = gpu.latent_backward(gpu.asarray(dz), 0.7, cache)
    dh_ref = NUMPY.latent_backward(f64(dz), 0.7, cache_ref)
    assert_within("dh", dh, dh_ref, 1e-5 * (np.abs(dh_ref) + 1) * (1 + np.exp(0.5 * np.abs(f64(h))).max()))
    x = (rng.random((n, 70)) < 0.5).astype(np.float32)
    logits = rng.normal(0, 3, (n, 70)).astype(np.float32)
    logp, dlogits = gpu.bernoulli(gpu.asarray(x), gpu.asarray(logits), -0.25)
    logp_ref, dlogits_ref = NUMPY.bernoulli(f64(x), f64(logits), -0.25)
    assert_within("logp", logp, logp_ref, 1e-5 * np.sum(np.abs(f64(logits)) + 1, axis=1))
    assert_within("dlogits", dlogits, dlogits_ref, 1e-5 * 0.25 * 2)
    p = rng.standard_normal(70).astype(np.float32)
    grads = [rng.standard_normal(70).astype(np.float32) for _ in range(3)]
    on_gpu, ref = {"p": gpu.asarray(p)}, {"p": p.copy()}
    opt_gpu = Adam(on_gpu, lr=0.01, weight_decay=0.1, backend=gpu)
    opt_ref = Adam(ref, lr=0.01, weight_decay=0.1)
    for g in grads:
        opt_gpu.step({"p": gpu.asarray(g)})
        opt_ref.step({"p": g})
    assert_within("param after 3 Adam steps", on_gpu["p"], f64(ref["p"]), 1e-5 * (np.abs(f64(p)) + 0.03))


@gpu_only
@pytest.mark.parametrize("n_classes", [0, 3])
def test_training_on_the_gpu_follows_the_numpy_backends_loss_trajectory(n_classes):
    from trajectory import assert_follows_numpy

    assert_follows_numpy("cupy", "float32", n_classes)
