"""bench/gpu_timing.py: a GPU op's time is its kernels', not the host's launch cost.

On the CPU the method runs against a simulated device (one in-order stream with a clock of its
own, and a host clock that advances by what each call costs the host): the numbers it reports are
then known exactly, and so is what the old method (CUDA events around one call) reports. On a GPU
the same method times a kernel of known duration.
"""

from __future__ import annotations

import pytest

from bench import gpu_timing


class SimulatedDevice:
    """One stream: work starts when both the stream and the host have got to it. ``log`` lists
    what was enqueued, in order."""

    def __init__(self, flush_s: float = 30e-6, event_cost_s: float = 1e-6):
        self.host = 0.0  # the host's clock
        self.free_at = 0.0  # when the stream has finished everything enqueued so far
        self.flush_s, self.event_cost_s = flush_s, event_cost_s
        self.log: list[str] = []

    def clock(self) -> float:
        return self.host

    def enqueue(self, what: str, device_s: float, host_s: float) -> float:
        """Costs the host ``host_s``, then runs ``device_s`` on the stream; returns its start."""
        self.host += host_s
        start = max(self.free_at, self.host)
        self.free_at = start + device_s
        self.log.append(what)
        return start

    def flush(self) -> None:
        self.enqueue("flush", self.flush_s, 5e-6)

    def hold(self, seconds: float) -> None:
        self.enqueue("hold", seconds, 5e-6)

    def record(self) -> float:
        return self.enqueue("event", 0.0, self.event_cost_s)

    def elapsed(self, start: float, end: float) -> float:
        self.host = max(self.host, end)  # waits for the end event
        return end - start

    def synchronize(self) -> None:
        self.host = max(self.host, self.free_at)

    def op(self, kernel_s: float, dispatch_s: float, blocking: bool = False):
        """An op whose launch costs the host ``dispatch_s`` and the device ``kernel_s``; a blocking
        one waits for its result (as a host read of a device scalar does)."""
        def call():
            self.enqueue("op", kernel_s, dispatch_s)
            if blocking:
                self.synchronize()

        return call


def one_event_pair(dev: SimulatedDevice, fn) -> float:
    """The method this replaces: CUDA events around one call."""
    start = dev.record()
    fn()
    return dev.elapsed(start, dev.record())


@pytest.mark.parametrize("kernel_s, dispatch_s", [(3e-6, 20e-6), (50e-6, 1e-6), (1e-3, 30e-6)])
def test_the_device_time_per_call_is_the_kernels_whatever_the_launch_costs(kernel_s, dispatch_s):
    dev = SimulatedDevice()
    fn = dev.op(kernel_s, dispatch_s)
    fn()
    t = gpu_timing.time_on_device(fn, dev, samples=3, clock=dev.clock)
    assert t.median_s == pytest.approx(kernel_s, rel=1e-9) and t.min_s == pytest.approx(kernel_s, rel=1e-9)
    assert t.dispatch_s == pytest.approx(dispatch_s, rel=1e-9)
    assert not t.host_gaps
    assert t.reps * kernel_s >= 200e-6  # hundreds of times the events' resolution (~0.5 us)


def test_one_event_pair_around_one_call_measures_the_launch_not_the_kernel():
    """What the simulated device says about the old method: a 3 us kernel behind a 20 us launch
    reads as the launch (so the check above is not vacuous)."""
    dev = SimulatedDevice()
    fn = dev.op(3e-6, 20e-6)
    fn()
    assert one_event_pair(dev, fn) >= 20e-6


def test_every_sample_flushes_the_l2_once_then_holds_the_stream_before_the_timed_calls():
    dev = SimulatedDevice()
    fn = dev.op(5e-6, 10e-6)
    fn()
    t = gpu_timing.time_on_device(fn, dev, samples=4, clock=dev.clock)
    sample = ["flush", "event", "hold", "event", *["op"] * t.reps, "event"]
    first = dev.log.index("flush")
    assert dev.log[first:] == sample * 4
    assert dev.log.count("flush") == 4


def test_a_hold_shorter_than_the_enqueue_is_lengthened_until_it_covers_it(monkeypatch):
    monkeypatch.setattr(gpu_timing, "HOLD_SAFETY", 0.3)  # far too short a first hold
    monkeypatch.setattr(gpu_timing, "MIN_HOLD_S", 1e-6)
    dev = SimulatedDevice()
    fn = dev.op(2e-6, 20e-6)
    fn()
    t = gpu_timing.time_on_device(fn, dev, samples=2, clock=dev.clock)
    assert not t.host_gaps and t.median_s == pytest.approx(2e-6, rel=1e-9)
    assert dev.log.count("flush") > 2  # samples taken again with a longer hold


def test_an_op_that_waits_for_the_device_is_reported_as_timed_with_host_gaps():
    """A call that reads a result back stalls the host behind the hold: no hold can cover the
    enqueue, and the timing says so instead of passing the host's time off as the kernel's."""
    dev = SimulatedDevice()
    fn = dev.op(3e-6, 20e-6, blocking=True)
    fn()
    t = gpu_timing.time_on_device(fn, dev, samples=2, clock=dev.clock)
    assert t.host_gaps
    assert t.median_s > 3e-6


# ---- on a GPU --------------------------------------------------------------------------------------

def _cupy_sees_a_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean "no GPU here"
        return False


gpu_only = pytest.mark.skipif(not _cupy_sees_a_gpu(), reason="no CUDA GPU")


@gpu_only
@pytest.mark.parametrize("kernel_us", [2.0, 20.0])
def test_on_the_gpu_a_kernel_of_known_length_is_timed_at_its_length(kernel_us):
    """The hold kernel itself, asked for ``kernel_us``, is the op: a few microseconds of device
    time behind a Python launch that costs more than that."""
    device = gpu_timing.CupyDevice()

    def fn():
        device.hold(kernel_us * 1e-6)

    fn()
    t = gpu_timing.time_on_device(fn, device, samples=5)
    assert not t.host_gaps
    # the spin ends within one tick of the device's clock (32 ns to 1 us, by GPU) of its length; the
    # kernel's own launch and exit add a few microseconds at most
    assert kernel_us * 1e-6 - 1.1e-6 <= t.median_s <= kernel_us * 1e-6 + 5e-6, t
    assert t.dispatch_s > 0
