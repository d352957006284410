"""The CPU emulation of CUDA C (kernels/wiring/cuda_emu.h, kernels/emulate.py) and the toolchain.

What these tests prove:

* the emulator keeps CUDA's semantics where minivae's kernels rely on them: __syncthreads() orders
  shared-memory traffic within a block, threads that return early drop out of later barriers,
  __shared__ is one array per block shared by its threads, warp shuffles and votes follow the CUDA
  documentation (checked against an independent Python model), atomicAdd loses no update;
* what it cannot emulate is reported, never silently wrong: partial-mask intrinsics, incomplete
  warps, bad launch shapes (__trap) and out-of-range launch configurations;
* arguments are checked against the kernel's C signature before a pointer is handed over;
* under ThreadSanitizer and AddressSanitizer, a kernel missing its __syncthreads() is reported as a
  data race and an off-by-one tail guard as a heap-buffer-overflow, while the correct kernels (the
  real ones included) run clean;
* every .cu compiles with nvcc for sm_80 and sm_90 without register spills (when nvcc is on PATH).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivae.kernels.wiring import cuda_load, emulate

pytestmark = pytest.mark.skipif(
    emulate.compiler() is None,
    reason=f"the CUDA emulator needs a C++20 compiler ({emulate.CXX} not on PATH)")

SELFTEST = cuda_load.KERNELS_DIR / "wiring" / "emu_selftest.cu"
KERNEL_SOURCES = sorted(p for p in cuda_load.KERNELS_DIR.glob("*/*.cu") if p != SELFTEST)  # the op kernels
WIDTHS = (1, 2, 4, 8, 16, 32)
SHUFFLES = ("idx", "up", "down", "xor")  # warp_op's op 0..3


@pytest.fixture(scope="module")
def selftest():
    return cuda_load.load(SELFTEST)


# ---- barriers and shared memory -----------------------------------------------------------------

@given(n=st.integers(1, 200), block=st.sampled_from([1, 17, 32, 64, 100, 128]))
def test_block_reverse_sees_every_store_of_its_block_after_syncthreads(selftest, n, block):
    x = np.arange(n, dtype=np.float32)
    y = np.full(n, np.nan, np.float32)
    selftest.get_function("block_reverse")(-(-n // block), block, (x, y, np.int32(n)))
    want = np.concatenate([x[s:s + block][::-1] for s in range(0, n, block)])
    np.testing.assert_array_equal(y, want)


@given(active=st.integers(0, 96), grid=st.integers(1, 3))
def test_threads_that_return_early_drop_out_of_later_barriers(selftest, active, grid):
    """Three barriers after some threads returned: no deadlock; the shared counter is the block's own
    (each block counts exactly its `active` threads)."""
    block = 96
    out = np.full(grid * block, -1, np.int32)
    selftest.get_function("early_return")(grid, block, (out, np.int32(active)))
    want = np.full((grid, block), -1, np.int32)
    want[:, :active] = (active + 1000 * np.arange(grid))[:, None]
    np.testing.assert_array_equal(out.reshape(grid, block), want)


# ---- warp intrinsics ------------------------------------------------------------------------------

def shuffle_model(x: np.ndarray, op: str, b: int, w: int) -> np.ndarray:
    """The CUDA programming guide's rules, per warp of 32 lanes split into groups of w."""
    out = np.empty_like(x)
    for i in range(x.size):
        lane, base = i % 32, i - i % 32
        if op == "idx":
            src = lane // w * w + b % w  # srcLane modulo width, within the lane's own group
        elif op == "up":
            src = lane - b if lane % w >= b else lane  # no wrap-around below the group
        elif op == "down":
            src = lane + b if lane % w + b < w else lane
        else:
            src = lane ^ b
            src = src if src // w <= lane // w else lane  # a later group's lane: own value
        out[i] = x[base + src]
    return out


