"""The fused linear layer in Numba CUDA: y = act(x W^T + b) and its backward.

Reference: ``minivae.layers.linear_act_forward/linear_act_backward`` (the numpy backend's op: the
Linear pair and the activation pairs); derivations in docs/derivations.md, "Linear layer" and
"Activations".

The forward is the optimisation ladder of kernels/linear/__init__.py's RUNGS, numbered as in
cuda_c.cu, one kernel per rung, read top to bottom:

  1 naive: one thread per output, its dot product read straight from global memory
  2 shared-memory tiles: each operand element loaded from global memory once per tile
  3 1-D register tiles: a column of outputs per thread, one shared load feeds several FMAs
  4 2-D register tiles: a patch of outputs per thread, operands reused from registers both ways

Each rung maps threads to outputs as cuda_c.cu's rung of that number does (blockIdx.x over column
tiles, blockIdx.y over row tiles) and ends in the same fused epilogue: add the bias, apply the
activation, store y. Rung 4 is the production one (the numba-cuda backend runs it). It takes the
same step as CUDA C's rung 4, a patch of outputs per thread, but it is a design of its own, not a
transcription; against cuda_c.cu's rung 4:

* no float4: Numba has no 16-byte vector loads, so every global and shared access moves one element;
* 32 x 32 tiles with 4 x 4 contiguous patches (CUDA C: 64 x 64, 8 x 8 patches in two column groups);
* A's slice is staged m-major, (BM, BK), with no padding, where rung 3 and CUDA C stage both
  operands k-major with TILE_PAD: its shared reads are not conflict-free;
* one kernel body reads any view, choosing per operand at run time (a stride test) which axis to
  load along; CUDA C compiles load_rows or load_cols per operand;
* one backward kernel serves dx and dW (dW through the views dy^T, y^T); CUDA C has one each.

The backward has rung 1 (naive) and rung 4, as cuda_c.cu's does.

Rung 4 is one GEMM body, C = A B, serving all three products of a layer; A and B are 2-D views in
any layout (W^T and dy^T are transposes, not copies):

* forward   y  = act(x W^T + b):  A = x (N, D_in),  B = W^T;  epilogue adds b and applies act;
* backward  dx = G W:              A = G (N, D_out), B = W;
            dW = G^T x:            A = G^T,          B = x;   db = row sums of A, accumulated alongside.

with G = dy * act'(.) formed from the forward's output y while A is loaded (never stored): every
activation's derivative is a function of y (softplus' sigmoid(a) = -expm1(-y)), so y is all the
forward keeps. The naive backward (rung 1) takes the same arguments, one thread per output of C.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import cuda, from_dtype

from minivae.kernels.linear import ACT_CODES, ELU_ALPHA, LEAKY_RELU_SLOPE, PRODUCTION_RUNG, act_code
from minivae.kernels.wiring import numba_cuda as nbc

FORWARD_VERSIONS = (1, 2, 3, 4)
BACKWARD_VERSIONS = (1, 4)

# The kernels take the activation as an int; one compiled kernel serves all seven.
ACT_NONE, ACT_RELU, ACT_LEAKY_RELU = ACT_CODES[None], ACT_CODES["relu"], ACT_CODES["leaky_relu"]
ACT_ELU, ACT_TANH, ACT_SIGMOID, ACT_SOFTPLUS = (ACT_CODES[a] for a in ("elu", "tanh", "sigmoid", "softplus"))
SHARED_MEMORY_LIMIT = 48 * 1024  # bytes of static shared memory a block may declare (CUDA's limit)
# Rung 3 stages its slices k-major, tile[k][w]; 4 elements of padding per row, as cuda_c.cu's
# TILE_PAD, make the transposing stores of a warp (4 rows w, 8 k each) hit 32 distinct banks.
TILE_PAD = 4


@dataclass(frozen=True)
class Tiles:
    """A block computes a ``bm x bn`` tile of C walking K in slices of ``bk``; each of its threads a
    ``tm x tn`` patch, so a block has (bm / tm) (bn / tn) threads.

    Each rung uses what its step needs and wants the rest 1: rungs 1 and 2 give a thread one output
    (tm = tn = 1), rung 1 stages no slice (bk = 1), rung 2's threads load one element of each
    operand's slice apiece (bk = bm = bn), rung 3's own a column of tm outputs (tn = 1)."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def block(self, version: int) -> int | tuple[int, int]:
        """Rungs 1 and 2 run 2-D blocks (threadIdx.x along the columns of C), 3 and 4 1-D ones."""
        return (self.bn, self.bm) if version in (1, 2) else self.threads

    def shared_bytes(self, version: int, dtype: np.dtype) -> int:
        bm, bn, bk = self.bm, self.bn, self.bk
        elements = {1: 0, 2: (bm + bn) * (bk + 1), 3: bk * (bm + bn + 2 * TILE_PAD), 4: (bm + bn) * bk}
        return elements[version] * dtype.itemsize

    def check(self, dtype: np.dtype, version: int = PRODUCTION_RUNG) -> Tiles:
        sizes = (self.bm, self.bn, self.bk, self.tm, self.tn)
        if not all(isinstance(s, int) and s >= 1 for s in sizes) or self.bm % self.tm or self.bn % self.tn:
            raise ValueError(f"tiles must be positive integers with bm a multiple of tm and bn of tn, "
                             f"got {self}")
        one_output = self.tm == self.tn == 1
        rule, holds = {
            1: ("tm = tn = bk = 1 (one output per thread, no slices)", one_output and self.bk == 1),
            2: ("tm = tn = 1 and bk = bm = bn (one output and one element of each slice per thread)",
                one_output and self.bk == self.bm == self.bn),
            3: ("tn = 1 (a column of tm outputs per thread)", self.tn == 1),
            4: ("", True)}[version]
        if not holds:
            raise ValueError(f"rung {version} takes tiles with {rule}, got {self}")
        if self.threads > nbc.MAX_BLOCK_THREADS:
            raise ValueError(f"tiles give {self.threads} threads per block, more than "
                             f"{nbc.MAX_BLOCK_THREADS}: {self}")
        if self.shared_bytes(version, dtype) > SHARED_MEMORY_LIMIT:
            raise ValueError(f"tiles need more than {SHARED_MEMORY_LIMIT} bytes of shared memory for rung "
                             f"{version} in {dtype}: {self}")
        return self


