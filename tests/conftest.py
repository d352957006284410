"""Hypothesis profiles: ``ci`` (default, bounded so the suite stays fast on 2 cores), ``dev`` and
``thorough`` (HYPOTHESIS_PROFILE=thorough pytest) for a long hunt.

``MINIVAE_REQUIRE_GPU=1`` (what bench/gpu_check.sh runs the GPU test files with): a test that would
be skipped, or a test module skipped whole, fails instead, and so does any test that runs while
numba.cuda is Numba's simulator: on a GPU machine a run cannot pass without touching the GPU. A skip
whose reason starts with "a GPU is here" (a test of the no-GPU behaviour) stays a skip.

Numba's on-disk cache of the kernels goes to a folder named by a hash of every kernels/*.py file:
Numba checks only the time stamp of the file that defines a cached function, while the kernels
inline functions from other files (common/vecmath.py, common/philox_numba.py, ...), so after an
edit there the default cache would hand the tests the old machine code. Set NUMBA_CACHE_DIR to
choose another folder.
"""

import hashlib
import os
import pathlib
import sys
import tempfile


def _numba_cache_dir() -> str:
    kernels = pathlib.Path(__file__).resolve().parent.parent / "kernels"
    digest = hashlib.sha256()
    for f in sorted(kernels.rglob("*.py")):
        digest.update(f.relative_to(kernels).as_posix().encode() + b"\0" + f.read_bytes())
    return os.path.join(tempfile.gettempdir(), f"minivae-numba-cache-{digest.hexdigest()[:16]}")


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()  # subprocesses (CLI tests) inherit it
    if "numba" in sys.modules:  # already imported (a plugin): its config was read without it
        sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from minivae import backends  # noqa: E402

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def no_cupy(monkeypatch):
    """cupy unavailable, as on a machine without a GPU (whatever this machine has)."""
    real_load = backends._load

    def load(name):
        if name == "cupy":
            raise ImportError("no CUDA GPU: CuPy sees no device")
        return real_load(name)

    monkeypatch.setattr(backends, "_load", load)
    monkeypatch.delitem(backends._loaded, "cupy", raising=False)


# ---- MINIVAE_REQUIRE_GPU --------------------------------------------------------------------------

REQUIRE_GPU = os.environ.get("MINIVAE_REQUIRE_GPU") == "1"
SKIPS_ON_A_GPU = "a GPU is here"  # the reason a no-GPU test gives for skipping on a GPU machine


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _numba_cuda_is_the_simulator() -> bool:
    cuda = sys.modules.get("numba.cuda")
    return cuda is not None and cuda.jit.__module__.startswith("numba.cuda.simulator")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not REQUIRE_GPU or hasattr(report, "wasxfail"):
        return
    if report.skipped and not _skip_reason(report).startswith(SKIPS_ON_A_GPU):
        report.outcome = "failed"
        report.longrepr = f"MINIVAE_REQUIRE_GPU=1: this test would have been skipped: {_skip_reason(report)}"
    elif report.when == "call" and report.passed and _numba_cuda_is_the_simulator():
        report.outcome = "failed"
        report.longrepr = ("MINIVAE_REQUIRE_GPU=1: numba.cuda is Numba's simulator in this process: the test "
                           "ran on the CPU, not on the GPU")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_GPU and report.skipped and not _skip_reason(report).startswith(SKIPS_ON_A_GPU):
        report.outcome = "failed"
        report.longrepr = ("MINIVAE_REQUIRE_GPU=1: this module would have been skipped: "
                           f"{_skip_reason(report)}")
