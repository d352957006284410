"""The stages of ``bash bench/gpu_check.sh``: one offline run on a GPU machine that verifies every
GPU claim of minivae, or says exactly what failed, and packs it all into a few files.

Standard library only: it runs before minivae is installed, with whatever ``python3`` the machine
has. Each stage runs as child processes in their own process groups, with a time limit, a log, and
a line in ``summary.txt``: passed, failed, skipped, out of time, or no GPU.

1. install: ``pip install --no-index --no-build-isolation --no-deps -e .`` (no network needed), or,
   where that cannot run (or with ``GPU_CHECK_INSTALL=links``), a folder of links that puts
   ``minivae`` and ``minivae.kernels`` (the ``kernels/`` folder) on ``PYTHONPATH`` with no build at
   all; either way ``import minivae.kernels`` is proven, from this work tree's kernels/, the way
   every later stage runs, before anything else runs;
2. environment: GPU, driver, CUDA, compilers, package versions, where libNVVM is (numba-cuda
   finds it only through ``CUDA_HOME`` when NVRTC comes from a wheel, so it is set here);
3. smoke: ``python -m bench smoke``: every CUDA C and Numba CUDA kernel once against NumPy;
4. tests: the GPU test files, one pytest process each (a sticky CUDA error stays in its file),
   in parallel, with ``MINIVAE_REQUIRE_GPU=1`` (a GPU test that would skip or fall back to the
   simulator fails instead) and a JUnit XML each;
5. kernels: ``python -m bench kernels --quick`` on the GPU backends;
6. ladder: ``python -m bench ladder --quick``: every version of every op (each rung of the linear
   op's ladders, Numba CUDA and CUDA C, beside cuBLAS and the CPU versions) validated and timed;
   it fails when any version failed validation (the command exits 1; its JSON lines say which);
7. train: ``python -m bench gpu-train --quick``: the training step against PyTorch eager on CUDA;
8. sweep: the full GPU size sweep of ``python -m bench kernels``, with the time that is left.

Every benchmark writes each result as it is measured (JSON lines), so a stage cut off by its limit
loses one case, not the stage. At the end, whatever happened, the work folder is packed into the
output folder: ``summary.txt``, ``gpu-check.tar.gz`` (everything: logs, JSON lines, JUnit XML,
tables, plots) and a few files worth reading first, at most ``MAX_FILES`` files of at most
``MAX_FILE_BYTES`` each, none in a subfolder.

Without a GPU it stops (exit 2) unless ``GPU_CHECK_WITHOUT_GPU=1``: then it is a dry run that does
everything it can on the CPU (the install, the environment, the smoke cases on the CUDA C emulator
and Numba's simulator, a CPU subset of the tests) and runs every GPU stage's command, which answers
"no GPU" instead of passing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_GPU = 3  # exit status of a bench command that finds no GPU (bench/smoke.py, bench/__main__.py)
MAX_FILES = 8  # what comes back from a GPU machine: at most 8 files,
MAX_FILE_BYTES = 16 * 2**20  # of at most 16 MiB each
KILL_GRACE_S = 5  # between SIGTERM and SIGKILL for a stage past its limit
PACK_RESERVE_S = 15  # kept for packing at the end, whatever the stages took
GPU_BACKENDS = "cupy,numba-cuda"
# The GPU test files, one process each: each op's kernel tests with -k selecting its GPU variants
# (numba_cuda, which runs on the GPU when there is one, and cupy: the CUDA C kernels through CuPy;
# the numba_cpu and emulator runs, faults and sanitizer builds are CI's), the two GPU backends'
# whole-model tests, and the timing method.
GPU_TESTS = [*((f"tests/test_kernels_{op}.py", "numba_cuda or cupy")
               for op in ("linear", "latent", "bernoulli", "importance_weights", "adam")),
             ("tests/test_backend_numba_cuda.py", None), ("tests/test_backend_cupy.py", None),
             ("tests/test_gpu_timing.py", None)]
# A dry run's CPU subset: the launch checks and the timing method, quick and GPU-free.
CPU_TESTS = [("tests/test_cuda_launch_sites.py", None), ("tests/test_gpu_timing.py", None)]
# The files packed beside the archive, to read first (the archive has them too).
READ_FIRST = ("environment.txt", "smoke.jsonl", "failures.txt", "bench/kernels-gpu.md", "bench/ladder.md",
              "bench/gpu-train.md", "bench/kernels-gpu-full.md")


@dataclass
class Stage:
    name: str
    status: str = "skipped"  # passed, failed, skipped, out of time, no GPU
    seconds: float = 0.0
    detail: str = ""
    logs: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # tests: passed, failed, skipped


class Run:
    """The work folder, the clock, the children's environment and the stages done so far."""

    def __init__(self, python: str, work: Path, out: Path, deadline: float, dry_run: bool):
        self.python, self.work, self.out, self.deadline, self.dry_run = python, work, out, deadline, dry_run
        self.start = time.time()
        self.stages: list[Stage] = []
        self.live: set[subprocess.Popen] = set()  # children to stop if this run is stopped
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false")
        self.env.pop("MINIVAE_BENCH_OUT", None)
        self.gpu = "no GPU (dry run)" if dry_run else "GPU"
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - PACK_RESERVE_S - time.time()

    def log(self, message: str) -> None:
        print(f"[{time.time() - self.start:5.0f} s] {message}", flush=True)

    def add(self, stage: Stage) -> Stage:
        self.stages.append(stage)
        self.log(f"{stage.name}: {stage.status} ({stage.seconds:.1f} s) {stage.detail}")
        write_summary(self, self.work / "summary.txt")
        write_summary(self, self.out / "summary.txt")  # a hard kill still leaves this much
        return stage

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.work / "logs" / f"{name}.log"
        f = open(log, "w")  # closed by the child's exit: Popen holds its own copy
        f.write("$ " + " ".join("<script>" if "\n" in a else a for a in args) + "\n")
        f.flush()
        proc = subprocess.Popen(args, cwd=REPO, env=env or self.env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        f.close()
        self.live.add(proc)
        return proc, log

    def wait(self, procs: list[subprocess.Popen], limit: float) -> list[int | None]:
        """Exit statuses (None: killed at ``limit`` seconds, its process group and all)."""
        end = time.time() + limit
        codes: list[int | None] = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.0, end - time.time())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        for proc, code in zip(procs, codes, strict=True):
            if code is None:
                kill_group(proc)
            self.live.discard(proc)
        return codes

    def stop_children(self) -> None:
        for proc in list(self.live):
            kill_group(proc)
        self.live.clear()

    def run(self, name: str, args: list[str], limit: float,
            env: dict | None = None) -> tuple[int | None, Path]:
        proc, log = self.spawn(name, args, env)
        return self.wait([proc], limit)[0], log


def kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- 0. the GPU and libNVVM ----------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """``nvidia-smi -L``'s lines (empty without the tool or a device)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [line for line in done.stdout.splitlines() if line.startswith("GPU ")]


NVVM_PLACES = ("nvvm/lib64", "nvvm/lib", "lib64", "lib")


def find_cuda_home(environ: dict) -> tuple[str | None, str | None, str]:
    """(CUDA root, libNVVM, how it was found): ``CUDA_HOME``/``CUDA_PATH`` if they hold libNVVM, else
    the toolkit of the ``nvcc`` on the PATH, else ``/usr/local/cuda``. The machine's own NVVM, never
    a newer one from a wheel: its PTX must suit the machine's ptxas and driver."""
    candidates = [(environ.get(v), v) for v in ("CUDA_HOME", "CUDA_PATH")]
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc:
        candidates.append((str(Path(nvcc).resolve().parents[1]), f"the toolkit of {nvcc}"))
    candidates += [("/usr/local/cuda", "/usr/local/cuda")]
    for root, how in candidates:
        if not root:
            continue
        for place in NVVM_PLACES:
            libs = sorted(glob.glob(os.path.join(root, place, "libnvvm.so*")))
            if libs:
                return root, libs[0], how
    return None, None, "no libNVVM under CUDA_HOME, CUDA_PATH, nvcc's toolkit or /usr/local/cuda"


