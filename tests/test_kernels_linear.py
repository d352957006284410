"""The fused linear(+activation) op y = act(x W^T + b) and its backward (kernels/linear/) in every
variant, every rung of the optimisation ladder and every activation, against the NumPy reference
``minivae.layers.linear_act_forward`` / ``linear_act_backward`` (the numpy backend's op).

The forward rungs 1-4 of Numba CUDA and CUDA C and the backward rungs 1 and 4 each run on sizes that
are multiples of no tile (1 x 1 included): Numba CUDA on its rung's own tiles and on smaller, odd
ones (more blocks than the simulator's small shapes would otherwise give), CUDA C on matrices that
are row-strided views with leading dimensions that are and are not multiples of 4 and bases off
16-byte alignment (the float4 paths and their scalar fallbacks), every output a view of an array
preset to NaN inside and a sentinel outside: an element never written fails (NaN), and so does a
store past a row. numba_cpu runs on its serial and its parallel path. Variants, ids and where they
run: tests/kernel_variants.py.

Tolerances are derived, not tuned (u: the unit roundoff of the kernel's dtype). A sum of K products,
in any order, with or without fma, is within K u sum |terms| of the exact value (Higham, "Accuracy
and Stability of Numerical Algorithms", 3.1, to first order); the reference is float64 from the same
inputs. So:

* y: (K + 2) u (|x| @ |W|^T + |b|) for the pre-activation (+2: the bias add and the final rounding),
  carried through unchanged because every activation here is 1-Lipschitz, plus 8 u |y| for the
  activation's own evaluation (CUDA's tanhf, expf, expm1f, log1pf are within 2 ulps);
* G = dy * act'(.), formed in the kernel's dtype from the forward's output y: within 10 u |dy| s(y),
  where s(y) >= |act'| is the size of the terms act' is made of (1 for relu and leaky_relu, |y| + 1
  for elu, 1 + y^2 for tanh, |y| (1 + |y|) for sigmoid; for softplus act' itself, -expm1(-y), whose
  relative error is at most y's) -- so a cancellation such as elu's y + 1 near y = -1 is not asked
  for digits the dtype does not hold, while softplus' tiny slopes far left must keep their digits;
  with the GEMM's K u on top, dx, dW, db are within (K + 10) u of |dy| s(y) multiplied into |W|,
  |x| or summed. The reference G is formed from the very y the kernel's backward took, so a kink
  (relu at 0) is judged on the same side.
"""

from __future__ import annotations

from kernel_variants import HAVE_NUMBA, select_simulator

select_simulator()

import ast  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kernel_variants import (  # noqa: E402
    DTYPES,
    MARKS,
    TIMEOUT,
    TINY,
    assert_rejects,
    assert_within,
    cuda_c_backend,
    examples,
    f64,
    host,
    kernel_module,
    numba_cuda_outputs_start_as_nan,  # noqa: F401  (an autouse fixture)
    params,
    to_device,
    unit,
    variants,
)

from minivae.backends import NUMPY  # noqa: E402
from minivae.kernels import linear as linear_codes  # noqa: E402
from minivae.kernels.linear import cuda_c  # noqa: E402
from minivae.kernels.wiring import cuda_load, emulate  # noqa: E402
from minivae.layers import ACTIVATIONS  # noqa: E402

pytestmark = TIMEOUT
ACTS = list(linear_codes.ACT_CODES)
if HAVE_NUMBA:
    from minivae.kernels.linear import numba_cuda as _numba_cuda  # noqa: E402  (after the simulator's selection)

    NUMBA_CUDA_VERSIONS = {"forward": _numba_cuda.FORWARD_VERSIONS, "backward": _numba_cuda.BACKWARD_VERSIONS}
else:
    NUMBA_CUDA_VERSIONS = {"forward": (), "backward": ()}
# The rungs each variant has; numba_cpu has one form (BLAS and a fused pass), no ladder.
VERSIONS = {"numba_cpu": {"forward": (None,), "backward": (None,)}, "numba_cuda": NUMBA_CUDA_VERSIONS,
            "cuda_c": {"forward": tuple(cuda_c.FORWARD), "backward": tuple(cuda_c.BACKWARD)}}
VERSIONS["cupy"] = VERSIONS["cuda_c"]


