"""``python -m bench kernels``: every op validated before and after timing, failures reported as
failures (never as a speed), rates set against ceilings measured in the same run."""

from __future__ import annotations

import numpy as np
import pytest

from bench import kernels
from minivae.backends import NUMPY, Backend
from minivae.kernels.wiring import emulate


@pytest.fixture
def small_cases(monkeypatch):
    """Training-like shapes, shrunk: the point is the bookkeeping, not the speed."""
    cases = (kernels.linear_cases([(17, 33, 9)]) + kernels.latent_cases([(17, 5)])
             + kernels.bernoulli_cases([(17, 33)]) + kernels.iwae_cases([(3, 17)])
             + kernels.adam_cases([129]))
    monkeypatch.setattr(kernels, "all_cases", lambda quick: cases)
    monkeypatch.setattr(kernels, "cpu_ceilings", lambda: {"matmul_gflops": 50.0, "copy_gbs": 10.0})
    monkeypatch.setattr(kernels, "copy_bandwidth", lambda nbytes: 10.0)
    return cases


def test_every_op_is_validated_and_timed_against_its_ceiling(small_cases):
    names = ["numpy"] + (["numba"] if _has_numba() else [])
    res = kernels.run(quick=True, backend_names=names, rounds=2, log=lambda s: None)
    assert res["gpu_ceilings"] is None
    assert len(res["rows"]) == len(small_cases) * len(names)
    for r in res["rows"]:
        assert r["status"] is None, r
        assert r["median_us"] > 0 and r["min_us"] <= r["median_us"]
        ceiling = 50.0 if r["unit"] == "GFLOP/s" else 10.0
        assert r["ceiling"] == ceiling and r["share_of_ceiling"] == pytest.approx(r["rate"] / ceiling)
    text = kernels.table(res)
    assert text.count("\n") == len(res["rows"]) + 3 and "failed" not in text


def test_a_backend_with_wrong_results_is_reported_failed_not_timed(small_cases):
    def wrong_bernoulli(x, logits, dlogp):
        logp, dlogits = NUMPY.bernoulli(x, logits, dlogp)
        return logp * 1.01, dlogits

    broken = Backend("broken", np, NUMPY.linear_forward, NUMPY.linear_backward, NUMPY.latent_forward,
                     NUMPY.latent_backward, wrong_bernoulli)
    real = kernels.backends_mod.get_backend
    get = lambda name: broken if name == "broken" else real(name)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels.backends_mod, "get_backend", get)
        res = kernels.run(quick=True, backend_names=["numpy", "broken"], rounds=1, log=lambda s: None)
    rows = {(r["op"], r["backend"]): r for r in res["rows"]}
    bad = rows[("bernoulli", "broken")]
    assert "off by" in bad["status"] and "median_us" not in bad
    assert rows[("bernoulli", "numpy")]["status"] is None
    assert all(r["status"] is None for (op, _), r in rows.items() if op != "bernoulli")
    assert "failed: output 0 is off by" in kernels.table(res)


def test_a_kernel_that_goes_wrong_while_timed_is_reported_failed(small_cases):
    """A kernel that scribbles on its input (here: shifts the logits after using them) is right on
    its first call, the warm-up's validation, and wrong on every later one: the validation after
    timing, of the very instance that was timed, catches it (a fresh instance would not)."""
    calls = []

    def drifting_bernoulli(x, logits, dlogp):
        calls.append(1)
        out = NUMPY.bernoulli(x, logits, dlogp)
        logits += 1.0
        return out

    drifting = Backend("drifting", np, NUMPY.linear_forward, NUMPY.linear_backward, NUMPY.latent_forward,
                       NUMPY.latent_backward, drifting_bernoulli)
    real = kernels.backends_mod.get_backend
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels.backends_mod, "get_backend", lambda n: drifting if n == "drifting" else real(n))
        res = kernels.run(quick=True, backend_names=["drifting"], rounds=1, log=lambda s: None)
    row = next(r for r in res["rows"] if r["op"] == "bernoulli")
    assert len(calls) >= 3 and "off by" in row["status"] and "median_us" not in row
    assert all(r["status"] is None for r in res["rows"] if r["op"] != "bernoulli")


