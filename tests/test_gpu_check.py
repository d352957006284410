"""bash bench/gpu_check.sh, the one-shot GPU run, proven on the CPU.

The whole script runs as a dry run (``GPU_CHECK_WITHOUT_GPU=1``) in a copy of the work tree's files
(what a GPU machine receives: no build outputs, no installed minivae), with an interpreter that
has minivae's dependencies but not minivae, and ``OUT`` an empty folder: it must install minivae
itself, offline, prove ``import minivae.kernels``, run every stage it can on the CPU, have every
GPU stage say "no GPU", and leave at most 8 files of at most 16 MiB, in no subfolder, within 5
minutes. The parts that decide what comes back (packing, time limits, the linked install, the
MINIVAE_REQUIRE_GPU switch of tests/conftest.py) are tested one by one below.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]
DRY_RUN_LIMIT_S = 300


def _gpu_here() -> bool:
    return bool(gpu_check.visible_gpus())


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A virtual environment that sees this one's packages (numpy, pytest, pip, ...) through a
    path file, but not minivae: an editable install is a path hook that only the environment's own
    site-packages activates, and a path file adds a folder without reading its path files."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "outer-packages.pth").write_text("\n".join(sorted(outer)) + "\n")
    return python


def _copy_of_the_work_tree(dest: Path) -> None:
    """The files a GPU machine receives: tracked and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _clean_env(**extra: str) -> dict:
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONSAFEPATH", "NUMBA_ENABLE_CUDASIM", "MINIVAE_REQUIRE_GPU",
            "MINIVAE_BENCH_OUT", "GPU_CHECK_INSTALL", "GPU_CHECK_BUDGET_S", "OUT", "PYTHON")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


