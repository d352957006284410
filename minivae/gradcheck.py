"""Finite-difference gradient checks: the proof behind every hand-written backward in minivae.

User guide
==========

Pointing it at your own layer
-----------------------------
A layer follows the project's protocol: ``layer.params`` is a dict of float arrays (possibly
empty), ``layer.forward(x)`` returns ``(y, cache)`` and ``layer.backward(dy, cache)`` returns
``(dx, grads)`` with ``grads`` keyed like ``layer.params``. :func:`check_layer` draws a fixed random
upstream gradient ``dy`` shaped like ``y``, defines the scalar ``f = sum(dy * forward(x)[0])``
(whose exact gradient is what ``backward(dy, cache)`` claims to return) and compares ``dx`` and
every entry of ``grads`` with central differences of ``f``. A random ``dy`` (rather than ones)
also catches a backward that forgets to multiply by ``dy``:

>>> import numpy as np

from minivae._checks import is_int
>>> from minivae.gradcheck import check_layer
>>> class Affine:
...     def __init__(self, rng):
...         self.params = {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(3)}
...     def forward(self, x):
...         return x @ self.params["W"].T + self.params["b"], x
...     def backward(self, dy, x):
...         return dy @ self.params["W"], {"W": dy.T @ x, "b": dy.sum(axis=0)}
>>> rng = np.random.default_rng(0)
>>> result = check_layer(Affine(rng), rng.standard_normal((5, 4)))
>>> result.ok
True
>>> print(result)  # doctest: +SKIP
gradcheck PASSED: 3 of 3 rows pass  [mode=full, dtype=float64, rtol=1e-06, atol=1e-08, ...]
name  shape   max abs err  max rel err  worst index  analytic       numeric  ...  status
x     (5, 4)  ...

``forward`` must read the very arrays stored in ``layer.params`` (they are perturbed in place and
restored bit for bit afterwards) and must be deterministic: put dropout-like layers in a fixed
mode first. Function pairs ``forward(**inputs) -> (y, cache)`` and ``backward(dy, cache) -> grads``
(a dict keyed like ``inputs`` or a tuple in input order) are checked with
:func:`check_function`; inputs that get no gradient (targets, noise) go in ``constants``. Any
closure ``f() -> float`` over arrays can be checked directly with :func:`gradcheck`. In a test,
call ``result.raise_if_failed()``: it raises :class:`GradcheckError` (an ``AssertionError``) whose
message is the printed table.

The metric
----------
For every element ``i`` the numeric derivative is the central difference
``n = (f(x + h e_i) - f(x - h e_i)) / (2h)`` (with ``h`` the step actually realised in the array's
dtype) and, with ``a`` the analytic gradient,

    share = |a - n| / (atol + rtol * max(|a|, |n|) + noise),
    noise = 8 * eps * max(|f(x)|, |f(x + h e_i)|, |f(x - h e_i)|) / (2h)

is the share of the tolerance the element uses up: it passes iff ``share <= 1``. ``noise`` is the
rounding floor of the central difference itself (``eps`` of the dtype): a function of size 1e5
cannot give its slope to better than ~1e-5 from two evaluations, whatever the gradient. Defaults are
``rtol=1e-6, atol=1e-8`` in float64 and ``rtol=1e-2, atol=1e-3`` in float32. The default step is
``h = cbrt(eps) * max(1, |x_i|)`` (``eps`` of the dtype; about ``6e-6`` in float64): it balances
the ``O(h**2)`` truncation error of central differences against the ``O(eps / h)`` rounding error
of the two evaluations of ``f``. An explicit ``step`` is used as an absolute step.

Why float64
-----------
In float64 the two errors above are around ``1e-11`` (relative), five orders below ``rtol``, so a
failure means a bug. In float32 they are around ``1e-5 .. 1e-3``: loose tolerances are needed and
small bugs slip through, so a float32 parameter triggers a :class:`Float32GradcheckWarning`. Cast
the layer's parameters and inputs to float64 for the check, even if you train in float32.

Kinks
-----
ReLU at 0, ``|x|`` at 0, max-pooling ties... have no derivative; the central difference returns the
average of the two one-sided slopes, which a correct backward (returning one of them) fails. So
``f(x)`` is also evaluated once and the one-sided differences ``d+ = (f(x+h) - f(x)) / h`` and
``d- = (f(x) - f(x-h)) / h`` are formed. For an element that *fails* and whose ``d+, d-`` look
different, ``f(x +- 2h)`` is evaluated too (2 more calls, only for such elements) and the
one-sided slopes are Richardson-extrapolated, ``R = 2 d+(h) - d+(2h)`` and
``L = 2 d-(h) - d-(2h)``: this removes the curvature term ``h f''/2`` by which ``d+`` and ``d-``
differ at any smooth point. The element is reported as a *kink* (counted in ``n_kinks``, listed
in ``kink_indices``, not a failure) iff

1. the one-sided slopes disagree: ``|R - L| > kink_tol * max(|R|, |L|) + atol``, and
2. the analytic value lies between them (a valid one-sided derivative or subgradient), up to
   ``atol + rtol * max(|a|, |R|, |L|)``.

``kink_tol`` defaults to ``1e-3`` in float64 (``1e-1`` in float32, ``3e-1`` in float16): a kink
must change the slope by at least 0.1 %. At a smooth point ``R - L`` is ``O(h**3)`` plus rounding
``O(eps |f| / h)``, around ``1e-10`` in float64, so a smooth point with a wrong gradient fails
however curved ``f`` is (the plain ``|d+ - d-|``, about ``h |f''|``, would excuse wrong gradients
wherever ``|f''| > ~170 |f'|``). Real kinks change the slope by ``O(|f'|)``. Both ways the rule
can err are safe: a kink too small to see is reported as a failure, never the reverse, and a
wrong gradient *at* a kink that is not between the one-sided slopes (a flipped sign, a factor)
fails. Pass ``kink_tol=math.inf`` to switch kink detection off.

Directional mode
----------------
``mode="full"`` costs ``2 N + 1`` evaluations of ``f`` for ``N`` elements (plus 2 per failing
element whose one-sided slopes differ). For large layers, ``mode="directional"`` draws
``n_directions`` random directions ``u`` (standard normal over *all* parameters jointly,
normalised to unit length, then scaled per element by ``max(1, |x_i|)`` when the step is
automatic) and compares ``(f(x + h u) - f(x - h u)) / (2h)`` with
``sum_name <grads[name], u[name]>``; cost ``2 n_directions + 1`` evaluations (plus 2 per failing
direction whose one-sided slopes differ). One row per direction (``"direction 0"``, ...), same
metric, same kink rule except the bracket test 2: a direction that crosses several kinks at once
(ReLU inputs with many exact zeros) has a ``<g, u>`` that need not lie between its one-sided
slopes even for a correct ``g``, so such a direction is reported as an (inconclusive) kink; check
kinky layers in full mode. A wrong gradient shows up in every direction with probability one,
but a bug confined to a few elements changes ``<g, u>`` by only ``~ err / sqrt(N)``: use the full
mode on small instances of a layer and the directional mode to cover the large ones.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minivae._checks import is_int

__all__ = [
    "Float32GradcheckWarning",
    "GradcheckError",
    "GradcheckResult",
    "ParamCheck",
    "check_function",
    "check_layer",
    "gradcheck",
]

MODES = ("full", "directional")

# (rtol, atol, kink_tol) by precision, keyed by the dtype's itemsize in bytes (>= 8: float64 and
# wider).
_DEFAULTS: dict[int, tuple[float, float, float]] = {
    8: (1e-6, 1e-8, 1e-3),
    4: (1e-2, 1e-3, 1e-1),
    2: (1e-1, 1e-2, 3e-1),
}

_MAX_LISTED_KINKS = 8


class Float32GradcheckWarning(UserWarning):
    """A parameter is float32 (or narrower): finite differences are unreliable at that precision."""


class GradcheckError(AssertionError):
    """Raised by :meth:`GradcheckResult.raise_if_failed`; the message is the result's table."""


