"""The validation rule of ``bench ladder`` and ``bench kernels``: a version's output passes its
reference's ``Expect`` when, elementwise, |got - want| <= tol * scale, with NaN exactly where the
reference has NaN and an infinity only where the reference has the same one; an output that sums R
terms gets tol = ELEMENTWISE_TOL + 4 (R + 10) u (u = 2^-24, the float32 sum's error bound)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

U = 2.0**-24  # float32's unit roundoff
ELEMENTWISE_TOL = 1e-5  # the project's bound for float32 elementwise math against float64


@dataclass(frozen=True)
class Expect:
    """One output of the reference: ``want`` (float64); a version's output passes when
    |got - want| <= tol * scale elementwise, tol = elementwise + 4 (terms + 10) u."""

    name: str
    want: np.ndarray
    scale: Any
    terms: int = 1  # the length of the sum each element is
    elementwise: float = ELEMENTWISE_TOL

    @property
    def tol(self) -> float:
        return self.elementwise + 4 * (self.terms + 10) * U


def to_host(a: Any) -> np.ndarray:
    """A host float64 array; a list of arrays (one output per tensor) flattened one after another."""
    if isinstance(a, list):
        return np.concatenate([to_host(x).reshape(-1) for x in a])
    return np.asarray(a.get() if hasattr(a, "get") else a, np.float64)


def check(got: Any, e: Expect) -> str | None:
    """None if ``got`` passes ``e`` (NaN-aware), else what is wrong."""
    got = to_host(got)
    if got.shape != e.want.shape:
        return f"{e.name} has shape {got.shape}, expected {e.want.shape}"
    nan_want, nan_got = np.isnan(e.want), np.isnan(got)
    if (nan_got & ~nan_want).any():
        return f"{e.name} has NaN at {int((nan_got & ~nan_want).sum())} elements where the reference has none"
    if (nan_want & ~nan_got).any():
        return f"{e.name} lacks the reference's NaN at {int((nan_want & ~nan_got).sum())} elements"
    same = nan_want | (got == e.want)  # NaN for NaN, and equal values (infinities included)
    with np.errstate(invalid="ignore", over="ignore"):
        bound = e.tol * np.abs(np.broadcast_to(np.asarray(e.scale, np.float64), e.want.shape))
        ratio = np.where(same, 0.0, np.abs(got - e.want) / (bound + 1e-300))
    ratio = np.where(np.isnan(ratio), np.inf, ratio)  # inf - inf: an infinity of the wrong sign
    worst = float(np.max(ratio, initial=0.0))
    if worst > 1:
        at = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        return f"{e.name} is off by {worst:.3g} times its bound (first worst at {tuple(map(int, at))})"
    return None
