"""Latent-space kernels: the reparameterized sample and the KL term, fused (reference:
``minivae.latent``). CUDA C in ``cuda_c.cu`` (Philox from ``common/philox.cuh``), launched by
``cuda_c.py`` on a GPU through CuPy or on the CPU through the emulator."""
