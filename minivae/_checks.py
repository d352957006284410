"""Argument checks shared by the public API: every message names the argument, what it was and
what was expected, so bad input never turns into a silently wrong number."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = {"float32": np.float32, "float64": np.float64}


def positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1, else ValueError."""
    if not is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def is_int(value: object) -> bool:
    """True for a Python or NumPy integer, False for anything else, bool included."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def integer(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int with ``low <= value < high`` (either bound may be None), else ValueError.

    A Python or NumPy integer; a bool is refused (True is not a count), and so is 2.0.
    """
    if not is_int(value) or (low is not None and value < low) or (high is not None and value >= high):
        if low is None and high is None:
            want = "an integer"
        elif high is None:
            want = f"an integer >= {low}"
        elif low is None:
            want = f"an integer < {high}"
        else:
            want = f"an integer in [{low}, {high})"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def non_negative_int(name: str, value: object) -> int:
    """``value`` as an int >= 0 (a seed, a count), else ValueError."""
    return integer(name, value, 0)


def _finite_number(name: str, value: object, low: float, strict: bool) -> float:
    """``value`` as a finite float >= low (> low when ``strict``); a string or a bool is not a
    number here (TOML settings are typed: "1" is a string, true a flag)."""
    expected = f"a finite number {'>' if strict else '>='} {low:g}"
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None
    if not math.isfinite(v) or v < low or (strict and v == low):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v


def non_negative_float(name: str, value: object) -> float:
    """``value`` as a finite float >= 0, else ValueError."""
    return _finite_number(name, value, 0.0, strict=False)


def positive_float(name: str, value: object) -> float:
    """``value`` as a finite float > 0, else ValueError."""
    return _finite_number(name, value, 0.0, strict=True)


def float_dtype(name: str, value: object) -> np.dtype:
    """Accept "float32"/"float64" or the matching numpy dtypes."""
    try:
        dt = np.dtype(value)  # type: ignore[arg-type]
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be 'float32' or 'float64', got {value!r}")
    return dt


def sizes(name: str, value: Sequence[int]) -> tuple[int, ...]:
    """A (possibly empty) tuple of positive layer widths."""
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}") from None
    return tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(items))


def choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def finite_array(name: str, x: object, *, ndim: int | None = None, dtype: np.dtype | None = None,
                 shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """``x`` as a numeric array (cast to ``dtype`` when given) that is finite and well shaped.

    ``shape`` may hold ``None`` for free axes. Raises ValueError naming ``name`` otherwise.
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if shape is not None:
        if arr.ndim != len(shape) or any(
            s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)
        ):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} must be finite, found {arr[tuple(bad)]} at index {tuple(bad)}")
    return arr


def in_unit_interval(name: str, x: np.ndarray) -> None:
    """Support check for the Bernoulli family: every value in [0, 1]."""
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{name} must lie in [0, 1] for this likelihood, got values in "
            f"[{x.min():.4g}, {x.max():.4g}] (scale the data to [0, 1] first)"
        )
