"""One Adam / AdamW step in Numba CUDA: a single pass over param, grad, exp_avg and exp_avg_sq.

Reference: ``minivae.optim.Adam._update`` (PyTorch's single-tensor rule, op for op); the CUDA C twin
is ``cuda_c.cu``. The host computes every step-dependent scalar in double precision, as PyTorch does,
and hands it to the kernel rounded to the arrays' dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numba import cuda

from minivae.kernels.adam import WEIGHT_DECAY_DECOUPLED, WEIGHT_DECAY_L2, check_hyperparameters, step_scalars
from minivae.kernels.wiring import cuda_load
from minivae.kernels.wiring import numba_cuda as nbc

# Elementwise and memory-bound (4 loads, 3 stores per entry): 8 warps per block keeps enough loads
# in flight per block while leaving room for several blocks per SM.
BLOCK = 256


@functools.cache
def _kernel(dtype_str: str):
    """The kernel for one dtype (compiled on first launch)."""
    half = np.dtype(dtype_str).type(0.5)

    @cuda.jit
    def adam(param, grad, exp_avg, exp_avg_sq, weight, one_minus_weight, beta2, one_minus_beta2,
             neg_step_size, bias_correction2_sqrt, eps, weight_decay, decay, weight_decay_mode):
        """Grid-stride over the flat arrays; grad is only read."""
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            p, g = param[i], grad[i]
            if weight_decay_mode == WEIGHT_DECAY_DECOUPLED:
                p *= decay
            if weight_decay_mode == WEIGHT_DECAY_L2:
                g += p * weight_decay
            # m = lerp(m, g, weight), in PyTorch's two forms (the one that keeps the smaller factor)
            diff = g - exp_avg[i]
            m = exp_avg[i] + diff * weight if weight < half else g - diff * one_minus_weight
            v = exp_avg_sq[i] * beta2 + (g * one_minus_beta2) * g
            denom = math.sqrt(v) / bias_correction2_sqrt + eps
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = p + (m * neg_step_size) / denom

    return adam


def adam_step(param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, *, step: int, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
              decoupled: bool = False, block: int = BLOCK, grid: int | None = None) -> None:
    """Step ``step`` (1, 2, ...) of Adam (``decoupled=False``: L2 added to the gradient) or AdamW
    (``decoupled=True``): param, exp_avg, exp_avg_sq change in place, grad is only read. All four
    arrays: one shape and dtype (float32 or float64), C-contiguous."""
    param = nbc.check_array("param", param, (None,) * getattr(param, "ndim", 1), writeable=True)
    nbc.check_array("grad", grad, param.shape, param.dtype)
    nbc.check_array("exp_avg", exp_avg, param.shape, param.dtype, writeable=True)
    nbc.check_array("exp_avg_sq", exp_avg_sq, param.shape, param.dtype, writeable=True)
    step = cuda_load.check_int("step", step, 1, 2**63)
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    check_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    if param.size == 0:
        return
    scalars, mode = step_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step)
    block = nbc.check_block("block", block)
    grid = nbc.check_grid("grid", grid, -(-param.size // block))
    flat = [a.reshape(-1) for a in (param, grad, exp_avg, exp_avg_sq)]  # views: C-contiguous
    nbc.launch(_kernel(param.dtype.str), grid, block, *flat, *(nbc.scalar(param.dtype, s) for s in scalars),
               mode)
