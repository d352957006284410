// Launch checks shared by minivae's CUDA C kernels. A kernel written for a 1-D launch, or for whole
// warps, refuses any other shape with __trap() (a launch error on the host) instead of computing a
// silently wrong result; the host-side launchers check the same rules first and name the argument.
#pragma once

// Lanes per warp on every NVIDIA GPU to date; the full-mask warp shuffles rely on it.
constexpr int WARP_SIZE = 32;
// All 32 lanes: the only mask the kernels use (and the only one the CPU emulator supports).
constexpr unsigned FULL_MASK = 0xffffffffu;
// CUDA's limit on threads per block, hence on warps per block (and shared slots per warp below).
constexpr int MAX_BLOCK_THREADS = 1024;
constexpr int MAX_WARPS = MAX_BLOCK_THREADS / WARP_SIZE;

// The kernels index with the x components only: a y or z extent would run every element several
// times at once, each copy racing the others on the same output.
__device__ __forceinline__ void require_1d_launch() {
    if (blockDim.y != 1 || blockDim.z != 1 || gridDim.y != 1 || gridDim.z != 1) __trap();
}

// Block reductions shuffle with FULL_MASK, so every warp of the block must be complete.
__device__ __forceinline__ void require_whole_warps() {
    require_1d_launch();
    if (blockDim.x % WARP_SIZE != 0) __trap();
}
