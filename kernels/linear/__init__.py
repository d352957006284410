"""The fused linear(+activation) op y = act(x W^T + b) and its backward, in three forms: Numba CPU
(``cpu.py``), Numba CUDA (``nb_cuda.py``) and CUDA C (``linear.cu``, launched by ``cuda_c.py``).
NumPy reference: ``minivae.layers.linear_act_forward`` / ``linear_act_backward``.

What the three share is here: the kernels take the activation as an int code, and the backend table
names only the activation, so its parameter is the reference's default.
"""

from __future__ import annotations

from minivae.layers import ACTIVATIONS

# code -> activation; linear.cu's ACT_* constants have the same numbers (a test compares them).
ACT_NAMES = (None, "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus")
ACT_CODES = {name: code for code, name in enumerate(ACT_NAMES)}
LEAKY_RELU_SLOPE = ACTIVATIONS["leaky_relu"][3]
ELU_ALPHA = ACTIVATIONS["elu"][3]


def act_code(act: str | None) -> int:
    """The kernels' code for ``act`` (None: no activation), else ValueError naming the choices."""
    if act not in ACT_CODES:
        raise ValueError(f"act must be None or one of {', '.join(ACT_NAMES[1:])}, got {act!r}")
    return ACT_CODES[act]
