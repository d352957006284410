"""Launchers for ``cuda_c.cu``: the fused linear(+activation) op, forward and backward.

Same results as ``minivae.layers.linear_act_forward`` / ``linear_act_backward`` (the numpy backend's
op) to float32 GEMM tolerances (see tests/test_kernels_linear.py). ``version`` picks the rung
of the optimisation ladder (``FORWARD`` and ``BACKWARD`` below; cuda_c.cu says what each adds); the
default is the production rung, 4.

Matrices may be row-strided views (unit column stride, row stride ``ld >= width`` elements, e.g. a
column slice of a wider array): the kernels take a leading dimension per matrix, so no copy is made.
The kernel then gets a 1-D view of the span from the first element to the last, which is the memory
it may touch. The forward keeps only its output for the backward, for every activation (cuda_c.cu
explains why that suffices, softplus included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minivae.kernels.linear import act_code as _act_code
from minivae.kernels.wiring import cuda_load

SOURCE = Path(__file__).with_name("cuda_c.cu")
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y, which runs over the row tiles
ITEM = cuda_load.FLOAT32_ITEM


@dataclass(frozen=True)
class Rung:
    """One kernel of the ladder: its name, the block it is compiled for, and the tile of the output
    (rows, columns) each block writes. The grid is the output divided by the tile, rounded up."""

    kernel: str
    block: tuple[int, int]
    tile: tuple[int, int]


# Rung 1 takes any 2-D block: 32 x 8 puts a warp on 32 consecutive outputs of one row (coalesced
# stores) and 8 warps in a block. Rungs 2-4 are compiled for one block each (cuda_c.cu's R2_TILE,
# R3_*, R4_* say why those sizes) and trap on any other.
NAIVE_BLOCK = (32, 8)
R2_TILE = 16  # 16 x 16 threads, one output each
R3_TILE, R3_THREADS = 64, 512  # 64 x 64 outputs, 8 per thread down a column
R4_TILE, R4_THREADS = 64, 64  # 64 x 64 outputs, 8 x 8 per thread

FORWARD = {
    1: Rung("linear_forward_1", NAIVE_BLOCK, NAIVE_BLOCK[::-1]),
    2: Rung("linear_forward_2", (R2_TILE, R2_TILE), (R2_TILE, R2_TILE)),
    3: Rung("linear_forward_3", (R3_THREADS, 1), (R3_TILE, R3_TILE)),
    4: Rung("linear_forward_4", (R4_THREADS, 1), (R4_TILE, R4_TILE)),
}
# (dx kernel, dW + db kernel) per rung; rungs 2 and 3 would teach nothing the forward does not.
BACKWARD = {
    1: (Rung("linear_backward_dx_1", NAIVE_BLOCK, NAIVE_BLOCK[::-1]),
        Rung("linear_backward_dw_1", NAIVE_BLOCK, NAIVE_BLOCK[::-1])),
    4: (Rung("linear_backward_dx_4", (R4_THREADS, 1), (R4_TILE, R4_TILE)),
        Rung("linear_backward_dw_4", (R4_THREADS, 1), (R4_TILE, R4_TILE))),
}
PRODUCTION = 4


def act_code(act: str | None) -> np.int32:
    """cuda_c.cu's code for ``act`` (kernels/linear/__init__.py's ACT_CODES), as the C int it takes."""
    return np.int32(_act_code(act))


def _rung(table: dict, version: Any, what: str):
    if isinstance(version, bool) or version not in table:
        raise ValueError(f"version must be one of {sorted(table)} ({what}), got {version!r}")
    return table[version]


def matrix(name: str, a: Any, shape: tuple[int | None, int | None], xp: Any,
           writeable: bool = False) -> tuple[Any, Any, int]:
    """``cuda_load.check_matrix``: row-strided float32 matrices, as every linear kernel takes them."""
    return cuda_load.check_matrix(name, a, shape, xp, writeable)


def _grid(rung: Rung, rows: int, cols: int) -> tuple[int, int]:
    tile_rows, tile_cols = rung.tile
    grid = (-(-cols // tile_cols), -(-rows // tile_rows))
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"{rows} output rows need {grid[1]} row tiles of {tile_rows} for {rung.kernel}, "
                         f"over CUDA's gridDim.y limit of {MAX_GRID_Y}")
    return grid


def _output(name: str, given: Any, shape: tuple[int, ...], xp: Any) -> tuple[Any, Any, int]:
    if given is None:
        a = xp.empty(shape, np.float32)
        return a, a, shape[-1]
    if len(shape) == 1:
        a = cuda_load.check_array(name, given, shape, xp)
        return a, a, shape[0]
    return matrix(name, given, shape, xp, writeable=True)


def forward(x: Any, W: Any, b: Any, act: str | None = None, *, version: int = PRODUCTION,
            backend: str = "emulate", out: Any = None) -> Any:
    """y = act(x W^T + b).

    x: (N, D_in), W: (D_out, D_in), b: (D_out,) float32 -> y (N, D_out), written into ``out`` if
    given (an (N, D_out) float32 array, row-strided views allowed). act: None or relu, leaky_relu
    (slope 0.01), elu (alpha 1), tanh, sigmoid, softplus. y is all the backward needs.
    """
    rung = _rung(FORWARD, version, "the forward ladder")
    code = act_code(act)
    xp = cuda_load.array_module(backend)
    x, x_k, ldx = matrix("x", x, (None, None), xp)
    n, d_in = x.shape
    W, W_k, ldw = matrix("W", W, (None, d_in), xp)
    d_out = W.shape[0]
    b = cuda_load.check_array("b", b, (d_out,), xp)
    y, y_k, ldy = _output("out", out, (n, d_out), xp)
    kernel = cuda_load.load(SOURCE, backend).get_function(rung.kernel)
    kernel(_grid(rung, n, d_out), rung.block, (x_k, W_k, b, y_k, np.int32(n), np.int32(d_in), np.int32(d_out),
                                                np.int32(ldx), np.int32(ldw), np.int32(ldy), code))
    return y


def backward(dy: Any, x: Any, W: Any, y: Any, act: str | None = None, *, need_dx: bool = True,
             version: int = PRODUCTION, backend: str = "emulate",
             out: tuple[Any, Any, Any] | None = None) -> tuple[Any, Any, Any]:
    """With G = dy * act'(.) (formed from y inside the kernels, never stored): dx = G W,
    dW = G^T x, db = column sums of G.

    dy: (N, D_out); x: (N, D_in); W: (D_out, D_in); y: the forward's output (N, D_out), not read
    (None is fine) when act is None. Returns (dx (N, D_in) or None without need_dx, dW (D_out, D_in),
    db (D_out,)), written into ``out = (dx or None, dW, db)`` if given.
    """
    dx_rung, dw_rung = _rung(BACKWARD, version, "the backward's rungs")
    code = act_code(act)
    xp = cuda_load.array_module(backend)
    dy, dy_k, ld_dy = matrix("dy", dy, (None, None), xp)
    n, d_out = dy.shape
    x, x_k, ldx = matrix("x", x, (n, None), xp)
    d_in = x.shape[1]
    W, W_k, ldw = matrix("W", W, (d_out, d_in), xp)
    if act is None:
        y_k, ld_y = dy_k, ld_dy  # never read: a valid pointer for the signature
    else:
        y, y_k, ld_y = matrix("y", y, (n, d_out), xp)
    given = (None, None, None) if out is None else out
    if not isinstance(given, (tuple, list)) or len(given) != 3:
        raise ValueError(f"out must be a tuple (dx or None, dW, db), got {type(out).__name__}")
    dW, dW_k, ld_dw = _output("out[1] (dW)", given[1], (d_out, d_in), xp)
    db, _, _ = _output("out[2] (db)", given[2], (d_out,), xp)
    ints = (np.int32(n), np.int32(d_in), np.int32(d_out))
    dx = None
    if need_dx:
        dx, dx_k, ld_dx = _output("out[0] (dx)", given[0], (n, d_in), xp)
        kernel = cuda_load.load(SOURCE, backend).get_function(dx_rung.kernel)
        kernel(_grid(dx_rung, n, d_in), dx_rung.block, (dy_k, y_k, W_k, dx_k, *ints, np.int32(ld_dy),
                                                        np.int32(ld_y), np.int32(ldw), np.int32(ld_dx), code))
    elif given[0] is not None:
        raise ValueError("out[0] (dx) must be None when need_dx is False")
    kernel = cuda_load.load(SOURCE, backend).get_function(dw_rung.kernel)
    kernel(_grid(dw_rung, d_out, d_in), dw_rung.block, (dy_k, y_k, x_k, dW_k, db, *ints, np.int32(ld_dy),
                                                        np.int32(ld_y), np.int32(ldx), np.int32(ld_dw), code))
    return dx, dW, db
