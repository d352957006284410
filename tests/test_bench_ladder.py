"""``python -m bench ladder``: every version of every op appears, validated against the NumPy
reference; what runs emulated says so and has no speed; a wrong version is reported failed and never
timed; the table's columns and ratios follow from its own rows. Nothing here asserts a speed.

Numba's CUDA simulator is selected at import, as the command does first thing (and as
tests/kernel_variants.py does): without a GPU the Numba CUDA versions run there, the CUDA C
ones on the host emulator. Sizes are shrunk and rounds few: the point is the bookkeeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stand_in_gpu import StandInDevice

from bench import kernels, ladder
from minivae.kernels.linear import RUNGS

ladder.select_simulator()

ROOT = Path(__file__).resolve().parents[1]
RUN_CEILINGS = {"matmul_gflops": 50.0, "memory_gbs": 10.0, "exp_per_s": 1e9, "log_per_s": 2e9}


@pytest.fixture
def tiny(monkeypatch):
    """Small odd sizes everywhere (still a multiple of no tile), the run's ceilings fixed and no
    probes timed beside the rows."""
    monkeypatch.setattr(ladder, "VALIDATE", {"linear": (9, 13, 5), "latent": (7, 3), "bernoulli": (5, 11),
                                             "importance_weights": (3, 7), "adam": (37,)})
    sizes = {"linear": [(17, 33, 9)], "latent": [(17, 5)], "bernoulli": [(17, 33)],
             "importance_weights": [(5, 17)], "adam": [(129,)]}
    monkeypatch.setattr(ladder, "SIZES", {True: sizes, False: sizes})
    monkeypatch.setattr(kernels, "cpu_ceilings", lambda: dict(RUN_CEILINGS))
    monkeypatch.setattr(kernels, "case_probes", lambda case, threads=1: {})


def _expected_versions(variants_with_rungs: dict[str, list[int]]) -> list[str]:
    out = []
    for variant in ladder.VARIANTS:
        rungs = variants_with_rungs.get(variant)
        out += [f"{variant} {v}" for v in rungs] if rungs else [variant]
    return out


def test_every_version_of_the_linear_op_appears_validated(tiny):
    """Forward: the reference, Numba CPU, every Numba CUDA rung, CUDA C rungs 1-4, the GPU vendor
    way; backward: the same with rungs 1 and 4. Each either timed (on the CPU here), or validated
    and marked emulated with no speed, or not run saying why."""
    from minivae.kernels.linear import cuda_c, numba_cuda

    res = ladder.run(("linear",), quick=True, rounds=2, log=lambda s: None)
    places = ladder.places()
    directions = (("linear_forward (relu)", numba_cuda.FORWARD_VERSIONS, cuda_c.FORWARD),
                  ("linear_backward (relu)", numba_cuda.BACKWARD_VERSIONS, cuda_c.BACKWARD))
    for op, numba_rungs, c_rungs in directions:
        rows = [r for r in res["rows"] if r["op"] == op]
        assert [r["version"] for r in rows] == _expected_versions(
            {"numba-cuda": list(numba_rungs), "cuda-c": list(c_rungs)})
        for r in rows:
            _check_row(r, places[r["variant"]])
            if r["rung"] is not None:
                assert r["adds"] == RUNGS[r["rung"]]
    assert res["validated_at"] == {"linear": (9, 13, 5)}
    assert {r["validated_at"] for r in res["rows"]} == {"9x13->5"}


def _check_row(r: dict, place) -> None:
    if isinstance(place, str):
        assert r["status"] == f"not run: {place}" and "median_us" not in r
    elif not place.timed:
        assert r["status"] is None, r
        assert r["note"] == ladder.EMULATED and "median_us" not in r and "rate" not in r
        assert r["where"] == place.label
    else:
        assert r["status"] is None, r
        assert r["median_us"] > 0 and r["min_us"] <= r["median_us"] <= r["q3_us"]
        assert r["share_of_ceiling"] == pytest.approx(r["roofline_us"] / r["median_us"])


@pytest.mark.parametrize("family", ["latent", "bernoulli", "importance_weights", "adam"])
def test_every_version_of_the_other_ops_appears_validated(tiny, family):
    res = ladder.run((family,), quick=True, rounds=2, log=lambda s: None)
    places = ladder.places()
    ops = list(dict.fromkeys(r["op"] for r in res["rows"]))
    assert len(ops) == (2 if family == "latent" else 1)
    for op in ops:
        rows = [r for r in res["rows"] if r["op"] == op]
        # Adam: the numba backend's one call over every tensor beside its kernel called per tensor
        extra = {"numba-cpu": ["numba-cpu adam_many"]} if family == "adam" else {}
        assert [r["version"] for r in rows] == [n for v in ladder.VARIANTS for n in [v, *extra.get(v, [])]]
        for r in rows:
            _check_row(r, places[r["variant"]])
    text = ladder.table(res)
    assert f"## {family}" in text and text.count(f"| {ladder.EMULATED} |") == sum(
        r.get("note") == ladder.EMULATED for r in res["rows"])


def test_without_a_gpu_the_gpu_versions_are_emulated_and_never_timed():
    """The CUDA C versions on the host emulator, the Numba CUDA ones in Numba's simulator (chosen
    at this module's import), cupy-vendor not run: no version on a GPU is given a speed here."""
    places = ladder.places()
    if ladder.cupy_on_a_gpu() is not None:
        pytest.skip("a GPU is here: its versions are timed on it")
    assert places["cupy-vendor"] == "no GPU"
    for variant in ("cuda-c", "numba-cuda"):
        place = places[variant]
        assert isinstance(place, ladder.Place), place
        assert not place.timed and not place.on_gpu
    assert places["numba-cuda"].label == "cpu (Numba's CUDA simulator)"
    assert places["cuda-c"].label == "cpu (CUDA C emulator)"