@dataclass
class ParamCheck:
    """The outcome for one parameter (full mode) or one direction (directional mode).

    Errors, ``worst_index``, ``analytic``, ``numeric`` and ``tol_share`` are taken over the
    elements that are not kinks (those decide ``passed``); ``worst_index`` is the element with the
    largest share, ``None`` when every element is a kink (or the array is empty), in which case
    ``analytic`` and ``numeric`` are NaN. A directional row has ``shape == (N,)`` (all ``N``
    elements checked jointly) and ``worst_index == ()``.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...] | None
    analytic: float
    numeric: float
    tol_share: float
    n_kinks: int
    kink_indices: list[tuple[int, ...]] = field(default_factory=list)
    passed: bool = True


@dataclass
class GradcheckResult:
    """All rows of a check plus the settings used; ``print(result)`` shows an aligned table.

    ``step`` is the base step; when ``step_scaled`` is true (the automatic choice) the step of
    element ``i`` is ``step * max(1, |x_i|)``. ``n_evals`` counts the calls of ``f``.
    """

    rows: list[ParamCheck]
    ok: bool
    mode: str
    dtype: np.dtype
    rtol: float
    atol: float
    step: float
    step_scaled: bool = True
    kink_tol: float = 1e-3
    n_evals: int = 0

    def __bool__(self) -> bool:
        """``assert check_layer(layer, x)`` passes exactly when every row passed."""
        return self.ok

    def raise_if_failed(self) -> GradcheckResult:
        """Raise :class:`GradcheckError` with the table unless every row passed; else ``self``."""
        if not self.ok:
            raise GradcheckError("\n" + str(self))
        return self

    def __str__(self) -> str:
        n_failed = sum(not r.passed for r in self.rows)
        verdict = "PASSED" if self.ok else "FAILED"
        count = (
            f"{len(self.rows)} of {len(self.rows)} rows pass"
            if self.ok
            else f"{n_failed} of {len(self.rows)} rows failed"
        )
        step = f"{self.step:.3g}*max(1,|x|)" if self.step_scaled else f"{self.step:.3g}"
        header = (
            f"gradcheck {verdict}: {count}  [mode={self.mode}, dtype={self.dtype}, "
            f"rtol={self.rtol:g}, atol={self.atol:g}, step={step}, kink_tol={self.kink_tol:g}, "
            f"{self.n_evals} evaluations of f]"
        )
        columns = ("name", "shape", "max abs err", "max rel err", "worst index", "analytic",
                   "numeric", "tol share", "kinks", "status")
        right = {2, 3, 5, 6, 7, 8}
        cells = [columns]
        for r in self.rows:
            cells.append((
                r.name,
                str(r.shape),
                f"{r.max_abs_err:.3e}",
                f"{r.max_rel_err:.3e}",
                "-" if r.worst_index is None else str(r.worst_index),
                _fmt_value(r.analytic),
                _fmt_value(r.numeric),
                f"{r.tol_share:.3g}",
                str(r.n_kinks),
                "pass" if r.passed else "FAIL",
            ))
        widths = [max(len(row[j]) for row in cells) for j in range(len(columns))]
        lines = [header]
        for i, row in enumerate(cells):
            lines.append("  ".join(
                c.rjust(w) if (j in right and i > 0) else c.ljust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        for r in self.rows:
            if r.kink_indices == [()] and r.name.startswith("direction"):
                lines.append(
                    f"kink along {r.name}: one-sided slopes disagree (a kink lies within the "
                    "step), inconclusive: not counted as a failure; use mode='full' to check it"
                )
            elif r.n_kinks:
                shown = ", ".join(str(k) for k in r.kink_indices[:_MAX_LISTED_KINKS])
                more = r.n_kinks - min(r.n_kinks, _MAX_LISTED_KINKS)
                lines.append(
                    f"kinks in {r.name} (one-sided slopes disagree, analytic value between them; "
                    "not counted as failures): "
                    f"{shown}{f' ... and {more} more' if more else ''}"
                )
        return "\n".join(lines)


def _fmt_value(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:+.6e}"


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _first_bad(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])


def _validate(
    params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Names, the params' arrays (the objects themselves) and float64 copies of the gradients."""
    if not isinstance(params, Mapping):
        raise ValueError(
            f"params must be a mapping name -> np.ndarray, got {type(params).__name__}"
        )
    if not isinstance(grads, Mapping):
        raise ValueError(f"grads must be a mapping name -> np.ndarray, got {type(grads).__name__}")
    if len(params) == 0:
        raise ValueError("params is empty: expected at least one array to check")
    missing = [k for k in params if k not in grads]
    if missing:
        raise ValueError(
            f"grads is missing key(s) {missing}: expected one gradient per entry of params "
            f"(params has {list(params)}, grads has {list(grads)})"
        )
    extra = [k for k in grads if k not in params]
    if extra:
        raise ValueError(
            f"grads has key(s) {extra} that params lacks: expected exactly the keys of params "
            f"{list(params)}"
        )
    names, arrays, gs = [], [], []
    for name, p in params.items():
        if not isinstance(p, np.ndarray):
            raise ValueError(
                f"params[{name!r}] must be a numpy ndarray (it is perturbed in place), "
                f"got {type(p).__name__}"
            )
        if not np.issubdtype(p.dtype, np.floating):
            raise ValueError(
                f"params[{name!r}] must have a floating dtype (float64 recommended), got {p.dtype}"
            )
        if not p.flags.writeable:
            raise ValueError(f"params[{name!r}] is read-only: expected a writeable array")
        if not np.all(np.isfinite(p)):
            raise ValueError(
                f"params[{name!r}] must be finite, found a non-finite value at index "
                f"{_first_bad(p)}"
            )
        g = grads[name]
        try:
            g_arr = np.asarray(g)
        except Exception as exc:  # anything np.asarray rejects is not a gradient
            raise ValueError(f"grads[{name!r}] is not array-like: {exc}") from None
        if not np.issubdtype(g_arr.dtype, np.floating):
            raise ValueError(
                f"grads[{name!r}] must have a floating dtype, got {g_arr.dtype}"
            )
        if g_arr.shape != p.shape:
            raise ValueError(
                f"grads[{name!r}] has shape {g_arr.shape}, expected {p.shape} "
                f"(the shape of params[{name!r}])"
            )
        if not np.all(np.isfinite(g_arr)):
            raise ValueError(
                f"grads[{name!r}] must be finite, found a non-finite value at index "
                f"{_first_bad(g_arr)}"
            )
        names.append(str(name))
        arrays.append(p)
        # A private float64 copy: f() may reuse the buffers backward() returned.
        gs.append(np.array(g_arr, dtype=np.float64, copy=True))
    for i in range(len(arrays)):
        for j in range(i):
            if np.may_share_memory(arrays[i], arrays[j]) and np.shares_memory(
                arrays[i], arrays[j]
            ):
                raise ValueError(
                    f"params[{names[j]!r}] and params[{names[i]!r}] share memory: perturbing one "
                    "would perturb the other; expected distinct arrays"
                )
    return names, arrays, gs


