// Warp and block sums: shuffles within a warp, one shared slot per warp across the block.
#pragma once
#include "launch.cuh"

// Butterfly sum: after log2(32) = 5 exchanges every lane holds the warp's total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int lanes = WARP_SIZE / 2; lanes > 0; lanes /= 2) v += __shfl_xor_sync(FULL_MASK, v, lanes);
    return v;
}

// Sum of v over the block, valid on thread 0. Every thread of the block must call it (it holds two
// __syncthreads()), after require_whole_warps(). The order of additions depends only on blockDim,
// so the result is deterministic (no atomics).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_totals[MAX_WARPS];
    const unsigned lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    v = warp_sum(v);
    if (lane == 0) warp_totals[warp] = v;
    __syncthreads();  // every warp's total is stored before warp 0 reads them
    if (warp == 0) v = warp_sum(lane < blockDim.x / WARP_SIZE ? warp_totals[lane] : 0.0f);
    __syncthreads();  // warp 0 has read warp_totals before a next call (the next row) overwrites it
    return v;
}
