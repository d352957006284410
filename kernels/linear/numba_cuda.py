"""The fused linear layer in Numba CUDA: y = act(x W^T + b) and its backward, as tiled SGEMMs.

Reference: ``minivae.layers.linear_act_forward/linear_act_backward`` (the numpy backend's op: the
Linear pair and the activation pairs); derivations in docs/derivations.md, "Linear layer" and
"Activations".

One GEMM kernel body, C = A B, serves all three products of a layer; A and B are 2-D views in any
layout (W^T and dy^T are transposes, not copies):

* forward   y  = act(x W^T + b):  A = x (N, D_in),  B = W^T;  epilogue adds b and applies act;
* backward  dx = G W:              A = G (N, D_out), B = W;
            dW = G^T x:            A = G^T,          B = x;   db = row sums of A, accumulated alongside.

with G = dy * act'(.) formed from the forward's output y while A's tile is loaded (never stored):
every activation's derivative is a function of y (softplus' sigmoid(a) = -expm1(-y)), so y is all
the forward keeps.

The step on the optimisation ladder (siboehm/SGEMM_CUDA numbering): shared-memory tiles (3) with
2-D register blocking (5): a block computes a BM x BN tile of C, walking K in steps of BK; each thread
owns a TM x TN patch of it in registers and reuses each value it reads from shared memory TN (or TM)
times. Tile loads walk the operand's contiguous axis, whichever view it is, so a warp's reads are
coalesced. The CUDA C version goes further (vectorised loads, warp tiling).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import cuda, from_dtype

from minivae.kernels.linear import ACT_CODES, ELU_ALPHA, LEAKY_RELU_SLOPE, act_code
from minivae.kernels.wiring import numba_cuda as nbc

# The kernels take the activation as an int; one compiled kernel serves all seven.
ACT_NONE, ACT_RELU, ACT_LEAKY_RELU = ACT_CODES[None], ACT_CODES["relu"], ACT_CODES["leaky_relu"]
ACT_ELU, ACT_TANH, ACT_SIGMOID, ACT_SOFTPLUS = (ACT_CODES[a] for a in ("elu", "tanh", "sigmoid", "softplus"))
SHARED_MEMORY_LIMIT = 48 * 1024  # bytes of static shared memory a block may declare (CUDA's limit)


@dataclass(frozen=True)
class Tiles:
    """A block computes a ``bm x bn`` tile of C walking K in steps of ``bk``; each of its threads a
    ``tm x tn`` patch, so a block has (bm / tm) (bn / tn) threads."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def check(self, dtype: np.dtype) -> Tiles:
        sizes = (self.bm, self.bn, self.bk, self.tm, self.tn)
        if not all(isinstance(s, int) and s >= 1 for s in sizes) or self.bm % self.tm or self.bn % self.tn:
            raise ValueError(f"tiles must be positive integers with bm a multiple of tm and bn of tn, "
                             f"got {self}")
        if self.threads > nbc.MAX_BLOCK_THREADS:
            raise ValueError(f"tiles give {self.threads} threads per block, more than "
                             f"{nbc.MAX_BLOCK_THREADS}: {self}")
        if (self.bm + self.bn) * self.bk * dtype.itemsize > SHARED_MEMORY_LIMIT:
            raise ValueError(f"tiles need more than {SHARED_MEMORY_LIMIT} bytes of shared memory in "
                             f"{dtype}: {self}")
        return self


# 32 x 32 tiles: the VAE's layers are narrow (a batch of 128 by 400 hidden units is 4 x 13 = 52
# tiles), and bigger tiles would leave most of a GPU's SMs idle. 4 x 4 patches give 16 accumulators
# per thread and 4 FMAs per shared-memory read; 64 threads fill each 32 x 8 tile in 4 loads apiece.
# BK = 8: two 32 x 8 tiles are 2 KiB of shared memory in float32, room for many blocks per SM.
TILES = Tiles(bm=32, bn=32, bk=8, tm=4, tn=4)


