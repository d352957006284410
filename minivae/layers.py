"""Layers as forward/backward function pairs, and the small classes that compose them.

Every op is a pair ``*_forward(...) -> (y, cache)`` and ``*_backward(dy, cache) -> grads``. The
cache holds exactly what the backward needs; nothing is kept on an object between calls. The
derivation of each backward is one section of ``docs/derivations.md`` (named in the docstring).

``linear_act_forward``/``linear_act_backward`` (a Linear layer and the activation after it) are the
numpy backend's linear op, and ``MLP`` runs its layers through whichever backend's op it is given:
the model trains through ``MLP.forward``/``MLP.backward``, and with the numpy backend through the
very pairs written here.

Shapes: ``N`` is the batch, ``D_in``/``D_out`` the widths. Arrays are float32 or float64; each op
computes in the dtype it is given. The functions use NumPy's functions only, so they also run on
CuPy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from minivae import _checks

if TYPE_CHECKING:  # backends builds its numpy table from this module: no import at run time
    from minivae.backends import Backend

# ----------------------------------------------------------------------------------------------
# Linear


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Any]:
    """y = x W^T + b.

    x: (N, D_in), W: (D_out, D_in) (PyTorch's layout), b: (D_out,) -> y: (N, D_out).
    """
    y = x @ W.T
    y += b
    return y, (x, W)


def linear_backward(dy: np.ndarray, cache: Any, *, need_dx: bool = True):
    """Derivation: docs/derivations.md, "Linear layer".

    dx = dy W (N, D_in), dW = dy^T x (D_out, D_in), db = sum_n dy (D_out,).
    With ``need_dx=False`` dx is None (the first layer of a network needs no input gradient).
    """
    x, W = cache
    dx = dy @ W if need_dx else None
    dW = dy.T @ x
    db = dy.sum(axis=0)
    return dx, dW, db


def linear_init(d_in: int, d_out: int, rng: np.random.Generator, dtype=np.float32):
    """PyTorch's ``nn.Linear`` default: W, b ~ U(-1/sqrt(d_in), 1/sqrt(d_in)).

    (``kaiming_uniform_(a=sqrt(5))`` on W works out to exactly this bound.)
    """
    bound = 1.0 / np.sqrt(d_in)
    W = rng.uniform(-bound, bound, size=(d_out, d_in)).astype(dtype)
    b = rng.uniform(-bound, bound, size=(d_out,)).astype(dtype)
    return W, b


# ----------------------------------------------------------------------------------------------
# Elementwise activations. Every derivative here is a function of the output, so the cache is the
# output y (what a fused kernel keeps): docs/derivations.md, "Activations".


def relu_forward(x: np.ndarray):
    y = np.maximum(x, 0)
    return y, y


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivation: "Activations". dx = dy * [y > 0] (the derivative at 0 is taken as 0)."""
    return dy * (y > 0)


def leaky_relu_forward(x: np.ndarray, slope: float = 0.01):
    y = np.where(x > 0, x, x * x.dtype.type(slope))
    return y, (y, slope)


def leaky_relu_backward(dy: np.ndarray, cache) -> np.ndarray:
    """Derivation: "Activations". dx = dy * (1 if y > 0 else slope); slope > 0 so sign(y) = sign(x)."""
    y, slope = cache
    return np.where(y > 0, dy, dy * dy.dtype.type(slope))


def elu_forward(x: np.ndarray, alpha: float = 1.0):
    # expm1 of min(x, 0): no overflow for large positive x, no cancellation near 0.
    y = np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))
    return y, (y, alpha)


def elu_backward(dy: np.ndarray, cache) -> np.ndarray:
    """Derivation: "Activations". For x <= 0, d/dx alpha (e^x - 1) = alpha e^x = y + alpha."""
    y, alpha = cache
    return np.where(y > 0, dy, dy * (y + y.dtype.type(alpha)))


def tanh_forward(x: np.ndarray):
    y = np.tanh(x)
    return y, y


def tanh_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivation: "Activations". dx = dy (1 - y^2)."""
    return dy * (1 - y * y)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Stable logistic function: exp is only ever taken of -|x|, so it never overflows."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softplus(x: np.ndarray) -> np.ndarray:
    """Stable log(1 + e^x) = max(x, 0) + log1p(e^-|x|)."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid_forward(x: np.ndarray):
    y = sigmoid(x)
    return y, y


def sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivation: "Activations". dx = dy y (1 - y)."""
    return dy * y * (1 - y)


def softplus_forward(x: np.ndarray):
    y = softplus(x)
    return y, y


def softplus_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivation: "Activations". d/dx log(1 + e^x) = sigmoid(x) = 1 - e^-y = -expm1(-y)."""
    return dy * -np.expm1(-y)


# name -> (forward, backward, keyword argument the activation takes, its default)
ACTIVATIONS: dict[str, tuple[Callable, Callable, str | None, float | None]] = {
    "relu": (relu_forward, relu_backward, None, None),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward, "slope", 0.01),
    "elu": (elu_forward, elu_backward, "alpha", 1.0),
    "tanh": (tanh_forward, tanh_backward, None, None),
    "sigmoid": (sigmoid_forward, sigmoid_backward, None, None),
    "softplus": (softplus_forward, softplus_backward, None, None),
}