@given(op=st.sampled_from(SHUFFLES), b=st.integers(0, 31), w=st.sampled_from(WIDTHS), warps=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_shuffles_follow_the_cuda_rules(selftest, op, b, w, warps, seed):
    x = np.random.default_rng(seed).integers(-2**31, 2**31, 32 * warps, dtype=np.int32)
    out = np.zeros_like(x)
    selftest.get_function("warp_op")(1, 32 * warps, (x, out, np.int32(SHUFFLES.index(op)), np.int32(b),
                                                     np.int32(w)))
    np.testing.assert_array_equal(out, shuffle_model(x, op, b, w))


def test_shfl_sync_source_lane_wraps_modulo_width(selftest):
    x = np.arange(32, dtype=np.int32)
    for src in (-1, 33, 70):
        out = np.zeros_like(x)
        selftest.get_function("warp_op")(1, 32, (x, out, np.int32(0), np.int32(src), np.int32(8)))
        np.testing.assert_array_equal(out, shuffle_model(x, "idx", src, 8))


@given(warps=st.integers(1, 3), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_votes_see_every_lane_of_their_warp(selftest, warps, density, seed):
    x = (np.random.default_rng(seed).random(32 * warps) < density).astype(np.int32)
    per_warp = x.reshape(warps, 32).astype(bool)
    ballot = (per_warp * (1 << np.arange(32, dtype=np.uint64))).sum(axis=1).astype(np.uint32).view(np.int32)
    want = {4: np.repeat(ballot, 32), 5: np.repeat(per_warp.any(axis=1), 32),
            6: np.repeat(per_warp.all(axis=1), 32)}
    for op, expected in want.items():
        out = np.full_like(x, -7)
        selftest.get_function("warp_op")(1, 32 * warps, (x, out, np.int32(op), np.int32(0), np.int32(32)))
        np.testing.assert_array_equal(out, expected.astype(np.int32), err_msg=f"op {op}")


def test_shuffles_move_8_byte_values_whole(selftest):
    x = np.random.default_rng(1).normal(size=64) * 1e300
    out = np.zeros_like(x)
    selftest.get_function("shuffle_down_f64")(1, 64, (x, out))
    want = np.where(np.arange(64) % 32 == 31, x, np.roll(x, -1))
    np.testing.assert_array_equal(out, want)


def test_atomic_add_loses_no_update_from_any_thread(selftest):
    """Integers below 2**24 add exactly in float32 in any order, so the total is exact."""
    x = np.random.default_rng(2).integers(0, 100, 1000).astype(np.float32)
    total, total64 = np.zeros(1, np.float32), np.zeros(1, np.float64)
    selftest.get_function("atomic_sum")(3, 64, (x, total, total64, np.int32(x.size)))
    assert total[0] == x.sum(dtype=np.float64) == total64[0]


# ---- what is reported instead of emulated -----------------------------------------------------------

def test_a_warp_intrinsic_in_an_incomplete_warp_is_reported(selftest):
    x = np.ones(48, np.int32)
    with pytest.raises(RuntimeError, match="lane 16 of the warp did not take part"):
        selftest.get_function("warp_op")(1, 48, (x, np.zeros_like(x), np.int32(3), np.int32(1), np.int32(32)))


def test_a_partial_mask_is_reported():
    source = "extern \"C\" __global__ void half_warp(int* out) {\n" \
             "    out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 0);\n}\n"
    module = emulate.EmulatedModule(_write_tmp_source("half_warp.cu", source))
    with pytest.raises(RuntimeError, match="partial mask"):
        module.get_function("half_warp")((1, 1, 1), (32, 1, 1), (np.zeros(32, np.int32),))


def _write_tmp_source(name: str, text: str):
    path = emulate.cache_dir() / "sources" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


@pytest.mark.parametrize("block", [48, (32, 2)])
def test_a_kernel_traps_on_a_launch_shape_it_was_not_written_for(selftest, block):
    with pytest.raises(RuntimeError, match=r"launch failure.*__trap\(\) called"):
        selftest.get_function("whole_warps_only")(1, block, (np.zeros(64, np.int32),))


@pytest.mark.parametrize("grid, block, what", [
    (1, 1025, "block"), (1, (1, 1, 65), "block"), (1, (64, 32), "block"), (1, 0, "block"),
    (0, 32, "grid"), ((1, 65536), 32, "grid"), (2**31, 32, "grid"),
])
def test_out_of_range_launch_configurations_are_refused(selftest, grid, block, what):
    with pytest.raises(ValueError, match=f"invalid configuration.*{what}"):
        selftest.get_function("whole_warps_only")(grid, block, (np.zeros(64, np.int32),))


# ---- argument checks ------------------------------------------------------------------------------

def test_signatures_are_parsed_from_the_source():
    sig = cuda_load.kernel_signatures(SELFTEST.read_text())["block_reverse"]
    assert [(p.name, p.dtype, p.pointer, p.const) for p in sig] == [
        ("x", np.float32, True, True), ("y", np.float32, True, False), ("n", np.int32, False, False)]


@pytest.mark.parametrize("args, match", [
    ((np.zeros(4), np.zeros(4, np.float32), np.int32(4)), "'x' must be a read-only float32 array.*float64"),
    ((np.zeros(8, np.float32)[::2], np.zeros(4, np.float32), np.int32(4)), "'x'.*C-contiguous"),
    ((np.zeros(4, np.float32), np.zeros(4, np.float32), 4), "'n' must be a np.int32 scalar.*got int"),
    ((np.zeros(4, np.float32), np.zeros(4, np.float32), np.int64(4)), "'n' must be a np.int32"),
    ((np.zeros(4, np.float32), np.zeros(4, np.float32)), "takes 3 arguments"),
    (([0.0] * 4, np.zeros(4, np.float32), np.int32(4)), "'x'.*got list"),
])
def test_arguments_are_checked_against_the_c_signature(selftest, args, match):
    with pytest.raises(ValueError, match=match):
        selftest.get_function("scale_by_two")(1, 32, args)


def test_read_only_output_is_refused(selftest):
    y = np.zeros(4, np.float32)
    y.setflags(write=False)
    with pytest.raises(ValueError, match="'y' must be a writeable float32 array.*read-only"):
        selftest.get_function("scale_by_two")(1, 32, (np.zeros(4, np.float32), y, np.int32(4)))


def test_kernel_sources_hold_no_emulator_specific_code():
    """CuPy and nvcc compile the very same files: plain CUDA C, kernels declared extern "C"."""
    for path in [*KERNEL_SOURCES, SELFTEST, *cuda_load.COMMON_DIR.glob("*.cuh")]:
        text = path.read_text()
        # emu:: is the emulator's namespace; NVRTC (CuPy) has no C++ standard library headers.
        assert "emu::" not in text and "#include <" not in text, path
    for path in KERNEL_SOURCES:
        assert cuda_load.kernel_signatures(path.read_text()), \
            f"{path} declares no extern \"C\" __global__ kernel"


# ---- sanitizers -----------------------------------------------------------------------------------

# block_reverse over two blocks of 64 (the second partial), then scale_by_two with a grid that
# overhangs n: the shapes where a missing barrier or tail guard shows.
SELFTEST_MAIN = """
#include <vector>
int main() {
    const int n = 100;
    std::vector<float> x(n), y(n);
    for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i);
    int status = emu::launch(block_reverse, dim3(2), dim3(64), x.data(), y.data(), n);
    if (y[0] != 63.0f || y[99] != 64.0f) status |= 1000;
    status |= emu::launch(scale_by_two, dim3(2), dim3(64), x.data(), y.data(), n);
    return status;
}
"""

# The real kernels at small odd shapes, for a clean bill under both sanitizers: block reductions
# (shared memory, warp shuffles, repeated per row), the Philox sampler, elementwise grid-strides.
KERNELS_MAIN = """
#include <vector>
int main() {
    const int n = 3, d = 45, samples = 2, pixels = 70;
    // the latent kernels read h = [mu | logvar] and write dh = [dmu | dlogvar] in place (ld = 2d)
    std::vector<float> h(n * 2 * d, 0.5f), dh(n * 2 * d), z(samples * n * d), kl(n);
    std::vector<float> mu(n * d, 0.5f), dmu(n * d, 0.1f), x(n * pixels, 1.0f), logits(n * pixels, 0.3f);
    std::vector<float> logp(n), dlogits(n * pixels), m(n * d), v(n * d);
    int status = emu::launch(latent_forward, dim3(2), dim3(64), h.data(), 2 * d, h.data() + d, 2 * d,
                             z.data(), kl.data(), n, d, samples, 7ull, 5ull);
    status |= emu::launch(latent_backward, dim3(2), dim3(50), z.data(), h.data(), 2 * d, h.data() + d, 2 * d,
                          dh.data(), 2 * d, dh.data() + d, 2 * d, n, d, samples, 7ull, 5ull, 0.1f);
    status |= emu::launch(bernoulli_forward_backward, dim3(2), dim3(64), x.data(), logits.data(), logp.data(),
                          dlogits.data(), n, pixels, -0.5f);
    status |= emu::launch(adam_step, dim3(2), dim3(50), mu.data(), dmu.data(), m.data(), v.data(),
                          static_cast<long long>(n * d), 0.1f, 0.9f, 0.999f, 0.001f, -0.01f, 0.0316f, 1e-8f,
                          0.01f, 0.9999f, 2);
    return status;
}
"""
REAL_KERNELS = [cuda_load.KERNELS_DIR / p
                for p in ("latent/cuda_c.cu", "bernoulli/cuda_c.cu", "adam/cuda_c.cu")]
SANITIZER_ENV = {
    "TSAN_OPTIONS": "halt_on_error=0 exitcode=66",
    "ASAN_OPTIONS": "detect_leaks=0",  # LeakSanitizer needs ptrace rights some CI containers lack
}


def run_sanitized(sources, main, sanitize, defines=()):
    reason = emulate.sanitizer_works(sanitize)
    if reason:
        pytest.skip(reason)
    exe = emulate.build_executable(sources, main, sanitize, defines)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **SANITIZER_ENV})
    return done.returncode, done.stderr


