"""Launcher for ``cuda_c.cu``: one Adam or AdamW step, in place, as ``minivae.optim.Adam`` /
``AdamW`` take it (PyTorch's rule; float32 tolerances in tests/test_kernels_adam.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minivae.kernels.adam import check_hyperparameters, step_scalars
from minivae.kernels.wiring import cuda_load

SOURCE = Path(__file__).with_name("cuda_c.cu")
# Elementwise and memory-bound (4 loads, 3 stores per entry): 8 warps per block keeps enough loads
# in flight per block while leaving room for several blocks per SM.
BLOCK = 256


def adam_step(param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, *, step: int, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
              decoupled: bool = False, backend: str = "emulate", block: int = BLOCK,
              grid: int | None = None) -> None:
    """Step ``step`` (1, 2, ...) of Adam (``decoupled=False``: L2 added to the gradient) or AdamW
    (``decoupled=True``) on one float32 parameter array; param, exp_avg, exp_avg_sq change in place,
    grad is only read. All four arrays: the same shape, C-contiguous float32."""
    xp = cuda_load.array_module(backend)
    param = cuda_load.check_array("param", param, (None,) * getattr(param, "ndim", 1), xp)
    for name, a in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        cuda_load.check_array(name, a, param.shape, xp)
    step = cuda_load.check_int("step", step, 1, 2**63)
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    check_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    scalars, mode = step_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step)
    block = cuda_load.check_block("block", block, whole_warps=False)
    grid = cuda_load.check_grid("grid", grid, -(-param.size // block))
    kernel = cuda_load.load(SOURCE, backend).get_function("adam_step")
    kernel(grid, block, (param, grad, exp_avg, exp_avg_sq, np.int64(param.size),
                         *(np.float32(s) for s in scalars), np.int32(mode)))
