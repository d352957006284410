// The linear layer in CUDA C: y = act(x W^T + b) and its backward, with the elementwise steps fused
// into the GEMMs. NumPy reference: minivae.layers.linear_act_forward / linear_act_backward (the numpy
// backend's op); derivations in docs/derivations.md, "Linear layer" and "Activations".
//
// Shapes (float32, row-major, each matrix with its own leading dimension ld >= its width, so a
// row-strided view needs no copy): x (N, D_in), W (D_out, D_in) (PyTorch's layout), b (D_out,),
// y (N, D_out). As GEMMs C = A B with A (M x K) and B (K x N):
//   forward  y  = act(x W^T + b)  M = N,     N = D_out, K = D_in   both operands K-contiguous
//   backward dx = G W             M = N,     N = D_in,  K = D_out  G K-contiguous, W N-contiguous
//            dW = G^T x           M = D_out, N = D_in,  K = N      both operands K-major (M/N-contiguous)
//            db = column sums of G, accumulated by the dW kernel as it streams G through
// where G = dy * act'(pre-activation) is formed as each tile of dy is loaded and never stored.
//
// What the backward needs from the forward: the output y alone, for every activation. relu, leaky
// relu (slope > 0, so y > 0 iff x > 0), tanh (1 - y^2) and sigmoid (y (1 - y)) are textbook; elu:
// alpha e^x = y + alpha for x <= 0; softplus: sigmoid(x) = 1 - e^-y = -expm1(-y), since e^y = 1 + e^x,
// and its relative error is at most y's (y / (e^y - 1) <= 1), so the pre-activation is never kept.
//
// The forward is an optimisation ladder, its rungs numbered and named as in kernels/linear/__init__.py's
// RUNGS (kernels/linear/cuda_c.py dispatches on the number; tests/test_kernels_linear.py holds this
// list, RUNGS and kernels/linear/numba_cuda.py's rungs to the same words):
//   1 naive: one thread per output, its dot product read straight from global memory
//   2 shared-memory tiles: each operand element loaded from global memory once per tile
//   3 1-D register tiles: a column of outputs per thread, one shared load feeds several FMAs
//   4 2-D register tiles: a patch of outputs per thread, operands reused from registers both ways
// Here rung 2 stages 16 x 16 tiles (each global load used 16 times), rung 3 gives a thread 8 outputs
// of a column (8 FMAs per shared load of W), and rung 4, the production one, 8 x 8 outputs with
// float4 global and shared loads and stores. Every rung ends in the same fused epilogue: add the
// bias, apply the activation, store y. The backward has rung 1 (naive) and rung 4; rungs 2 and 3
// would teach nothing the forward does not. The file reads: what every rung shares, then the rungs
// from 1 to 4, each after the helpers it is the first to use (the k-slice loop before rung 2, the
// k-major tile loaders before rung 3).
#include "launch.cuh"

// ---- activations -------------------------------------------------------------------------------
// Codes as kernels/linear/__init__.py's ACT_CODES (tests/test_kernels_linear.py compares them).
constexpr int ACT_NONE = 0, ACT_RELU = 1, ACT_LEAKY_RELU = 2, ACT_ELU = 3, ACT_TANH = 4, ACT_SIGMOID = 5,
              ACT_SOFTPLUS = 6;
// The backend table passes only the activation's name, so its parameter is minivae.layers' default.
constexpr float LEAKY_SLOPE = 0.01f;
constexpr float ELU_ALPHA = 1.0f;

// act(v), in the stable forms of minivae/layers.py (exp only ever of -|v| or of v <= 0).
__device__ __forceinline__ float activate(float v, int act) {
    switch (act) {
        case ACT_RELU: return v < 0.0f ? 0.0f : v;  // NaN stays NaN, as with np.maximum
        case ACT_LEAKY_RELU: return v > 0.0f ? v : v * LEAKY_SLOPE;
        case ACT_ELU: return v > 0.0f ? v : ELU_ALPHA * expm1f(v);
        case ACT_TANH: return tanhf(v);
        case ACT_SIGMOID: {
            const float e = expf(-fabsf(v));
            return v >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
        }
        case ACT_SOFTPLUS: return fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v)));
        default: return v;
    }
}