def _caller_outside_this_module() -> int:
    """The ``stacklevel`` at which ``warnings.warn``, called from a function of this module,
    names the user's line: the first frame outside this file (gradcheck may be reached through
    check_layer or check_function)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _tolerance(name: str, value: float | None, default: float, allow_inf: bool = False) -> float:
    if value is None:
        return default
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0 or None, got {value!r}") from None
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")
    return v


def _call(f: Callable[[], float], where: str) -> float:
    out = np.asarray(f())
    if out.size != 1 or out.dtype.kind not in "fiub":
        raise ValueError(
            f"f() must return a real scalar, got an array of shape {out.shape} and dtype "
            f"{out.dtype} ({where})"
        )
    value = float(out.reshape(()))
    if not math.isfinite(value):
        raise ValueError(f"f() returned {value} {where}: expected a finite value")
    return value


# --------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------


def gradcheck(
    f: Callable[[], float],
    params: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    *,
    mode: str = "full",
    step: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    kink_tol: float | None = None,
    n_directions: int = 4,
    rng: np.random.Generator | int | None = None,
) -> GradcheckResult:
    """Compare analytic gradients with central finite differences of ``f``.

    Args:
        f: a closure taking no argument and returning a real scalar; it must read the arrays of
            ``params``, which are perturbed in place (and always restored bit for bit).
        params: name -> float ndarray (writeable, finite, no two sharing memory).
        grads: name -> analytic gradient of ``f`` w.r.t. ``params[name]``, same shape.
        mode: ``"full"`` checks every element (``2 N + 1`` calls of ``f``); ``"directional"``
            checks ``n_directions`` random directions over all params jointly
            (``2 n_directions + 1`` calls); 2 more calls per possible kink.
        step: absolute finite-difference step; ``None`` uses ``cbrt(eps) * max(1, |x_i|)`` with
            ``eps`` of the least precise param dtype.
        rtol, atol: tolerances of the metric ``|a - n| / (atol + rtol * max(|a|, |n|)) <= 1``;
            ``None`` -> ``1e-6, 1e-8`` (float64) or ``1e-2, 1e-3`` (float32).
        kink_tol: relative disagreement of the (extrapolated) one-sided slopes above which a
            failing element is a kink; ``None`` -> ``1e-3`` (float64) or ``1e-1`` (float32);
            ``math.inf`` disables kink detection.
        n_directions: number of random directions in directional mode.
        rng: generator (or seed) for the directions; ``None`` -> ``np.random.default_rng(0)``.

    Returns:
        A :class:`GradcheckResult`; ``result.ok`` (and its truth value, so ``assert
        gradcheck(...)`` works) tells whether every row passed.

    Raises:
        ValueError: on mismatched keys or shapes, non-float dtypes, non-finite values, bad
            settings, or when ``f`` returns a non-finite value (the message names the parameter
            and index being perturbed).
    """
    if not callable(f):
        raise ValueError(f"f must be a callable taking no argument, got {type(f).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "directional" and (not is_int(n_directions) or n_directions < 1):
        raise ValueError(f"n_directions must be a positive integer, got {n_directions!r}")
    names, arrays, gs = _validate(params, grads)

    # The least precise dtype decides step and default tolerances.
    dtype = max((a.dtype for a in arrays), key=lambda d: np.finfo(d).eps)
    narrow = [n for n, a in zip(names, arrays, strict=True) if a.dtype.itemsize < 8]
    if narrow:
        warnings.warn(
            f"gradcheck on {dtype} parameters {narrow}: finite differences are unreliable below "
            "float64 (loose default tolerances, small bugs can pass); cast parameters and inputs "
            "to float64 for the check",
            Float32GradcheckWarning,
            stacklevel=_caller_outside_this_module(),
        )
    d_rtol, d_atol, d_kink = _DEFAULTS[min(dtype.itemsize, 8)]
    rtol_v = _tolerance("rtol", rtol, d_rtol)
    atol_v = _tolerance("atol", atol, d_atol)
    kink_v = _tolerance("kink_tol", kink_tol, d_kink, allow_inf=True)
    if step is None:
        # f's value comes back as a Python float, so rounding is never finer than float64's.
        eps = max(float(np.finfo(dtype).eps), float(np.finfo(np.float64).eps))
        base, scaled = float(np.cbrt(eps)), True
    else:
        try:
            base = float(step)
        except (TypeError, ValueError):
            raise ValueError(f"step must be a finite number > 0 or None, got {step!r}") from None
        if not (math.isfinite(base) and base > 0):
            raise ValueError(f"step must be a finite number > 0 or None, got {step!r}")
        scaled = False

    backups = [a.copy() for a in arrays]
    try:
        if mode == "full":
            rows, n_evals = _full(f, names, arrays, gs, base, scaled, rtol_v, atol_v, kink_v)
        else:
            gen = np.random.default_rng(0 if rng is None else rng)
            rows, n_evals = _directional(
                f, names, arrays, gs, base, scaled, rtol_v, atol_v, kink_v, int(n_directions), gen
            )
    finally:
        for a, b in zip(arrays, backups, strict=True):
            np.copyto(a, b)
    return GradcheckResult(
        rows=rows, ok=all(r.passed for r in rows), mode=mode, dtype=np.dtype(dtype),
        rtol=rtol_v, atol=atol_v, step=base, step_scaled=scaled, kink_tol=kink_v, n_evals=n_evals,
    )


# The central difference (f+ - f-) / 2h cannot be more exact than the rounding of f itself:
# f+ and f- each carry an error of a few ulps of |f| (more for long sums), so the numeric slope
# is uncertain by ~ ROUNDOFF_ULPS * eps * |f| / 2h. That noise floor joins the tolerance, so a
# large |f| (a KL of e^12, a loss summed over a batch) does not fail a correct gradient.
ROUNDOFF_ULPS = 8.0


def _noise(fp, fm, f0: float, width, eps: float):
    """Rounding uncertainty of the central difference over ``width`` = the two steps summed."""
    big = np.maximum(np.maximum(np.abs(fp), np.abs(fm)), abs(f0))
    return ROUNDOFF_ULPS * eps * big / width


def _share(
    a: np.ndarray, n: np.ndarray, rtol: float, atol: float, noise: np.ndarray | float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per element: share of the tolerance used up, and the absolute error."""
    abs_err = np.abs(a - n)
    denom = atol + rtol * np.maximum(np.abs(a), np.abs(n)) + noise
    share = np.where(abs_err > 0, np.inf, 0.0)
    np.divide(abs_err, denom, out=share, where=denom > 0)
    return share, abs_err


