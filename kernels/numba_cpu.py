"""The ``numba`` backend: every costly op of a training step as a Numba CPU kernel.

Maps the backend table of ``minivae.backends`` onto ``kernels/*/cpu.py``; arrays stay NumPy arrays
(``xp = numpy``). The GEMMs inside the linear op stay with NumPy's BLAS (``kernels/linear/cpu.py``
says why); everything around them is fused into single passes. Importing this module raises
ImportError when Numba is missing, which ``minivae.backends.get_backend`` reports as unavailable.
"""

from __future__ import annotations

import numpy as np

from minivae.backends import Backend
from minivae.kernels.iwae.cpu import importance_weights
from minivae.kernels.latent.cpu import latent_backward, latent_forward
from minivae.kernels.likelihood.cpu import bernoulli
from minivae.kernels.linear.cpu import linear_backward, linear_forward
from minivae.kernels.optim.cpu import adam


def backend() -> Backend:
    """The Numba CPU backend, named "numba"."""
    return Backend("numba", np, linear_forward, linear_backward, latent_forward, latent_backward,
                   bernoulli, importance_weights=importance_weights, adam=adam)