# Each rung's own block geometry, cuda_c.cu's where the simulator can afford it. Rung 1: 32 x 8
# threads, a warp on 32 consecutive outputs of a row (coalesced stores), 8 warps. Rung 2: 16 x 16
# tiles, 256 threads. Rung 3: 64 x 64 tiles, 8 outputs down a column per thread, 512 threads.
# Rung 4: 32 x 32 tiles, not CUDA C's 64 x 64. Smaller tiles make more blocks of the VAE's narrow
# layers (a batch of 128 by 400 hidden units is 4 x 13 = 52 tiles here, 2 x 7 = 14 of CUDA C's),
# larger ones reuse each load more; which wins on a GPU is for `python -m bench ladder --op linear`
# to measure there, and no GPU run has been made. 4 x 4 patches
# give 16 accumulators per thread and 4 FMAs per shared-memory read; 64 threads fill each 32 x 8
# slice in 4 loads apiece. BK = 8: two 32 x 8 slices are 2 KiB of shared memory in float32.
TILES = Tiles(bm=32, bn=32, bk=8, tm=4, tn=4)
RUNG_TILES = {1: Tiles(bm=8, bn=32, bk=1, tm=1, tn=1), 2: Tiles(bm=16, bn=16, bk=16, tm=1, tn=1),
              3: Tiles(bm=64, bn=64, bk=8, tm=8, tn=1), 4: TILES}


@functools.cache
def _activations(dtype_str: str):
    """act(a), act'(s) and G = dy act'(s) as device functions whose constants have the arrays' dtype."""
    dtype = np.dtype(dtype_str)
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

    @cuda.jit(device=True)
    def grad(dy, y, act, i, k):
        """G[i, k] = dy[i, k] act'(.), from y; y is not read without an activation."""
        if act == ACT_NONE:
            return dy[i, k]
        return dy[i, k] * derivative(act, y[i, k])

    return activate, grad