def _may_be_kink(dplus: np.ndarray, dminus: np.ndarray, kink_tol: float, atol: float) -> np.ndarray:
    """Cheap pre-filter on the plain one-sided differences (half the final threshold)."""
    big = np.maximum(np.abs(dplus), np.abs(dminus))
    return np.abs(dplus - dminus) > 0.5 * (kink_tol * big + atol)


def _is_kink(a: float, right: float, left: float, rtol: float, atol: float,
             kink_tol: float, *, bracket: bool = True) -> bool:
    """The kink rule on the extrapolated one-sided slopes (see the module docstring)."""
    big = max(abs(right), abs(left))
    if not abs(right - left) > kink_tol * big + atol:
        return False
    if not bracket:
        return True
    slack = atol + rtol * max(abs(a), big)
    return min(right, left) - slack <= a <= max(right, left) + slack


def _extrapolate(d1: float, s1: float, d2: float, s2: float) -> float:
    """Richardson: one-sided slope ``d(s) = f' + c s + O(s^2)`` known at ``s1`` and ``s2``."""
    return (s2 * d1 - s1 * d2) / (s2 - s1)


def _row(
    name: str, shape: tuple[int, ...], a: np.ndarray, n: np.ndarray, share: np.ndarray,
    abs_err: np.ndarray, kink: np.ndarray, index_of: Callable[[int], tuple[int, ...]],
) -> ParamCheck:
    """Summarise flat per-element arrays into one row."""
    smooth = ~kink
    kink_indices = [index_of(int(k)) for k in np.flatnonzero(kink)]
    if not smooth.any():
        return ParamCheck(name, shape, 0.0, 0.0, None, math.nan, math.nan, 0.0,
                          len(kink_indices), kink_indices, True)
    big = np.maximum(np.abs(a), np.abs(n))
    rel = np.zeros_like(abs_err)
    np.divide(abs_err, big, out=rel, where=big > 0)
    worst = int(np.argmax(np.where(smooth, share, -1.0)))
    tol_share = float(share[worst])
    return ParamCheck(
        name=name, shape=shape,
        max_abs_err=float(abs_err[smooth].max()), max_rel_err=float(rel[smooth].max()),
        worst_index=index_of(worst), analytic=float(a[worst]), numeric=float(n[worst]),
        tol_share=tol_share, n_kinks=len(kink_indices), kink_indices=kink_indices,
        passed=bool(tol_share <= 1.0),
    )


