"""linear kernels: CUDA C (.cu), Numba CUDA and Numba CPU forms of the same op."""