def cases(direction: str, acts=ACTS, versions: dict | None = None) -> list:
    """(variant, version, act) for every rung of every variant in ``direction``, every act."""
    versions = versions or {v: VERSIONS[v][direction] for v in MARKS}
    return [params(v, r, act, id=("" if r is None else f"rung{r}-") + str(act))
            for v in MARKS for r in versions[v] for act in acts]


# ---- where each variant's arrays come from ---------------------------------------------------------

SIZES = {"numba_cpu": [1, 2, 3, 5, 17, 31, 33, 64, 65, 129], "numba_cuda": [1, 17, 33],
         "cuda_c": [1, 2, 3, 5, 8, 17, 31, 33, 63, 64, 65, 70]}
SIZES["cupy"] = SIZES["cuda_c"]
PATHS = {"serial": 1 << 62, "parallel": 0}  # numba_cpu: the threshold above every shape, or below
SENTINEL = -12345.0  # fills the padding around every CUDA C output view: a store past a row changes it
# How a CUDA C matrix of width w sits in memory: (leading dimension, columns skipped before the
# view): contiguous; ld the next multiple of 4 past w, aligned (float4 loads, and the chunk at the
# tail of a row would reach into the next columns if its guard failed); ld odd (scalar loads); ld a
# multiple of 4 but the base 4 bytes off 16-byte alignment (scalar loads: a float4 load there is a
# GPU fault).
LAYOUTS = ["contiguous", "ld % 4 == 0", "ld odd", "misaligned"]


def small_tiles(version: int):
    """Numba CUDA tiles unlike the rung's own, smaller (more blocks on small shapes): not square, and
    for rungs 3 and 4 a k-slice wider than a thread's patch."""
    tiles = _numba_cuda.Tiles
    return {1: tiles(bm=16, bn=8, bk=1, tm=1, tn=1), 2: tiles(bm=8, bn=8, bk=8, tm=1, tn=1),
            3: tiles(bm=16, bn=32, bk=4, tm=4, tn=1), 4: tiles(bm=16, bn=32, bk=16, tm=2, tn=8)}[version]


def launches(variant: str, version, direction: str) -> st.SearchStrategy:
    """A variant's own knobs: numba_cpu's path, Numba CUDA's tiles (None: the rung's own), the
    layouts of CUDA C's matrices (x, W, y forward; inputs and outputs backward)."""
    if variant == "numba_cpu":
        return st.sampled_from(list(PATHS))
    if variant == "numba_cuda":
        return st.sampled_from([None, small_tiles(version)])
    return st.tuples(*[st.sampled_from(LAYOUTS)] * (3 if direction == "forward" else 2))


def default_launch(variant: str, direction: str):
    """numba_cpu's serial path, Numba CUDA's own tiles, CUDA C's contiguous matrices."""
    if variant in ("cuda_c", "cupy"):
        return ("contiguous",) * (3 if direction == "forward" else 2)
    return "serial" if variant == "numba_cpu" else None


def leading_dimension(layout: str, w: int) -> tuple[int, int]:
    """(ld, shift) of ``layout`` for a matrix ``w`` columns wide."""
    return {"contiguous": (w, 0), "ld % 4 == 0": (w + 4 - w % 4, 0), "ld odd": (w + 1 + w % 2, 0),
            "misaligned": (w + 4 - w % 4, 1)}[layout]


def embed(variant: str, a: np.ndarray, layout: str, fill: float | None = None):
    """(view, whole): ``a`` (or ``fill``) as a view with ``layout`` into a wider array whose other
    columns hold SENTINEL; ``whole`` is that array, for checking what a kernel wrote."""
    rows, cols = a.shape
    ld, shift = leading_dimension(layout, cols)
    whole = np.full((rows, shift + ld), SENTINEL, np.float32)
    whole[:, shift:shift + cols] = a if fill is None else fill
    whole = to_device(variant, whole)
    return whole[:, shift:shift + cols], whole


def check_padding(name: str, whole, layout: str, cols: int) -> None:
    shift = leading_dimension(layout, cols)[1]
    w = host(whole)
    outside = np.concatenate([w[:, :shift], w[:, shift + cols:]], axis=1)
    assert (outside == SENTINEL).all(), f"{name}: a kernel wrote outside the view's columns"


def layer(seed: int, n: int, d_in: int, d_out: int, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(dtype)
    W = (rng.standard_normal((d_out, d_in)) * rng.choice([0.3, 1, 3]) / np.sqrt(d_in)).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype)
    dy = rng.standard_normal((n, d_out)).astype(dtype)
    return x, W, b, dy


