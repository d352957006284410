"""Philox is Random123's bit for bit; the eps stream is a pure function of (seed, element index), is
standard normal, and the float32 recipe the kernels follow stays within EPS_TOLERANCE of it."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivae.philox import (
    EPS_TOLERANCE,
    LANES,
    box_muller4,
    normal_eps,
    normal_eps_like,
    philox4x32,
    philox4x64,
)

# Random123 tests/kat_vectors, verbatim: name, rounds, counter words, key words, expected output words.
KAT_VECTORS = """
philox4x32 7 00000000 00000000 00000000 00000000 00000000 00000000   5f6fb709 0d893f64 4f121f81 4f730a48
philox4x32 7 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   5207ddc2 45165e59 4d8ee751 8c52f662
philox4x32 7 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   4dfccaba 190a87f0 c47362ba b6b5242a
philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
philox4x64 7 0000000000000000 0000000000000000 0000000000000000 0000000000000000 0000000000000000 0000000000000000   5dc8ee6268ec62cd 139bc570b6c125a0 84d6deb4fb65f49e aff7583376d378c2
philox4x64 7 ffffffffffffffff ffffffffffffffff ffffffffffffffff ffffffffffffffff ffffffffffffffff ffffffffffffffff   071dd84367903154 48e2bbdc722b37d1 6afa9890bb89f76c 9194c8d8ada56ac7
philox4x64 7 243f6a8885a308d3 13198a2e03707344 a4093822299f31d0 082efa98ec4e6c89 452821e638d01377 be5466cf34e90c6c   513a366704edf755 f05d9924c07044d3 bef2cb9cbea74c6c 8db948de4caa1f8a
philox4x64 10 0000000000000000 0000000000000000 0000000000000000 0000000000000000 0000000000000000 0000000000000000   16554d9eca36314c db20fe9d672d0fdc d7e772cee186176b 7e68b68aec7ba23b
philox4x64 10 ffffffffffffffff ffffffffffffffff ffffffffffffffff ffffffffffffffff ffffffffffffffff ffffffffffffffff   87b092c3013fe90b 438c3c67be8d0224 9cc7d7c69cd777b6 a09caebf594f0ba0
philox4x64 10 243f6a8885a308d3 13198a2e03707344 a4093822299f31d0 082efa98ec4e6c89 452821e638d01377 be5466cf34e90c6c   a528f45403e61d95 38c72dbd566e9788 a5a1610e72fd18b5 57bd43b5e52b7fe6
"""  # noqa: E501
PHILOX = {"philox4x32": (philox4x32, np.uint32), "philox4x64": (philox4x64, np.uint64)}
KATS = [line.split() for line in KAT_VECTORS.strip().splitlines()]

u64 = st.integers(0, 2**64 - 1)
seeds = u64
# offsets near the start, around the carry of the group counter into its high word (group 2**32),
# and at the very end of the 2**64-element stream
offsets = st.one_of(st.integers(0, 2**16), st.integers(LANES * 2**32 - 64, LANES * 2**32 + 64),
                    st.integers(2**64 - 2**10, 2**64 - 2**8))


@pytest.mark.parametrize("name, rounds, words", [(k[0], int(k[1]), k[2:]) for k in KATS],
                         ids=[f"{k[0]}-{k[1]}-{k[2][:4]}" for k in KATS])
def test_philox_matches_random123_known_answers(name, rounds, words):
    fn, dtype = PHILOX[name]
    ctr, key, want = (np.array([int(w, 16) for w in ws], dtype) for ws in (words[:4], words[4:6], words[6:]))
    out = fn(ctr[None], key, rounds)
    assert out.dtype == dtype and out.shape == (1, 4)
    assert out[0].tolist() == want.tolist()


def _int_of(words) -> int:
    """Little-endian words (word 0 least significant) as one integer: NumPy's counter/key convention."""
    return sum(int(w) << (64 * i) for i, w in enumerate(words))