def test_a_wrong_version_is_reported_failed_and_never_timed(tiny, monkeypatch):
    """Numba CPU's Bernoulli returning logp 1% off, and CUDA C's returning dlogits with one element
    changed: both failed at the validation size, naming the output; neither is timed (not even
    handed to the timer), and the rest still are."""
    from minivae.kernels.bernoulli import cuda_c, numba_cpu

    real_cpu, real_c = numba_cpu.bernoulli, cuda_c.bernoulli_forward_backward

    def off(x, logits, dlogp):
        logp, dlogits = real_cpu(x, logits, dlogp)
        return logp * 1.01, dlogits

    def one_wrong(*args, **kw):
        logp, dlogits = real_c(*args, **kw)
        dlogits.reshape(-1)[-1] += 1.0  # the last element: a missed tail would look like this
        return logp, dlogits

    monkeypatch.setattr(numba_cpu, "bernoulli", off)
    monkeypatch.setattr(cuda_c, "bernoulli_forward_backward", one_wrong)
    timed = []
    real_measure = kernels.Timer.measure

    def spy(self, case, fns, on_gpu, threads=None):
        timed.append(sorted(fns))
        return real_measure(self, case, fns, on_gpu, threads)

    monkeypatch.setattr(kernels.Timer, "measure", spy)
    res = ladder.run(("bernoulli",), quick=True, rounds=1, log=lambda s: None)
    rows = {r["version"]: r for r in res["rows"]}
    assert rows["numba-cpu"]["status"].startswith("failed at 5x11: logp is off by")
    assert "median_us" not in rows["numba-cpu"] and "rate" not in rows["numba-cpu"]
    if isinstance(ladder.places()["cuda-c"], ladder.Place):
        assert rows["cuda-c"]["status"].startswith("failed at 5x11: dlogits is off by")
        assert "note" not in rows["cuda-c"] and "median_us" not in rows["cuda-c"]
    assert timed == [["numpy"]] and rows["numpy"]["status"] is None
    text = ladder.table(res)
    assert "| failed at 5x11: logp is off by" in text


def test_a_version_that_goes_wrong_while_timed_is_reported_failed(tiny, monkeypatch):
    """A version right on its first calls and wrong afterwards (it scribbles on its input): the
    validation after timing, of the very instance that was timed, reports it failed."""
    from minivae.kernels.importance_weights import numba_cpu

    real = numba_cpu.importance_weights
    calls = []

    def drifting(log_w):
        calls.append(1)
        out = real(log_w)
        if len(calls) > 2:  # the small size's validation, the timed size's first call
            log_w += 1.0
        return out

    monkeypatch.setattr(numba_cpu, "importance_weights", drifting)
    res = ladder.run(("importance_weights",), quick=True, rounds=1, log=lambda s: None)
    row = next(r for r in res["rows"] if r["version"] == "numba-cpu")
    assert row["status"].startswith("failed at 5x17:") and "median_us" not in row