def _element_points(
    arr: np.ndarray, idx: tuple[int, ...], h: float, name: str
) -> tuple[Any, Any, Any, float, float]:
    """``x0``, ``x0 + h``, ``x0 - h`` in the array's dtype and the steps actually realised."""
    wide = np.promote_types(arr.dtype, np.float64)
    x0 = arr[idx]
    xw = wide.type(x0)
    with np.errstate(over="ignore"):
        xp = arr.dtype.type(xw + h)
        xm = arr.dtype.type(xw - h)
    if not (np.isfinite(xp) and np.isfinite(xm)):
        raise ValueError(f"step {h:.3g} overflows {arr.dtype} at params[{name!r}][{idx}] = {x0!r}")
    dp, dm = float(wide.type(xp) - xw), float(xw - wide.type(xm))
    if not (dp > 0 and dm > 0):
        raise ValueError(
            f"step {h:.3g} is below the resolution of {arr.dtype} at params[{name!r}][{idx}] = "
            f"{x0!r}: use a larger step"
        )
    return x0, xp, xm, dp, dm


def _eval_element(
    f: Callable[[], float], arr: np.ndarray, idx: tuple[int, ...], name: str,
    points: tuple[Any, Any, Any, float, float],
) -> tuple[float, float]:
    """``f`` with element ``idx`` set to ``x0 + dp`` and to ``x0 - dm``; always restored."""
    x0, xp, xm, dp, dm = points
    try:
        arr[idx] = xp
        fp = _call(f, f"with params[{name!r}][{idx}] perturbed by +{dp:.3g}")
        arr[idx] = xm
        fm = _call(f, f"with params[{name!r}][{idx}] perturbed by -{dm:.3g}")
    finally:
        arr[idx] = x0
    return fp, fm