@given(rows=st.lists(st.tuples(st.lists(st.one_of(u64, st.just(2**64 - 1)), min_size=4, max_size=4),
                               st.lists(u64, min_size=2, max_size=2)), min_size=1, max_size=8))
def test_philox4x64_matches_numpys_own_philox_bit_generator(rows):
    """np.random.Philox is Philox4x64-10. It adds 1 to its 256-bit counter (carrying across words)
    *before* each block and emits the block's 4 words in order, so a generator started at counter - 1
    emits philox(counter) and then philox(counter + 1). One batched call checks every row at once."""
    ctr = np.array([c for c, _ in rows], np.uint64)
    key = np.array([k for _, k in rows], np.uint64)
    nxt = [(_int_of(c) + 1) % 2**256 for c, _ in rows]
    ctr_next = np.array([[(v >> (64 * i)) & (2**64 - 1) for i in range(4)] for v in nxt], np.uint64)
    ours = np.concatenate([philox4x64(ctr, key), philox4x64(ctr_next, key)], axis=1)
    for i, (c, k) in enumerate(rows):
        numpy_bg = np.random.Philox(counter=(_int_of(c) - 1) % 2**256, key=_int_of(k))
        assert numpy_bg.random_raw(8).tolist() == ours[i].tolist()


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6))
def test_one_key_for_every_row_equals_the_key_repeated_per_row(seed, n):
    rng = np.random.default_rng(seed)
    ctr = rng.integers(0, 2**32, (n, 4), dtype=np.uint32)
    key = rng.integers(0, 2**32, 2, dtype=np.uint32)
    np.testing.assert_array_equal(philox4x32(ctr, key), philox4x32(ctr, np.tile(key, (n, 1))))


@pytest.mark.parametrize("args, match", [
    ((np.zeros((1, 4)), np.zeros(2, np.uint32)), "counter must be an array of integers"),
    ((np.zeros((1, 3), np.uint32), np.zeros(2, np.uint32)), r"counter must have shape \(N, 4\)"),
    ((np.full((1, 4), 2**32), np.zeros(2, np.uint32)), r"counter must hold integers in \[0, 2\*\*32\)"),
    ((np.full((1, 4), -1), np.zeros(2, np.uint32)), "counter must hold integers"),
    ((np.zeros((2, 4), np.uint32), np.zeros((3, 2), np.uint32)), r"key must have shape \(2, 2\)"),
    ((np.zeros((2, 4), np.uint32), np.uint32(0)), r"key must have shape \(2,\) or \(N, 2\)"),
    ((np.zeros((1, 4), np.uint32), np.zeros(2, bool)), "key must be an array of integers"),
    ((np.zeros((1, 4), np.uint32), np.zeros(2, np.uint32), 0), "rounds must be a positive integer"),
])
def test_bad_philox_arguments_are_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        philox4x32(*args)


# ----------------------------------------------------------------------------------------------
# The eps stream


def _eps_by_hand(seed: int, j: int) -> float:
    """Element j exactly as a kernel thread computes it, per the module docstring, one scalar at a time."""
    g, lane = divmod(j, LANES)
    ctr = np.array([[g & 0xFFFFFFFF, g >> 32, 0, 0]], np.uint32)
    x = philox4x32(ctr, np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32))[0].tolist()
    a, b = x[lane & 2], x[(lane & 2) + 1]  # lanes 0, 1 use words 0, 1; lanes 2, 3 use words 2, 3
    r = math.sqrt(-2 * math.log((a + 0.5) * 2**-32))
    theta = 2 * math.pi * (b + 0.5) * 2**-32
    return r * (math.sin(theta) if lane % 2 == 0 else math.cos(theta))


@given(seed=seeds, j=offsets)
def test_each_element_follows_the_documented_counter_mapping(seed, j):
    assert normal_eps(seed, j, 1)[0] == pytest.approx(_eps_by_hand(seed, j), rel=1e-13, abs=1e-13)


