"""Optimiser kernels (reference: ``minivae.optim``). CUDA C for one Adam / AdamW step in
``adam.cu``, launched by ``cuda_c.py`` on a GPU through CuPy or on the CPU through the emulator."""