# ---- validation ------------------------------------------------------------------------------------

def test_adams_validation_sees_every_moment_over_steps_from_a_running_state(tiny, monkeypatch):
    """Adam is validated over ADAM_STEPS steps from non-zero m and v: a version with beta1 and beta2
    swapped, and one that leaves m untouched (p still right), are both reported failed and never
    timed; the rest, adam_many among them, pass on several tensors at once."""
    from minivae.kernels.adam import cuda_c, numba_cpu

    real_adam, real_c = numba_cpu.adam, cuda_c.adam_step

    def swapped(p, g, m, v, *, beta1, beta2, **kw):
        real_adam(p, g, m, v, beta1=beta2, beta2=beta1, **kw)

    def m_untouched(param, grad, exp_avg, exp_avg_sq, **kw):
        before = exp_avg.copy()
        real_c(param, grad, exp_avg, exp_avg_sq, **kw)
        exp_avg[...] = before

    monkeypatch.setattr(numba_cpu, "adam", swapped)
    monkeypatch.setattr(cuda_c, "adam_step", m_untouched)
    monkeypatch.setattr(ladder, "SIZES", {True: {"adam": [((5, 7), (5,), (41,))]}})
    res = ladder.run(("adam",), quick=True, rounds=1, log=lambda s: None)
    rows = {r["version"]: r for r in res["rows"]}
    assert rows["numba-cpu"]["status"].startswith("failed at 37: p is off by"), rows["numba-cpu"]
    assert "median_us" not in rows["numba-cpu"]
    if isinstance(ladder.places()["cuda-c"], ladder.Place):
        assert rows["cuda-c"]["status"].startswith("failed at 37: "), rows["cuda-c"]
        assert " is off by " in rows["cuda-c"]["status"] and "note" not in rows["cuda-c"]
    for name in ("numpy", "numba-cpu adam_many"):
        assert rows[name]["status"] is None and rows[name]["median_us"] > 0, rows[name]
        assert rows[name]["size"] == "3 tensors, 81"
    # m and v are checked on their own: m left as it was, or moved with beta2 as its weight, fails
    # m's check; v moved with another beta2 fails v's
    d = ladder._adam_data((37,))
    expect = {e.name: e for e in ladder._adam_reference(d)}
    assert ladder.check(d["m"], expect["m"]) is not None
    for output, bad in (("m", {"beta1": 0.999, "beta2": 0.9}), ("v", {"beta2": 0.99})):
        got = {k: [a.copy() for a in v] for k, v in d.items()}
        for step in range(ladder.ADAM_STEP0 + 1, ladder.ADAM_STEP0 + ladder.ADAM_STEPS + 1):
            real_adam(got["p"][0], got["g"][0], got["m"][0], got["v"][0], step=step, decoupled=False,
                      **(ladder.ADAM | bad))
        assert ladder.check(got[output], expect[output]) is not None, output
    good = {k: [a.copy() for a in v] for k, v in d.items()}
    for step in range(ladder.ADAM_STEP0 + 1, ladder.ADAM_STEP0 + ladder.ADAM_STEPS + 1):
        real_adam(good["p"][0], good["g"][0], good["m"][0], good["v"][0], step=step, decoupled=False,
                  **ladder.ADAM)
    assert all(ladder.check(good[k], expect[k]) is None for k in "pmv")