@given(seed=seeds, offset=offsets, n=st.integers(1, 70), k=st.integers(0, 69))
def test_an_element_does_not_depend_on_the_window_it_is_drawn_in(seed, offset, n, k):
    k %= n
    np.testing.assert_allclose(normal_eps(seed, offset, n)[k], normal_eps(seed, offset + k, 1)[0],
                               rtol=1e-14, atol=1e-14)


def test_a_window_across_the_high_word_of_the_group_counter_is_the_elements_one_by_one():
    offset = LANES * 2**32 - 6  # groups 2**32 - 2 .. 2**32 + 1: the low counter word wraps to 0
    window = normal_eps(5, offset, 12)
    one_by_one = [normal_eps(5, offset + k, 1)[0] for k in range(12)]
    np.testing.assert_allclose(window, one_by_one, rtol=1e-14, atol=1e-14)
    assert len(set(window.tolist())) == 12


def test_the_stream_runs_to_its_last_element():
    assert normal_eps(9, 2**64 - 5, 5).shape == (5,)
    assert normal_eps(9, 2**64 - 1, 0).shape == (0,)


def test_one_million_draws_are_standard_normal():
    """Mean and variance within 5 standard errors, each lane and the sin/cos partners uncorrelated,
    Kolmogorov-Smirnov distance below its 0.1% critical value, and the tail cap |eps| <= sqrt(66 ln 2)."""
    n = 10**6
    z = normal_eps(20240611, 3, n)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)  # Var of the sample variance of N(0,1): 2/n
    lanes = normal_eps(20240611, 0, n).reshape(-1, LANES)
    m = lanes.shape[0]
    assert np.all(np.abs(lanes.mean(axis=0)) < 5 / math.sqrt(m))
    for a, b in [(0, 1), (2, 3), (0, 2), (1, 3)]:
        assert abs(np.mean(lanes[:, a] * lanes[:, b])) < 5 / math.sqrt(m)
    x = np.sort(z)
    cdf = 0.5 * (1 + np.frompyfunc(math.erf, 1, 1)(x / math.sqrt(2)).astype(np.float64))
    i = np.arange(1, n + 1)
    ks = max((i / n - cdf).max(), (cdf - (i - 1) / n).max())
    assert ks < 1.95 / math.sqrt(n)
    assert np.abs(z).max() <= math.sqrt(66 * math.log(2))


@pytest.mark.parametrize("other", [1, 2**32, 2**63 + 1], ids=["low-word", "high-word", "both"])
def test_different_seeds_give_unrelated_streams(other):
    n = 40_000
    a, b = normal_eps(1, 0, n), normal_eps(1 ^ other, 0, n)
    assert np.count_nonzero(a == b) == 0
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(n)


@given(seed=seeds, offset=offsets, n=st.integers(0, 40))
def test_float32_output_is_the_float64_reference_rounded(seed, offset, n):
    z64, z32 = normal_eps(seed, offset, n, np.float64), normal_eps(seed, offset, n, "float32")
    assert z64.dtype == np.float64 and z32.dtype == np.float32 and z32.shape == (n,)
    np.testing.assert_array_equal(z32, z64.astype(np.float32))