# Rung 1 -- naive: one thread per output, its dot product read straight from global memory
# threadIdx.x runs along the columns of C, so a warp's stores coalesce; its loads cannot: x and W are
# both K-contiguous, and no mapping of threads walks both along k. 2 global loads per FMA.
@functools.cache
def _rung_1(dtype_str: str):
    """The naive forward and backward kernels for one dtype (any 2-D block; compiled on first launch)."""
    zero = np.dtype(dtype_str).type(0)
    activate, grad = _activations(dtype_str)

    @cuda.jit
    def forward(x, w, bias, y, act):
        """y[m, n] = act(sum_k x[m, k] w[n, k] + bias[n])."""
        n = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        m = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
        if m >= y.shape[0] or n >= y.shape[1]:
            return
        acc = zero
        for k in range(x.shape[1]):
            acc += x[m, k] * w[n, k]
        y[m, n] = activate(act, acc + bias[n])

    @cuda.jit
    def backward(dy, y, act, b, out, rowsums, want_rowsums):
        """out[i, j] = sum_k G[i, k] b[k, j], G recomputed for every output (rung 4 forms it once per
        tile); the threads of column 0 also sum row i of G into rowsums (db) if want_rowsums."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
        if i >= out.shape[0] or j >= out.shape[1]:
            return
        acc, g_sum = zero, zero
        for k in range(dy.shape[1]):
            g = grad(dy, y, act, i, k)
            acc += g * b[k, j]
            g_sum += g
        out[i, j] = acc
        if want_rowsums and j == 0:
            rowsums[i] = g_sum

    return forward, backward


# Rung 2 -- shared-memory tiles: each operand element loaded from global memory once per tile
# A block of T x T threads stages a T x T slice of x and of W, one element per thread each, loaded
# along k (coalesced), then reads every staged value T times from shared memory. W's slice is read
# down a column (ws[tx, k]); one element of padding per row puts those reads on distinct banks.
@functools.cache
def _rung_2(dtype_str: str, tiles: Tiles):
    """The forward kernel for one dtype and a T x T tile, T = tiles.bm = bn = bk."""
    dtype = np.dtype(dtype_str)
    nb_type, zero = from_dtype(dtype), dtype.type(0)
    activate, _ = _activations(dtype_str)
    T = tiles.bm

    @cuda.jit
    def forward(x, w, bias, y, act):
        xs = cuda.shared.array((T, T + 1), nb_type)
        ws = cuda.shared.array((T, T + 1), nb_type)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        m0, n0 = cuda.blockIdx.y * T, cuda.blockIdx.x * T
        n_rows, d_in = x.shape
        d_out = w.shape[0]
        acc = zero
        for k0 in range(0, d_in, T):
            k = k0 + tx
            xs[ty, tx] = x[m0 + ty, k] if m0 + ty < n_rows and k < d_in else zero
            ws[ty, tx] = w[n0 + ty, k] if n0 + ty < d_out and k < d_in else zero
            cuda.syncthreads()  # the whole slice is staged before anyone reads it
            for kk in range(T):
                acc += xs[ty, kk] * ws[tx, kk]
            cuda.syncthreads()  # everyone has read the slice before the next one overwrites it
        if m0 + ty < n_rows and n0 + tx < d_out:
            y[m0 + ty, n0 + tx] = activate(act, acc + bias[n0 + tx])

    return forward


# Rung 3 -- 1-D register tiles: a column of outputs per thread, one shared load feeds several FMAs
# A block computes a BM x BN tile; thread t owns the TM outputs of column t % BN from row
# (t // BN) TM down, in registers. Per k it loads one value of W's slice and reuses it for TM FMAs
# (rung 2: 2 shared loads per FMA; here TM + 1 per TM). Both slices are staged k-major, as cuda_c.cu's
# load_rows does, so a thread's TM values of x's slice are one row of the tile.
@functools.cache
def _rung_3(dtype_str: str, tiles: Tiles):
    """The forward kernel for one dtype and tile shape."""
    dtype = np.dtype(dtype_str)
    nb_type, zero = from_dtype(dtype), dtype.type(0)
    activate, _ = _activations(dtype_str)
    BM, BN, BK, TM = tiles.bm, tiles.bn, tiles.bk, tiles.tm
    THREADS = tiles.threads

    @cuda.jit(device=True)
    def load_rows(src, row0, k0, width, tile):
        """tile[k, r] = src[row0 + r, k0 + k] for r < width, zero outside src: the transpose of a
        K-contiguous slice. Consecutive threads take consecutive k of a row (coalesced reads)."""
        n_rows, n_k = src.shape
        for e in range(cuda.threadIdx.x, width * BK, THREADS):
            r, k = e // BK, e % BK
            i, kk = row0 + r, k0 + k
            tile[k, r] = src[i, kk] if i < n_rows and kk < n_k else zero

    @cuda.jit
    def forward(x, w, bias, y, act):
        xs = cuda.shared.array((BK, BM + TILE_PAD), nb_type)
        ws = cuda.shared.array((BK, BN + TILE_PAD), nb_type)
        acc = cuda.local.array(TM, nb_type)
        col, row = cuda.threadIdx.x % BN, cuda.threadIdx.x // BN * TM
        m0, n0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        for i in range(TM):
            acc[i] = zero
        for k0 in range(0, x.shape[1], BK):
            load_rows(x, m0, k0, BM, xs)
            load_rows(w, n0, k0, BN, ws)
            cuda.syncthreads()  # the whole slice is staged before anyone reads it
            for k in range(BK):
                wv = ws[k, col]
                for i in range(TM):
                    acc[i] += xs[k, row + i] * wv
            cuda.syncthreads()  # everyone has read the slice before the next one overwrites it
        n = n0 + col
        for i in range(TM):
            m = m0 + row + i
            if m < y.shape[0] and n < y.shape[1]:
                y[m, n] = activate(act, acc[i] + bias[n])

    return forward


# Rung 4 -- 2-D register tiles: a patch of outputs per thread, operands reused from registers both ways
# A block computes a BM x BN tile of C walking K in slices of BK; each thread owns a TM x TN patch in
# registers and reuses each value it reads from shared memory TN (or TM) times. Slices are loaded
# along the operand's contiguous axis, whichever view it is, so a warp's reads are coalesced. What
# cuda_c.cu's rung 4 adds on top, float4 loads and stores, Numba cannot express.
@functools.cache
def _rung_4(dtype_str: str, tiles: Tiles):
    """The forward and backward kernels for one dtype and tile shape (compiled on first launch)."""
    dtype = np.dtype(dtype_str)
    nb_type, zero = from_dtype(dtype), dtype.type(0)
    activate, grad = _activations(dtype_str)
    BM, BN, BK, TM, TN = tiles.bm, tiles.bn, tiles.bk, tiles.tm, tiles.tn
    THREADS, THREADS_N = tiles.threads, BN // TN

    @cuda.jit(device=True)
    def load_tile(src, y, act, row0, col0, tile):
        """tile = G or src[row0:, col0:] (G: times act' from y unless act is ACT_NONE), zero past the
        edges. Consecutive threads take consecutive elements along src's contiguous axis (coalesced)."""
        rows, cols = tile.shape
        n_rows, n_cols = src.shape
        along_cols = src.strides[1] <= src.strides[0]
        for idx in range(cuda.threadIdx.x, rows * cols, THREADS):
            if along_cols:
                r, c = idx // cols, idx % cols
            else:
                r, c = idx % rows, idx // rows
            i, j = row0 + r, col0 + c
            tile[r, c] = grad(src, y, act, i, j) if i < n_rows and j < n_cols else zero

    @cuda.jit(device=True)
    def mainloop(a, y, act, b, acc, rowsum, sum_rows):
        """acc = this thread's TM x TN patch of A B; rowsum = its TM rows' sums of A if sum_rows."""
        a_tile = cuda.shared.array((BM, BK), nb_type)
        b_tile = cuda.shared.array((BK, BN), nb_type)
        a_reg = cuda.local.array(TM, nb_type)
        b_reg = cuda.local.array(TN, nb_type)
        ty, tx = cuda.threadIdx.x // THREADS_N, cuda.threadIdx.x % THREADS_N
        row0, col0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
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
        i0 = cuda.blockIdx.y * BM + (cuda.threadIdx.x // THREADS_N) * TM
        j0 = cuda.blockIdx.x * BN + (cuda.threadIdx.x % THREADS_N) * TN
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
        sum_rows = want_rowsums and cuda.blockIdx.x == 0 and tx == 0
        mainloop(dy, y, act, b, acc, rowsum, sum_rows)
        i0 = cuda.blockIdx.y * BM + (cuda.threadIdx.x // THREADS_N) * TM
        j0 = cuda.blockIdx.x * BN + tx * TN
        for r in range(TM):
            i = i0 + r
            if i < out.shape[0]:
                if sum_rows:
                    rowsums[i] = rowsum[r]
                for c in range(TN):
                    if j0 + c < out.shape[1]:
                        out[i, j0 + c] = acc[r, c]

    return forward, backward


def _forward_kernel(version: int, dtype_str: str, tiles: Tiles):
    if version == 1:
        return _rung_1(dtype_str)[0]
    if version == 4:
        return _rung_4(dtype_str, tiles)[0]
    return (_rung_2 if version == 2 else _rung_3)(dtype_str, tiles)


def _backward_kernel(version: int, dtype_str: str, tiles: Tiles):
    return _rung_1(dtype_str)[1] if version == 1 else _rung_4(dtype_str, tiles)[1]


def _version(version: Any, versions: tuple[int, ...], what: str) -> int:
    if isinstance(version, bool) or version not in versions:
        raise ValueError(f"version must be one of {list(versions)} ({what}), got {version!r}")
    return version


def _tiles(tiles: Tiles | None, version: int, dtype: np.dtype) -> Tiles:
    if tiles is None:
        tiles = RUNG_TILES[version]
    if not isinstance(tiles, Tiles):
        raise ValueError(f"tiles must be a Tiles or None (the rung's own), got {type(tiles).__name__}")
    return tiles.check(dtype, version)


def _grid(rows: int, cols: int, tiles: Tiles) -> tuple[int, int]:
    """(column tiles, row tiles) of C, as cuda_c.cu's kernels take them."""
    grid = (-(-cols // tiles.bn), -(-rows // tiles.bm))
    if grid[1] > nbc.MAX_GRID_Y:
        raise ValueError(f"{rows} output rows need {grid[1]} row tiles of {tiles.bm}, more than "
                         f"gridDim.y allows ({nbc.MAX_GRID_Y})")
    return grid


def forward(x: Any, W: Any, b: Any, act: str | None = None, *, version: int = PRODUCTION_RUNG,
            tiles: Tiles | None = None) -> Any:
    """y = act(x W^T + b) (N, D_out): all the backward needs.

    x: (N, D_in), W: (D_out, D_in), b: (D_out,), one dtype (float32 or float64), C-contiguous.
    version: the rung (FORWARD_VERSIONS); tiles: its block geometry, None for RUNG_TILES[version].
    """
    version = _version(version, FORWARD_VERSIONS, "the forward ladder")
    code = act_code(act)
    x = nbc.check_array("x", x, (None, None))
    n, d_in = x.shape
    W = nbc.check_array("W", W, (None, d_in), x.dtype)
    d_out = W.shape[0]
    b = nbc.check_array("b", b, (d_out,), x.dtype)
    nbc.check_dims(N=n, D_in=d_in, D_out=d_out)
    tiles = _tiles(tiles, version, x.dtype)
    xp = nbc.array_module()
    y = xp.empty((n, d_out), x.dtype)
    kernel = _forward_kernel(version, x.dtype.str, tiles)
    # rungs 1-3 read W as it is (K-contiguous, as x); rung 4's GEMM body takes B = W^T, a view
    w = W.T if version == 4 else W
    nbc.launch(kernel, _grid(n, d_out, tiles), tiles.block(version), x, w, b, y, code)
    return y


def backward(dy: Any, x: Any, W: Any, y: Any | None, act: str | None = None, *, need_dx: bool = True,
             version: int = PRODUCTION_RUNG, tiles: Tiles | None = None) -> tuple[Any | None, Any, Any]:
    """dx = G W (N, D_in) (None unless need_dx), dW = G^T x (D_out, D_in), db = sum_n G (D_out,),
    with G = dy * act'(.) formed from y inside the GEMMs' loads. x, W, act: as ``forward`` took them,
    y: its output (not read, None is fine, when act is None); dy: (N, D_out). version: the rung
    (BACKWARD_VERSIONS); tiles: its block geometry, None for RUNG_TILES[version]."""
    version = _version(version, BACKWARD_VERSIONS, "the backward's rungs")
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
    tiles = _tiles(tiles, version, x.dtype)
    xp = nbc.array_module()
    kernel = _backward_kernel(version, x.dtype.str, tiles)
    block = tiles.block(version)
    dx = None
    if need_dx:
        dx = xp.empty((n, d_in), x.dtype)
        no_sums = nbc.placeholder(x.dtype, 1)
        nbc.launch(kernel, _grid(n, d_in, tiles), block, dy, y, code, W, dx, no_sums, False)
    dW, db = xp.empty((d_out, d_in), x.dtype), xp.empty(d_out, x.dtype)
    nbc.launch(kernel, _grid(d_out, d_in, tiles), block, dy.T, y.T, code, x, dW, db, True)
    return dx, dW, db
