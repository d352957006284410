"""The ``numba`` backend: every costly op of a training step as a Numba CPU kernel.

Maps the backend table of ``minivae.backends`` onto ``kernels/*/numba_cpu.py``; arrays stay NumPy arrays
(``xp = numpy``). The GEMMs inside the linear op stay with NumPy's BLAS (``kernels/linear/numba_cpu.py``
says why); everything around them is fused into single passes. Importing this module raises
ImportError when Numba is missing, which ``minivae.backends.get_backend`` reports as unavailable.
"""

from __future__ import annotations

import numpy as np

from minivae.backends import Backend
from minivae.kernels.adam.numba_cpu import adam, adam_many
from minivae.kernels.bernoulli.numba_cpu import bernoulli
from minivae.kernels.importance_weights.numba_cpu import importance_weights
from minivae.kernels.latent.numba_cpu import latent_backward, latent_forward
from minivae.kernels.linear.numba_cpu import linear_backward, linear_forward


def backend() -> Backend:
    """The Numba CPU backend, named "numba"."""
    return Backend("numba", np, linear_forward, linear_backward, latent_forward, latent_backward,
                   bernoulli, importance_weights=importance_weights, adam=adam,
                   adam_many=adam_many)
