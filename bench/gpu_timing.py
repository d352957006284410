"""Timing a GPU op so that the number is the kernels', not the host's.

A pair of CUDA events around one Python call of a microsecond kernel measures the launch: the host
spends 5-50 us in Python and in the driver per launch, and the device idles between the events
until the kernel arrives. So each sample here

1. flushes the L2 (the same way for every op, GEMM or elementwise: a write of twice its size), so
   every sample starts from the same cache state;
2. enqueues a *hold*: a one-thread kernel that spins on the device's nanosecond clock for longer
   than the host needs to enqueue everything that follows;
3. records the start event, calls the op ``reps`` times back to back, records the end event.

The device reaches the start event only when the hold ends, by which time every launch of the
``reps`` calls is queued: the events bracket the kernels running back to back, and their time
divided by ``reps`` is the op's device time per call. Working sets that fit in the L2 are L2-warm
after the first of the ``reps`` calls, as in a training loop that reuses its weights. The host's
own cost per call (Python, argument checks, the driver's launch) is measured on the host meanwhile
and reported beside it as ``dispatch``: it is hidden while the device is busy, and is the floor of
a step made of many small kernels.

Whether the hold was long enough is checked, not assumed: the host's enqueue time is compared with
the hold's device time, and a sample whose enqueue outlasted its hold is taken again with a longer
hold (``host_gaps`` says if none was long enough).

``Device`` is what the method needs from a GPU; ``CupyDevice`` is the real one, and the tests drive
the same method with a simulated device on the CPU.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# The hold: the device's global nanosecond timer (%globaltimer), not clock64(), whose rate follows
# the SM clock.
HOLD_SOURCE = r"""
extern "C" __global__ void hold(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"""
# exp and log throughput: every thread runs EXP_LOG_CHAINS independent chains x -> f(x) in registers (so the
# latency of one evaluation hides behind the others), ROUNDS evaluations each, and stores the
# results so that nothing is dropped. The maps keep their ranges (x -> e^-x: [0, 1]; x -> log(x + 2):
# [0, 2]). FAST selects CUDA's fast-math intrinsics (__expf, __logf) instead of expf and logf.
EXP_LOG_SOURCE = r"""
#ifdef FAST
#define EXP __expf
#define LOG __logf
#else
#define EXP expf
#define LOG logf
#endif
extern "C" __global__ void exp_probe(float* out, int rounds) {
    float v[CHAINS];
    for (int c = 0; c < CHAINS; ++c) v[c] = 0.1f * c + 1e-6f * threadIdx.x;
    for (int r = 0; r < rounds; ++r)
        for (int c = 0; c < CHAINS; ++c) v[c] = EXP(-v[c]);
    float s = 0.0f;
    for (int c = 0; c < CHAINS; ++c) s += v[c];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
extern "C" __global__ void log_probe(float* out, int rounds) {
    float v[CHAINS];
    for (int c = 0; c < CHAINS; ++c) v[c] = 0.1f * c + 1e-6f * threadIdx.x;
    for (int r = 0; r < rounds; ++r)
        for (int c = 0; c < CHAINS; ++c) v[c] = LOG(v[c] + 2.0f);
    float s = 0.0f;
    for (int c = 0; c < CHAINS; ++c) s += v[c];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""
EXP_LOG_CHAINS, EXP_LOG_ROUNDS = 4, 1024
EXP_LOG_BLOCK, EXP_LOG_BLOCKS_PER_SM = 256, 8  # 2048 threads per SM: a full SM on recent GPUs
MIN_HOLD_S = 200e-6  # covers the events and one launch of even the slowest op with room to spare
HOLD_SAFETY = 3.0  # hold = this times the enqueue time measured for the same calls
HOLD_TRIES = 4  # a sample whose enqueue outlasted its hold is taken again, the hold doubled
TARGET_DEVICE_S = 2e-3  # device time per sample: enough for the events' ~1 us resolution
MAX_REPS = 500  # launches queued at once stay well under the driver's queue depth


class Device(Protocol):
    """What the timing needs from a device; every call enqueues on one stream, in order."""

    def flush(self) -> None: ...  # evict the L2

    def hold(self, seconds: float) -> None: ...  # keep the device busy for ``seconds``

    def record(self) -> Any: ...  # an event, recorded now

    def elapsed(self, start: Any, end: Any) -> float: ...  # seconds between two events (waits for end)

    def synchronize(self) -> None: ...


@dataclass
class Timing:
    """Device seconds per call (one per sample), host seconds per call, and how they were taken."""

    device_s: list[float]
    dispatch_s: float
    reps: int
    hold_s: float
    host_gaps: bool

    @property
    def median_s(self) -> float:
        return statistics.median(self.device_s)

    @property
    def min_s(self) -> float:
        return min(self.device_s)


def time_on_device(fn: Callable[[], object], device: Device, samples: int = 5,
                   clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``fn`` (which enqueues an op's kernels and returns without waiting for them) as the
    module docstring says. ``fn`` has run once already (compiled, allocated, validated)."""
    device.synchronize()
    # a first estimate: the device time of one call (host gaps included, so an upper bound) and
    # the host's time to enqueue it, which sizes the batch and the hold
    start = device.record()
    t = clock()
    fn()
    enqueue = clock() - t
    one = device.elapsed(start, device.record())
    reps = max(1, min(MAX_REPS, math.ceil(TARGET_DEVICE_S / max(one, 1e-7))))
    hold = max(MIN_HOLD_S, HOLD_SAFETY * reps * enqueue)
    device_s, dispatch, gaps = [], [], False
    for _ in range(samples):
        for _ in range(HOLD_TRIES):
            device.flush()
            t0 = clock()
            held = device.record()
            device.hold(hold)
            start = device.record()
            t = clock()
            for _ in range(reps):
                fn()
            loop = clock() - t
            end = device.record()
            host = clock() - t0
            per_call = device.elapsed(start, end) / reps
            if host < device.elapsed(held, start):  # everything was queued before the hold ended
                break
            hold *= 2
        else:
            gaps = True
        device_s.append(per_call)
        dispatch.append(loop / reps)
    return Timing(device_s, statistics.median(dispatch), reps, hold, gaps)


class CupyDevice:
    """The current CUDA device through CuPy, on CuPy's current stream (where the launchers of both
    GPU backends enqueue their kernels)."""

    def __init__(self) -> None:
        import cupy

        self._cupy = cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self.name = props["name"].decode()
        self.l2_bytes = int(props["l2CacheSize"])
        self._hold = cupy.RawKernel(HOLD_SOURCE, "hold")
        self._flush_buf = cupy.empty(max(2 * self.l2_bytes // 4, 1), cupy.float32)

    def flush(self) -> None:
        self._flush_buf.fill(0)

    def hold(self, seconds: float) -> None:
        self._hold((1,), (1,), (self._cupy.uint64(int(seconds * 1e9)),))

    def record(self) -> Any:
        event = self._cupy.cuda.Event()
        event.record()
        return event

    def elapsed(self, start: Any, end: Any) -> float:
        end.synchronize()
        return self._cupy.cuda.get_elapsed_time(start, end) / 1e3

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()

    def sgemm(self, n: int) -> Callable[[], object]:
        """One float32 n x n x n product through cuBLAS (CuPy keeps TF32 off unless CUPY_TF32=1)."""
        cupy = self._cupy
        a = cupy.random.default_rng(0).random((n, n), dtype=cupy.float32)
        out = cupy.empty_like(a)
        return lambda: cupy.matmul(a, a, out=out)

    def copy(self, nbytes: int) -> Callable[[], object]:
        """A device-to-device copy moving ``nbytes`` in all (half read, half written)."""
        cupy = self._cupy
        src = cupy.ones(max(nbytes // 8, 1), cupy.float32)
        dst = cupy.empty_like(src)
        return lambda: cupy.copyto(dst, src)

    def exp_log(self, func: str, fast: bool) -> tuple[Callable[[], object], float]:
        """A kernel evaluating ``func`` ("exp" or "log") in float32 registers on every SM, and the
        evaluations one call makes: expf / logf, or with ``fast`` the intrinsics __expf / __logf."""
        cupy = self._cupy
        options = (f"-DCHAINS={EXP_LOG_CHAINS}",) + (("-DFAST",) if fast else ())
        module = cupy.RawModule(code=EXP_LOG_SOURCE, options=options)
        kernel = module.get_function(f"{func}_probe")
        sms = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["multiProcessorCount"]
        blocks = sms * EXP_LOG_BLOCKS_PER_SM
        out = cupy.empty(blocks * EXP_LOG_BLOCK, cupy.float32)
        count = float(blocks * EXP_LOG_BLOCK * EXP_LOG_CHAINS * EXP_LOG_ROUNDS)
        return lambda: kernel((blocks,), (EXP_LOG_BLOCK,), (out, cupy.int32(EXP_LOG_ROUNDS))), count
