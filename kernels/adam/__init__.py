"""Optimiser kernels (reference: ``minivae.optim``): one Adam / AdamW step in a single pass over
parameter, gradient and both moments, as CUDA C (``cuda_c.cu``, launched by ``cuda_c.py`` through CuPy
or the emulator), Numba CUDA (``numba_cuda.py``) and Numba CPU (``numba_cpu.py``).

What the three launchers share lives here: the hyperparameter checks and the step's scalars, which
the host computes in double precision exactly as ``minivae.optim.Adam._update`` (and PyTorch) does,
so that every kernel gets the same numbers to round to its dtype.
"""

from __future__ import annotations

import math

# cuda_c.cu's, numba_cuda.py's and numba_cpu.py's weight_decay_mode: no decay, L2 added to the gradient
# (Adam), decoupled shrinking of the parameter (AdamW)
WEIGHT_DECAY_NONE, WEIGHT_DECAY_L2, WEIGHT_DECAY_DECOUPLED = range(3)


def check_hyperparameters(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """ValueError naming the first hyperparameter that is not finite and >= 0, or a beta >= 1."""
    for name, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay), ("betas[0]", beta1),
                    ("betas[1]", beta2)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not (beta1 < 1 and beta2 < 1):
        raise ValueError(f"betas must be in [0, 1), got {(beta1, beta2)!r}")


def step_scalars(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
                 step: int) -> tuple[tuple[float, ...], int]:
    """((weight, 1 - weight, beta2, 1 - beta2, -lr / bc1, sqrt(bc2), eps, weight_decay,
    1 - lr * weight_decay), weight_decay_mode) for step ``step``, with weight = 1 - beta1 (the lerp
    weight) and bc_i = 1 - beta_i ** step: the order every kernel takes them in."""
    weight = 1 - beta1
    mode = (WEIGHT_DECAY_NONE if weight_decay == 0 else WEIGHT_DECAY_DECOUPLED if decoupled
            else WEIGHT_DECAY_L2)
    return (weight, 1 - weight, beta2, 1 - beta2, -(lr / (1 - beta1**step)), (1 - beta2**step) ** 0.5, eps,
            weight_decay, 1 - lr * weight_decay), mode