def _full(
    f: Callable[[], float], names: list[str], arrays: list[np.ndarray], gs: list[np.ndarray],
    base: float, scaled: bool, rtol: float, atol: float, kink_tol: float,
) -> tuple[list[ParamCheck], int]:
    f0 = _call(f, "at the unperturbed point")
    n_evals = 1
    rows = []
    for name, arr, g in zip(names, arrays, gs, strict=True):
        shape = tuple(arr.shape)

        def index_of(k: int, shape: tuple[int, ...] = shape) -> tuple[int, ...]:
            return tuple(int(i) for i in np.unravel_index(k, shape))

        def step_at(idx: tuple[int, ...], arr: np.ndarray = arr) -> float:
            return base * max(1.0, abs(float(arr[idx]))) if scaled else base

        fp, fm = np.empty(arr.size), np.empty(arr.size)
        hp, hm = np.empty(arr.size), np.empty(arr.size)
        for k, idx in enumerate(np.ndindex(shape)):
            points = _element_points(arr, idx, step_at(idx), name)
            fp[k], fm[k] = _eval_element(f, arr, idx, name, points)
            hp[k], hm[k] = points[3], points[4]
            n_evals += 2
        a = g.reshape(-1)
        n = (fp - fm) / (hp + hm)
        share, abs_err = _share(a, n, rtol, atol,
                                _noise(fp, fm, f0, hp + hm, float(np.finfo(arr.dtype).eps)))
        kink = np.zeros(arr.size, dtype=bool)
        if math.isfinite(kink_tol):
            dplus, dminus = (fp - f0) / hp, (f0 - fm) / hm
            for k in np.flatnonzero((share > 1) & _may_be_kink(dplus, dminus, kink_tol, atol)):
                idx = index_of(int(k))
                points = _element_points(arr, idx, 2.0 * step_at(idx), name)
                fp2, fm2 = _eval_element(f, arr, idx, name, points)
                n_evals += 2
                hp2, hm2 = points[3], points[4]
                right = _extrapolate(dplus[k], hp[k], (fp2 - f0) / hp2, hp2)
                left = _extrapolate(dminus[k], hm[k], (f0 - fm2) / hm2, hm2)
                kink[k] = _is_kink(float(a[k]), right, left, rtol, atol, kink_tol)
        rows.append(_row(name, shape, a, n, share, abs_err, kink, index_of))
    return rows, n_evals