def test_normal_eps_like_numbers_elements_in_c_order():
    eps = normal_eps_like(3, 10, (2, 3, 5), "float32")
    assert eps.shape == (2, 3, 5) and eps.dtype == np.float32
    np.testing.assert_array_equal(eps.ravel(), normal_eps(3, 10, 30, "float32"))
    np.testing.assert_array_equal(eps[1, 2, 4], normal_eps(3, 10 + 29, 1, "float32")[0])
    assert normal_eps_like(3, 0, 7).shape == (7,)
    assert normal_eps_like(3, 0, (4, 0)).shape == (4, 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\), got -1"),
    ({"seed": 2**64}, r"seed must be an integer in \[0, 2\*\*64\)"),
    ({"seed": 1.0}, "seed must be an integer"),
    ({"seed": True}, "seed must be an integer"),
    ({"offset": -3}, r"offset must be an integer in \[0, 2\*\*64\), got -3"),
    ({"n": -1}, "n must be an integer >= 0, got -1"),
    ({"n": 2.0}, "n must be an integer >= 0"),
    ({"offset": 2**64 - 2, "n": 3}, r"offset \+ n must be <= 2\*\*64"),
    ({"dtype": "int32"}, "dtype must be 'float32' or 'float64'"),
])
def test_bad_normal_eps_arguments_are_rejected(kwargs, match):
    args = {"seed": 0, "offset": 0, "n": 4, "dtype": "float64"} | kwargs
    with pytest.raises(ValueError, match=match):
        normal_eps(**args)


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match=r"shape\[1\] must be an integer >= 0, got -2"):
        normal_eps_like(0, 0, (3, -2))


# ----------------------------------------------------------------------------------------------
# The float32 recipe of the kernels, evaluated in NumPy float32


def _u32(x: np.ndarray) -> np.ndarray:
    """u(x) = (x + 1/2) 2**-32 in float32, as a kernel computes it: fmaf(float(x), 2**-32, 2**-33)."""
    return x.astype(np.float32) * np.float32(2.0**-32) + np.float32(2.0**-33)


def _float32_recipe(words: np.ndarray, *, complement: bool = True) -> np.ndarray:
    """The module docstring's float32 recipe (sinf/cosf flavour); complement=False is curand's plain logf."""
    x0, x1 = words[:, 0::2], words[:, 1::2]
    s = -np.log(_u32(x0))  # -ln u
    if complement:
        top = x0 >= 2**31  # there 1 - u = u(0xFFFFFFFF - x0) is exact and ln u = log1p(-(1 - u))
        s[top] = -np.log1p(-_u32(np.uint32(0xFFFFFFFF) - x0[top]))
    r = np.sqrt(np.float32(2) * s)
    theta = np.float32(2 * np.pi) * _u32(x1)
    z = np.empty(words.shape, np.float32)
    z[:, 0::2], z[:, 1::2] = r * np.sin(theta), r * np.cos(theta)
    return z


def _hard_words() -> np.ndarray:
    """Random words plus every pairing of the hard radius words (u near 0, near 1, either side of the
    branch at 2**31) with the hard angle words (sin or cos crossing zero, the wrap at 2 pi)."""
    rng = np.random.default_rng(0)
    radius = np.concatenate([[0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32 - 129, 2**32 - 128],
                             rng.integers(2**32 - 2**20, 2**32, 200)])
    angle = np.concatenate([[q * 2**30 + d for q in range(4) for d in (-1, 0, 1)], [2**32 - 1],
                            rng.integers(0, 2**32, 50)]) % 2**32
    r, a = np.meshgrid(radius, angle)
    pairs = np.stack([r.ravel(), a.ravel()], axis=1)
    hard = np.concatenate([pairs, pairs[::-1]], axis=1)  # lanes (2, 3) see the pairs in reverse order
    return np.concatenate([hard, rng.integers(0, 2**32, (50_000, 4))]).astype(np.uint32)


def test_float32_kernel_recipe_meets_the_stated_tolerance():
    words = _hard_words()
    np.testing.assert_allclose(_float32_recipe(words), box_muller4(words), **EPS_TOLERANCE["float32"])


def test_plain_logf_radius_misses_the_tolerance_near_u_equal_to_one():
    """Why the recipe branches: with curand's sqrtf(-2 logf(u)) the radius near u = 1 is off by ~2**-12."""
    words = _hard_words()
    err = np.abs(_float32_recipe(words, complement=False) - box_muller4(words))
    tol = EPS_TOLERANCE["float32"]
    assert (err > tol["atol"] + tol["rtol"] * np.abs(box_muller4(words))).any()
    assert err.max() < 2.5e-4