def test_tsan_reports_the_race_of_a_missing_syncthreads():
    rc, err = run_sanitized(SELFTEST, SELFTEST_MAIN, "thread", ["SELFTEST_DROP_SYNC"])
    assert rc != 0 and "WARNING: ThreadSanitizer: data race" in err, err[-3000:]
    assert "block_reverse" in err


def test_asan_reports_the_store_past_the_end_of_a_broken_tail_guard():
    rc, err = run_sanitized(SELFTEST, SELFTEST_MAIN, "address", ["SELFTEST_OOB_STORE"])
    assert rc != 0 and "AddressSanitizer: heap-buffer-overflow" in err, err[-3000:]
    assert "scale_by_two" in err


@pytest.mark.parametrize("sanitize", ["thread", "address"])
def test_correct_kernels_run_clean_under_the_sanitizer(sanitize):
    for sources, main in ((SELFTEST, SELFTEST_MAIN), (REAL_KERNELS, KERNELS_MAIN)):
        rc, err = run_sanitized(sources, main, sanitize)
        assert rc == 0 and "Sanitizer" not in err, err[-3000:]


# ---- nvcc -----------------------------------------------------------------------------------------

PTXAS_USED = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?"
                        r"(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers", re.S)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH (the CUDA toolkit is optional)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_cu_compiles_with_nvcc_without_spills(arch, tmp_path):
    """ptxas -v per kernel: registers and spills (the numbers the README's kernel table quotes)."""
    for source in [*KERNEL_SOURCES, SELFTEST]:
        done = subprocess.run(["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v",
                               f"-I{cuda_load.COMMON_DIR}",
                               "-o", str(tmp_path / "k.cubin"), str(source)], capture_output=True, text=True)
        assert done.returncode == 0, f"{source}:\n{done.stderr}"
        found = {m[0]: m for m in PTXAS_USED.findall(done.stdout + done.stderr)}
        assert set(found) == set(cuda_load.kernel_signatures(source.read_text())), done.stderr
        for name, (_, got_arch, spill_stores, spill_loads, registers) in found.items():
            assert got_arch == arch
            assert int(spill_stores) == int(spill_loads) == 0, f"{name} spills on {arch}"
            assert 0 < int(registers) <= 255, name