def _direction_points(
    names: list[str], arrays: list[np.ndarray], us: list[np.ndarray], h: float, scaled: bool
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``x + h u`` and ``x - h u`` in each array's dtype, and the displacement realised."""
    plus, minus, realised = [], [], []
    for name, arr, u in zip(names, arrays, us, strict=True):
        wide = np.promote_types(arr.dtype, np.float64)
        xw = arr.astype(wide)
        delta = h * u
        if scaled:
            delta = delta * np.maximum(1.0, np.abs(xw))
        with np.errstate(over="ignore"):
            xp = (xw + delta).astype(arr.dtype)
            xm = (xw - delta).astype(arr.dtype)
        if not (np.all(np.isfinite(xp)) and np.all(np.isfinite(xm))):
            raise ValueError(f"step {h:.3g} overflows {arr.dtype} in params[{name!r}]")
        plus.append(xp)
        minus.append(xm)
        realised.append(xp.astype(wide) - xm.astype(wide))
    if not any(np.any(r != 0) for r in realised):
        raise ValueError(f"step {h:.3g} is below the resolution of the params: use a larger step")
    return plus, minus, realised


def _eval_at(
    f: Callable[[], float], arrays: list[np.ndarray], originals: list[np.ndarray],
    points: list[np.ndarray], where: str,
) -> float:
    """``f`` with every array set to ``points``; always restored to ``originals``."""
    try:
        for arr, p in zip(arrays, points, strict=True):
            np.copyto(arr, p)
        return _call(f, where)
    finally:
        for arr, o in zip(arrays, originals, strict=True):
            np.copyto(arr, o)


def _directional(
    f: Callable[[], float], names: list[str], arrays: list[np.ndarray], gs: list[np.ndarray],
    base: float, scaled: bool, rtol: float, atol: float, kink_tol: float, n_directions: int,
    rng: np.random.Generator,
) -> tuple[list[ParamCheck], int]:
    total = sum(a.size for a in arrays)
    if total == 0:
        raise ValueError("params hold no elements: directional mode needs at least one")
    originals = [a.copy() for a in arrays]
    f0 = _call(f, "at the unperturbed point")
    n_evals = 1
    rows = []
    for d in range(n_directions):
        us = [rng.standard_normal(a.shape) for a in arrays]
        norm = math.sqrt(sum(float(np.sum(u * u)) for u in us))
        us = [u / norm for u in us]
        plus, minus, realised = _direction_points(names, arrays, us, base, scaled)
        analytic = sum(float(np.sum(g * r)) for g, r in zip(gs, realised, strict=True))
        analytic /= 2.0 * base
        fp = _eval_at(f, arrays, originals, plus, f"along +direction {d}")
        fm = _eval_at(f, arrays, originals, minus, f"along -direction {d}")
        n_evals += 2
        a = np.array([analytic])
        n = np.array([(fp - fm) / (2.0 * base)])
        eps = max(float(np.finfo(x.dtype).eps) for x in arrays)
        share, abs_err = _share(a, n, rtol, atol, _noise(fp, fm, f0, 2.0 * base, eps))
        kink = np.zeros(1, dtype=bool)
        dplus, dminus = (fp - f0) / base, (f0 - fm) / base
        if (
            math.isfinite(kink_tol)
            and share[0] > 1
            and _may_be_kink(np.array(dplus), np.array(dminus), kink_tol, atol)
        ):
            plus2, minus2, _ = _direction_points(names, arrays, us, 2.0 * base, scaled)
            fp2 = _eval_at(f, arrays, originals, plus2, f"along +direction {d} (double step)")
            fm2 = _eval_at(f, arrays, originals, minus2, f"along -direction {d} (double step)")
            n_evals += 2
            right = _extrapolate(dplus, base, (fp2 - f0) / (2.0 * base), 2.0 * base)
            left = _extrapolate(dminus, base, (f0 - fm2) / (2.0 * base), 2.0 * base)
            # No bracket test: along a direction that crosses several kinks at once, <g, u> need
            # not lie between the one-sided slopes even when every element of g is right.
            kink[0] = _is_kink(analytic, right, left, rtol, atol, kink_tol, bracket=False)
        rows.append(_row(f"direction {d}", (total,), a, n, share, abs_err, kink, lambda k: ()))
    return rows, n_evals


# --------------------------------------------------------------------------------------------
# layers and function pairs
# --------------------------------------------------------------------------------------------


def _draw_upstream(y: Any, rng: np.random.Generator, what: str) -> Any:
    """A random upstream gradient shaped (and typed) like ``y``; tuples of outputs recurse."""
    if isinstance(y, (tuple, list)):
        return tuple(_draw_upstream(item, rng, f"{what}[{i}]") for i, item in enumerate(y))
    arr = np.asarray(y)
    if arr.dtype.kind != "f":
        raise ValueError(f"{what} must be a floating array (or a tuple of them), got {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite, found a non-finite value at {_first_bad(arr)}")
    return np.asarray(rng.standard_normal(arr.shape)).astype(arr.dtype)


def _project(dy: Any, y: Any) -> float:
    """``sum(dy * y)`` accumulated in float64, over nested tuples of outputs."""
    if isinstance(dy, tuple):
        if not isinstance(y, (tuple, list)) or len(y) != len(dy):
            raise ValueError(
                "forward returned a different output structure than on its first call"
            )
        return sum(_project(d, item) for d, item in zip(dy, y, strict=True))
    arr = np.asarray(y)
    if arr.shape != dy.shape:
        raise ValueError(
            f"forward returned an output of shape {arr.shape}, but {dy.shape} on its first call"
        )
    return float(np.sum(dy.astype(np.float64) * arr.astype(np.float64)))


def _input_copy(name: str, value: Any) -> np.ndarray:
    arr = np.array(value, copy=True)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"params[{name!r}] must have a floating dtype (float64 recommended), got {arr.dtype}"
        )
    return arr


