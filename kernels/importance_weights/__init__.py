"""The importance-weighted bound's op (reference: ``minivae.iwae.importance_weights``): per example,
the log-mean-exp of K log-weights and their softmax. Numba CPU in ``numba_cpu.py``, Numba CUDA in
``numba_cuda.py``, CUDA C in ``cuda_c.cu`` (launched by ``cuda_c.py`` through CuPy, or on the CPU through
the emulator)."""
