"""The ``cupy`` backend: minivae's costly ops as the CUDA C kernels of ``kernels/*/*.cu``, compiled by
``cupy.RawModule`` and run on a GPU (arrays are CuPy arrays, ``xp = cupy``).

Maps ``minivae.backends``' table onto the launchers: ``linear/cuda_c.py`` (production rung),
``latent/cuda_c.py``, ``bernoulli/cuda_c.py`` and ``adam/cuda_c.py``, each with ``backend="cupy"``.
``backend()`` raises ImportError, naming the reason, when CuPy is not installed or sees no GPU;
``minivae.backends.get_backend`` reports that as BackendUnavailable. The kernels are float32 (what
the GPU runs): a float64 model's arrays are refused by the launchers, naming the array.

The latent kernels draw eps from the Philox stream ``key`` and regenerate it in the backward. When
the caller hands eps itself (a numpy Generator drew it), the numpy backend's latent op
(``minivae.latent.latent_forward/latent_backward``) runs on the CuPy arrays instead (CuPy implements
NumPy's ufunc and function protocols); no kernel takes a stored eps. Likelihoods other than
Bernoulli have no kernel at all: the model runs their reference code on the CuPy arrays.
"""

from __future__ import annotations

from typing import Any

from minivae import latent as reference
from minivae.backends import Backend


def _cupy_with_a_gpu() -> Any:
    """The cupy module, or ImportError saying why it cannot run here."""
    try:
        import cupy
    except ImportError as e:
        raise ImportError(f"cupy is not installed ({e}); pip install -e \".[gpu]\" (CUDA 12) or "
                          "-e \".[gpu13]\" (CUDA 13) on a machine with an NVIDIA GPU") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, or a driver too old for this CuPy: all mean no usable GPU
        raise ImportError(f"no CUDA GPU: CuPy cannot reach a device ({type(e).__name__}: {e})") from e
    if count == 0:
        raise ImportError("no CUDA GPU: CuPy sees no device")
    return cupy


def backend() -> Backend:
    """The CuPy + CUDA C backend, named "cupy" (ImportError without CuPy or a GPU)."""
    cupy = _cupy_with_a_gpu()
    from minivae.kernels.adam import cuda_c as optim
    from minivae.kernels.bernoulli import cuda_c as likelihood
    from minivae.kernels.importance_weights import cuda_c as iwae
    from minivae.kernels.latent import cuda_c as latent
    from minivae.kernels.linear import cuda_c as linear

    # The launchers take row-strided matrices for the linear and latent ops (mu and logvar are read
    # as the halves of h, dh written as two halves) and C-contiguous arrays elsewhere: dz, sliced
    # out of a wider gradient by the model, is copied when it is not contiguous.
    c = cupy.ascontiguousarray
    gpu = "cupy"

    def linear_forward(x, W, b, act):
        y = linear.forward(x, W, b, act, backend=gpu)
        return y, (x, W, act, None if act is None else y)

    def linear_backward(dy, cache, need_dx=True):
        x, W, act, y = cache
        return linear.backward(dy, x, W, y, act, need_dx=need_dx, backend=gpu)

    def latent_forward(h, n_samples, eps=None, key=None):
        if eps is not None:  # no kernel takes a stored eps: the reference op, on the device arrays
            z, kl, cache = reference.latent_forward(h, n_samples, eps=eps)
            return z, kl, (None, cache)
        d = h.shape[1] // 2
        mu, logvar = h[:, :d], h[:, d:]  # row-strided views: the kernels read h in place
        seed, offset = key
        z, kl = latent.forward(mu, logvar, seed, offset, n_samples, backend=gpu)
        return z, kl, (key, (mu, logvar))

    def latent_backward(dz, kl_weight, cache):
        key, rest = cache
        if key is None:
            return reference.latent_backward(dz, kl_weight, rest)
        (seed, offset), (mu, logvar) = key, rest
        n, d = mu.shape
        dh = cupy.empty((n, 2 * d), mu.dtype)  # written in place, half by half, by the kernel
        latent.backward(c(dz), mu, logvar, seed, offset, kl_weight, backend=gpu, out=(dh[:, :d], dh[:, d:]))
        return dh

    def bernoulli(x, logits, dlogp):
        return likelihood.bernoulli_forward_backward(c(x), c(logits), dlogp, backend=gpu)

    def adam(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, decoupled, step):
        optim.adam_step(p, g, m, v, step=step, lr=lr, betas=(beta1, beta2), eps=eps,
                        weight_decay=weight_decay, decoupled=decoupled, backend=gpu)

    def importance_weights(log_w):
        return iwae.importance_weights(c(log_w), backend=gpu)

    return Backend("cupy", cupy, linear_forward, linear_backward, latent_forward, latent_backward, bernoulli,
                   importance_weights=importance_weights, adam=adam, on_gpu=True)