// G = dy * act'(x), from the output y = act(x) (see the top of the file for why y suffices).
__device__ __forceinline__ float act_grad(float dy, float y, int act) {
    switch (act) {
        case ACT_RELU: return y > 0.0f ? dy : 0.0f;
        case ACT_LEAKY_RELU: return y > 0.0f ? dy : dy * LEAKY_SLOPE;
        case ACT_ELU: return y > 0.0f ? dy : dy * (y + ELU_ALPHA);
        case ACT_TANH: return dy * (1.0f - y * y);
        case ACT_SIGMOID: return dy * y * (1.0f - y);
        case ACT_SOFTPLUS: return dy * -expm1f(-y);
        default: return dy;
    }
}

// ---- launch checks -------------------------------------------------------------------------------
// An unknown code would silently compute the identity.
__device__ __forceinline__ void require_act(int act) {
    if (act < ACT_NONE || act > ACT_SOFTPLUS) __trap();
}

// A tiled kernel indexes its tile from a block of exactly (bx, by, 1) threads, and each block writes
// one tile_rows x tile_cols tile of C: any other block shape would index wrongly, and a grid that
// does not cover the rows x cols of C would leave outputs unwritten. Blocks past C write nothing.
__device__ __forceinline__ void require_tiled_launch(unsigned bx, unsigned by, int tile_rows, int tile_cols,
                                                     int rows, int cols) {
    if (blockDim.x != bx || blockDim.y != by || blockDim.z != 1 || gridDim.z != 1) __trap();
    if (static_cast<long long>(gridDim.y) * tile_rows < rows || static_cast<long long>(gridDim.x) * tile_cols < cols)
        __trap();
}

// ---- operands ------------------------------------------------------------------------------------
__device__ __forceinline__ long long offset(int row, int col, int ld) {
    return static_cast<long long>(row) * ld + col;
}

// float4 access to row r at column c (a multiple of 4) needs a 16-byte aligned base and ld % 4 == 0.
__device__ __forceinline__ bool vec4_aligned(const float* p, int ld) {
    return reinterpret_cast<unsigned long long>(p) % 16 == 0 && ld % 4 == 0;
}

// p[r][c..c+3] with zeros outside rows x cols (a zero adds nothing to a dot product, so the tails of
// a tile need no other care): one float4 load where vec (vec4_aligned) and the chunk lies inside.
__device__ __forceinline__ float4 load4_or_zero(const float* p, int ld, int r, int c, int rows, int cols,
                                                bool vec) {
    if (r >= rows) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float* row = p + static_cast<long long>(r) * ld;
    if (vec && c + 3 < cols) return *reinterpret_cast<const float4*>(row + c);
    return make_float4(c < cols ? row[c] : 0.0f, c + 1 < cols ? row[c + 1] : 0.0f,
                       c + 2 < cols ? row[c + 2] : 0.0f, c + 3 < cols ? row[c + 3] : 0.0f);
}

// A matrix read as it is. Operand sources give one element (load, unguarded) or a guarded chunk of 4.
struct Matrix {
    const float* p;
    int ld;
    __device__ float load(int r, int c) const { return p[offset(r, c, ld)]; }
    __device__ float4 chunk(int r, int c, int rows, int cols, bool vec) const {
        return load4_or_zero(p, ld, r, c, rows, cols, vec);
    }
    __device__ bool vec4_ok() const { return vec4_aligned(p, ld); }
};

