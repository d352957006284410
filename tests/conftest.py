"""Hypothesis profiles: ``ci`` (default, bounded so the suite stays fast on 2 cores), ``dev`` and
``thorough`` (HYPOTHESIS_PROFILE=thorough pytest) for a long hunt."""

import os

import pytest
from hypothesis import HealthCheck, settings

from minivae import backends

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
