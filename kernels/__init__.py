"""Hand-written kernels for minivae's costly ops (shipped as ``minivae.kernels``).

Each op family lives in its own folder with its CUDA C, Numba CUDA and Numba CPU forms; the NumPy
reference in ``minivae`` is the truth they are all tested against.
"""