def terms_of_act_grad(y: np.ndarray, act: str | None) -> np.ndarray:
    """s(y) >= |act'|: the size of what act'(.) is computed from (see the module docstring)."""
    if act == "softplus":  # sigmoid(x) = -expm1(-y): as accurate, relatively, as y itself
        return -np.expm1(-y)
    y = np.abs(y)
    return {"elu": y + 1, "tanh": 1 + y * y, "sigmoid": y * (1 + y)}.get(act, np.ones_like(y))


def reference_g(dy: np.ndarray, y: np.ndarray, act: str | None) -> np.ndarray:
    """G = dy * act'(.) by the reference activation's backward, from the output y."""
    if act is None:
        return dy
    _, bwd, key, default = ACTIVATIONS[act]
    return bwd(dy, y if key is None else (y, default))


# ---- the variants, run the same way ----------------------------------------------------------------

def run_forward(variant: str, version, act, x, W, b, launch):
    """``variant``'s y at ``version`` (host array)."""
    mod = kernel_module("linear", variant)
    if variant == "numba_cpu":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mod, "PARALLEL_MIN_ELEMENTS", PATHS[launch])
            y, _ = mod.linear_forward(x, W, b, act)
        return y
    if variant == "numba_cuda":
        y = mod.forward(*(to_device(variant, a) for a in (x, W, b)), act, version=version, tiles=launch)
        return host(y)
    layout_x, layout_W, layout_y = launch
    xv, _ = embed(variant, x, layout_x)
    Wv, _ = embed(variant, W, layout_W)
    yv, y_whole = embed(variant, np.zeros((x.shape[0], W.shape[0]), np.float32), layout_y, fill=np.nan)
    got = mod.forward(xv, Wv, to_device(variant, b), act, version=version, backend=cuda_c_backend(variant),
                      out=yv)
    assert got is yv
    check_padding("y", y_whole, layout_y, W.shape[0])
    return host(yv)


def check_forward(variant: str, version, act, x, W, b, launch) -> None:
    y = run_forward(variant, version, act, x, W, b, launch)
    u, tiny = unit(x.dtype), TINY[x.dtype]
    want, _ = NUMPY.linear_forward(f64(x), f64(W), f64(b), act)
    pre_bound = (x.shape[1] + 2) * u * (np.abs(f64(x)) @ np.abs(f64(W)).T + np.abs(f64(b)))
    assert_within(f"y ({variant}, rung {version}, {act}, {launch})", y, want,
                  pre_bound + 8 * u * np.abs(want) + tiny)


def run_backward(variant: str, version, act, x, W, b, dy, need_dx, launch):
    """(dx, dW, db, y): ``variant``'s backward at ``version`` and the forward output y it formed G
    from (numba_cpu: its own forward's; the GPU variants: the reference's in their dtype)."""
    mod = kernel_module("linear", variant)
    if variant == "numba_cpu":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mod, "PARALLEL_MIN_ELEMENTS", PATHS[launch])
            y, cache = mod.linear_forward(x, W, b, act)
            dx, dW, db = mod.linear_backward(dy, cache, need_dx)
        for name, a in (("dx", dx), ("dW", dW), ("db", db)):
            assert a is None or a.dtype == x.dtype, f"{name} is {a.dtype}, not {x.dtype}"
        return dx, dW, db, y
    y = NUMPY.linear_forward(f64(x), f64(W), f64(b), act)[0].astype(x.dtype)
    if variant == "numba_cuda":
        dev = [to_device(variant, a) for a in (dy, x, W, y)]
        got = mod.backward(*dev[:3], None if act is None else dev[3], act, need_dx=need_dx, version=version,
                           tiles=launch)
        return (*(None if a is None else host(a) for a in got), y)
    n, d_in, d_out = x.shape[0], x.shape[1], W.shape[0]
    layout_in, layout_out = launch
    views = [embed(variant, a, layout_in)[0] for a in (dy, x, W, y)]
    dx_v, dx_whole = embed(variant, np.zeros((n, d_in), np.float32), layout_out, fill=np.nan)
    dW_v, dW_whole = embed(variant, np.zeros((d_out, d_in), np.float32), layout_out, fill=np.nan)
    db = to_device(variant, np.full(d_out, np.nan, np.float32))
    dx, dW, db = mod.backward(*views[:3], None if act is None else views[3], act, need_dx=need_dx,
                              version=version, backend=cuda_c_backend(variant),
                              out=(dx_v if need_dx else None, dW_v, db))
    if need_dx:
        check_padding("dx", dx_whole, layout_out, d_in)
    else:
        assert np.isnan(host(dx_v)).all(), "dx written though need_dx is False"
    check_padding("dW", dW_whole, layout_out, d_in)
    return None if dx is None else host(dx), host(dW), host(db), y