# ---- 1. install ------------------------------------------------------------------------------------

PROOF = ("import pathlib, minivae, minivae.kernels; "
         "print(pathlib.Path(minivae.kernels.__file__).resolve().parent, minivae.__file__)")


def proves_install(run: Run, env: dict, log: Path) -> str | None:
    """Where ``minivae.kernels`` imports from, run as the stages run (from the work tree, with
    ``env``); None if it does not import, or not from this work tree's kernels/."""
    try:
        done = subprocess.run([run.python, "-c", PROOF], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    with open(log, "a") as f:
        f.write(f"$ python -c {PROOF!r}\n{done.stdout}{done.stderr}")
    if done.returncode != 0 or not done.stdout.strip():
        return None
    kernels_dir = done.stdout.split()[0]
    return kernels_dir if Path(kernels_dir) == REPO / "kernels" else None


def link_farm(site: Path) -> None:
    """``site/minivae``: a link to every file of minivae/, and ``kernels`` linked to kernels/: the
    package as setuptools maps it (pyproject.toml's package-dir), with nothing built."""
    pkg = site / "minivae"
    pkg.mkdir(parents=True, exist_ok=True)
    for entry in (REPO / "minivae").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "kernels").symlink_to(REPO / "kernels", target_is_directory=True)


def install(run: Run) -> Stage:
    t = time.time()
    stage = Stage("install")
    log = run.work / "logs" / "install.log"
    log.write_text("")
    stage.logs.append(log)
    where = proves_install(run, run.env, log)
    if where:
        stage.status, stage.detail = "passed", f"minivae.kernels from {where} (already installed)"
    else:
        code: int | None = None
        if os.environ.get("GPU_CHECK_INSTALL") != "links":  # "links": never touch site-packages
            code, pip_log = run.run("install-pip", [run.python, "-m", "pip", "install", "--no-index",
                                                    "--no-build-isolation", "--no-deps", "-e", str(REPO)],
                                    min(120, max(run.left(), 1)))
            stage.logs.append(pip_log)
        where = proves_install(run, run.env, log) if code == 0 else None
        if where:
            stage.status, stage.detail = "passed", f"minivae.kernels from {where} (pip install -e, offline)"
        else:
            site = run.work / "site"
            link_farm(site)
            # PYTHONSAFEPATH: a child started in the work tree would otherwise import minivae/ from the
            # current folder, which has no kernels subpackage
            env = dict(run.env, PYTHONSAFEPATH="1",
                       PYTHONPATH=os.pathsep.join(p for p in (str(site), str(REPO), run.env.get("PYTHONPATH"))
                                                  if p))
            where = proves_install(run, env, log)
            if where:
                run.env = env
                stage.status = "passed"
                how = "pip not asked" if code is None else f"pip could not install offline, exit {code}"
                stage.detail = (f"minivae.kernels from {where} ({how}: linked into {site} on PYTHONPATH, "
                                "nothing built)")
            else:
                stage.status = "failed"
                stage.detail = f"import minivae.kernels fails after pip (exit {code}) and the linked fallback"
    stage.seconds = time.time() - t
    return run.add(stage)


# ---- 2. environment --------------------------------------------------------------------------------

