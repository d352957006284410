"""``adam_many`` (kernels/adam/numba_cpu.py): the numba backend's Adam over every parameter in one
call, bit for bit ``minivae.optim.Adam``'s rule, on its serial and parallel paths, with tensors
that straddle the chunks it splits them into."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("numba")

from minivae import optim  # noqa: E402
from minivae.backends import get_backend  # noqa: E402
from minivae.kernels.adam import numba_cpu as adam_cpu  # noqa: E402

CHUNK = 64  # chunks of 64 entries, so small tensors straddle several
SHAPES = [(1,), (CHUNK,), (CHUNK + 3,), (5, 29), (3 * CHUNK - 1,), (2, 2 * CHUNK)]
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False)


@pytest.fixture(params=["serial", "parallel"])
def many_path(request, monkeypatch):
    monkeypatch.setattr(adam_cpu, "MANY_CHUNK", CHUNK)
    adam_cpu._chunks.cache_clear()
    monkeypatch.setattr(adam_cpu, "MANY_PARALLEL_MIN_ELEMENTS", 0 if request.param == "parallel" else 1 << 62)
    yield request.param
    adam_cpu._chunks.cache_clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("cls", "weight_decay", "betas"), [(optim.Adam, 0.0, (0.9, 0.999)),
                                                            (optim.Adam, 0.1, (0.3, 0.9)),
                                                            (optim.AdamW, 0.1, (0.0, 0.5))])
def test_the_optimiser_through_adam_many_equals_the_reference_bit_for_bit(many_path, dtype, cls, weight_decay,
                                                                          betas):
    """optim.Adam on the numba backend takes adam_many (a spy proves it); beta1 = 0.3 takes the
    other form of PyTorch's lerp."""
    rng = np.random.default_rng(7)
    params = {f"p{i}": rng.normal(size=s).astype(dtype) for i, s in enumerate(SHAPES)}
    ref_p = {k: v.copy() for k, v in params.items()}
    calls = []
    backend = get_backend("numba")
    spy = dataclasses.replace(backend, adam_many=lambda *a, **k: (calls.append(1),
                                                                  adam_cpu.adam_many(*a, **k)))
    ref = cls(ref_p, lr=0.01, betas=betas, weight_decay=weight_decay)
    ker = cls(params, lr=0.01, betas=betas, weight_decay=weight_decay, backend=spy)
    for step in range(1, 4):
        grads = {k: (rng.normal(size=v.shape) * rng.choice([1e-3, 1, 100])).astype(dtype)
                 for k, v in params.items()}
        ref.step({k: g.copy() for k, g in grads.items()})
        ker.step(grads)
        a, b = ref.state_dict(), ker.state_dict()
        for name in a:
            np.testing.assert_array_equal(b[name], a[name], err_msg=f"{name} at step {step}")
        for k in params:
            np.testing.assert_array_equal(params[k], ref_p[k], err_msg=f"{k} at step {step}")
    assert len(calls) == 3


def test_adam_many_equals_adam_on_each_tensor(many_path):
    rng = np.random.default_rng(3)
    ps = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    gs = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    ms, vs = [np.abs(rng.normal(size=s)).astype(np.float32) for s in SHAPES], [np.zeros(s, np.float32)
                                                                               for s in SHAPES]
    one = [[a.copy() for a in arrays] for arrays in (ps, gs, ms, vs)]
    p_before = [p.copy() for p in ps]
    adam_cpu.adam_many(ps, gs, ms, vs, step=2, **HYPER)
    for p, g, m, v in zip(*one, strict=True):
        adam_cpu.adam(p, g, m, v, step=2, **HYPER)
    for got, want in zip(ps + ms + vs, one[0] + one[2] + one[3], strict=True):
        np.testing.assert_array_equal(got, want)
    assert all(not np.array_equal(p, p0) for p, p0 in zip(ps, p_before, strict=True))  # all stepped


def _arrays(n=2, dtype=np.float32):
    return [np.zeros(5, dtype) for _ in range(n)]


@pytest.mark.parametrize(("call", "match"), [
    (lambda: adam_cpu.adam_many([], [], [], [], step=1, **HYPER), "non-empty sequences of one length"),
    (lambda: adam_cpu.adam_many(_arrays(2), _arrays(1), _arrays(2), _arrays(2), step=1, **HYPER),
     "non-empty sequences of one length, got 2, 1, 2, 2"),
    (lambda: adam_cpu.adam_many([np.zeros(5, np.float32), np.zeros(5)], _arrays(2), _arrays(2), _arrays(2),
                                step=1, **HYPER), r"params\[1\] must be a float32 or float64 array"),
    (lambda: adam_cpu.adam_many(_arrays(1), [np.zeros(4, np.float32)], _arrays(1), _arrays(1), step=1,
                                **HYPER), r"grads\[0\] must be an array of shape \(5,\)"),
    (lambda: adam_cpu.adam_many([np.zeros((3, 2), np.float32)], [np.zeros((3, 2), np.float32)],
                                [np.zeros((2, 3), np.float32).T], [np.zeros((3, 2), np.float32)], step=1,
                                **HYPER), r"exp_avgs\[0\] must be C-contiguous"),
    (lambda: adam_cpu.adam_many(_arrays(1), _arrays(1), _arrays(1), _arrays(1), step=0, **HYPER),
     "step must be an integer >= 1"),
    (lambda: adam_cpu.adam_many(_arrays(1), _arrays(1), _arrays(1), _arrays(1), step=1,
                                **{**HYPER, "beta1": 1.0}), r"betas must be in \[0, 1\)"),
])
def test_adam_many_rejects_bad_arguments_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_numba_backend_offers_adam_many():
    backend = get_backend("numba")
    assert backend.adam_many is adam_cpu.adam_many and backend.adam is adam_cpu.adam