def check_backward(variant: str, version, act, x, W, b, dy, need_dx, launch) -> None:
    dx, dW, db, y = run_backward(variant, version, act, x, W, b, dy, need_dx, launch)
    n, d_out = dy.shape
    u, tiny = unit(x.dtype), TINY[x.dtype]
    g = reference_g(f64(dy), f64(y), act)
    g_size = np.abs(f64(dy)) * terms_of_act_grad(f64(y), act)  # >= |G|, and G's error / 10 u
    what = f"({variant}, rung {version}, {act}, {launch})"
    if need_dx:
        assert_within(f"dx {what}", dx, g @ f64(W), (d_out + 10) * u * (g_size @ np.abs(f64(W))) + tiny)
    else:
        assert dx is None
    assert_within(f"dW {what}", dW, g.T @ f64(x), (n + 10) * u * (g_size.T @ np.abs(f64(x))) + tiny)
    assert_within(f"db {what}", db, g.sum(axis=0), (n + 10) * u * g_size.sum(axis=0) + tiny)


# ---- every variant, every rung, every activation --------------------------------------------------

@pytest.mark.parametrize(("variant", "version", "act"), cases("forward"))
def test_forward_matches_the_reference(variant, version, act):

    @examples(variant, n=8, simulator=2)
    @given(n=st.sampled_from(SIZES[variant]), d_in=st.sampled_from(SIZES[variant]),
           d_out=st.sampled_from(SIZES[variant]), dtype=st.sampled_from(DTYPES[variant]),
           launch=launches(variant, version, "forward"), seed=st.integers(0, 2**32 - 1))
    def check(n, d_in, d_out, dtype, launch, seed):
        x, W, b, _ = layer(seed, n, d_in, d_out, dtype)
        check_forward(variant, version, act, x, W, b, launch)

    check()


@pytest.mark.parametrize(("variant", "version", "act"), cases("backward"))
def test_backward_matches_the_reference(variant, version, act):

    @examples(variant, n=8, simulator=2)
    @given(n=st.sampled_from(SIZES[variant]), d_in=st.sampled_from(SIZES[variant]),
           d_out=st.sampled_from(SIZES[variant]), dtype=st.sampled_from(DTYPES[variant]),
           launch=launches(variant, version, "backward"), need_dx=st.booleans(),
           seed=st.integers(0, 2**32 - 1))
    def check(n, d_in, d_out, dtype, launch, need_dx, seed):
        x, W, b, dy = layer(seed, n, d_in, d_out, dtype)
        check_backward(variant, version, act, x, W, b, dy, need_dx, launch)

    check()


@pytest.mark.parametrize(("variant", "version", "act"), cases(
    "backward", ACTS[1:], {"numba_cpu": (None,), "numba_cuda": (4,), "cuda_c": (1, 4), "cupy": (1, 4)}))
def test_extreme_pre_activations(variant, version, act):
    """Exact pre-activations +-1e4, +-88 (float32's exp range), +-20, +-1e-30 and 0 (x = I, W =
    diag(v)), then pre-activations near +-5, +-20, +-100 from a layer: exp overflows unless each
    activation takes its stable form, and softplus' slope far left (sigmoid(-20) = 2e-9) must not
    round to 0 (1 - e^-y would). Numba CUDA's rungs share one activation pair: rung 4 stands for them."""
    v = np.array([-1e4, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 1e4], np.float32)
    exact = (np.eye(len(v), dtype=np.float32), np.diag(v), np.zeros(len(v), np.float32),
             np.ones((len(v), len(v)), np.float32))
    x, W, _, dy = layer(3, 9, 5, 6)
    near = (0.01 * x, W, np.array([-100, -20, -5, 5, 20, 100], np.float32), dy)
    for path in (list(PATHS) if variant == "numba_cpu" else [None]):
        for xx, WW, bb, dd in (exact, near):
            forward, backward = (path or default_launch(variant, d) for d in ("forward", "backward"))
            check_forward(variant, version, act, xx, WW, bb, forward)
            check_backward(variant, version, act, xx, WW, bb, dd, True, backward)


