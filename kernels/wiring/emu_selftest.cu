// Kernels that pin down the CPU emulator's semantics (tests/test_cuda_emulation.py). Plain CUDA C:
// on a GPU they give the same answers, which is how the emulator's model of CUDA is checked there.
//
// Two macros break a kernel on purpose, for the sanitizer demonstration:
//   SELFTEST_DROP_SYNC  block_reverse loses its __syncthreads(): a shared-memory data race (TSan).
//   SELFTEST_OOB_STORE  scale_by_two's tail guard is off by one: a store past the end (ASan).
#include "launch.cuh"

// The most threads a self-test block holds: shared tiles are sized for the largest CUDA block.
constexpr int SELFTEST_TILE = MAX_BLOCK_THREADS;

// y = x reversed within each block's tile: thread t reads what thread (blockDim - 1 - t) stored.
extern "C" __global__ void block_reverse(const float* __restrict__ x, float* __restrict__ y, int n) {
    __shared__ float tile[SELFTEST_TILE];
    const long long base = static_cast<long long>(blockIdx.x) * blockDim.x;
    const long long i = base + threadIdx.x;
    // The last block may be partial: it reverses only its `valid` elements.
    const long long valid = min(static_cast<long long>(blockDim.x), n - base);
    if (i < n) tile[threadIdx.x] = x[i];
#ifndef SELFTEST_DROP_SYNC
    __syncthreads();  // every store to tile precedes every load from it
#endif
    if (i < n) y[i] = tile[valid - 1 - threadIdx.x];
}

// y = 2 x, one thread per element with a tail guard.
extern "C" __global__ void scale_by_two(const float* __restrict__ x, float* __restrict__ y, int n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
#ifdef SELFTEST_OOB_STORE
    if (i <= n) y[i] = 2.0f * x[i < n ? i : 0];
#else
    if (i < n) y[i] = 2.0f * x[i];
#endif
}

// Threads at or above `active` return at once; the rest meet at three barriers, which must not wait
// for the departed. out[thread] = how many threads counted themselves in this block (= active),
// and stays untouched for the threads that returned. Per block, so shared memory must be too.
extern "C" __global__ void early_return(int* __restrict__ out, int active) {
    __shared__ int arrived;
    if (threadIdx.x == 0) arrived = 0;
    __syncthreads();
    if (static_cast<int>(threadIdx.x) >= active) return;
    atomicAdd(&arrived, 1);
    __syncthreads();
    const int seen = arrived;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = seen + static_cast<int>(blockIdx.x) * 1000;
}

// out = one warp intrinsic applied to x, chosen by op: 0 __shfl_sync, 1 __shfl_up_sync,
// 2 __shfl_down_sync, 3 __shfl_xor_sync (lane argument b, width w), 4 __ballot_sync(x != 0),
// 5 __any_sync, 6 __all_sync.
extern "C" __global__ void warp_op(const int* __restrict__ x, int* __restrict__ out, int op, int b, int w) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int v = x[i];
    int r = 0;
    switch (op) {
        case 0: r = __shfl_sync(FULL_MASK, v, b, w); break;
        case 1: r = __shfl_up_sync(FULL_MASK, v, b, w); break;
        case 2: r = __shfl_down_sync(FULL_MASK, v, b, w); break;
        case 3: r = __shfl_xor_sync(FULL_MASK, v, b, w); break;
        case 4: r = static_cast<int>(__ballot_sync(FULL_MASK, v != 0)); break;
        case 5: r = __any_sync(FULL_MASK, v != 0); break;
        case 6: r = __all_sync(FULL_MASK, v != 0); break;
    }
    out[i] = r;
}

// 8-byte shuffles: out = __shfl_down_sync(x, 1) in double precision.
extern "C" __global__ void shuffle_down_f64(const double* __restrict__ x, double* __restrict__ out) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    out[i] = __shfl_down_sync(FULL_MASK, x[i], 1);
}

// total += every x, by every thread of every block at once (float and double).
extern "C" __global__ void atomic_sum(const float* __restrict__ x, float* __restrict__ total,
                                      double* __restrict__ total64, int n) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        atomicAdd(total, x[i]);
        atomicAdd(total64, static_cast<double>(x[i]));
    }
}

// A kernel that refuses anything but a 1-D launch of whole warps (the reductions' rule).
extern "C" __global__ void whole_warps_only(int* __restrict__ out) {
    require_whole_warps();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}
