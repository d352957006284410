"""Choosing Numba's CUDA simulator from inside a running process, for callers that want the Numba
CUDA kernels to run without a GPU: the kernel tests (tests/kernel_variants.py) and
``python -m bench ladder``. Importing this module imports neither numba nor numba.cuda.

Numba picks the simulator or the real target once, when ``numba.cuda`` is first imported, from
``numba.config.ENABLE_CUDASIM``, which it reads from the environment when numba is imported and
again on ``numba.config.reload_config()``. Numba may already be imported (for the CPU kernels), so
setting NUMBA_ENABLE_CUDASIM is not enough: ``select_simulator`` sets it, reloads the config,
imports numba.cuda, then restores the environment and the config, so that nothing started from the
process (a child, a benchmark) inherits the setting. numba.cuda stays what it was imported as, the
simulator, for the rest of the process: every later in-process caller of the numba-cuda backend or
of ``numba.cuda.is_available()`` sees it.
"""

from __future__ import annotations

import os
import sys


def select_simulator(gpu: bool) -> bool:
    """Make ``numba.cuda`` the simulator, unless ``gpu`` (a GPU is here: the real target is wanted),
    numba is not installed, the environment already chose (NUMBA_ENABLE_CUDASIM), or numba.cuda is
    imported (its target is then fixed). True when this call made the choice."""
    if gpu or "numba.cuda" in sys.modules or "NUMBA_ENABLE_CUDASIM" in os.environ:
        return False
    try:
        import numba
    except ImportError:
        return False
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    try:
        numba.config.reload_config()
        import numba.cuda  # noqa: F401  (the choice is made here)
    finally:
        del os.environ["NUMBA_ENABLE_CUDASIM"]
        numba.config.reload_config()
    return True