@pytest.mark.timeout(DRY_RUN_LIMIT_S + 60)
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="the copy of the work tree is listed by git")
@pytest.mark.skipif(_gpu_here(), reason="a GPU is here: the script would make its full GPU run")
def test_the_whole_script_dry_runs_in_a_fresh_copy_and_packs_what_comes_back(bare_python, tmp_path):
    tree, out = tmp_path / "tree", tmp_path / "out"
    _copy_of_the_work_tree(tree)
    out.mkdir()
    assert not (tree / "minivae.egg-info").exists()
    before = subprocess.run([str(bare_python), "-c", "import minivae.kernels"], cwd=tree, capture_output=True,
                            text=True, env=_clean_env())
    assert before.returncode != 0 and "No module named 'minivae.kernels'" in before.stderr

    t = time.monotonic()
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=tree, capture_output=True, text=True,
                          timeout=DRY_RUN_LIMIT_S,
                          env=_clean_env(GPU_CHECK_WITHOUT_GPU="1", OUT=str(out), PYTHON=str(bare_python)))
    seconds = time.monotonic() - t
    summary = (out / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stdout[-3000:] + done.stderr[-3000:]
    assert seconds < DRY_RUN_LIMIT_S

    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= gpu_check.MAX_FILES and all(p.parent == out for p in files), files
    assert all(p.stat().st_size <= gpu_check.MAX_FILE_BYTES for p in files)
    status = {line[:22].strip(): line[23:35].strip() for line in summary.splitlines()[1:] if line[:1] != " "}
    assert status["install"] == "passed" and f"minivae.kernels from {tree / 'kernels'}" in summary
    assert status["environment"] == "passed"
    assert status["smoke (CPU emulation)"] == "passed"
    matched = re.search(r"(\d+)/(\d+) kernels match the reference", summary)
    assert matched and matched[1] == matched[2] and int(matched[1]) >= 20, summary
    assert status["tests (CPU subset)"] == "passed"
    for stage in ("smoke", "tests", "kernels", "ladder", "train", "sweep"):  # the GPU stages: ran, said so
        assert status[stage] == "no GPU", (stage, summary)
    assert "result: dry run passed" in summary and "tests: " in summary

    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        names = set(tar.getnames())
    for stage in ("install", "environment", "smoke-cpu", "smoke", "kernels", "ladder", "train", "sweep"):
        assert f"logs/{stage}.log" in names, (stage, names)
    assert {"smoke-cpu.jsonl", "environment.txt", "summary.txt", "tests/test_cuda_launch_sites.xml"} <= names
    assert not any(n.startswith("site/") for n in names)


# ---- the parts ---------------------------------------------------------------------------------------

def _run(tmp_path: Path, python: str = sys.executable, dry_run: bool = True) -> gpu_check.Run:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    return gpu_check.Run(python, work, out, time.time() + 120, dry_run)


def test_the_packing_keeps_within_the_limits_whatever_was_written(tmp_path, monkeypatch):
    """A run that wrote more than fits: the largest files leave the archive (named in the summary),
    the rest stays; the folder holds the summary, the archive and the files to read first."""
    monkeypatch.setattr(gpu_check, "MAX_FILE_BYTES", 2**20)
    run = _run(tmp_path)
    (run.work / "bench").mkdir()
    (run.work / "bench" / "huge.json").write_bytes(os.urandom(3 * 2**20))  # incompressible
    (run.work / "bench" / "kernels-gpu.md").write_text("| op |\n")
    (run.work / "environment.txt").write_text("python: 3\n")
    (run.work / "deep" / "er" / "still").mkdir(parents=True)
    (run.work / "deep" / "er" / "still" / "x.log").write_text("kept, inside the archive\n")
    run.add(gpu_check.Stage("smoke", "failed", 1.0, "1/2 kernels match the reference",
                            logs=[run.work / "environment.txt"]))
    assert gpu_check.pack(run) == 1
    files = sorted(p.name for p in run.out.iterdir())
    assert files == ["environment.txt", "failures.txt", "gpu-check.tar.gz", "kernels-gpu.md", "summary.txt"]
    with tarfile.open(run.out / "gpu-check.tar.gz") as tar:
        names = set(tar.getnames())
    assert "deep/er/still/x.log" in names and "bench/huge.json" not in names
    summary = (run.out / "summary.txt").read_text()
    assert "left out of the archive to stay under 1 MiB: bench/huge.json" in summary
    assert "result: failed (smoke failed)" in summary
    assert all(p.stat().st_size <= 2**20 for p in run.out.iterdir())


def test_a_stage_past_its_limit_is_stopped_with_everything_it_started(tmp_path):
    run = _run(tmp_path)
    script = ("import subprocess, sys, time; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(child.pid, flush=True); time.sleep(60)")
    t = time.monotonic()
    code, log = run.run("sleeper", [sys.executable, "-c", script], limit=2)
    assert code is None and time.monotonic() - t < 20
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not log.read_text().splitlines()[1:]:
        time.sleep(0.1)
    grandchild = int(log.read_text().splitlines()[1])
    time.sleep(0.5)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_benchmark_cut_by_its_limit_keeps_the_cases_it_finished(tmp_path, monkeypatch):
    """The stage reports out of time with the JSON lines written before the limit."""
    run = _run(tmp_path)
    fake = tmp_path / "fake_bench.py"
    fake.write_text(textwrap.dedent("""
        import json, os, sys, time
        with open(os.path.join(os.environ["MINIVAE_BENCH_OUT"], "k.jsonl"), "w") as f:
            for i in range(3):
                f.write(json.dumps({"op": "op", "status": None if i else "off by 2e-3"}) + "\\n")
                f.flush()
        time.sleep(60)
    """))
    monkeypatch.setattr(run, "python", sys.executable)
    real_run = run.run
    monkeypatch.setattr(run, "run", lambda name, args, limit, env=None: real_run(
        name, [sys.executable, str(fake)], 3, env))
    stage = gpu_check.bench(run, "kernels", ["kernels"], "k", cap=3, keep_for_later=0, minimum=1)
    assert stage.status == "out of time"
    assert stage.detail.startswith("3 results in k.jsonl, 1 failed validation; cut at")


@pytest.mark.parametrize("exit_status, rows, status", [
    (1, [None, "failed at 37: m is off by 3 times its bound", "not run: no GPU"], "failed"),
    (0, [None, "failed at 37: m is off by 3 times its bound"], "failed"),  # a zero exit cannot hide it
    (0, [None, "not run: no GPU", None], "passed"),  # what cannot run here is no failure
])
def test_the_ladder_stage_fails_when_a_version_failed_validation(tmp_path, monkeypatch, exit_status, rows,
                                                                 status):
    """bench ladder exits 1 when a version failed validation, and its JSON lines say which: the
    stage fails on either; its "not run" rows are counted as results, not as failures."""
    run = _run(tmp_path)
    fake = tmp_path / "fake_ladder.py"
    fake.write_text(textwrap.dedent(f"""
        import json, os, sys
        with open(os.path.join(os.environ["MINIVAE_BENCH_OUT"], "ladder.jsonl"), "w") as f:
            for status in {rows!r}:
                f.write(json.dumps({{"op": "adam", "status": status}}) + "\\n")
        sys.exit({exit_status})
    """))
    real_run = run.run
    monkeypatch.setattr(run, "run", lambda name, args, limit, env=None: real_run(
        name, [sys.executable, str(fake)], 30, env))
    stage = gpu_check.bench(run, "ladder", ["ladder"], "ladder", cap=30, keep_for_later=0, minimum=1)
    assert stage.status == status
    bad = sum(str(r).startswith("failed") for r in rows)
    assert stage.detail == f"{len(rows)} results in ladder.jsonl, {bad} failed validation"


def test_a_result_timed_again_is_counted_once(tmp_path):
    """bench kernels streams a row again (``restated``) when it was timed a second time beside its
    repeat: the stage's count of results is not inflated by it."""
    import json

    path = tmp_path / "k.jsonl"
    rows = [{"op": "a", "status": None}, {"op": "b", "status": "failed"}, {"op": "a", "status": None,
                                                                              "restated": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gpu_check.jsonl_detail(path, "status", lambda r: r.get("status") is None) == (2, 1)


def test_the_ladders_gpu_table_comes_back_beside_the_archive():
    assert "bench/ladder.md" in gpu_check.READ_FIRST
    assert gpu_check.READ_FIRST.index("bench/ladder.md") < gpu_check.MAX_FILES - 2  # never the one left out


def test_without_time_left_a_stage_is_out_of_time_without_running(tmp_path):
    run = _run(tmp_path)
    run.deadline = time.time() + gpu_check.PACK_RESERVE_S + 10
    stage = gpu_check.bench(run, "sweep", ["kernels"], "x", cap=1e9, keep_for_later=0, minimum=20)
    assert stage.status == "out of time" and "20 s needed" in stage.detail and stage.logs == []


def test_the_linked_install_needs_no_build(bare_python, tmp_path, monkeypatch):
    """GPU_CHECK_INSTALL=links (what the install falls back to when pip cannot install offline):
    minivae and minivae.kernels import from this work tree, started from the work tree as every
    stage is, with nothing built or installed."""
    if sys.version_info < (3, 11):
        pytest.skip("PYTHONSAFEPATH, which keeps the work tree's minivae/ out of the way, is Python 3.11's")
    monkeypatch.setenv("GPU_CHECK_INSTALL", "links")
    run = _run(tmp_path, python=str(bare_python))
    run.env = _clean_env(PYTHONUNBUFFERED="1")
    stage = gpu_check.install(run)
    assert stage.status == "passed", (tmp_path / "work" / "logs" / "install.log").read_text()
    assert "pip not asked: linked into" in stage.detail and f"from {ROOT / 'kernels'}" in stage.detail
    code = "import minivae.kernels.linear.cuda_c as m; print(m.SOURCE.resolve())"
    done = subprocess.run([str(bare_python), "-c", code], cwd=ROOT, env=run.env, capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.strip() == str(ROOT / "kernels" / "linear" / "cuda_c.cu")


def test_libnvvm_is_found_where_numba_cuda_looks_for_it(tmp_path):
    toolkit = tmp_path / "cuda"
    (toolkit / "nvvm" / "lib64").mkdir(parents=True)
    (toolkit / "nvvm" / "lib64" / "libnvvm.so.4").write_text("")
    (toolkit / "bin").mkdir()
    nvcc = toolkit / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    lib = str(toolkit / "nvvm" / "lib64" / "libnvvm.so.4")
    found = gpu_check.find_cuda_home({"CUDA_HOME": str(toolkit), "PATH": ""})
    assert found == (str(toolkit), lib, "CUDA_HOME")
    assert gpu_check.find_cuda_home({"PATH": str(toolkit / "bin")})[:2] == (str(toolkit.resolve()), lib)
    empty = {"CUDA_HOME": str(tmp_path / "nothing"), "PATH": str(tmp_path)}
    root, found, how = gpu_check.find_cuda_home(empty)
    if root is None:  # a machine whose /usr/local/cuda has no libNVVM either
        assert found is None and how.startswith("no libNVVM")


# ---- MINIVAE_REQUIRE_GPU (tests/conftest.py) -------------------------------------------------------

PROBES = '''
import pytest


def test_skipped_for_lack_of_a_gpu():
    pytest.skip("no CUDA GPU")


def test_skipped_because_a_gpu_is_here():
    pytest.skip("a GPU is here: the backend is available")


def test_runs_on_the_cpu():
    assert 1 + 1 == 2
'''


def _pytest_in(folder: Path, require: str | None, **env: str) -> subprocess.CompletedProcess:
    env = _clean_env(**env, **({"MINIVAE_REQUIRE_GPU": require} if require else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("require", ["1", None])
def test_require_gpu_turns_skips_into_failures(tmp_path, require):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probes.py").write_text(PROBES)
    (tmp_path / "test_module_skip.py").write_text('import pytest\n\npytest.importorskip("no_such_module")\n')
    done = _pytest_in(tmp_path, require)
    out = done.stdout
    assert "SKIPPED [1] test_probes.py" in out and "a GPU is here" in out
    assert "PASSED test_probes.py::test_runs_on_the_cpu" in out
    if require:
        assert done.returncode != 0
        assert "FAILED test_probes.py::test_skipped_for_lack_of_a_gpu" in out
        assert "would have been skipped: no CUDA GPU" in out
        assert "ERROR test_module_skip.py" in out and "this module would have been skipped" in out
    else:
        assert done.returncode == 0, out
        assert "1 passed, 3 skipped" in out


@pytest.mark.parametrize("require", ["1", None])
def test_require_gpu_fails_a_test_run_in_numbas_simulator(tmp_path, require):
    pytest.importorskip("numba", reason="the probe imports numba.cuda")
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_in_the_simulator.py").write_text(
        "from numba import cuda\n\n\ndef test_numba_cuda():\n    assert cuda.is_available()\n")
    done = _pytest_in(tmp_path, require, NUMBA_ENABLE_CUDASIM="1")
    if require:
        assert done.returncode != 0
        assert "FAILED test_in_the_simulator.py::test_numba_cuda" in done.stdout
        assert "numba.cuda is Numba's simulator" in done.stdout
    else:
        assert done.returncode == 0 and "PASSED test_in_the_simulator.py::test_numba_cuda" in done.stdout
