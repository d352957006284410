"""The block reduction the Numba CUDA kernels share (the twin of ``common/reduce.cuh``).

Importing this module imports ``numba.cuda``: only the Numba CUDA kernel files import it, after the
target (a GPU or the simulator) has been chosen.
"""

from __future__ import annotations

from numba import cuda


@cuda.jit(device=True)
def block_sum(v, scratch):
    """Sum of ``v`` over the block, returned to every thread. ``scratch``: a shared array of at least
    blockDim.x elements (the caller declares it, in its dtype). Every thread of the block must call
    it. A tree in shared memory: the simulator has no warp shuffles, and this form takes any block
    size (the upper half folds onto the lower half of the next power of two). The order of the
    additions depends only on blockDim, so the result is deterministic."""
    tid = cuda.threadIdx.x
    n = cuda.blockDim.x
    scratch[tid] = v
    cuda.syncthreads()
    half = 1
    while half < n:
        half *= 2
    half //= 2
    while half > 0:
        if tid < half and tid + half < n:
            scratch[tid] += scratch[tid + half]
        cuda.syncthreads()
        half //= 2
    total = scratch[0]
    cuda.syncthreads()  # everyone has read scratch[0] before a next call (the next row) overwrites it
    return total
