"""bench/smoke.py and bench/gpu_train.py: what they report when a kernel or a peer misbehaves.

The real cases run in the dry run of bench/gpu_check.sh (tests/test_gpu_check.py: every kernel on
the CUDA C emulator and in Numba's simulator, against the reference) and in
tests/test_cuda_launch_sites.py; here stand-in cases show that a wrong, NaN, misshapen or raising
output fails its line and only its line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import gpu_train, smoke


def _case(name, kernels, outputs):
    def run(where):
        if isinstance(outputs, Exception):
            raise outputs
        return outputs

    return smoke.Case("cuda-c", name, kernels, run)


def test_a_check_measures_the_error_in_units_of_its_bound():
    want = np.array([1.0, -2.0, 3.0])
    assert smoke.Check("k", want.astype(np.float32), want, 1.0, 1e-5).error() == 0
    off = smoke.Check("k", want + [0, 3e-5, 0], want, np.abs(want), 1e-5)
    assert off.error() == pytest.approx(1.5)
    assert smoke.Check("k", np.array([1.0, np.nan, 3.0]), want, 1.0, 1e-5).error() == np.inf
    assert smoke.Check("k", want[:2], want, 1.0, 1e-5).error() == np.inf


def test_each_kernel_gets_its_own_line_and_a_bad_one_fails_only_its_own():
    want = np.ones(4)
    case = _case("two kernels", ("good", "bad"), [smoke.Check("good", want, want, 1.0, 1e-5),
                                                  smoke.Check("bad", want * 1.1, want, 1.0, 1e-5)])
    good, bad = smoke.run_case(case, "emulate", "cpu")
    assert (good["kernel"], good["ok"], good["error"]) == ("good", True, 0.0)
    assert bad["kernel"] == "bad" and not bad["ok"] and bad["error"] == pytest.approx(1e4)
    assert good["exception"] is None and json.loads(json.dumps(bad)) == bad


def test_a_case_that_raises_fails_each_of_its_kernels_naming_the_exception(capsys):
    raising = _case("launch", ("k1", "k2"), RuntimeError("illegal memory access"))
    lines = smoke.run_case(raising, "cupy", "gpu")
    assert [(line["kernel"], line["ok"], line["error"]) for line in lines] == [("k1", False, None),
                                                                              ("k2", False, None)]
    assert all(line["exception"] == "RuntimeError: illegal memory access" for line in lines)
    assert "Traceback" in capsys.readouterr().err


def test_a_kernel_no_check_covers_is_not_passed():
    """A case that forgot a kernel's outputs fails that kernel's line instead of passing it."""
    want = np.ones(2)
    forgetful = _case("c", ("checked", "unchecked"), [smoke.Check("checked", want, want, 1, 1)])
    _, missing = smoke.run_case(forgetful, "emulate", "cpu")
    assert missing["kernel"] == "unchecked" and not missing["ok"] and missing["error"] is None


def test_the_main_writes_a_line_per_kernel_and_fails_on_a_bad_one(monkeypatch, tmp_path, capsys):
    want = np.ones(3)
    monkeypatch.setattr(smoke, "cuda_c_cases", lambda: [
        _case("a", ("a",), [smoke.Check("a", want, want, 1.0, 1e-5)]),
        _case("b", ("b",), [smoke.Check("b", want + 1, want, 1.0, 1e-5)])])
    monkeypatch.setattr(smoke, "numba_cases_for", lambda cpu: [])
    out = tmp_path / "smoke.jsonl"
    code = smoke.main(cpu=True, out_path=str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["kernel"], line["ok"]) for line in lines] == [("a", True), ("b", False)]
    assert code == 1 and capsys.readouterr().out.rstrip().endswith("smoke: 1/2 kernels match the reference")


# ---- gpu-train ---------------------------------------------------------------------------------------

def test_the_gpu_training_benchmark_streams_rows_and_survives_a_peer_that_fails(monkeypatch):
    def step(ms):
        return lambda i: float(i)

    def broken(i):
        raise RuntimeError("CUDA_ERROR_NO_DEVICE")

    def implementations(batch, failed):
        failed.append(f"jax-jit at batch {batch}: unusable: RuntimeError: no GPU plugin")
        return {"minivae-cupy": step(1), "torch-eager-cuda": step(2), "minivae-numba-cuda": broken}

    monkeypatch.setattr(gpu_train, "implementations", implementations)
    streamed = []
    res = gpu_train.run(batches=(16, 32), rounds=2, steps=2, warmup=1, on_result=streamed.append)
    assert streamed == res["results"]
    impls = [r["impl"] for r in res["results"] if r["batch"] == 16]
    assert impls == ["minivae-cupy", "torch-eager-cuda",
                     "ratio minivae-cupy / torch-eager-cuda (median throughput)"]
    assert "minivae-numba-cuda at batch 16: RuntimeError: CUDA_ERROR_NO_DEVICE" in res["failed"]
    assert all(r["median_ms"] > 0 for r in res["results"] if "median_ms" in r)
    text = gpu_train.table(res)
    assert "not run: jax-jit at batch 32" in text and "| 16 | minivae-cupy |" in text


def test_jax_is_told_not_to_take_the_gpus_memory(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    gpu_train.jax_device()
    import os

    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
