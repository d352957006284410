"""``python -m bench kernels``: every op validated before and after timing, failures reported as
failures (never as a speed), rates set against ceilings measured in the same run, beside the row
and on its working set; a call timed twice in one run agrees with itself or is timed again side by
side. Nothing here asserts a speed: the rules of the bench's code are checked on its own numbers."""

from __future__ import annotations

import numpy as np
import pytest
from stand_in_gpu import StandInDevice

from bench import ceilings, kernels
from minivae.backends import NUMPY, Backend
from minivae.kernels.wiring import emulate

# The run's ceilings in the tests below: a 50 GFLOP/s matmul, 10 GB/s of memory, 1e9 exp and 2e9
# log per second. With no probes beside the rows (case_probes patched out), every row meets these.
RATES = {"compute": 50.0, "memory": 10.0, "exp": 1e9, "log": 2e9}
RUN_CEILINGS = {"matmul_gflops": 50.0, "memory_gbs": 10.0, "exp_per_s": 1e9, "log_per_s": 2e9}


def fixed_ceilings(monkeypatch):
    monkeypatch.setattr(kernels, "cpu_ceilings", lambda: dict(RUN_CEILINGS))
    monkeypatch.setattr(kernels, "case_probes", lambda case, threads=1: {})


@pytest.fixture
def small_cases(monkeypatch):
    """Training-like shapes, shrunk: the point is the bookkeeping, not the speed."""
    cases = (kernels.linear_cases([(17, 33, 9)]) + kernels.latent_cases([(17, 5)])
             + kernels.bernoulli_cases([(17, 33)]) + kernels.iwae_cases([(3, 17)])
             + kernels.adam_cases([129]))
    monkeypatch.setattr(kernels, "all_cases", lambda quick: cases)
    fixed_ceilings(monkeypatch)
    return cases


def _floors_us(case: kernels.Case) -> dict[str, float]:
    """The floors the module docstring promises, at RATES."""
    floors = {"memory": (case.traffic if case.kind == "flops" else case.work) / 10e9 * 1e6}
    if case.kind == "flops":
        floors["compute"] = case.work / 50e9 * 1e6
    if case.exps or case.logs:
        floors["exp/log"] = (case.exps / 1e9 + case.logs / 2e9) * 1e6
    return floors


