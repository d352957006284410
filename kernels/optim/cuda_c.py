"""Launcher for ``adam.cu``: one Adam or AdamW step, in place, as ``minivae.optim.Adam`` /
``AdamW`` take it (PyTorch's rule; float32 tolerances in tests/test_kernels_elementwise_cuda.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minivae.kernels import _cuda

SOURCE = Path(__file__).with_name("adam.cu")
# Elementwise and memory-bound (4 loads, 3 stores per entry): 8 warps per block keeps enough loads
# in flight per block while leaving room for several blocks per SM.
BLOCK = 256
WEIGHT_DECAY_MODE = {"none": 0, "l2": 1, "decoupled": 2}  # adam.cu's weight_decay_mode


def adam_step(param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, *, step: int, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
              decoupled: bool = False, backend: str = "emulate", block: int = BLOCK,
              grid: int | None = None) -> None:
    """Step ``step`` (1, 2, ...) of Adam (``decoupled=False``: L2 added to the gradient) or AdamW
    (``decoupled=True``) on one float32 parameter array; param, exp_avg, exp_avg_sq change in place,
    grad is only read. All four arrays: the same shape, C-contiguous float32."""
    xp = _cuda.array_module(backend)
    param = _cuda.check_array("param", param, (None,) * getattr(param, "ndim", 1), xp)
    for name, a in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        _cuda.check_array(name, a, param.shape, xp)
    step = _cuda.check_int("step", step, 1, 2**63)
    beta1, beta2 = betas
    for name, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay), ("betas[0]", beta1),
                    ("betas[1]", beta2)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not (beta1 < 1 and beta2 < 1):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    # Scalars in Python double precision, exactly as minivae.optim.Adam (and torch) computes them.
    weight = 1 - beta1
    mode = "none" if weight_decay == 0 else "decoupled" if decoupled else "l2"
    scalars = (weight, 1 - weight, beta2, 1 - beta2, -(lr / (1 - beta1**step)), (1 - beta2**step) ** 0.5, eps,
               weight_decay, 1 - lr * weight_decay)
    block = _cuda.check_block("block", block, whole_warps=False)
    grid = _cuda.check_grid("grid", grid, -(-param.size // block))
    kernel = _cuda.load(SOURCE, backend).get_function("adam_step")
    kernel(grid, block, (param, grad, exp_avg, exp_avg_sq, np.int64(param.size),
                         *(np.float32(s) for s in scalars), np.int32(WEIGHT_DECAY_MODE[mode])))
