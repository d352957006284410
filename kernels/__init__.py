"""Hand-written kernels for minivae's costly ops (shipped as ``minivae.kernels``); a map of every op
and variant is ``kernels/README.md``.

One folder per op of the backend table (``minivae.backends.Backend``): ``linear/``, ``latent/``,
``bernoulli/``, ``importance_weights/``, ``adam/``. Every folder holds the same files, one per
variant: ``numba_cpu.py`` (``@njit``), ``numba_cuda.py`` (``@cuda.jit``), ``cuda_c.cu`` (CUDA C++)
with ``cuda_c.py``, its launcher. The NumPy reference in ``minivae`` is the truth they are all tested
against. ``common/`` holds device code several ops share (Philox, block reductions, vectorised
float32 math); ``wiring/`` holds what is not a kernel: the backends that map the table onto the
folders, CUDA C loading (``wiring/cuda_load.py``: through CuPy on a GPU, or on the CPU through the
emulator, ``wiring/emulate.py`` with ``wiring/cuda_emu.h``), and Numba's thread setup.
"""
