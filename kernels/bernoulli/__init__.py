"""Likelihood kernels (reference: ``minivae.likelihoods``). CUDA C for the Bernoulli likelihood in
``cuda_c.cu``, launched by ``cuda_c.py`` on a GPU through CuPy or on the CPU through the emulator."""