# ---- CUDA C: layouts, allocation, launches it was not written for, sanitizers, nvcc -----------------

@pytest.mark.parametrize("variant", variants("cuda_c", "cupy"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_production_kernels_on_several_tiles_in_every_layout(variant, layout):
    """Rung 4 over a 3 x 3 grid of 64-tiles with tails in every dimension (129 = 2 x 64 + 1), each
    layout on every matrix at once: float4 loads and stores, or their scalar fallbacks."""
    x, W, b, dy = layer(7, 129, 70, 130)
    check_forward(variant, 4, "softplus", x, W, b, (layout,) * 3)
    check_backward(variant, 4, "elu", x, W, b, dy, True, (layout,) * 2)


@pytest.mark.parametrize("variant", variants("cuda_c", "cupy"))
def test_outputs_are_allocated_when_not_given(variant):
    x, W, b, dy = layer(5, 9, 5, 6)
    backend = cuda_c_backend(variant)
    y = cuda_c.forward(*(to_device(variant, a) for a in (x, W, b)), "tanh", backend=backend)
    want_y, cache = NUMPY.linear_forward(f64(x), f64(W), f64(b), "tanh")
    assert_within("y", y, want_y, 1e-5)
    got = cuda_c.backward(*(to_device(variant, a) for a in (dy, x, W)), y, "tanh", backend=backend)
    wants = NUMPY.linear_backward(f64(dy), cache, True)
    for name, g, want in zip(("dx", "dW", "db"), got, wants, strict=True):
        assert_within(name, g, want, 1e-5 * (1 + np.abs(want)))


KERNELS = {  # every kernel of kernels/linear/cuda_c.cu -> its Rung (block and tile)
    **{r.kernel: r for r in cuda_c.FORWARD.values()},
    **{r.kernel: r for pair in cuda_c.BACKWARD.values() for r in pair},
}
needs_compiler = MARKS["cuda_c"]


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
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("fault", ["block shape", "grid short of the output", "act code 7", "act code -1"])
def test_cuda_c_kernels_trap_on_a_launch_they_were_not_written_for(kernel, fault):
    """__trap(), which the host sees as a launch failure, never a silently partial result."""
    rung = KERNELS[kernel]
    fn = cuda_load.load(cuda_c.SOURCE).get_function(kernel)
    size = 65  # one past a 64-tile, a 32-wide block and a 16-tile
    grid, block, act = cuda_c._grid(rung, size, size), rung.block, 0
    fn(grid, block, raw_args(kernel, size, act))  # the right launch runs
    if fault == "block shape":  # naive kernels take any 2-D block, so give them a 3-D one
        block = (*block, 2) if block == cuda_c.NAIVE_BLOCK else (block[0] // 2, block[1] * 2)
    elif fault == "grid short of the output":
        grid = (grid[0], grid[1] - 1)
    else:
        act = int(fault.split()[-1])
    with pytest.raises(RuntimeError, match=r"launch failure.*__trap\(\) called"):
        fn(grid, block, raw_args(kernel, size, act))


def test_the_cuda_c_kernels_activation_parameters_are_the_layers_defaults():
    """The backend table passes only the activation's name; kernels/linear/cuda_c.cu hard-codes its
    parameter, and numbers the activations as kernels/linear/__init__.py's ACT_CODES."""
    text = cuda_c.SOURCE.read_text()
    for name, constant in (("leaky_relu", "LEAKY_SLOPE"), ("elu", "ELU_ALPHA")):
        value = float(re.search(rf"constexpr float {constant} = ([0-9.e+-]+)f;", text).group(1))
        assert value == ACTIVATIONS[name][3], name
    codes = dict(re.findall(r"ACT_(\w+) = (\d)", text))
    assert {k.lower(): int(v) for k, v in codes.items()} == {
        "none" if a is None else a: c for a, c in linear_codes.ACT_CODES.items()}


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
    for name, rung in sorted(KERNELS.items()):
        kind = "forward" if name.startswith("linear_forward") else name.split("_")[2]
        grid = cuda_c._grid(rung, *sizes[kind])
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
def test_every_cuda_c_kernel_runs_clean_under_the_sanitizer(sanitize):
    """ThreadSanitizer: no barrier is missing between the shared-memory stores of a slice and their
    reads (tests/test_cuda_emulation.py shows it reports one that is); AddressSanitizer: no tail
    reads or writes past a buffer."""
    reason = emulate.sanitizer_works(sanitize)
    if reason:
        pytest.skip(reason)
    exe = emulate.build_executable(cuda_c.SOURCE, sanitizer_main(), sanitize)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **SANITIZER_ENV})
    assert done.returncode == 0 and "Sanitizer" not in done.stderr, done.stderr[-3000:]


PTXAS = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?(\d+) bytes spill stores, "
                   r"(\d+) bytes spill loads.*?Used (\d+) registers", re.S)
