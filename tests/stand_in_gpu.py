"""A stand-in for the GPU device of ``bench/gpu_timing.py``, for the benchmarks' tests on the CPU."""

from __future__ import annotations


class StandInDevice:
    """Where GPU rows would be timed: the tests replace ``time_on_device``, so this only names the
    device and hands out the ceilings' ops (which do nothing)."""

    name, l2_bytes = "stand-in", 2**20

    def sgemm(self, n):
        return lambda: None

    def copy(self, nbytes):
        return lambda: None

    def exp_log(self, func, fast):
        return (lambda: None), 1e6