// G = dy * act'(.), formed from dy and the forward's output y as it is loaded: the backward's
// elementwise step costs no pass and no array of its own. With no activation y is not read. Outside
// the matrix dy = y = 0, and act_grad(0, 0) = 0 for every activation.
struct ActGrad {
    const float* dy;
    int ld_dy;
    const float* y;
    int ld_y;
    int act;
    __device__ float load(int r, int c) const {
        const float d = dy[offset(r, c, ld_dy)];
        return act == ACT_NONE ? d : act_grad(d, y[offset(r, c, ld_y)], act);
    }
    __device__ float4 chunk(int r, int c, int rows, int cols, bool vec) const {
        const float4 g = load4_or_zero(dy, ld_dy, r, c, rows, cols, vec);
        if (act == ACT_NONE) return g;
        const float4 s = load4_or_zero(y, ld_y, r, c, rows, cols, vec);
        return make_float4(act_grad(g.x, s.x, act), act_grad(g.y, s.y, act), act_grad(g.z, s.z, act),
                           act_grad(g.w, s.w, act));
    }
    __device__ bool vec4_ok() const { return vec4_aligned(dy, ld_dy) && (act == ACT_NONE || vec4_aligned(y, ld_y)); }
};

// src(r, c) inside rows x cols, else 0.
template <class Src>
__device__ __forceinline__ float load_or_zero(const Src& src, int r, int c, int rows, int cols) {
    return r < rows && c < cols ? src.load(r, c) : 0.0f;
}

// The fused epilogue of the forward: bias, then activation.
struct BiasAct {
    const float* b;
    int act;
    __device__ float operator()(float v, int col) const { return activate(v + b[col], act); }
};

// The backward's GEMMs store their sums as they are.
struct Identity {
    __device__ float operator()(float v, int) const { return v; }
};

// ---- rung 1: naive ---------------------------------------------------------------------------------
// 1: one thread per output y[m][n], its dot product read straight from global memory: 2 loads per FMA.
// threadIdx.x runs along n, so a warp's stores coalesce; its loads cannot: x and W are both
// K-contiguous, and no mapping of threads walks both along k. Rung 2 fixes that with shared memory.
// Any 2-D block; the grid must cover y.
extern "C" __global__ void linear_forward_1(const float* __restrict__ x, const float* __restrict__ W,
                                            const float* __restrict__ b, float* __restrict__ y, int n_rows,
                                            int d_in, int d_out, int ldx, int ldw, int ldy, int act) {
    require_tiled_launch(blockDim.x, blockDim.y, blockDim.y, blockDim.x, n_rows, d_out);
    require_act(act);
    const int m = blockIdx.y * blockDim.y + threadIdx.y, n = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= n_rows || n >= d_out) return;
    float acc = 0.0f;
    for (int k = 0; k < d_in; ++k) acc += x[offset(m, k, ldx)] * W[offset(n, k, ldw)];
    y[offset(m, n, ldy)] = BiasAct{b, act}(acc, n);
}

// 1: dx = G W, one thread per dx[m][i]; G recomputed for every output (rung 4 forms it once per tile).
extern "C" __global__ void linear_backward_dx_1(const float* __restrict__ dy, const float* __restrict__ y,
                                                const float* __restrict__ W, float* __restrict__ dx, int n_rows,
                                                int d_in, int d_out, int ld_dy, int ld_y, int ldw, int ld_dx,
                                                int act) {
    require_tiled_launch(blockDim.x, blockDim.y, blockDim.y, blockDim.x, n_rows, d_in);
    require_act(act);
    const int m = blockIdx.y * blockDim.y + threadIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= n_rows || i >= d_in) return;
    const ActGrad g{dy, ld_dy, y, ld_y, act};
    float acc = 0.0f;
    for (int o = 0; o < d_out; ++o) acc += g.load(m, o) * W[offset(o, i, ldw)];
    dx[offset(m, i, ld_dx)] = acc;
}