def _has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_scaling_sweep_says_where_the_linear_op_turns_compute_bound(monkeypatch, tmp_path):
    """With a 50 GFLOP/s peak and 10 GB/s: one example through 784 -> 400 moves 1.26 MB for
    0.63 MFLOP (memory-bound); 128 x 256 -> 256 moves 0.53 MB for 16.8 MFLOP (compute-bound)."""
    cases = [c for c in kernels.scaling_cases(quick=True) if c.size in ("1x784->400", "128x256->256")]
    assert [c.op for c in cases] == ["linear_forward vs batch (784->400)",
                                     "linear_forward vs width (batch 128)"]
    monkeypatch.setattr(kernels, "all_cases", lambda quick: cases)
    monkeypatch.setattr(kernels, "cpu_ceilings", lambda: {"matmul_gflops": 50.0, "copy_gbs": 10.0})
    monkeypatch.setattr(kernels, "copy_bandwidth", lambda nbytes: 10.0)
    res = kernels.run(quick=True, backend_names=["numpy"], rounds=1, log=lambda s: None)
    memory, compute = res["rows"]
    assert memory["bound"] == "memory" and memory["roofline_us"] == pytest.approx(
        4 * (784 + 400 * 784 + 400 + 400) / 10e9 * 1e6)
    assert compute["bound"] == "compute" and compute["roofline_us"] == pytest.approx(
        2 * 128 * 256 * 256 / 50e9 * 1e6)
    assert "| memory |" in kernels.table(res) and "| compute |" in kernels.table(res)
    kernels.plot(res, tmp_path / "k.png")
    assert (tmp_path / "k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_and_full_sweeps_cover_every_op_and_the_scaling():
    ladder = {f"linear_forward (relu) rung {v}" for v in (1, 2, 3, 4)} | {
        f"linear_backward (relu) rung {v}" for v in (1, 4)}
    for quick in (True, False):
        ops = {c.op for c in kernels.all_cases(quick)}
        assert ops == {"linear_forward (relu)", "linear_backward (relu)", "latent_forward", "latent_backward",
                       "bernoulli", "importance_weights", "adam", "linear_forward vs batch (784->400)",
                       "linear_forward vs width (batch 128)"} | ladder
        assert all(c.backends == ("cupy",) for c in kernels.all_cases(quick) if c.op in ladder)
    full = kernels.all_cases(False)
    assert any(c.size == "8192x4096->4096" for c in full)  # sizes that fill a device
    assert any(c.size == "8192x784->400" for c in full) and any(c.size == "128x4096->4096" for c in full)


def test_the_command_writes_its_results_where_it_is_told(small_cases, tmp_path, monkeypatch, capsys):
    """``python -m bench kernels --name N`` with $MINIVAE_BENCH_OUT (what gpu_check.sh sets): the
    table printed last, and N.json (every number, the environment, the command), N.md, N.png."""
    import json

    from bench.__main__ import main

    monkeypatch.setenv("MINIVAE_BENCH_OUT", str(tmp_path / "out"))
    assert main(["kernels", "--quick", "--backends", "numpy", "--name", "k2"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "out" / "k2.json").read_text())
    assert out.rstrip().endswith(kernels.table(res).rstrip())
    assert res["command"] == "python -m bench kernels --quick --backends numpy --name k2"
    assert res["environment"]["numpy"] == np.__version__ and len(res["rows"]) == len(small_cases)
    assert (tmp_path / "out" / "k2.md").read_text().count("| numpy |") == len(small_cases)
    assert (tmp_path / "out" / "k2.png").read_bytes()[:4] == b"\x89PNG"


# ---- page faults ---------------------------------------------------------------------------------

def test_page_faults_per_call_count_what_each_call_allocates(monkeypatch):
    """A call that allocates and touches a fresh 64 MiB array (above glibc's mmap threshold, so it is
    mapped anew every call) faults in at least one page per 2 MiB (a huge page) on every call; a
    call that writes the same preallocated array in place, none."""
    n = 16 * 2**20  # float32s: 64 MiB
    kept = np.zeros(n, np.float32)

    def fresh(be):
        return lambda: (be.xp.full(n, 2.0, np.float32)[:8].copy(),)

    def in_place(be):
        return lambda: (np.copyto(kept, 2.0), kept[:8].copy())[1:]

    cases = [kernels.Case("fresh", "64 MiB", 4.0 * n, "bytes", fresh),
             kernels.Case("in place", "64 MiB", 4.0 * n, "bytes", in_place)]
    monkeypatch.setattr(kernels, "all_cases", lambda quick: cases)
    monkeypatch.setattr(kernels, "cpu_ceilings", lambda: {"matmul_gflops": 50.0, "copy_gbs": 10.0})
    monkeypatch.setattr(kernels, "copy_bandwidth", lambda nbytes: 10.0)
    res = kernels.run(quick=True, backend_names=["numpy"], rounds=3, log=lambda s: None)
    faults = {r["op"]: r["page_faults_per_call"] for r in res["rows"]}
    assert faults["fresh"] >= 4 * n / 2**21
    assert faults["in place"] == 0


# ---- GPU rows, on the CPU ------------------------------------------------------------------------

class StandInDevice:
    """Where GPU rows would be timed: ``time_on_device`` is replaced below, so this only names the
    device and hands out the ceilings' ops."""

    name, l2_bytes = "stand-in", 2**20

    def sgemm(self, n):
        return lambda: None

    def copy(self, nbytes):
        return lambda: None


def test_gpu_rows_are_timed_one_way_with_their_dispatch_and_streamed_as_they_finish(small_cases, monkeypatch):
    """A backend on a (stand-in) GPU: every one of its rows, GEMM or elementwise, is timed by
    ``gpu_timing.time_on_device`` with the run's rounds as samples, and only by it; its ceilings too.
    Rows carry the host's dispatch time and reach ``on_row`` as each case finishes."""
    calls = []

    def fake_time_on_device(fn, device, samples=5, clock=None):
        calls.append((fn, samples))
        fn()
        return kernels.gpu_timing.Timing([2e-6, 1e-6, 3e-6][:samples], 7e-6, 11, 1e-3, False)

    monkeypatch.setattr(kernels.gpu_timing, "time_on_device", fake_time_on_device)
    gpu = Backend("gpu-stand-in", np, NUMPY.linear_forward, NUMPY.linear_backward, NUMPY.latent_forward,
                  NUMPY.latent_backward, NUMPY.bernoulli, on_gpu=True)
    real = kernels.backends_mod.get_backend
    monkeypatch.setattr(kernels.backends_mod, "get_backend",
                        lambda n: gpu if n == "gpu-stand-in" else real(n))
    streamed = []
    res = kernels.run(quick=True, backend_names=["numpy", "gpu-stand-in"], rounds=3, log=lambda s: None,
                      on_row=streamed.append, device=StandInDevice())
    assert streamed == res["rows"]
    gpu_rows = [r for r in res["rows"] if r["backend"] == "gpu-stand-in"]
    assert len(gpu_rows) == len(small_cases)
    for r in gpu_rows:
        assert r["status"] is None, r
        assert r["median_us"] == pytest.approx(2.0) and r["min_us"] == pytest.approx(1.0)
        assert r["dispatch_us"] == pytest.approx(7.0) and r["reps"] == 11 and r["host_gaps"] is False
        assert "page_faults_per_call" not in r
    # the ceilings (SGEMM, the 1 GiB copy, one copy per distinct working set) and one call per row
    sizes = {c.work for c in small_cases if c.kind == "bytes"} | {c.traffic for c in small_cases if c.traffic}
    assert len(calls) == 2 + len(sizes) + len(gpu_rows)
    assert [samples for _, samples in calls].count(3) == len(gpu_rows)  # the ceilings take 5
    assert res["gpu_ceilings"]["device"] == "stand-in"
    assert "host us/call" in kernels.table(res) and "| 7.0 |" in kernels.table(res)


def test_an_unavailable_backend_is_skipped_naming_why(small_cases, no_cupy):
    logged = []
    res = kernels.run(quick=True, backend_names=["numpy", "cupy"], rounds=1, log=logged.append)
    assert res["backends"] == ["numpy"] and "no CUDA GPU" in res["unavailable"]["cupy"]
    assert {r["backend"] for r in res["rows"]} == {"numpy"}
    assert logged[0] == f"skipped: {res['unavailable']['cupy']}"


@pytest.mark.skipif(emulate.compiler() is None, reason="the CUDA emulator needs a C++20 compiler")
def test_the_ladder_rows_run_every_rung_against_the_reference(monkeypatch):
    """The CUDA C ladder's cases, on a stand-in ``cupy`` backend whose arrays are NumPy's (so the
    kernels run on the CPU emulator): every rung validated against the numpy backend's op."""
    cases = kernels.ladder_cases([(17, 33, 9)])
    monkeypatch.setattr(kernels, "all_cases", lambda quick: cases)
    monkeypatch.setattr(kernels, "cpu_ceilings", lambda: {"matmul_gflops": 50.0, "copy_gbs": 10.0})
    monkeypatch.setattr(kernels, "copy_bandwidth", lambda nbytes: 10.0)
    stand_in = Backend("cupy", np, NUMPY.linear_forward, NUMPY.linear_backward, NUMPY.latent_forward,
                       NUMPY.latent_backward, NUMPY.bernoulli)
    real = kernels.backends_mod.get_backend
    monkeypatch.setattr(kernels.backends_mod, "get_backend", lambda n: stand_in if n == "cupy" else real(n))
    res = kernels.run(quick=True, backend_names=["numpy", "cupy"], rounds=1, log=lambda s: None)
    assert [(r["op"], r["backend"]) for r in res["rows"]] == [(c.op, "cupy") for c in cases]
    assert all(r["status"] is None and r["median_us"] > 0 for r in res["rows"]), res["rows"]