ENV_SCRIPT = r"""
import importlib.metadata as md, platform, sys
print(f"python: {platform.python_version()} ({sys.executable})")
for dist in ("numpy", "cupy", "cupy-cuda12x", "cupy-cuda13x", "numba", "numba-cuda", "cuda-python",
             "cuda-bindings", "cuda-pathfinder", "nvidia-cuda-nvrtc", "torch", "jax", "jaxlib", "pytest",
             "hypothesis", "setuptools"):
    try:
        print(f"{dist}: {md.version(dist)}")
    except md.PackageNotFoundError:
        pass
try:
    import cupy
    rt, drv = cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()
    print(f"CUDA runtime (CuPy): {rt // 1000}.{rt % 1000 // 10}; "
          f"driver API: {drv // 1000}.{drv % 1000 // 10}")
    for i in range(cupy.cuda.runtime.getDeviceCount()):
        p = cupy.cuda.runtime.getDeviceProperties(i)
        print(f"device {i}: {p['name'].decode()}, sm_{p['major']}{p['minor']}, "
              f"{p['multiProcessorCount']} SMs, {p['totalGlobalMem'] / 2**30:.1f} GiB, "
              f"L2 {p['l2CacheSize'] / 2**20:.0f} MiB")
except Exception as e:
    print(f"cupy: unusable here ({type(e).__name__}: {e})")
try:
    from numba import cuda
    print(f"numba.cuda.is_available(): {cuda.is_available()}")
    if cuda.is_available():
        from numba.cuda.cudadrv import libs
        libs.test()
except Exception as e:
    print(f"numba.cuda: unusable here ({type(e).__name__}: {e})")
try:
    from minivae.backends import available
    for name, state in available().items():
        print(f"backend {name}: {state}")
except Exception as e:
    print(f"minivae.backends: {type(e).__name__}: {e}")
"""


SOURCE_SUFFIXES = (".py", ".cu", ".cuh", ".h", ".sh")