// 1: dW = G^T x, one thread per dW[o][i]; the threads of column i = 0 also sum db[o] = sum_m G[m][o]
// from the very G values they load (no second pass over dy).
extern "C" __global__ void linear_backward_dw_1(const float* __restrict__ dy, const float* __restrict__ y,
                                                const float* __restrict__ x, float* __restrict__ dW,
                                                float* __restrict__ db, int n_rows, int d_in, int d_out, int ld_dy,
                                                int ld_y, int ldx, int ld_dw, int act) {
    require_tiled_launch(blockDim.x, blockDim.y, blockDim.y, blockDim.x, d_out, d_in);
    require_act(act);
    const int o = blockIdx.y * blockDim.y + threadIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= d_out || i >= d_in) return;
    const ActGrad g{dy, ld_dy, y, ld_y, act};
    float acc = 0.0f, g_sum = 0.0f;
    for (int m = 0; m < n_rows; ++m) {
        const float gm = g.load(m, o);
        acc += gm * x[offset(m, i, ldx)];
        g_sum += gm;
    }
    dW[offset(o, i, ld_dw)] = acc;
    if (i == 0) db[o] = g_sum;
}

// ---- rung 2: shared-memory tiles -------------------------------------------------------------------
// 16 x 16 threads, one output each: 256 threads (8 warps) and 2 x 16 x 17 x 4 B = 2.2 KB of shared
// memory per block, so up to 8 blocks share an SM on sm_80/sm_90 (2048 threads each). A 32 x 32
// tile would reuse each load twice as often but needs 1024 threads, whose every barrier waits on
// 32 warps.
constexpr int R2_TILE = 16;

// The shape every tiled kernel shares: stage a BK-slice of both operands in shared memory, wait,
// multiply it into the accumulators, wait again before the next slice overwrites it.
template <int BK, class Load, class Multiply>
__device__ __forceinline__ void for_each_k_slice(int K, Load load, Multiply multiply) {
    for (int k0 = 0; k0 < K; k0 += BK) {
        load(k0);
        __syncthreads();  // the whole slice is in shared memory before anyone reads it
        multiply();
        __syncthreads();  // everyone has read the slice before the next one overwrites it
    }
}

