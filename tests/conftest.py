"""Hypothesis profiles: ``ci`` (default, bounded so the suite stays fast on 2 cores), ``dev`` and
``thorough`` (HYPOTHESIS_PROFILE=thorough pytest) for a long hunt.

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