def tree_digest() -> str:
    """SHA-256 of the work tree's sources (a copy has no git history to name its commit)."""
    digest = hashlib.sha256()
    for folder in ("minivae", "kernels", "bench", "tests"):
        for f in sorted((REPO / folder).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in SOURCE_SUFFIXES:
                digest.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def environment(run: Run) -> Stage:
    t = time.time()
    stage = Stage("environment")
    lines = [f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
             f"host: {os.uname().nodename}",
             f"sources: sha256 {tree_digest()} (minivae, kernels, bench, tests)"]
    if (REPO / ".git").exists() and shutil.which("git"):
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet"]).returncode != 0
        lines.append(f"commit: {commit or 'unknown'}{' (with local changes)' if dirty else ''}")
    root, nvvm, how = find_cuda_home(run.env)
    if root:
        if not (run.env.get("CUDA_HOME") or run.env.get("CUDA_PATH")):
            run.env["CUDA_HOME"] = root  # numba-cuda looks for libNVVM there
        lines.append(f"libNVVM: {nvvm} (CUDA_HOME={run.env.get('CUDA_HOME') or run.env.get('CUDA_PATH')}, "
                     f"found as {how})")
    else:
        lines.append(f"libNVVM: not found ({how}): numba-cuda cannot compile kernels here")
    query = "--query-gpu=index,name,driver_version,compute_cap,memory.total,clocks.max.sm,power.limit"
    commands = [["nvidia-smi", query, "--format=csv"], ["nvidia-smi"], ["nvcc", "--version"],
                ["ptxas", "--version"]]
    for cmd in commands:
        if shutil.which(cmd[0]) is None:
            lines.append(f"{cmd[0]}: not on PATH")
            continue
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            text = done.stdout.strip()
            if cmd == ["nvidia-smi"]:  # its table's header line names the driver and its CUDA
                text = next((ln.strip(" |") for ln in done.stdout.splitlines() if "CUDA Version" in ln), "")
            lines.append(f"$ {' '.join(cmd)}\n{text}")
        except (OSError, subprocess.TimeoutExpired) as e:
            lines.append(f"$ {' '.join(cmd)}: {e}")
    code, log = run.run("environment", [run.python, "-c", ENV_SCRIPT], min(60, max(run.left(), 1)))
    body = log.read_text(errors="replace").split("\n", 1)[1] if log.exists() else ""
    (run.work / "environment.txt").write_text("\n".join(lines) + "\n" + body)
    stage.logs.append(run.work / "environment.txt")
    gpus = visible_gpus()
    run.gpu = gpus[0].split(":", 1)[1].split("(UUID")[0].strip() if gpus else run.gpu
    stage.status = {0: "passed", None: "out of time"}.get(code, "failed")
    stage.detail = f"{run.gpu}; libNVVM {'at ' + nvvm if nvvm else 'not found'}"
    stage.seconds = time.time() - t
    return run.add(stage)


# ---- 3-8. the GPU stages -----------------------------------------------------------------------------

def status_of(code: int | None) -> str:
    if code is None:
        return "out of time"
    return {0: "passed", NO_GPU: "no GPU"}.get(code, "failed")


def jsonl_detail(path: Path, row_key: str, ok_when) -> tuple[int, int]:
    """(results, failed results) of a JSON-lines file: the lines with ``row_key``, and those of them
    ``ok_when`` rejects; a line that restates an earlier result (``restated``: timed again) is not
    counted twice."""
    rows = bad = 0
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row_key in row and not row.get("restated"):
                rows += 1
                bad += not ok_when(row)
    return rows, bad


def smoke(run: Run, cpu: bool) -> Stage:
    t = time.time()
    name = "smoke (CPU emulation)" if cpu else "smoke"
    stage = Stage(name)
    out = run.work / ("smoke-cpu.jsonl" if cpu else "smoke.jsonl")
    env = dict(run.env, NUMBA_ENABLE_CUDASIM="1") if cpu else run.env
    limit = min(150 if cpu else 60, run.left() - 60)
    if limit < 20:
        stage.status, stage.detail = "out of time", f"{max(limit, 0):.0f} s left"
        return run.add(stage)
    code, log = run.run(out.stem, [run.python, "-m", "bench", "smoke", "--out", str(out)]
                        + (["--cpu"] if cpu else []), limit, env)
    stage.logs.append(log)
    stage.status = status_of(code)
    rows, bad = jsonl_detail(out, "ok", lambda r: r["ok"])
    if stage.status == "no GPU":
        stage.detail = tail(log, 1)
    else:
        stage.detail = f"{rows - bad}/{rows} kernels match the reference"
        if code is None:
            stage.detail += f" before the limit ({limit:.0f} s)"
    stage.seconds = time.time() - t
    return run.add(stage)


def junit_counts(path: Path) -> dict[str, int] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"] + total["errors"], "skipped": total["skipped"]}


def tests(run: Run, files: list[tuple[str, str | None]], name: str, require_gpu: bool, cap: float) -> Stage:
    t = time.time()
    stage = Stage(name)
    limit = min(cap, run.left() - 90)
    if limit < 30:
        stage.status, stage.detail = "out of time", f"{max(limit, 0):.0f} s left"
        return run.add(stage)
    (run.work / "tests").mkdir(exist_ok=True)
    env = dict(run.env, MINIVAE_REQUIRE_GPU="1" if require_gpu else "0")
    procs, xmls = [], []
    for path, select in files:
        stem = Path(path).stem
        xml = run.work / "tests" / f"{stem}.xml"
        args = [run.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", path,
                f"--junitxml={xml}", "-o", "junit_family=xunit2"] + (["-k", select] if select else [])
        proc, log = run.spawn(f"tests-{stem}", args, env)
        procs.append(proc)
        xmls.append(xml)
        stage.logs.append(log)
    codes = run.wait(procs, limit)
    verdicts, statuses = [], []
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for (path, _), code, xml in zip(files, codes, xmls, strict=True):
        counts = junit_counts(xml) if code is not None else None
        for k, v in (counts or {}).items():
            totals[k] += v
        s = "out of time" if code is None else "passed" if code == 0 else f"failed (exit {code})"
        statuses.append(s)
        verdicts.append(f"{Path(path).name} {s}")
    stage.counts = totals
    stage.status = ("passed" if all(s == "passed" for s in statuses)
                    else "out of time" if "out of time" in statuses and not any(
                        s.startswith("failed") for s in statuses) else "failed")
    stage.detail = (f"tests: {totals['passed']} passed, {totals['failed']} failed, "
                    f"{totals['skipped']} skipped ({'; '.join(verdicts)})")
    stage.seconds = time.time() - t
    return run.add(stage)


def bench(run: Run, name: str, args: list[str], results: str, cap: float, keep_for_later: float,
          minimum: float = 30) -> Stage:
    t = time.time()
    stage = Stage(name)
    limit = min(cap, run.left() - keep_for_later)
    if limit < minimum:
        stage.status, stage.detail = "out of time", f"{max(limit, 0):.0f} s left, {minimum:.0f} s needed"
        return run.add(stage)
    out_dir = run.work / "bench"
    out_dir.mkdir(exist_ok=True)
    code, log = run.run(name, [run.python, "-m", "bench", *args], limit,
                        dict(run.env, MINIVAE_BENCH_OUT=str(out_dir)))
    stage.logs.append(log)
    stage.status = status_of(code)
    ladder = results == "ladder"
    # the ladder's rows that cannot run here say "not run: ..."; only "failed ..." is a failure
    ok = ((lambda r: not str(r.get("status") or "").startswith("failed")) if ladder
          else (lambda r: r.get("status") is None))
    key = "batch" if results == "gpu-train" else "status"
    rows, bad = jsonl_detail(out_dir / f"{results}.jsonl", key, ok)
    if ladder and stage.status == "passed" and bad:  # a version failed validation: the stage fails
        stage.status = "failed"
    if stage.status == "no GPU":
        stage.detail = tail(log, 1)
    else:
        stage.detail = f"{rows} results in {results}.jsonl, {bad} failed validation" + (
            f"; cut at {limit:.0f} s, the finished cases kept" if code is None else "")
    stage.seconds = time.time() - t
    return run.add(stage)


# ---- the summary and the packing ---------------------------------------------------------------------

def write_summary(run: Run, path: Path, extra: list[str] = ()) -> None:
    lines = [f"gpu_check on {run.gpu}, {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, "
             f"{time.time() - run.start:.0f} s"]
    lines += [f"{s.name:<22} {s.status:<12} {s.seconds:6.1f} s  {s.detail}" for s in run.stages]
    counted = [s.counts for s in run.stages if s.counts]
    if counted:
        total = {k: sum(c.get(k, 0) for c in counted) for k in ("passed", "failed", "skipped")}
        lines.append(f"tests: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    lines += list(extra)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def verdict(run: Run) -> tuple[int, str]:
    bad = [s for s in run.stages if s.status in ("failed", "out of time")]
    no_gpu = [s for s in run.stages if s.status == "no GPU"]
    if bad:
        return 1, "result: failed (" + ", ".join(f"{s.name} {s.status}" for s in bad) + ")"
    if no_gpu:
        return (0 if run.dry_run else 1), (f"result: dry run passed; {len(no_gpu)} GPU stages said no GPU"
                                           if run.dry_run else "result: failed (no GPU)")
    return 0, "result: passed"


def failures(run: Run) -> str:
    """The end of every failed stage's logs, and each failed test's message."""
    parts = []
    for s in run.stages:
        if s.status not in ("failed", "out of time"):
            continue
        for log in s.logs:
            parts.append(f"==== {s.name}: {log.name} (last lines)\n{tail(log, 60)}")
    for xml in sorted((run.work / "tests").glob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except (OSError, ET.ParseError):
            continue
        for case in root.iter("testcase"):
            for bad in [*case.findall("failure"), *case.findall("error")]:
                text = (bad.get("message") or "") + "\n" + (bad.text or "")
                parts.append(f"==== {xml.stem}::{case.get('name')}\n{text.strip()[-3000:]}")
    return "\n\n".join(parts) + "\n" if parts else ""


def pack(run: Run) -> int:
    """Everything into ``run.out`` within the limits; returns the exit status."""
    code, result = verdict(run)
    text = failures(run)
    if text:
        (run.work / "failures.txt").write_text(text)
    archive = run.out / "gpu-check.tar.gz"
    members = sorted((p for p in run.work.rglob("*") if p.is_file() and p.name != ".packed"
                      and p.relative_to(run.work).parts[0] != "site"),  # the install's links
                     key=lambda p: p.stat().st_size)
    left_out: list[str] = []
    while True:
        with tarfile.open(archive, "w:gz") as tar:
            for p in members:
                tar.add(p, arcname=p.relative_to(run.work).as_posix())
        if archive.stat().st_size <= MAX_FILE_BYTES or not members:
            break
        biggest = members.pop()  # the largest file goes first until the archive fits
        left_out.append(f"{biggest.relative_to(run.work).as_posix()} ({biggest.stat().st_size} bytes)")
    beside = []
    for rel in READ_FIRST:
        src = run.work / rel
        if src.is_file() and len(beside) < MAX_FILES - 2:
            dst = run.out / src.name
            if src.stat().st_size > MAX_FILE_BYTES:
                dst.write_bytes(src.read_bytes()[-MAX_FILE_BYTES + 1024:])
            else:
                shutil.copyfile(src, dst)
            beside.append(src.name)
    extra = [result, f"archive: gpu-check.tar.gz ({archive.stat().st_size / 2**20:.1f} MiB: logs, JSON "
                     "lines, JUnit XML, tables, plots)"]
    if beside:
        extra[-1] += f"; beside it: {', '.join(beside)}"
    if left_out:
        extra.append(f"left out of the archive to stay under {MAX_FILE_BYTES // 2**20} MiB: "
                     + ", ".join(left_out))
    write_summary(run, run.work / "summary.txt", extra)
    write_summary(run, run.out / "summary.txt", extra)
    (run.work / ".packed").write_text(result + "\n")
    run.log(result)
    return code


# ---- the run -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", required=True, help="the interpreter every stage runs")
    p.add_argument("--work", required=True, type=Path, help="an empty folder for logs and results")
    p.add_argument("--out", required=True, type=Path, help="where the packed results go")
    p.add_argument("--deadline", required=True, type=float, help="when everything must be packed (epoch s)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpus()
    dry_run = not gpus and os.environ.get("GPU_CHECK_WITHOUT_GPU") == "1"
    run = Run(args.python, args.work, args.out, args.deadline, dry_run)
    if gpus:
        run.gpu = gpus[0].split(":", 1)[1].split("(UUID")[0].strip()
    elif not dry_run:
        run.gpu = "no GPU"
        run.add(Stage("gpu", "failed", 0.0, "no NVIDIA GPU visible (nvidia-smi missing or lists none); "
                                            "GPU_CHECK_WITHOUT_GPU=1 runs the rest as a dry run"))
        pack(run)
        return 2
    interrupted = []

    def stop(signum, frame):  # the caller's limit: pack what there is
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        if install(run).status == "passed":
            environment(run)
            if run.dry_run:
                smoke(run, cpu=True)
            smoke(run, cpu=False)
            if run.dry_run:
                tests(run, CPU_TESTS, "tests (CPU subset)", require_gpu=False, cap=120)
                run.add(Stage("tests", "no GPU", 0.0, "the GPU test files are not run without a GPU"))
            else:
                tests(run, GPU_TESTS, "tests", require_gpu=True, cap=180)
            gpu = ["--backends", GPU_BACKENDS, "--require-gpu"]
            bench(run, "kernels", ["kernels", "--quick", *gpu, "--name", "kernels-gpu"], "kernels-gpu",
                  90, 155)
            bench(run, "ladder", ["ladder", "--quick", "--require-gpu"], "ladder", 75, 80)
            bench(run, "train", ["gpu-train", "--quick"], "gpu-train", 75, 25)
            bench(run, "sweep", ["kernels", *gpu, "--name", "kernels-gpu-full"], "kernels-gpu-full", 1e9, 0,
                  minimum=20)
    except KeyboardInterrupt:
        run.stop_children()
        run.add(Stage("interrupted", "failed", 0.0, f"signal {interrupted[0] if interrupted else 'SIGINT'}: "
                                                    "packed what the stages had written"))
    return pack(run)


if __name__ == "__main__":
    sys.exit(main())
