"""Shared hypothesis strategies: shapes and values in the ranges the checks must cover."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

batch = st.integers(1, 8)
width = st.integers(1, 16)
latent = st.integers(1, 8)
seeds = st.integers(0, 2**32 - 1)

# The error metric of every gradient check: |analytic - numeric| / (ATOL + RTOL * max(|a|, |n|)),
# with central differences in float64; a check passes when that share of the tolerance is <= 1.
RTOL = 1e-6
ATOL = 1e-8


def rng_of(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def away_from_zero(rng: np.random.Generator, shape, scale: float = 3.0,
                   margin: float = 1e-3) -> np.ndarray:
    """Values of both signs with |v| >= margin: keeps draws off the kinks of ReLU-like ops."""
    v = rng.uniform(margin, scale, size=shape)
    return v * rng.choice([-1.0, 1.0], size=shape)


def with_extremes(rng: np.random.Generator, shape, scale: float, extreme: float) -> np.ndarray:
    """Moderate values with a few entries pushed to +-extreme."""
    v = rng.normal(0, scale, size=shape)
    mask = rng.random(shape) < 0.2
    v[mask] = extreme * rng.choice([-1.0, 1.0], size=int(mask.sum()))
    return v
