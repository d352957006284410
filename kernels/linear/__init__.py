"""The fused linear(+activation) op y = act(x W^T + b) and its backward, in three forms: Numba CPU
(``numba_cpu.py``), Numba CUDA (``numba_cuda.py``) and CUDA C (``cuda_c.cu``, launched by ``cuda_c.py``).
NumPy reference: ``minivae.layers.linear_act_forward`` / ``linear_act_backward``.

What the three share is here: the kernels take the activation as an int code, and the backend table
names only the activation, so its parameter is the reference's default.
"""

from __future__ import annotations

from minivae.layers import ACTIVATIONS

# The forward's optimisation ladder, numbered the same in cuda_c.cu, cuda_c.py, numba_cuda.py, the
# table of `python -m bench ladder --op linear` and the README: rung -> what it adds to the rung below.
# cuda_c.cu's header and numba_cuda.py's rungs say it in these words (tests/test_kernels_linear.py).
RUNGS = {
    1: "naive: one thread per output, its dot product read straight from global memory",
    2: "shared-memory tiles: each operand element loaded from global memory once per tile",
    3: "1-D register tiles: a column of outputs per thread, one shared load feeds several FMAs",
    4: "2-D register tiles: a patch of outputs per thread, operands reused from registers both ways",
}
PRODUCTION_RUNG = 4

# code -> activation; cuda_c.cu's ACT_* constants have the same numbers (a test compares them).
ACT_NAMES = (None, "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus")
ACT_CODES = {name: code for code, name in enumerate(ACT_NAMES)}
LEAKY_RELU_SLOPE = ACTIVATIONS["leaky_relu"][3]
ELU_ALPHA = ACTIVATIONS["elu"][3]


def act_code(act: str | None) -> int:
    """The kernels' code for ``act`` (None: no activation), else ValueError naming the choices."""
    if act not in ACT_CODES:
        raise ValueError(f"act must be None or one of {', '.join(ACT_NAMES[1:])}, got {act!r}")
    return ACT_CODES[act]