def _activations(dtype: np.dtype):
    """act(a) and act'(s) as device functions whose constants have the arrays' dtype."""
    zero, one = dtype.type(0), dtype.type(1)
    slope, alpha = dtype.type(LEAKY_RELU_SLOPE), dtype.type(ELU_ALPHA)

    @cuda.jit(device=True)
    def sigmoid(a):
        e = math.exp(-abs(a))  # exp of -|a| only: never overflows
        return (one if a >= zero else e) / (one + e)

    @cuda.jit(device=True)
    def activate(act, a):
        if act == ACT_RELU:
            return max(a, zero)
        if act == ACT_LEAKY_RELU:
            return a if a > zero else slope * a
        if act == ACT_ELU:
            return a if a > zero else alpha * math.expm1(min(a, zero))
        if act == ACT_TANH:
            return math.tanh(a)
        if act == ACT_SIGMOID:
            return sigmoid(a)
        if act == ACT_SOFTPLUS:
            return max(a, zero) + math.log1p(math.exp(-abs(a)))
        return a

    @cuda.jit(device=True)
    def derivative(act, s):
        """act' from the forward's output s = y."""
        if act == ACT_RELU:
            return one if s > zero else zero
        if act == ACT_LEAKY_RELU:
            return one if s > zero else slope
        if act == ACT_ELU:
            return one if s > zero else s + alpha  # alpha e^a = y + alpha for a <= 0
        if act == ACT_TANH:
            return one - s * s
        if act == ACT_SIGMOID:
            return s * (one - s)
        if act == ACT_SOFTPLUS:
            return -math.expm1(-s)  # sigmoid(a) = 1 - e^-y
        return one

    return activate, derivative


