"""Hand-written kernels for minivae's costly ops (shipped as ``minivae.kernels``).

Each op family lives in its own folder with its CUDA C, Numba CUDA and Numba CPU forms; the NumPy
reference in ``minivae`` is the truth they are all tested against.

CUDA C kernels (``<op>/<op>.cu``, ``extern "C" __global__``) are plain CUDA C++ that nvcc and
``cupy.RawModule`` compile as they are; ``_cuda.load(path, backend)`` runs them through CuPy on a GPU
(``backend="cupy"``) or, in CI, on the CPU (``backend="emulate"``): ``common/cuda_emu.h`` lets g++ compile
the same source and run it one block at a time, a host thread per CUDA thread (``_emulate.py`` builds
and loads it). Every launch checks its arguments against the kernel's C signature first.
"""