def test_adams_reference_is_the_rule_from_its_running_state():
    """The float64 reference the versions are held to, against the rule written out here: steps
    ADAM_STEP0 + 1 .. + ADAM_STEPS from the data's m and v, which are not zero and v >= 0."""
    d = ladder._adam_data(((3, 5), (4,)))
    p, g, m, v = (np.concatenate([a.astype(np.float64).reshape(-1) for a in d[k]]) for k in "pgmv")
    assert (v >= 0).all() and (m != 0).sum() > m.size // 2 and (v > 0).sum() > v.size // 2
    b1, b2, lr, eps = ladder.ADAM["beta1"], ladder.ADAM["beta2"], ladder.ADAM["lr"], ladder.ADAM["eps"]
    for t in range(ladder.ADAM_STEP0 + 1, ladder.ADAM_STEP0 + ladder.ADAM_STEPS + 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
    want = {e.name: e.want for e in ladder._adam_reference(d)}
    for name, value in (("p", p), ("m", m), ("v", v)):
        np.testing.assert_allclose(want[name], value, rtol=1e-12, atol=1e-15)


def test_validation_is_nan_aware_and_scaled_by_the_reduction_length():
    u = ladder.U
    want = np.array([1.0, np.nan, -np.inf, 2.0])
    e = ladder.Expect("o", want, 1.0, terms=1, elementwise=0.0)
    assert ladder.check(want.copy(), e) is None  # NaN for NaN, -inf for -inf
    assert "NaN at 1 elements" in ladder.check(np.array([np.nan, np.nan, -np.inf, 2.0]), e)
    assert "lacks the reference's NaN" in ladder.check(np.array([1.0, 0.0, -np.inf, 2.0]), e)
    assert "off by inf" in ladder.check(np.array([1.0, np.nan, np.inf, 2.0]), e)
    assert "shape" in ladder.check(want[:3], e)
    # a sum of R = 500 terms may be 4 (R + 10) u of its terms' magnitude off; one term may not
    err = 0.9 * 4 * 510 * u
    got = np.array([1.0 + err, np.nan, -np.inf, 2.0])
    assert ladder.check(got, ladder.Expect("o", want, 1.0, terms=500, elementwise=0.0)) is None
    assert "off by" in ladder.check(got, ladder.Expect("o", want, 1.0, terms=1, elementwise=0.0))
    small = np.array([1.0 + 0.5 * ladder.ELEMENTWISE_TOL, np.nan, -np.inf, 2.0])  # elementwise math's 1e-5
    assert ladder.check(small, ladder.Expect("o", want, 1.0)) is None
    assert "off by" in ladder.check(small, ladder.Expect("o", want, 1.0, elementwise=0.0))


def test_the_linear_backward_reads_act_prime_from_the_forwards_float32_output():
    """Every backward version gets the same float32 y, and so does the reference: relu' is 1 exactly
    where that y is positive, whichever side of 0 the float64 pre-activation lies."""
    d = ladder._linear_data((9, 13, 5))
    np.testing.assert_array_equal(d["y"], np.maximum(d["x"] @ d["W"].T + d["b"], 0))
    (dx, dW, db) = (e.want for e in ladder._linear_backward_reference(d))
    g = d["dy"].astype(np.float64) * (d["y"] > 0)
    np.testing.assert_allclose(db, g.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(dx, g @ d["W"].astype(np.float64), rtol=1e-12)


def test_the_ladder_validates_on_the_inputs_bench_kernels_times():
    """One builder per op: every problem of the ladder (Adam aside, which starts from a running
    state) hands its versions the arrays that bench kernels' case of the same size hands the
    backend's op, value for value."""
    import dataclasses

    from minivae.backends import NUMPY

    names = {"linear_forward": ("x", "W", "b"), "linear_backward": ("dy",), "latent_forward": ("h",),
             "latent_backward": ("dz",), "bernoulli": ("x", "logits", "dlogp"),
             "importance_weights": ("log_w",)}
    shapes = {"linear": (9, 13, 5), "latent": (7, 3), "bernoulli": (5, 11), "importance_weights": (3, 7)}
    seen: dict[str, tuple] = {}

    def record(op):
        def call(*args, **kwargs):
            seen[op] = args
            return getattr(NUMPY, op)(*args, **kwargs)
        return call

    spy = dataclasses.replace(NUMPY, **{op: record(op) for op in names})
    checked = []
    for problem in ladder.problems():
        if problem.family == "adam":
            continue
        shape = shapes[problem.family]
        case = problem.case(shape)
        op = case.op.split(" ")[0]
        seen.clear()
        case.make(spy)()
        d = problem.data(shape)
        for name, got in zip(names[op], seen[op], strict=False):
            np.testing.assert_array_equal(np.asarray(got, np.float32), d[name], err_msg=f"{op}: {name}")
        checked.append(op)
    assert sorted(checked) == sorted(names)
    assert np.isneginf(kernels.importance_weights_inputs(3, 7)["log_w"]).sum() == 1  # a zero-weight sample


# ---- the table and its ratios ------------------------------------------------------------------------

def _timed(version, variant, rung, median, on_gpu=False):
    return {"family": "linear", "op": "linear_forward (relu)", "size": "8x8->8", "version": version,
            "variant": variant, "rung": rung, "adds": "x", "validated_at": "9x13->5", "where": "w",
            "status": None, "on_gpu": on_gpu, "median_us": median, "min_us": median * 0.9, "q1_us": median,
            "q3_us": median * 1.1, "rate": 1.0, "unit": "GFLOP/s", "roofline_us": 1.0, "bound": "compute",
            "share_of_ceiling": 1.0 / median, "floors_us": {"compute": 1.0}}


def test_ratios_compare_with_the_rung_below_and_the_vendor_on_the_same_device():
    rows = [_timed("numpy", "numpy", None, 100.0), _timed("numba-cpu", "numba-cpu", None, 50.0),
            _timed("cuda-c 1", "cuda-c", 1, 40.0, True), _timed("cuda-c 2", "cuda-c", 2, 20.0, True),
            {**_timed("cuda-c 3", "cuda-c", 3, 1.0, True), "status": "failed at 9x13->5: y is off"},
            _timed("cuda-c 4", "cuda-c", 4, 5.0, True),
            _timed("cupy-vendor", "cupy-vendor", None, 10.0, True)]
    failed = rows[4]
    for k in ("median_us", "min_us", "q1_us", "q3_us", "rate", "unit", "roofline_us", "bound",
              "share_of_ceiling", "floors_us", "on_gpu"):
        del failed[k]
    ladder.ratios(rows)
    by = {r["version"]: r for r in rows}
    assert by["numba-cpu"]["vs_vendor"] == pytest.approx(2.0) and by["numba-cpu"]["vendor"] == "numpy"
    assert "vs_previous" not in by["numba-cpu"] and "vs_previous" not in by["cuda-c 1"]
    assert by["cuda-c 2"]["vs_previous"] == pytest.approx(2.0) and by["cuda-c 2"]["previous"] == "cuda-c 1"
    # rung 3 failed: rung 4 is set against the nearest lower rung that was timed
    assert by["cuda-c 4"]["previous"] == "cuda-c 2" and by["cuda-c 4"]["vs_previous"] == pytest.approx(4.0)
    assert by["cuda-c 4"]["vendor"] == "cupy-vendor" and by["cuda-c 4"]["vs_vendor"] == pytest.approx(2.0)
    assert "vs_vendor" not in failed


def test_the_tables_columns_and_ratios_follow_from_its_rows(tiny):
    """A real run: every row of the table has every column; each timed row's rate, floor, share and
    ratios are its own row's numbers, the ratios recomputed here from the medians of other rows."""
    res = ladder.run(("linear",), quick=True, rounds=2, log=lambda s: None)
    lines = [ln for ln in ladder.table(res).splitlines() if ln.startswith("| linear_")]
    assert len(lines) == len(res["rows"])
    header = next(ln for ln in ladder.table(res).splitlines() if ln.startswith("| op |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    medians = {(r["op"], r["version"]): r.get("median_us") for r in res["rows"]}
    for line, r in zip(lines, res["rows"], strict=True):
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True))
        assert (cells["op"], cells["size"], cells["version"]) == (r["op"], r["size"], r["version"])
        if "median_us" not in r:
            assert cells["rate"] == cells["vs vendor"] == ""
            continue
        assert cells["median us"] == f"{r['median_us']:.1f}"
        assert cells["rate"] == f"{r['rate']:.1f} {r['unit']}" and cells["bound"] == r["bound"]
        assert cells["share of ceiling"].startswith(f"{100 * r['share_of_ceiling']:.0f}%")
        vendor = medians[(r["op"], "numpy")]
        assert cells["vs vendor"] == f"{vendor / r['median_us']:.2f}x"
        assert cells["vs rung below"] == ""  # on the CPU no version with rungs is timed


def test_the_figure_of_an_op_is_a_readable_grid_showing_every_version(tiny, monkeypatch):
    """linear at two sizes: one figure, FIGURE_WIDTH_IN wide, a row of panels per direction and a
    column per size; every version on the first column's y axis, those without a time labelled in
    place ("emulated: not timed", "not run"); no text under FONT_PT; each panel's floor drawn as a
    reference line at the lowest floor of its CPU rows."""
    monkeypatch.setattr(ladder, "SIZES", {True: {"linear": [(17, 33, 9), (9, 20, 5)]}})
    res = ladder.run(("linear",), quick=True, rounds=1, log=lambda s: None)
    ((fam, fig),) = list(ladder.figures(res))
    assert fam == "linear" and fig.get_size_inches()[0] == ladder.FIGURE_WIDTH_IN
    grid = fig.axes[0].get_subplotspec().get_gridspec()
    assert (grid.nrows, grid.ncols) == (2, 2)
    for ax in fig.axes:
        op, size = ax.get_title().split(", ")
        rows = [r for r in res["rows"] if (r["op"], r["size"]) == (op, size)]
        first = ax.get_subplotspec().colspan.start == 0
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert labels == ([r["version"] for r in rows] if first else [])
        placed = sorted(t.get_text() for t in ax.texts if not t.get_text().endswith("%"))  # not the shares
        assert placed == sorted(ladder._entry(r) for r in rows if "median_us" not in r)
        if not isinstance(ladder.places()["cuda-c"], str):
            assert ladder.EMULATED in placed and "not run" in placed
        floor = min(r["roofline_us"] for r in rows if "median_us" in r and not r["on_gpu"])
        assert any(list(line.get_xdata()) == [floor, floor] for line in ax.lines)
    texts = [t for ax in fig.axes for t in (*ax.texts, *ax.get_yticklabels(), *ax.get_xticklabels(),
                                            ax.title, ax.xaxis.label)] + [fig._suptitle]
    assert min(t.get_fontsize() for t in texts if t.get_text()) >= ladder.FONT_PT


# ---- the command ---------------------------------------------------------------------------------------

def test_the_command_from_a_fresh_process_validates_every_version_and_saves(tmp_path):
    """``python -m bench ladder --op importance_weights --quick`` as a user runs it: a fresh
    process, the simulator chosen by the command itself; every version validated (none failed,
    the GPU's vendor way not run without a GPU), and the table, JSON, JSON lines and the figure
    written with the command that made them."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["MINIVAE_BENCH_OUT"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "bench", "ladder", "--op", "importance_weights", "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "ladder.json").read_text())
    assert res["command"] == "python -m bench ladder --op importance_weights --quick"
    rows = {r["version"]: r for r in res["rows"]}
    assert list(rows) == list(ladder.VARIANTS)
    gpu = res["environment"]["gpu"] is not None
    for name, r in rows.items():
        if name == "cupy-vendor" and not gpu:
            assert r["status"] == "not run: no GPU"
        else:
            assert r["status"] is None, r
    if not gpu:
        assert rows["numba-cuda"]["where"] == "cpu (Numba's CUDA simulator)"
        assert rows["numba-cuda"]["note"] == rows["cuda-c"]["note"] == ladder.EMULATED
    streamed = [json.loads(line) for line in (tmp_path / "ladder.jsonl").read_text().splitlines()]
    assert streamed == res["rows"]
    assert done.stdout.rstrip().endswith(ladder.table(res).rstrip())
    assert (tmp_path / "ladder.md").read_text().count("| importance_weights |") == len(rows)
    assert (tmp_path / "ladder-importance_weights.png").read_bytes()[:4] == b"\x89PNG"


def test_the_command_exits_1_when_a_version_failed_validation(tiny, monkeypatch, capsys):
    """A version that fails validation: ``python -m bench ladder`` still prints the table, names the
    failed row, and exits 1 (what gpu_check's ladder stage reads); with every version right, 0."""
    from bench.__main__ import main
    from minivae.kernels.importance_weights import numba_cpu

    assert main(["ladder", "--op", "importance_weights", "--quick", "--no-save"]) == 0
    real = numba_cpu.importance_weights
    monkeypatch.setattr(numba_cpu, "importance_weights", lambda log_w: (real(log_w)[0] + 1, real(log_w)[1]))
    assert main(["ladder", "--op", "importance_weights", "--quick", "--no-save"]) == 1
    out, err = capsys.readouterr()
    assert "| failed at 3x7: bound is off by" in out
    assert err.rstrip().endswith("failed validation: importance_weights 5x17 numba-cpu")


def test_require_gpu_stops_at_once_without_a_gpu(monkeypatch, capsys):
    from bench.__main__ import main
    from bench.gpu_check import NO_GPU

    monkeypatch.setattr(ladder, "cupy_on_a_gpu", lambda: None)
    assert main(["ladder", "--quick", "--require-gpu", "--no-save"]) == NO_GPU
    assert capsys.readouterr().out.startswith("no GPU: ")


def test_bench_all_runs_the_ladder_in_a_process_of_its_own(monkeypatch):
    """The ladder may choose Numba's simulator for its whole process; ``all`` runs it apart so that
    the training benchmark after it never finds the simulated numba-cuda backend."""
    import bench.__main__ as cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda args: calls.append(args) or 0)
    monkeypatch.setattr(cli.kernels, "run", lambda *a, **k: {"rows": []})
    monkeypatch.setattr(cli.kernels, "table", lambda res: "")
    monkeypatch.setattr(cli.train_step, "run", lambda *a, **k: {})
    monkeypatch.setattr(cli.train_step, "table", lambda res: "")
    assert cli.main(["all", "--quick", "--no-save"]) == 0
    assert calls == [[sys.executable, "-m", "bench", "ladder", "--quick", "--no-save"]]


# ---- on a GPU, on the CPU ------------------------------------------------------------------------------

def test_on_a_gpu_its_versions_are_timed_on_the_device_against_cupy_vendor(tiny, monkeypatch):
    """A stand-in GPU: CUDA C (run by the emulator) and the vendor way (the reference on this
    device's arrays) placed on it. Both are validated, then timed by ``gpu_timing.time_on_device``
    (and only by it) with the run's rounds as samples; their ratio to the vendor way is cupy-vendor's
    median over theirs, the CPU rows' still numpy's."""
    real = ladder.places()
    if isinstance(real["cuda-c"], str):
        pytest.skip(real["cuda-c"])
    on_gpu = {"numba-cuda": "not on the stand-in",
              "cuda-c": ladder.Place("stand-in GPU", True, True, np, "emulate"),
              "cupy-vendor": ladder.Place("stand-in GPU", True, True, np)}
    monkeypatch.setattr(ladder, "places", lambda: real | on_gpu)
    timings = []

    def fake_time_on_device(fn, device, samples=5, clock=None):
        fn()
        t = 1e-6 * (len(timings) + 1)
        timings.append(samples)
        return kernels.gpu_timing.Timing([t] * samples, 7e-6, 11, 1e-3, False)

    monkeypatch.setattr(kernels.gpu_timing, "time_on_device", fake_time_on_device)
    res = ladder.run(("importance_weights",), quick=True, rounds=3, log=lambda s: None,
                     device=StandInDevice())
    rows = {r["version"]: r for r in res["rows"]}
    assert res["gpu_ceilings"]["device"] == "stand-in"
    for name in ("cuda-c", "cupy-vendor"):
        r = rows[name]
        assert r["status"] is None and r["on_gpu"] and r["dispatch_us"] == pytest.approx(7.0), r
        assert r["ceilings"]["exp"] == res["gpu_ceilings"]["exp_per_s"]
    assert timings.count(3) == 2  # one call per GPU version; the ceilings' probes take 5
    assert rows["cuda-c"]["vendor"] == "cupy-vendor"
    vendor = rows["cupy-vendor"]["median_us"]
    assert rows["cuda-c"]["vs_vendor"] == pytest.approx(vendor / rows["cuda-c"]["median_us"])
    assert rows["numba-cpu"]["vendor"] == "numpy"
    assert "| 7.0 |" in ladder.table(res)
