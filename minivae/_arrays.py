"""Which array module an array belongs to, and the way back to the host.

The reference ops of ``layers``, ``latent`` and ``likelihoods`` are written with NumPy's functions,
which CuPy arrays also answer (NumPy's ufunc and function protocols), so the same code runs on
either. Only a fresh array must be made by the right module: ``array_module`` says which.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def array_module(a: Any) -> Any:
    """numpy, or cupy for a CuPy array (cupy is looked up only if something imported it)."""
    cupy = sys.modules.get("cupy")
    return cupy.get_array_module(a) if cupy is not None else np


def to_host(a: Any) -> np.ndarray:
    """``a`` as a NumPy array: a CuPy array is copied back, anything else converted (no copy if it
    already is one)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)