// 2: each block stages a 16 x 16 slice of x and of W in shared memory, loaded along k (coalesced:
// a half-warp reads 64 contiguous bytes), then every value is read 16 times from shared memory.
// W's tile is read down a column (Ws[tx][k]); one float of padding per row puts the 16 threads of
// a half-warp on 16 distinct banks (stride 17 words) instead of 2.
extern "C" __global__ void linear_forward_2(const float* __restrict__ x, const float* __restrict__ W,
                                            const float* __restrict__ b, float* __restrict__ y, int n_rows,
                                            int d_in, int d_out, int ldx, int ldw, int ldy, int act) {
    require_tiled_launch(R2_TILE, R2_TILE, R2_TILE, R2_TILE, n_rows, d_out);
    require_act(act);
    __shared__ float xs[R2_TILE][R2_TILE + 1], ws[R2_TILE][R2_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int m0 = blockIdx.y * R2_TILE, n0 = blockIdx.x * R2_TILE;
    const Matrix xm{x, ldx}, wm{W, ldw};
    float acc = 0.0f;
    for_each_k_slice<R2_TILE>(
        d_in,
        [&](int k0) {
            xs[ty][tx] = load_or_zero(xm, m0 + ty, k0 + tx, n_rows, d_in);
            ws[ty][tx] = load_or_zero(wm, n0 + ty, k0 + tx, d_out, d_in);
        },
        [&] {
#pragma unroll
            for (int k = 0; k < R2_TILE; ++k) acc += xs[ty][k] * ws[tx][k];
        });
    if (m0 + ty < n_rows && n0 + tx < d_out) y[offset(m0 + ty, n0 + tx, ldy)] = BiasAct{b, act}(acc, n0 + tx);
}

// ---- the k-major shared tiles of rungs 3 and 4 -------------------------------------------------
// Both operands are staged as tile[k][w] (w: the row of A or the column of B), so the inner product
// reads one k-row of each tile. 4 floats of padding per row keep float4 rows 16-byte aligned and
// make the transposing stores of load_rows conflict-free (see there).
constexpr int TILE_PAD = 4;

// tile[k][w] = src(row0 + w, k0 + k) for a K-contiguous src (rows x K): the tile is the transpose of
// the slice. With VEC, 4 consecutive k of one row are one float4 load where the operand is aligned
// and the chunk lies inside K; without, one element per thread and load. Bank check for
// the float4 path with BK = 8, W = 64: a warp stores rows w..w+15 at k = 0..7; tile[k][w] lies at word
// k (W + 4) + w, bank (4 k + w) mod 32 at k < 4 and 16 + ... at k >= 4: 32 distinct banks.
template <int W, int BK, int THREADS, bool VEC, class Src>
__device__ __forceinline__ void load_rows(const Src& src, int row0, int k0, int rows, int K,
                                          float (*tile)[W + TILE_PAD]) {
    static_assert(W * BK % ((VEC ? 4 : 1) * THREADS) == 0 && BK % 4 == 0, "whole chunks per thread");
    if constexpr (VEC) {
        const bool vec = src.vec4_ok();
#pragma unroll
        for (int i = 0; i < W * BK / (4 * THREADS); ++i) {
            const int e = threadIdx.x + i * THREADS, w = e / (BK / 4), k = e % (BK / 4) * 4;
            const float4 v = src.chunk(row0 + w, k0 + k, rows, K, vec);
            tile[k][w] = v.x;
            tile[k + 1][w] = v.y;
            tile[k + 2][w] = v.z;
            tile[k + 3][w] = v.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < W * BK / THREADS; ++i) {
            const int e = threadIdx.x + i * THREADS, w = e / BK, k = e % BK;  // consecutive threads: consecutive k
            tile[k][w] = load_or_zero(src, row0 + w, k0 + k, rows, K);
        }
    }
}

// tile[k][w] = src(k0 + k, col0 + w) for a K-major src (K x cols): a slice copied as it is, 4
// consecutive columns per float4 load and shared store where aligned and inside cols.
template <int W, int BK, int THREADS, class Src>
__device__ __forceinline__ void load_cols(const Src& src, int k0, int col0, int K, int cols,
                                          float (*tile)[W + TILE_PAD]) {
    static_assert(W * BK % (4 * THREADS) == 0 && W % 4 == 0, "whole float4 chunks per thread");
    const bool vec = src.vec4_ok();
#pragma unroll
    for (int i = 0; i < W * BK / (4 * THREADS); ++i) {
        const int e = threadIdx.x + i * THREADS, k = e / (W / 4), w = e % (W / 4) * 4;
        *reinterpret_cast<float4*>(&tile[k][w]) = src.chunk(k0 + k, col0 + w, K, cols, vec);
    }
}

// ---- rung 3: 1-D register blocking -----------------------------------------------------------------
// A 64 x 64 tile of y per block (the same tile as rung 4, so the two differ only in the register
// blocking), a k-slice of 8, and 8 outputs per thread down a column: 512 threads, 16 warps, 2 x 8 x
// 68 x 4 B = 4.3 KB of shared memory; 8 accumulators keep it near 40 registers, so 4 blocks (the
// 2048-thread limit) fit an SM on sm_80/sm_90. Each slice is one float per thread per operand.
constexpr int R3_BM = 64, R3_BN = 64, R3_BK = 8, R3_TM = 8;
constexpr int R3_THREADS = R3_BM / R3_TM * R3_BN;

// 3: each thread keeps 8 outputs of one column in registers; per k it loads one value of W's tile
// and reuses it for 8 FMAs (rung 2: 2 shared loads per FMA; here 9 per 8). A warp is 32 consecutive
// columns of one row group: its reads of x's tile are broadcasts, its reads of W's are conflict-free.
extern "C" __global__ __launch_bounds__(R3_THREADS) void linear_forward_3(
    const float* __restrict__ x, const float* __restrict__ W, const float* __restrict__ b, float* __restrict__ y,
    int n_rows, int d_in, int d_out, int ldx, int ldw, int ldy, int act) {
    require_tiled_launch(R3_THREADS, 1, R3_BM, R3_BN, n_rows, d_out);
    require_act(act);
    __shared__ __align__(16) float xs[R3_BK][R3_BM + TILE_PAD], ws[R3_BK][R3_BN + TILE_PAD];
    const int col = threadIdx.x % R3_BN, row = threadIdx.x / R3_BN * R3_TM;
    const int m0 = blockIdx.y * R3_BM, n0 = blockIdx.x * R3_BN;
    float acc[R3_TM] = {};
    for_each_k_slice<R3_BK>(
        d_in,
        [&](int k0) {
            load_rows<R3_BM, R3_BK, R3_THREADS, false>(Matrix{x, ldx}, m0, k0, n_rows, d_in, xs);
            load_rows<R3_BN, R3_BK, R3_THREADS, false>(Matrix{W, ldw}, n0, k0, d_out, d_in, ws);
        },
        [&] {
#pragma unroll
            for (int k = 0; k < R3_BK; ++k) {
                const float w = ws[k][col];
#pragma unroll
                for (int i = 0; i < R3_TM; ++i) acc[i] += xs[k][row + i] * w;
            }
        });
    const BiasAct epilogue{b, act};
#pragma unroll
    for (int i = 0; i < R3_TM; ++i)
        if (m0 + row + i < n_rows && n0 + col < d_out)
            y[offset(m0 + row + i, n0 + col, ldy)] = epilogue(acc[i], n0 + col);
}

// ---- rung 4: 2-D register blocking + float4 (production) -------------------------------------------
// A 64 x 64 tile of C per block, k-slices of 8, 8 x 8 outputs per thread: 64 threads (2 warps).
// Registers: 64 accumulators + 16 operands + addressing; __launch_bounds__(64, 8) caps them at
// 65536 / (64 x 8) = 128, so 8 blocks (16 warps) fit an SM on sm_80/sm_90, each thread with 64
// independent FMAs per k to hide latency (ILP in place of occupancy). Shared memory: 2 x 8 x 68 x
// 4 B = 4.3 KB per block, far below the limit. The tile is 64, not 128, because minivae's layers are
// small (batch 128, widths 20 to 784): 128-tiles would leave most of an H100's 132 SMs idle.
// Per k-slice a block loads 2 x 64 x 8 floats from global memory for 64 x 64 x 8 FMAs (32 per float).
constexpr int R4_BM = 64, R4_BN = 64, R4_BK = 8, R4_TM = 8, R4_TN = 8;
constexpr int R4_COLUMN_THREADS = R4_BN / R4_TN;  // threads across a tile row
constexpr int R4_THREADS = R4_BM / R4_TM * R4_COLUMN_THREADS;
constexpr int R4_MIN_BLOCKS = 8;  // per SM, for __launch_bounds__: at most 128 registers
static_assert(R4_TM % 4 == 0 && R4_TN == 8, "float4 reads of the tiles; two column groups of 4");

using R4TileA = float[R4_BM + TILE_PAD];
using R4TileB = float[R4_BN + TILE_PAD];

// Column j (0..7) of thread tx's outputs: two groups of 4, at tx*4 and at BN/2 + tx*4. A quarter-warp's
// float4 reads of a B-tile row then cover 128 contiguous bytes (no bank conflict), and the stores of
// y are float4 too. Rows are 8 consecutive ones, ty*8 .. ty*8+7 (their reads are broadcasts).
__device__ __forceinline__ int r4_col(int tx, int j) { return j / 4 * (R4_BN / 2) + tx * 4 + j % 4; }

// acc += the outer products of one k-slice: per k, 2 float4 shared loads of A and 2 of B for 64 FMAs.
// With SUM_A, a_sum[i] += A's row-i values too (the dW kernel's db).
template <bool SUM_A>
__device__ __forceinline__ void r4_multiply(const R4TileA* a_tile, const R4TileB* b_tile, int ty, int tx,
                                            float (&acc)[R4_TM][R4_TN], float (&a_sum)[R4_TM]) {
#pragma unroll
    for (int k = 0; k < R4_BK; ++k) {
        float a[R4_TM], bv[R4_TN];
#pragma unroll
        for (int i = 0; i < R4_TM; i += 4) {
            const float4 v = *reinterpret_cast<const float4*>(&a_tile[k][ty * R4_TM + i]);
            a[i] = v.x, a[i + 1] = v.y, a[i + 2] = v.z, a[i + 3] = v.w;
        }
#pragma unroll
        for (int j = 0; j < R4_TN; j += 4) {
            const float4 v = *reinterpret_cast<const float4*>(&b_tile[k][r4_col(tx, j)]);
            bv[j] = v.x, bv[j + 1] = v.y, bv[j + 2] = v.z, bv[j + 3] = v.w;
        }
#pragma unroll
        for (int i = 0; i < R4_TM; ++i) {
            if (SUM_A) a_sum[i] += a[i];
#pragma unroll
            for (int j = 0; j < R4_TN; ++j) acc[i][j] += a[i] * bv[j];
        }
    }
}

// C[m0 + row][n0 + col] = epilogue(acc, col) for the thread's 8 x 8 outputs inside rows x cols; a
// group of 4 columns is one float4 store where C is aligned and the group lies inside cols.
template <class Epilogue>
__device__ __forceinline__ void r4_store(float* C, int ldc, int rows, int cols, int m0, int n0, int ty, int tx,
                                         const float (&acc)[R4_TM][R4_TN], Epilogue epilogue) {
    const bool vec = vec4_aligned(C, ldc);
#pragma unroll
    for (int i = 0; i < R4_TM; ++i) {
        const int r = m0 + ty * R4_TM + i;
        if (r >= rows) break;
#pragma unroll
        for (int j = 0; j < R4_TN; j += 4) {
            const int c = n0 + r4_col(tx, j);
            if (vec && c + 3 < cols) {
                *reinterpret_cast<float4*>(C + offset(r, c, ldc)) =
                    make_float4(epilogue(acc[i][j], c), epilogue(acc[i][j + 1], c + 1), epilogue(acc[i][j + 2], c + 2),
                                epilogue(acc[i][j + 3], c + 3));
            } else {
#pragma unroll
                for (int q = 0; q < 4; ++q)
                    if (c + q < cols) C[offset(r, c + q, ldc)] = epilogue(acc[i][j + q], c + q);
            }
        }
    }
}

// 4: y = act(x W^T + b), both operands K-contiguous and staged transposed (load_rows).
extern "C" __global__ __launch_bounds__(R4_THREADS, R4_MIN_BLOCKS) void linear_forward_4(
    const float* __restrict__ x, const float* __restrict__ W, const float* __restrict__ b, float* __restrict__ y,
    int n_rows, int d_in, int d_out, int ldx, int ldw, int ldy, int act) {
    require_tiled_launch(R4_THREADS, 1, R4_BM, R4_BN, n_rows, d_out);
    require_act(act);
    __shared__ __align__(16) float a_tile[R4_BK][R4_BM + TILE_PAD], b_tile[R4_BK][R4_BN + TILE_PAD];
    const int ty = threadIdx.x / R4_COLUMN_THREADS, tx = threadIdx.x % R4_COLUMN_THREADS;
    const int m0 = blockIdx.y * R4_BM, n0 = blockIdx.x * R4_BN;
    float acc[R4_TM][R4_TN] = {}, no_sum[R4_TM];
    for_each_k_slice<R4_BK>(
        d_in,
        [&](int k0) {
            load_rows<R4_BM, R4_BK, R4_THREADS, true>(Matrix{x, ldx}, m0, k0, n_rows, d_in, a_tile);
            load_rows<R4_BN, R4_BK, R4_THREADS, true>(Matrix{W, ldw}, n0, k0, d_out, d_in, b_tile);
        },
        [&] { r4_multiply<false>(a_tile, b_tile, ty, tx, acc, no_sum); });
    r4_store(y, ldy, n_rows, d_out, m0, n0, ty, tx, acc, BiasAct{b, act});
}

// 4: dx = G W. G (K-contiguous) is formed as its slice is loaded and staged transposed; W's slice
// (N-contiguous) is copied as it is.
extern "C" __global__ __launch_bounds__(R4_THREADS, R4_MIN_BLOCKS) void linear_backward_dx_4(
    const float* __restrict__ dy, const float* __restrict__ y, const float* __restrict__ W, float* __restrict__ dx,
    int n_rows, int d_in, int d_out, int ld_dy, int ld_y, int ldw, int ld_dx, int act) {
    require_tiled_launch(R4_THREADS, 1, R4_BM, R4_BN, n_rows, d_in);
    require_act(act);
    __shared__ __align__(16) float a_tile[R4_BK][R4_BM + TILE_PAD], b_tile[R4_BK][R4_BN + TILE_PAD];
    const int ty = threadIdx.x / R4_COLUMN_THREADS, tx = threadIdx.x % R4_COLUMN_THREADS;
    const int m0 = blockIdx.y * R4_BM, n0 = blockIdx.x * R4_BN;
    float acc[R4_TM][R4_TN] = {}, no_sum[R4_TM];
    for_each_k_slice<R4_BK>(
        d_out,
        [&](int k0) {
            load_rows<R4_BM, R4_BK, R4_THREADS, true>(ActGrad{dy, ld_dy, y, ld_y, act}, m0, k0, n_rows, d_out, a_tile);
            load_cols<R4_BN, R4_BK, R4_THREADS>(Matrix{W, ldw}, k0, n0, d_out, d_in, b_tile);
        },
        [&] { r4_multiply<false>(a_tile, b_tile, ty, tx, acc, no_sum); });
    r4_store(dx, ld_dx, n_rows, d_in, m0, n0, ty, tx, acc, Identity{});
}

// 4: dW = G^T x and db. Both slices are K-major (rows of dy and of x) and copied as they are. The
// blocks of the first column of tiles (blockIdx.x == 0) stream every row of G[:, m0:m0+64] through
// their A-tiles anyway, so they also sum its columns: db comes out of the same loads, with 8 extra
// adds per k in those blocks only (a block-uniform branch), no atomics and no pass of its own.
extern "C" __global__ __launch_bounds__(R4_THREADS, R4_MIN_BLOCKS) void linear_backward_dw_4(
    const float* __restrict__ dy, const float* __restrict__ y, const float* __restrict__ x, float* __restrict__ dW,
    float* __restrict__ db, int n_rows, int d_in, int d_out, int ld_dy, int ld_y, int ldx, int ld_dw, int act) {
    require_tiled_launch(R4_THREADS, 1, R4_BM, R4_BN, d_out, d_in);
    require_act(act);
    __shared__ __align__(16) float a_tile[R4_BK][R4_BM + TILE_PAD], b_tile[R4_BK][R4_BN + TILE_PAD];
    const int ty = threadIdx.x / R4_COLUMN_THREADS, tx = threadIdx.x % R4_COLUMN_THREADS;
    const int m0 = blockIdx.y * R4_BM, n0 = blockIdx.x * R4_BN;
    float acc[R4_TM][R4_TN] = {}, g_sum[R4_TM] = {};
    const auto load = [&](int k0) {
        load_cols<R4_BM, R4_BK, R4_THREADS>(ActGrad{dy, ld_dy, y, ld_y, act}, k0, m0, n_rows, d_out, a_tile);
        load_cols<R4_BN, R4_BK, R4_THREADS>(Matrix{x, ldx}, k0, n0, n_rows, d_in, b_tile);
    };
    const bool sums_db = blockIdx.x == 0;
    if (sums_db)
        for_each_k_slice<R4_BK>(n_rows, load, [&] { r4_multiply<true>(a_tile, b_tile, ty, tx, acc, g_sum); });
    else
        for_each_k_slice<R4_BK>(n_rows, load, [&] { r4_multiply<false>(a_tile, b_tile, ty, tx, acc, g_sum); });
    r4_store(dW, ld_dw, d_out, d_in, m0, n0, ty, tx, acc, Identity{});
    if (sums_db && tx == 0) {  // every thread of row group ty holds the same sums; one stores them
#pragma unroll
        for (int i = 0; i < R4_TM; ++i)
            if (m0 + ty * R4_TM + i < d_out) db[m0 + ty * R4_TM + i] = g_sum[i];
    }
}