def test_every_op_is_validated_and_timed_against_its_ceilings(small_cases):
    names = ["numpy"] + (["numba"] if _has_numba() else [])
    res = kernels.run(quick=True, backend_names=names, rounds=2, log=lambda s: None)
    assert res["gpu_ceilings"] is None
    assert len(res["rows"]) == len(small_cases) * len(names)
    by_op = {c.op: c for c in small_cases}
    for r in res["rows"]:
        assert r["status"] is None, r
        assert r["min_us"] <= r["q1_us"] <= r["median_us"] <= r["q3_us"]
        assert r["ceilings"] == RATES
        floors = _floors_us(by_op[r["op"]])
        assert r["floors_us"] == pytest.approx(floors)
        assert r["bound"] == max(floors, key=floors.__getitem__) and r["roofline_us"] == max(floors.values())
        assert r["share_of_ceiling"] == pytest.approx(r["roofline_us"] / r["median_us"])
        assert ("over_ceiling" in r) == (r["share_of_ceiling"] > 1)
    text = kernels.table(res)
    notes = sum(len(kernels.row_notes(r)) for r in res["rows"])
    assert text.count("\n") == len(res["rows"]) + 5 + (notes + 1 if notes else 0) and "failed" not in text


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
    fixed_ceilings(monkeypatch)
    res = kernels.run(quick=True, backend_names=["numpy"], rounds=1, log=lambda s: None)
    memory, compute = res["rows"]
    assert memory["bound"] == "memory" and memory["roofline_us"] == pytest.approx(
        4 * (784 + 400 * 784 + 400 + 400) / 10e9 * 1e6)
    assert compute["bound"] == "compute" and compute["roofline_us"] == pytest.approx(
        2 * 128 * 256 * 256 / 50e9 * 1e6)
    assert "| memory |" in kernels.table(res) and "| compute |" in kernels.table(res)
    assert kernels.plot(res, tmp_path / "k.png") == [tmp_path / "k-linear.png"]
    assert (tmp_path / "k-linear.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figures_join_sweeps_in_size_order_and_leave_unrelated_shapes_apart():
    """The batch sweep (given out of order) is one line in size order; the linear op's layers
    (128x784->400 beside 128x400->40) are separate points, never joined."""
    def row(op, size, median):
        return {"op": op, "size": size, "backend": "numpy", "median_us": median, "share_of_ceiling": 0.5,
                "roofline_us": median / 2}

    res = {"rows": [row("linear_forward vs batch (784->400)", "1024x784->400", 40.0),
                    row("linear_forward vs batch (784->400)", "1x784->400", 1.0),
                    row("linear_forward vs batch (784->400)", "32x784->400", 4.0),
                    row("linear_forward (relu)", "128x784->400", 9.0),
                    row("linear_forward (relu)", "128x400->40", 2.0)]}
    ((fam, fig),) = list(kernels.figures(res))
    top = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    sweep = top["linear_forward vs batch (784->400)"]
    assert [t.get_text() for t in sweep.get_xticklabels()] == ["1x784->400", "32x784->400", "1024x784->400"]
    (series, _) = [ln for ln in sweep.lines if ln.get_label() in ("numpy", "CPU floor")]
    assert list(series.get_ydata()) == [1.0, 4.0, 40.0] and series.get_linestyle() == "-"
    layers = top["linear_forward (relu)"]
    assert [t.get_text() for t in layers.get_xticklabels()] == ["128x400->40", "128x784->400"]
    points = [ln for ln in layers.lines if ln.get_label() in ("numpy", "CPU floor")]
    assert len(points) == 2 and all(ln.get_linestyle() == "None" for ln in points)
    assert kernels.is_sweep(["128x64->64", "128x1024->1024"]) and not kernels.is_sweep(["128x20", "8192x64"])


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
    for family in kernels.FAMILIES:  # one figure per family of ops
        assert (tmp_path / "out" / f"k2-{family}.png").read_bytes()[:4] == b"\x89PNG"


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
    fixed_ceilings(monkeypatch)
    res = kernels.run(quick=True, backend_names=["numpy"], rounds=3, log=lambda s: None)
    faults = {r["op"]: r["page_faults_per_call"] for r in res["rows"]}
    assert faults["fresh"] >= 4 * n / 2**21
    assert faults["in place"] == 0


# ---- GPU rows, on the CPU ------------------------------------------------------------------------

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
    # the ceilings (SGEMM, the 1 GiB copy, exp and log each both ways, one copy per distinct working
    # set) and one call per row
    sizes = {c.work for c in small_cases if c.kind == "bytes"} | {c.traffic for c in small_cases if c.traffic}
    assert len(calls) == 2 + 4 + len(sizes) + len(gpu_rows)
    assert [samples for _, samples in calls].count(3) == len(gpu_rows)  # the ceilings take 5
    for r in gpu_rows:  # rated against the GPU's ceilings: SGEMM, the device copy, exp and log
        g = res["gpu_ceilings"]
        assert r["ceilings"]["compute"] == g["matmul_gflops"] and r["ceilings"]["exp"] == g["exp_per_s"]
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
    fixed_ceilings(monkeypatch)
    stand_in = Backend("cupy", np, NUMPY.linear_forward, NUMPY.linear_backward, NUMPY.latent_forward,
                       NUMPY.latent_backward, NUMPY.bernoulli)
    real = kernels.backends_mod.get_backend
    monkeypatch.setattr(kernels.backends_mod, "get_backend", lambda n: stand_in if n == "cupy" else real(n))
    res = kernels.run(quick=True, backend_names=["numpy", "cupy"], rounds=1, log=lambda s: None)
    assert [(r["op"], r["backend"]) for r in res["rows"]] == [(c.op, "cupy") for c in cases]
    assert all(r["status"] is None and r["median_us"] > 0 for r in res["rows"]), res["rows"]


def test_numba_cuda_in_the_simulator_is_skipped_never_timed(small_cases, monkeypatch):
    """Under Numba's simulator numba-cuda is available but runs on the CPU: a run skips it, saying
    so (python -m bench ladder validates those kernels), and times the rest."""
    simulated = Backend("numba-cuda", np, NUMPY.linear_forward, NUMPY.linear_backward, NUMPY.latent_forward,
                        NUMPY.latent_backward, NUMPY.bernoulli, on_gpu=False)
    real = kernels.backends_mod.get_backend
    monkeypatch.setattr(kernels.backends_mod, "get_backend",
                        lambda n: simulated if n == "numba-cuda" else real(n))
    logged = []
    res = kernels.run(quick=True, backend_names=["numpy", "numba-cuda"], rounds=1, log=logged.append)
    assert res["backends"] == ["numpy"] and "simulator" in res["unavailable"]["numba-cuda"]
    assert {r["backend"] for r in res["rows"]} == {"numpy"} and logged[0].startswith("skipped:")


# ---- ceilings: beside the row, on its working set ------------------------------------------------

def test_the_probes_move_the_rows_own_bytes_and_are_timed_in_its_rounds(monkeypatch):
    """A row's memory probes move exactly its bytes (a GEMM's: its traffic), to within an element
    per array; a GEMM has the matmul probe, an op with exp or log the exp and log probes; and all of
    them are timed by the same call as the row, interleaved with it."""
    fwd, _ = kernels.linear_cases([(17, 33, 9)])
    (bern,) = kernels.bernoulli_cases([(17, 33)])
    (adam,) = kernels.adam_cases([129])
    for case, nbytes in ((fwd, fwd.traffic), (bern, bern.work), (adam, adam.work)):
        probes = kernels.case_probes(case)
        for name in ceilings.MEMORY:
            assert nbytes - 3 * kernels.F32 < probes[name].amount <= nbytes, (case.op, name)
        assert ("matmul" in probes) == (case.kind == "flops")
        assert {"numpy exp", "numpy log"} <= set(probes) if case.exps else not any("exp" in k for k in probes)
    timed = []
    real = kernels.time_interleaved

    def spy(fns, rounds, **kw):
        timed.append(sorted(fns))
        return real(fns, rounds, **kw)

    monkeypatch.setattr(kernels, "time_interleaved", spy)
    monkeypatch.setattr(kernels, "all_cases", lambda quick: [bern])
    monkeypatch.setattr(kernels, "cpu_ceilings", lambda: dict(RUN_CEILINGS))
    no_op = {"numpy exp": ceilings.Probe("exp", lambda: None, 1.0),
             "numpy log": ceilings.Probe("log", lambda: None, 1.0)}
    monkeypatch.setattr(kernels.ceilings, "transcendental_probes", lambda threads=1: no_op)
    res = kernels.run(quick=True, backend_names=["numpy"], rounds=2, log=lambda s: None)
    assert timed == [["numpy", "probe copy", "probe numpy exp", "probe numpy log", "probe update"]]
    (row,) = res["rows"]
    # the memory, exp and log rates are the probes' timed beside the row (no run-wide number stands
    # in for them), and the row says which probe set each, on how many threads
    assert row["ceilings"]["memory"] != RUN_CEILINGS["memory_gbs"]
    assert row["ceilings"]["exp"] != RUN_CEILINGS["exp_per_s"]
    assert row["threads"] == 1 and row["ceiling_probes"]["exp"] == "numpy exp on 1 thread"
    assert row["ceiling_probes"]["memory"] in ("copy on 1 thread", "update on 1 thread")


def test_a_rows_probes_run_on_as_many_threads_as_its_kernel(monkeypatch):
    """Each kernel's thread count at a size follows its module's PARALLEL_MIN_ELEMENTS; a one-thread
    row gets NumPy's memory probes and the one-thread exp/log forms, a parallel one Numba prange
    probes and vecmath on every Numba thread, each moving the row's own bytes. Timed together, each
    row is rated against its own set and records which probe set each ceiling."""
    if not _has_numba():
        pytest.skip("without Numba every kernel and probe runs on one thread")
    from minivae.kernels.adam import numba_cpu as adam
    from minivae.kernels.bernoulli import numba_cpu as bernoulli
    from minivae.kernels.linear import numba_cpu as linear

    pool = ceilings.numba_threads()
    assert kernels.kernel_threads("adam", (adam.PARALLEL_MIN_ELEMENTS - 1,)) == 1
    assert kernels.kernel_threads("adam", (adam.PARALLEL_MIN_ELEMENTS,)) == pool
    below = adam.MANY_PARALLEL_MIN_ELEMENTS // 2 - 1
    assert kernels.kernel_threads("adam_many", ((below,), (below,))) == 1
    assert kernels.kernel_threads("adam_many", ((below + 1,), (below + 1,))) == pool
    assert kernels.kernel_threads("bernoulli", (bernoulli.F32_PARALLEL_MIN_ELEMENTS // 8, 8)) == pool
    assert kernels.kernel_threads("linear", (1, 3, linear.PARALLEL_MIN_ELEMENTS - 1)) == 1
    assert kernels.kernel_threads("latent_forward", (1 << 24, 64)) == 1  # a serial kernel only
    assert kernels.adam_cases([adam.PARALLEL_MIN_ELEMENTS])[0].threads == pool
    (bern,) = kernels.bernoulli_cases([(17, 33)])
    one, every = kernels.case_probes(bern, 1), kernels.case_probes(bern, pool)
    assert {k: p.threads for k, p in one.items()} == {
        "copy": 1, "update": 1, "numpy exp": 1, "numpy log": 1, "vecmath 1-thread exp": 1,
        "vecmath 1-thread log": 1}
    if pool == 1:
        return
    assert {k: p.threads for k, p in every.items()} == {
        "parallel copy": pool, "parallel update": pool, "vecmath exp": pool, "vecmath log": pool}
    for probes in (one, every):
        for p in probes.values():
            p.fn()  # they run
        for name in [k for k, p in probes.items() if p.resource == "memory"]:
            assert bern.work - 3 * kernels.F32 < probes[name].amount <= bern.work
    timer = kernels.Timer(1, dict(RUN_CEILINGS), None)
    samples, rates = timer.measure(bern, {"serial": lambda: None, "parallel": lambda: None},
                                   {"serial": False, "parallel": False}, {"serial": 1, "parallel": pool})
    assert samples["serial"].extra["threads"] == 1 and samples["parallel"].extra["threads"] == pool
    serial, parallel = samples["serial"].extra["ceiling_probes"], samples["parallel"].extra["ceiling_probes"]
    assert serial["memory"] in ("copy on 1 thread", "update on 1 thread")
    assert parallel["memory"] in (f"parallel copy on {pool} threads", f"parallel update on {pool} threads")
    assert parallel["exp"] == f"vecmath exp on {pool} threads"
    assert rates["serial"] != rates["parallel"]


def test_the_memory_ceiling_is_the_faster_of_a_copy_and_an_in_place_update():
    probes = {"copy": ceilings.Probe("memory", lambda: None, 8e6),
              "update": ceilings.Probe("memory", lambda: None, 12e6)}
    assert ceilings.rates(probes, {"copy": 1e-3, "update": 1e-3}) == {"memory": 12.0}
    assert ceilings.rates(probes, {"copy": 1e-3, "update": 2e-3}) == {"memory": 8.0}


def test_the_matmul_peak_times_the_one_matmul_probe(monkeypatch):
    """bench train's and bench kernels' peak sample the ceilings' matmul probe: the product it times
    is the BLAS's n x n x n one, its rate 2 n^3 FLOPs over the time the product took."""
    n = 9
    probe = ceilings.matmul_probe(n)
    probe.fn()
    cells = (c.cell_contents for c in probe.fn.__closure__)
    arrays = dict(zip(probe.fn.__code__.co_freevars, cells, strict=True))
    want = arrays["a"].astype(np.float64) @ arrays["b"]
    np.testing.assert_allclose(arrays["out"], want, rtol=1e-5)
    assert probe.amount == 2.0 * n**3 and probe.resource == "compute"
    clock = iter([1.0, 1.25, 2.0, 2.5])
    monkeypatch.setattr(ceilings.time, "perf_counter", lambda: next(clock))
    sample = ceilings.matmul_sampler(n)
    assert sample() == pytest.approx(2 * n**3 / 0.25 / 1e9)
    assert sample() == pytest.approx(2 * n**3 / 0.5 / 1e9)


def test_a_result_is_held_to_the_ladders_rule_its_tolerance_grown_with_the_sum_it_is():
    """bench kernels validates with bench/validate.py's rule against the numpy backend's output,
    scaled by the reference's largest magnitude: an error a K = 1000 GEMM may make fails an
    elementwise op; NaN passes only where the reference has it."""
    gemm = kernels.linear_cases([(4, 1000, 3)])[0]
    (elementwise,) = kernels.bernoulli_cases([(4, 3)])
    assert kernels.reduction_terms(gemm.op, (4, 1000, 3)) == 1000
    ref = np.array([[2.0, -1.0, 0.5]] * 4, np.float32)
    off = ref.copy()
    # 1.5e-4 of the scale (2): within 1e-5 + 4 (1000 + 10) u, past 1e-5 + 4 (3 + 10) u
    off[1, 1] += 2.0 * 1.5e-4
    assert kernels._close((off,), (ref,), NUMPY, gemm) is None
    assert "off by" in kernels._close((off, off), (ref, ref), NUMPY, elementwise)
    with_nan = ref.copy()
    with_nan[0, 0] = np.nan
    assert kernels._close((with_nan,), (with_nan,), NUMPY, elementwise) is None
    assert "NaN at 1 elements" in kernels._close((with_nan,), (ref,), NUMPY, elementwise)
    assert "shape" in kernels._close((ref[:2],), (ref,), NUMPY, gemm)


def test_the_bound_is_the_largest_floor_and_a_row_over_its_ceiling_says_why():
    """Napkin math on chosen numbers: 1e6 elements with one exp and one log each, 12 MB moved. At
    10 GB/s memory and 1e9 exp, 2e9 log per second the floors are 1.2 ms (memory) and 1.5 ms
    (exp/log): exp/log binds; with exp and log ten times faster memory binds. A row faster than its
    floor is marked, and the table says why under it instead of printing >100% silently."""
    row = kernels.napkin(12e6, "bytes", 0.0, 1e6, 1e6, 3e-3, RATES)
    assert row["floors_us"] == pytest.approx({"memory": 1200.0, "exp/log": 1500.0})
    assert row["bound"] == "exp/log" and row["share_of_ceiling"] == pytest.approx(0.5)
    assert row["rate"] == pytest.approx(4.0) and row["unit"] == "GB/s" and "over_ceiling" not in row
    fast = kernels.napkin(12e6, "bytes", 0.0, 1e6, 1e6, 3e-3, RATES | {"exp": 1e10, "log": 2e10})
    assert fast["bound"] == "memory" and fast["share_of_ceiling"] == pytest.approx(0.4)
    gemm = kernels.napkin(1e9, "flops", 4e6, 0.0, 0.0, 0.01, RATES)
    assert gemm["floors_us"] == pytest.approx({"compute": 2e4, "memory": 400.0})
    assert gemm["bound"] == "compute"
    over = kernels.napkin(12e6, "bytes", 0.0, 0.0, 0.0, 1e-3, RATES)
    assert over["share_of_ceiling"] == pytest.approx(1.2)
    # no reason measured: both numbers, and "not explained"
    assert over["over_ceiling"] == ("not explained: median 1000.0 us under the memory floor of 1200.0 us "
                                    "(12.0 GB/s against the ceiling's 10.0 GB/s)")
    named = kernels.timed_row(kernels.adam_cases([428_571])[0],
                              kernels.Samples([1e-3], {"ceiling_probes": {"memory": "update on 1 thread"}}),
                              RATES)
    assert named["over_ceiling"].endswith("; ceiling from update on 1 thread")
    spread = {"median_us": 1000.0, "min_us": 990.0, "q1_us": 995.0, "q3_us": 1010.0}
    res = {"ceilings": RUN_CEILINGS, "rounds": 3, "rows": [
        {"op": "adam", "size": "3000000", "backend": "numpy", "status": None} | spread | over]}
    text = kernels.table(res)
    assert "| 120% (1) |" in text
    assert text.endswith(f"1. adam 3000000 numpy: over 100%, {over['over_ceiling']}.")


@pytest.mark.parametrize("op, shape, make", [
    ("latent_forward", (17, 5), lambda: kernels.latent_cases([(17, 5)])[0]),
    ("latent_backward", (17, 5), lambda: kernels.latent_cases([(17, 5)])[1]),
    ("bernoulli", (17, 33), lambda: kernels.bernoulli_cases([(17, 33)])[0]),
    ("importance_weights", (3, 17), lambda: kernels.iwae_cases([(3, 17)])[0]),
])
def test_exp_log_counts_are_no_more_than_the_reference_evaluates(op, shape, make, monkeypatch):
    """The counts are floors: at most the exp (exp, expm1) and log (log, log1p) evaluations of the
    NumPy reference, counted element by element while it runs the case, and not zero."""
    case = make()
    counted = {"exp": 0, "log": 0}
    for name, kind in (("exp", "exp"), ("expm1", "exp"), ("log", "log"), ("log1p", "log")):
        real = getattr(np, name)

        def counting(x, *args, real=real, kind=kind, **kw):
            counted[kind] += np.size(x)
            return real(x, *args, **kw)

        monkeypatch.setattr(np, name, counting)
    case.make(NUMPY)()
    assert (case.exps, case.logs) == kernels.exp_log_count(op, shape)
    assert 0 < case.exps <= counted["exp"] and case.logs <= counted["log"]
    assert case.logs > 0 or op == "latent_backward"


# ---- a call timed twice in one run -----------------------------------------------------------------

def _repeated(monkeypatch):
    fwd = kernels.linear_cases([(17, 33, 9)])[0]
    again = kernels.Case("linear_forward vs batch (784->400)", fwd.size, fwd.work, fwd.kind, fwd.make,
                         fwd.traffic, call="linear_forward (relu)")
    monkeypatch.setattr(kernels, "all_cases", lambda quick: [fwd, again])
    fixed_ceilings(monkeypatch)


def test_a_call_timed_twice_in_one_run_is_held_to_the_rule_the_bench_enforces(monkeypatch):
    """The same call at the same size, timed twice in one run (as the scaling sweep repeats a
    linear row): the later row names the earlier, and says whether the two agree by ``agree``'s
    rule on the numbers the run reports; when they do not, both were timed again side by side and
    say so. Whatever the machine's load, the row's verdict and the table follow the rule."""
    _repeated(monkeypatch)
    streamed = []
    res = kernels.run(quick=True, backend_names=["numpy"], rounds=3, log=lambda s: None,
                      on_row=streamed.append)
    first, second = res["rows"]
    assert second["repeats"] == 0 and "repeats" not in first
    assert second["agrees"] == kernels.agree(first, second)
    assert ("first_median_us" in second) == ("first_median_us" in first) == any(
        r.get("restated") for r in streamed)
    if not second["agrees"]:
        assert "disagrees with the earlier row" in kernels.table(res)


def test_a_repeat_that_disagrees_is_timed_again_side_by_side(monkeypatch):
    """Scripted samples: the first timing gives 100 us, the repeat 200 us (the load changed between
    them); the bench times both instances again in one interleaved set of rounds, and both rows
    report that measurement, the first numbers kept beside; the earlier row is streamed again."""
    _repeated(monkeypatch)
    script = iter([[100e-6] * 3, [200e-6] * 3, None])
    calls = []

    def scripted(fns, rounds, **kw):
        calls.append(sorted(fns))
        times = next(script)
        if times is None:  # the side-by-side timing
            return {"earlier": kernels.Samples([150e-6, 151e-6, 152e-6]),
                    "later": kernels.Samples([149e-6, 151e-6, 153e-6])}
        return {name: kernels.Samples(list(times)) for name in fns}

    monkeypatch.setattr(kernels, "time_interleaved", scripted)
    streamed = []
    res = kernels.run(quick=True, backend_names=["numpy"], rounds=3, log=lambda s: None,
                      on_row=streamed.append)
    assert calls == [["numpy"], ["numpy"], ["earlier", "later"]]
    first, second = res["rows"]
    assert first["median_us"] == pytest.approx(151.0) and first["first_median_us"] == pytest.approx(100.0)
    assert second["median_us"] == pytest.approx(151.0) and second["first_median_us"] == pytest.approx(200.0)
    assert second["agrees"] is True and second["repeats"] == 0
    assert [r.get("restated", False) for r in streamed] == [False, True, False]
    assert streamed[1]["median_us"] == first["median_us"]
    text = kernels.table(res)
    assert "first timed at 100.0 us" in text and "first timed at 200.0 us" in text


def test_agreement_is_overlap_of_the_reported_spreads():
    a = {"min_us": 100.0, "q3_us": 110.0}
    assert kernels.agree(a, {"min_us": 105.0, "q3_us": 130.0})
    assert kernels.agree(a, {"min_us": 112.0, "q3_us": 120.0})  # 2% apart: within AGREE_SLACK
    assert not kernels.agree(a, {"min_us": 120.0, "q3_us": 125.0})
    assert not kernels.agree({"min_us": 200.0, "q3_us": 210.0}, a)


def test_each_round_starts_one_further_on():
    names = ["a", "b", "c"]
    assert [kernels.rotated(names, r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert names == ["a", "b", "c"]


def test_each_callable_is_warmed_up_and_its_samples_rotate(monkeypatch):
    """The method itself: every callable warmed up (at least WARMUP_CALLS calls) before any sample,
    then one sample each per round, the order rotated from round to round."""
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    out = kernels.time_interleaved(fns, rounds=3, sample_s=0.0, warmup_s=0.0)
    warm = kernels.WARMUP_CALLS
    assert order[:3 * warm] == ["a"] * warm + ["b"] * warm + ["c"] * warm
    assert order[3 * warm:] == list("abc") + list("bca") + list("cab")
    assert all(len(s.seconds) == 3 and s.extra["calls_per_sample"] == 1 for s in out.values())