# ----------------------------------------------------------------------------------------------
# A Linear layer and the activation after it, as one op: the numpy backend's ``linear_forward`` and
# ``linear_backward`` (minivae.backends), which the kernel backends fuse into their GEMMs.


def linear_act_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, act: str | None):
    """y = act(x W^T + b): ``linear_forward``, then the activation called ``act`` (None: none) with
    its default parameter. The cache is both ops' caches. Derivation: "A layer and its activation"."""
    y, lin_cache = linear_forward(x, W, b)
    if act is None:
        return y, (lin_cache, None, None)
    y, act_cache = ACTIVATIONS[act][0](y)
    return y, (lin_cache, act, act_cache)


def linear_act_backward(dy: np.ndarray, cache: Any, need_dx: bool = True):
    """The two backwards in reverse: G = dy * act'(.), then ``linear_backward(G)`` -> (dx, dW, db).

    Derivation: docs/derivations.md, "A layer and its activation; the MLP".
    """
    lin_cache, act, act_cache = cache
    g = dy if act is None else ACTIVATIONS[act][1](dy, act_cache)
    return linear_backward(g, lin_cache, need_dx=need_dx)


# ----------------------------------------------------------------------------------------------
# Layer classes: they own parameters and compose the pairs above; forward returns the cache.


class Linear:
    """Fully connected layer with PyTorch's initialisation. ``params = {"W", "b"}``."""

    def __init__(self, d_in: int, d_out: int, rng: np.random.Generator, dtype=np.float32):
        d_in = _checks.positive_int("d_in", d_in)
        d_out = _checks.positive_int("d_out", d_out)
        W, b = linear_init(d_in, d_out, rng, dtype)
        self.params = {"W": W, "b": b}

    def forward(self, x: np.ndarray):
        return linear_forward(x, self.params["W"], self.params["b"])

    def backward(self, dy: np.ndarray, cache, *, need_dx: bool = True):
        dx, dW, db = linear_backward(dy, cache, need_dx=need_dx)
        return dx, {"W": dW, "b": db}


class Activation:
    """An elementwise activation by name: relu, leaky_relu, elu, tanh, sigmoid, softplus."""

    def __init__(self, name: str, **kwargs: float):
        self.name = _checks.choice("activation", name, tuple(ACTIVATIONS))
        self._fwd, self._bwd, key, default = ACTIVATIONS[name]
        extra = set(kwargs) - ({key} if key else set())
        if extra:
            raise ValueError(f"activation {name!r} takes no argument {sorted(extra)[0]!r}")
        self._kwargs = {key: _checks.positive_float(key, kwargs.get(key, default))} if key else {}
        self.params: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray):
        return self._fwd(x, **self._kwargs)

    def backward(self, dy: np.ndarray, cache, *, need_dx: bool = True):
        return self._bwd(dy, cache), {}


class MLP:
    """Linear layers with the activation after every one but the last.

    ``sizes = (d_in, h_1, ..., d_out)``: layer i computes ``h = act(h W_i^T + b_i)`` as one call of
    the backend's linear op, ``backend.linear_forward(h, W, b, act)`` (None: this module's
    ``linear_act_forward``, which is the numpy backend's op; the activation takes its default
    parameter). ``params`` maps ``"{i}.W"``, ``"{i}.b"`` to the very arrays the layers compute with,
    on the backend's device, so an optimiser updating ``params`` in place updates the network, and
    ``forward`` takes and returns arrays of that device.
    """

    def __init__(self, sizes, activation: str, rng: np.random.Generator, dtype=np.float32, *,
                 backend: Backend | None = None):
        sizes = _checks.sizes("sizes", sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must name an input and an output width, got {sizes}")
        _checks.choice("activation", activation, tuple(ACTIVATIONS))
        self.sizes = sizes
        self.backend = backend
        self.activations: tuple[str | None, ...] = (activation,) * (len(sizes) - 2) + (None,)
        self.params: dict[str, np.ndarray] = {}
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            W, b = linear_init(d_in, d_out, rng, dtype)  # drawn on the host, from the one generator
            if backend is not None:
                W, b = backend.asarray(W), backend.asarray(b)
            self.params[f"{i}.W"], self.params[f"{i}.b"] = W, b

    def forward(self, x: np.ndarray):
        """x (N, sizes[0]) -> (output (N, sizes[-1]), one cache per layer)."""
        op = linear_act_forward if self.backend is None else self.backend.linear_forward
        caches = []
        for i, act in enumerate(self.activations):
            x, cache = op(x, self.params[f"{i}.W"], self.params[f"{i}.b"], act)
            caches.append(cache)
        return x, caches

    def backward(self, dy: np.ndarray, caches, *, need_dx: bool = True):
        """Back through the layers in reverse order; returns (dx or None, grads keyed like params).
        The first layer computes no dx when ``need_dx`` is False (its input is data)."""
        op = linear_act_backward if self.backend is None else self.backend.linear_backward
        grads: dict[str, np.ndarray] = {}
        for i in range(len(caches) - 1, -1, -1):
            dy, grads[f"{i}.W"], grads[f"{i}.b"] = op(dy, caches[i], need_dx or i > 0)
        return dy, grads