def check_layer(
    layer: Any,
    x: np.ndarray,
    *,
    rng: np.random.Generator | int | None = None,
    **gradcheck_kwargs: Any,
) -> GradcheckResult:
    """Gradient-check a layer w.r.t. its input and every entry of ``layer.params``.

    The layer must provide ``params`` (dict name -> float array, may be empty),
    ``forward(x) -> (y, cache)`` and ``backward(dy, cache) -> (dx, grads)`` with ``grads`` keyed
    like ``params``. A fixed random ``dy`` (drawn from ``rng``, default
    ``np.random.default_rng(0)``, shaped like ``y``; ``y`` may be 0-d or a tuple of arrays) is
    passed to ``backward`` once; the checked scalar is ``f = sum(dy * forward(x)[0])`` and the
    rows are ``"x"`` followed by the parameter names. ``x`` is copied (the caller's array is never
    touched); ``layer.params`` are perturbed in place and restored bit for bit. Remaining keyword
    arguments (``mode``, ``step``, ``rtol``, ``atol``, ``kink_tol``, ``n_directions``) go to
    :func:`gradcheck`, which also receives ``rng`` for directional mode.
    """
    gen = np.random.default_rng(0 if rng is None else rng)
    params = getattr(layer, "params", None)
    if not isinstance(params, Mapping):
        raise ValueError(
            f"layer.params must be a dict name -> np.ndarray, got {type(params).__name__}"
        )
    if "x" in params:
        raise ValueError("layer.params has a key 'x', which clashes with the name of the input")
    x_arr = _input_copy("x", x)
    y, cache = layer.forward(x_arr)
    dy = _draw_upstream(y, gen, "layer.forward(x)[0]")
    out = layer.backward(dy, cache)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError("layer.backward(dy, cache) must return a pair (dx, grads)")
    dx, grads = out
    if not isinstance(grads, Mapping) or set(grads) != set(params):
        keys = list(grads) if isinstance(grads, Mapping) else type(grads).__name__
        raise ValueError(
            f"layer.backward returned grads {keys}, expected a dict with the keys of "
            f"layer.params {list(params)}"
        )
    if dx is None:
        raise ValueError("layer.backward returned dx=None: expected the gradient w.r.t. x")

    def f() -> float:
        return _project(dy, layer.forward(x_arr)[0])

    return gradcheck(f, {"x": x_arr, **params}, {"x": dx, **grads}, rng=gen, **gradcheck_kwargs)


def check_function(
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[[Any, Any], Any],
    inputs: Mapping[str, Any],
    *,
    constants: Mapping[str, Any] | None = None,
    rng: np.random.Generator | int | None = None,
    **gradcheck_kwargs: Any,
) -> GradcheckResult:
    """Gradient-check a function pair w.r.t. every entry of ``inputs``.

    ``forward(**inputs, **constants)`` returns ``(y, cache)``; ``backward(dy, cache)`` returns the
    gradients w.r.t. ``inputs``: a dict keyed like ``inputs`` (keys of ``constants`` are ignored),
    a tuple/list in the order of ``inputs``, or a single array when there is one input.
    ``constants`` (targets, noise, flags) are passed to ``forward`` unchanged and not checked.
    As in :func:`check_layer`, ``f = sum(dy * forward(...)[0])`` with a fixed random ``dy``;
    the inputs are copied, so the caller's arrays are never touched.
    """
    gen = np.random.default_rng(0 if rng is None else rng)
    if not isinstance(inputs, Mapping) or len(inputs) == 0:
        raise ValueError("inputs must be a non-empty dict name -> float array")
    consts = dict(constants or {})
    clash = [k for k in consts if k in inputs]
    if clash:
        raise ValueError(f"constants and inputs share the key(s) {clash}: expected disjoint keys")
    arrays = {str(k): _input_copy(str(k), v) for k, v in inputs.items()}
    y, cache = forward(**arrays, **consts)
    dy = _draw_upstream(y, gen, "forward(...)[0]")
    out = backward(dy, cache)
    if isinstance(out, Mapping):
        grads = {k: v for k, v in out.items() if k not in consts}
    elif isinstance(out, (tuple, list)):
        if len(out) != len(arrays):
            raise ValueError(
                f"backward returned {len(out)} gradients, expected {len(arrays)} (one per input, "
                f"in the order {list(arrays)})"
            )
        grads = dict(zip(arrays, out, strict=True))
    elif len(arrays) == 1:
        grads = {next(iter(arrays)): out}
    else:
        raise ValueError(
            f"backward must return a dict or a tuple of gradients, got {type(out).__name__}"
        )

    def f() -> float:
        return _project(dy, forward(**arrays, **consts)[0])

    return gradcheck(f, arrays, grads, rng=gen, **gradcheck_kwargs)
