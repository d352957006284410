"""What connects the kernels to minivae and is not a kernel: the backends (``numba_cpu.py``,
``numba_cuda.py``, ``cupy_backend.py``) that map ``minivae.backends``' table onto the op folders,
CUDA C loading and launch checks (``cuda_load.py``), the CPU emulator of CUDA C (``emulate.py``,
``cuda_emu.h``, its self-test ``emu_selftest.cu``), the choice of Numba's CUDA simulator
(``simulator.py``) and Numba's thread setup (``numba_threads.py``)."""