R4_REGISTER_CAP = 65536 // (64 * 8)  # __launch_bounds__(64, 8): 8 blocks of 64 threads per SM


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH (the CUDA toolkit is optional)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_linear_cu_compiles_with_nvcc_without_spills(arch, tmp_path):
    """ptxas -v per kernel: no spills (local-memory traffic in the inner loop would undo the register
    blocking), and rung 4 within the 128 registers its occupancy argument assumes."""
    cmd = ["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v", f"-I{cuda_load.COMMON_DIR}", "-o",
           str(tmp_path / "linear.cubin"), str(cuda_c.SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = {m[0]: m[1:] for m in PTXAS.findall(done.stdout + done.stderr)}
    assert set(found) == set(cuda_load.kernel_signatures(cuda_c.SOURCE.read_text())), done.stderr
    report = []
    for name, (got_arch, spill_stores, spill_loads, registers) in sorted(found.items()):
        assert got_arch == arch
        report.append(f"{name}: {registers} registers, spills {spill_stores}/{spill_loads} B")
        assert int(spill_stores) == int(spill_loads) == 0, f"{name} spills on {arch}"
        if name.endswith("_4"):
            assert int(registers) <= R4_REGISTER_CAP, name
    print(f"\n{arch}: " + "; ".join(report))


# ---- the ladder: one numbering, one wording ------------------------------------------------------

def test_cuda_c_numbers_and_names_the_rungs_as_rungs_does_and_reads_them_top_to_bottom():
    """cuda_c.cu's header lists kernels/linear/__init__.py's RUNGS word for word, its forward kernels
    come in rung order, and cuda_c.py dispatches on exactly those numbers, by default on
    PRODUCTION_RUNG."""
    rungs = linear_codes.RUNGS
    text = cuda_c.SOURCE.read_text()
    header = text.split("#include")[0]
    assert {int(n): words for n, words in re.findall(r"^//   (\d) (.+)$", header, re.M)} == rungs
    assert tuple(cuda_c.FORWARD) == tuple(rungs) and set(cuda_c.BACKWARD) <= set(rungs)
    first = [text.index(f"void {rung.kernel}(") for _, rung in sorted(cuda_c.FORWARD.items())]
    assert first == sorted(first)
    # every kernel of a rung comes after the previous rung's, and the helpers only the tiled rungs use
    # come after rung 1, each just before the first rung that uses it
    kernels = [(int(name[-1]), text.index(f"void {name}(")) for name in re.findall(
        r"void (linear_(?:forward|backward_dx|backward_dw)_\d)\(", text)]
    assert [n for n, _ in sorted(kernels, key=lambda k: k[1])] == sorted(n for n, _ in kernels)
    where = {n: min(pos for m, pos in kernels if m == n) for n, _ in kernels}
    for helper, user in (("void for_each_k_slice(", 2), ("void load_rows(", 3), ("void load_cols(", 3)):
        assert where[user - 1] < text.index(helper) < where[user], helper
    assert cuda_c.PRODUCTION == linear_codes.PRODUCTION_RUNG
    for launcher in (cuda_c.forward, cuda_c.backward):
        assert inspect.signature(launcher).parameters["version"].default == linear_codes.PRODUCTION_RUNG


@MARKS["numba_cuda"]
def test_numba_cuda_numbers_and_names_the_rungs_as_rungs_does_and_reads_them_top_to_bottom():
    """numba_cuda.py's docstring lists RUNGS word for word, the one-line comment over each rung's
    kernels says what RUNGS says, in rung order; it dispatches on exactly those numbers (the
    backward on CUDA C's backward rungs), by default on PRODUCTION_RUNG."""
    rungs = linear_codes.RUNGS
    text = open(_numba_cuda.__file__).read()
    docstring = ast.get_docstring(ast.parse(text))
    assert {int(n): words for n, words in re.findall(r"^  (\d) (.+)$", docstring, re.M)} == rungs
    comments = re.findall(r"^# Rung (\d) -- (.+)$", text, re.M)
    assert [int(n) for n, _ in comments] == sorted(rungs)
    assert {int(n): words for n, words in comments} == rungs
    assert _numba_cuda.FORWARD_VERSIONS == tuple(rungs)
    assert _numba_cuda.BACKWARD_VERSIONS == tuple(cuda_c.BACKWARD)
    for launcher in (_numba_cuda.forward, _numba_cuda.backward):
        assert inspect.signature(launcher).parameters["version"].default == linear_codes.PRODUCTION_RUNG


# ---- numba_cpu: its fused passes on NaN-preset outputs ----------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES["numba_cpu"])
@pytest.mark.parametrize("serial", [True, False])
def test_numba_cpu_kernels_write_every_output_element(dtype, serial):
    """The launchers allocate with np.empty; here the fused passes themselves get outputs preset to
    NaN (odd sizes, both paths): an element a pass skipped stays NaN and fails."""
    linear_cpu = kernel_module("linear", "numba_cpu")
    rng = np.random.default_rng(5)
    n, m = 17, 129
    pick = (lambda a, b: a) if serial else (lambda a, b: b)
    y = rng.standard_normal((n, m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    for act in ACTS:
        code = linear_codes.ACT_CODES[act]
        yy = y.copy()  # the forward works in place: every element must be overwritten by act(y + b)
        pick(linear_cpu._forward_serial, linear_cpu._forward_parallel)(yy, b, code)
        assert np.isfinite(yy).all(), act
        if act is not None:
            g, db = np.full_like(y, np.nan), np.full(m, np.nan, dtype)
            pick(linear_cpu._backward_serial, linear_cpu._backward_parallel)(y, yy, code, g, db)
            assert np.isfinite(g).all() and np.isfinite(db).all(), act


# ---- launcher checks: each names the argument (a raw kernel would silently misread the memory) -----

def _cases_of(variant: str):
    return lambda call, match, id: params(variant, call, match, id=id)


cpu, nbcuda, cc = _cases_of("numba_cpu"), _cases_of("numba_cuda"), _cases_of("cuda_c")


def _cpu_backward(m, z):
    _, cache = m.linear_forward(z(4, 3), z(5, 3), z(5), "relu")
    return m.linear_backward(z(5, 5), cache)


def _forward(m, z, **kwargs):
    """The forward of a (2, 3) -> (2, 4) layer, with some arguments replaced."""
    args = {"x": z(2, 3), "W": z(4, 3), "b": z(4), **kwargs}
    return m.forward(args.pop("x"), args.pop("W"), args.pop("b"), **args)


def _backward(m, z, **kwargs):
    """The backward of a (2, 3) -> (2, 4) layer without activation, with some arguments replaced."""
    args = {"dy": z(2, 4), "x": z(2, 3), "W": z(4, 3), "y": None, **kwargs}
    return m.backward(args.pop("dy"), args.pop("x"), args.pop("W"), args.pop("y"), **args)


def _read_only(z):
    out = z(2, 4)
    out.setflags(write=False)
    return out


def _tiles(**kw):
    return _numba_cuda.Tiles(**({"bm": 32, "bn": 32, "bk": 8, "tm": 4, "tn": 4} | kw))


REJECTED = [
    cpu(lambda m, z: m.linear_forward(z(2, 3), z(4, 3), z(4), "gelu"), "act must be None or one of",
        "unknown activation"),
    cpu(_cpu_backward, r"dy must have the forward output's shape \(4, 5\)", "dy shape"),
    nbcuda(lambda m, z: _forward(m, z, W=z(4, 3, dtype=np.float64)), "W must be .* float32", "W float64"),
    nbcuda(lambda m, z: _forward(m, z, x=z(2, 3, dtype=np.float16)), "x must be .*float32 or float64",
           "x float16"),
    nbcuda(lambda m, z: _forward(m, z, x=z(3, 2).T), "x must be a C-contiguous", "x transposed"),
    nbcuda(lambda m, z: _forward(m, z, W=z(4, 2)), r"W must .* shape \(any, 3\)", "W shape"),
    nbcuda(lambda m, z: _forward(m, z, b=z(5)), r"b must .* shape \(4,\)", "b shape"),
    nbcuda(lambda m, z: _forward(m, z, x=[[0.0]]), "x must be .* got list", "x a list"),
    nbcuda(lambda m, z: _forward(m, z, act="gelu"), "act must be", "unknown activation"),
    nbcuda(lambda m, z: _forward(m, z, x=z(0, 3)), "N must be", "no rows"),
    nbcuda(lambda m, z: _forward(m, z, tiles=_tiles(tm=3)), "tiles", "tm does not divide bm"),
    nbcuda(lambda m, z: _forward(m, z, version=2, tiles=_tiles()), r"rung 2 takes tiles with .* bk = bm = bn",
           "rung 4's tiles on rung 2"),
    nbcuda(lambda m, z: _forward(m, z, version=1, tiles=_tiles(bm=64, bn=32, tm=1, tn=1, bk=1)),
           "2048 threads per block", "a block of 2048 threads"),
    nbcuda(lambda m, z: _forward(m, z, tiles=(32, 32, 8, 4, 4)), "tiles must be a Tiles", "tiles a tuple"),
    nbcuda(lambda m, z: _forward(m, z, version=5), r"version must be one of \[1, 2, 3, 4\]", "version 5"),
    nbcuda(lambda m, z: _forward(m, z, version=True), "version must be one of", "version True"),
    nbcuda(lambda m, z: _forward(m, z, x=z(2**19, 1), W=z(4, 1), version=1),
           r"524288 output rows need 65536 row tiles of 8, more than gridDim.y allows \(65535\)",
           "rows past gridDim.y"),
    nbcuda(lambda m, z: _backward(m, z, act="relu"), "y must be", "no y with an activation"),
    nbcuda(lambda m, z: _backward(m, z, version=2), r"version must be one of \[1, 4\]", "backward version 2"),
    cc(lambda m, z: _forward(m, z, x=z(2, 3).astype(np.float64)), r"x must be a float32 numpy array",
       "x float64"),
    cc(lambda m, z: _forward(m, z, W=z(4, 2)), r"W must be .* shape \(any, 3\)", "W shape"),
    cc(lambda m, z: _forward(m, z, b=z(3)), r"b must be .* shape \(4,\)", "b shape"),
    cc(lambda m, z: _forward(m, z, x=z(3, 2).T), r"x must be .*adjacent columns.*strides", "x transposed"),
    cc(lambda m, z: _forward(m, z, x=z(2, 6)[:, ::2]), r"x must .*got \(24, 8\)", "x strided columns"),
    cc(lambda m, z: _forward(m, z, x=z(0, 3)), r"x.shape\[0\] must be an integer in \[1,", "no rows"),
    cc(lambda m, z: _forward(m, z, act="gelu"), r"act must be None or one of relu", "unknown activation"),
    cc(lambda m, z: _forward(m, z, version=5), r"version must be one of \[1, 2, 3, 4\]", "version 5"),
    cc(lambda m, z: _forward(m, z, version=True), r"version must be one of", "version True"),
    cc(lambda m, z: _forward(m, z, out=z(2, 5)), r"out must be .* shape \(2, 4\)", "out shape"),
    cc(lambda m, z: _forward(m, z, out=_read_only(z)), "out must be writeable", "out read-only"),
    cc(lambda m, z: _forward(m, z, backend="opencl"), r"backend must be one of", "backend opencl"),
    cc(lambda m, z: _forward(m, z, x=z(2**21, 1), W=z(4, 1), version=2),
       r"2097152 output rows need 131072 row tiles of 16 .* gridDim.y limit of 65535", "rows past gridDim.y"),
    cc(lambda m, z: _backward(m, z, x=z(3, 3)), r"x must be .* \(2, any\)", "x rows"),
    cc(lambda m, z: _backward(m, z, act="relu"), r"y must be a float32 numpy", "no y with an activation"),
    cc(lambda m, z: _backward(m, z, version=2), r"version must be one of \[1, 4\]", "backward version 2"),
    cc(lambda m, z: _backward(m, z, need_dx=False, out=(z(2, 3), z(4, 3), z(4))), r"out\[0\] \(dx\) must be",
       "dx given without need_dx"),
    cc(lambda m, z: _backward(m, z, out=(None, z(4, 3), z(3))), r"out\[2\] \(db\) must be .* shape \(4,\)",
       "db shape"),
    cc(lambda m, z: _backward(m, z, out=z(4, 3)), r"out must be a tuple", "out not a tuple"),
]


@pytest.mark.parametrize(("variant", "call", "match"), REJECTED)
def test_launchers_reject_bad_arguments_naming_them(variant, call, match):
    assert_rejects("linear", variant, call, match)