@functools.cache
def _kernels(dtype_str: str, tiles: Tiles):
    """The forward and backward kernels for one dtype and tile shape (compiled on first launch)."""
    dtype = np.dtype(dtype_str)
    nb_type = from_dtype(dtype)
    zero = dtype.type(0)
    activate, derivative = _activations(dtype)
    BM, BN, BK, TM, TN = tiles.bm, tiles.bn, tiles.bk, tiles.tm, tiles.tn
    THREADS, THREADS_N = tiles.threads, BN // TN

    @cuda.jit(device=True)
    def load_tile(src, y, act, row0, col0, tile):
        """tile = src[row0:, col0:] (times act' from y unless act is ACT_NONE), zero past the edges.
        Consecutive threads take consecutive elements along src's contiguous axis (coalesced)."""
        rows, cols = tile.shape
        n_rows, n_cols = src.shape
        along_cols = src.strides[1] <= src.strides[0]
        for idx in range(cuda.threadIdx.x, rows * cols, THREADS):
            if along_cols:
                r, c = idx // cols, idx % cols
            else:
                r, c = idx % rows, idx // rows
            i, j = row0 + r, col0 + c
            v = zero
            if i < n_rows and j < n_cols:
                v = src[i, j]
                if act != ACT_NONE:
                    v *= derivative(act, y[i, j])  # G = dy * act'(.), formed on the way in
            tile[r, c] = v

    @cuda.jit(device=True)
    def mainloop(a, y, act, b, acc, rowsum, sum_rows):
        """acc = this thread's TM x TN patch of A B; rowsum = its TM rows' sums of A if sum_rows."""
        a_tile = cuda.shared.array((BM, BK), nb_type)
        b_tile = cuda.shared.array((BK, BN), nb_type)
        a_reg = cuda.local.array(TM, nb_type)
        b_reg = cuda.local.array(TN, nb_type)
        ty, tx = cuda.threadIdx.x // THREADS_N, cuda.threadIdx.x % THREADS_N
        row0, col0 = cuda.blockIdx.x * BM, cuda.blockIdx.y * BN
        for r in range(TM):
            rowsum[r] = zero
            for c in range(TN):
                acc[r, c] = zero
        for k0 in range(0, a.shape[1], BK):
            load_tile(a, y, act, row0, k0, a_tile)
            load_tile(b, b, ACT_NONE, k0, col0, b_tile)
            cuda.syncthreads()  # both tiles complete before anyone reads them
            for kk in range(BK):
                for r in range(TM):
                    a_reg[r] = a_tile[ty * TM + r, kk]
                for c in range(TN):
                    b_reg[c] = b_tile[kk, tx * TN + c]
                for r in range(TM):
                    for c in range(TN):
                        acc[r, c] += a_reg[r] * b_reg[c]
                if sum_rows:
                    for r in range(TM):
                        rowsum[r] += a_reg[r]
            cuda.syncthreads()  # everyone is done with the tiles before the next load overwrites them

    @cuda.jit
    def forward(x, wt, bias, y, act):
        """y = act(x wt + bias) (N, M)."""
        acc = cuda.local.array((TM, TN), nb_type)
        rowsum = cuda.local.array(TM, nb_type)
        mainloop(x, x, ACT_NONE, wt, acc, rowsum, False)
        i0 = cuda.blockIdx.x * BM + (cuda.threadIdx.x // THREADS_N) * TM
        j0 = cuda.blockIdx.y * BN + (cuda.threadIdx.x % THREADS_N) * TN
        for r in range(TM):
            for c in range(TN):
                i, j = i0 + r, j0 + c
                if i < y.shape[0] and j < y.shape[1]:
                    y[i, j] = activate(act, acc[r, c] + bias[j])

    @cuda.jit
    def backward(dy, y, act, b, out, rowsums, want_rowsums):
        """out = G b with G = dy * act'(.) from y; rowsums = row sums of G if want_rowsums."""
        acc = cuda.local.array((TM, TN), nb_type)
        rowsum = cuda.local.array(TM, nb_type)
        tx = cuda.threadIdx.x % THREADS_N
        # One thread per row of C sums the row: column-0 threads of the first column of blocks.
        sum_rows = want_rowsums and cuda.blockIdx.y == 0 and tx == 0
        mainloop(dy, y, act, b, acc, rowsum, sum_rows)
        i0 = cuda.blockIdx.x * BM + (cuda.threadIdx.x // THREADS_N) * TM
        j0 = cuda.blockIdx.y * BN + tx * TN
        for r in range(TM):
            i = i0 + r
            if i < out.shape[0]:
                if sum_rows:
                    rowsums[i] = rowsum[r]
                for c in range(TN):
                    if j0 + c < out.shape[1]:
                        out[i, j0 + c] = acc[r, c]

    return forward, backward


def _grid(rows: int, cols: int, tiles: Tiles) -> tuple[int, int]:
    grid = (-(-rows // tiles.bm), -(-cols // tiles.bn))
    if grid[1] > nbc.MAX_GRID_Y:
        raise ValueError(f"{cols} output columns need {grid[1]} column tiles of {tiles.bn}, more than "
                         f"gridDim.y allows ({nbc.MAX_GRID_Y})")
    return grid


def forward(x: Any, W: Any, b: Any, act: str | None = None, *, tiles: Tiles = TILES) -> Any:
    """y = act(x W^T + b) (N, D_out): all the backward needs.

    x: (N, D_in), W: (D_out, D_in), b: (D_out,), one dtype (float32 or float64), C-contiguous.
    """
    code = act_code(act)
    x = nbc.check_array("x", x, (None, None))
    n, d_in = x.shape
    W = nbc.check_array("W", W, (None, d_in), x.dtype)
    d_out = W.shape[0]
    b = nbc.check_array("b", b, (d_out,), x.dtype)
    nbc.check_dims(N=n, D_in=d_in, D_out=d_out)
    tiles = tiles.check(x.dtype)
    xp = nbc.array_module()
    y = xp.empty((n, d_out), x.dtype)
    kernel, _ = _kernels(x.dtype.str, tiles)
    nbc.launch(kernel, _grid(n, d_out, tiles), tiles.threads, x, W.T, b, y, code)
    return y


def backward(dy: Any, x: Any, W: Any, y: Any | None, act: str | None = None, *, need_dx: bool = True,
             tiles: Tiles = TILES) -> tuple[Any | None, Any, Any]:
    """dx = G W (N, D_in) (None unless need_dx), dW = G^T x (D_out, D_in), db = sum_n G (D_out,),
    with G = dy * act'(.) formed from y inside the GEMMs' loads. x, W, act: as ``forward`` took them,
    y: its output (not read, None is fine, when act is None); dy: (N, D_out)."""
    code = act_code(act)
    x = nbc.check_array("x", x, (None, None))
    n, d_in = x.shape
    W = nbc.check_array("W", W, (None, d_in), x.dtype)
    d_out = W.shape[0]
    dy = nbc.check_array("dy", dy, (n, d_out), x.dtype)
    if code == ACT_NONE:
        y = dy  # read by no one: act' is never evaluated
    else:
        y = nbc.check_array("y", y, (n, d_out), x.dtype)
    nbc.check_dims(N=n, D_in=d_in, D_out=d_out)
    tiles = tiles.check(x.dtype)
    xp = nbc.array_module()
    _, kernel = _kernels(x.dtype.str, tiles)
    dx = None
    if need_dx:
        dx = xp.empty((n, d_in), x.dtype)
        nbc.launch(kernel, _grid(n, d_in, tiles), tiles.threads, dy, y, code, W, dx,
                   nbc.placeholder(x.dtype, 1), False)
    dW, db = xp.empty((d_out, d_in), x.dtype), xp.empty(d_out, x.dtype)
    nbc.launch(kernel, _grid(d_out, d_in, tiles), tiles.threads, dy.T, y.T, code, x, dW, db, True)
    return dx, dW, db
