"""The threading layer of minivae's parallel Numba CPU kernels, chosen before any of them runs.

Numba's parallel kernels share the cores with the vendor BLAS's own threads, and a training step
alternates between the two: a fused Numba pass, then a BLAS GEMM, then another pass. Numba's
OpenMP layer (its default where libgomp is found) keeps its threads spinning after each parallel
region, so they take the cores away from the GEMMs that follow: measured on 2 cores, the
784-400-20 training step at batch 128 took 26 ms on the OpenMP layer against 8 ms on the
workqueue layer, whose threads sleep between regions (compare `NUMBA_THREADING_LAYER=omp python
-m bench train --quick` with the plain command; the table records the layer). So minivae asks for
the workqueue layer, unless the user chose a layer with NUMBA_THREADING_LAYER.

Numba reads ``numba.config.THREADING_LAYER`` when it starts its thread pool, at the first launch
of a parallel kernel; every kernel module of this package imports this one first. The choice also
goes into the environment, because ``numba.config.reload_config()`` (which other code, e.g. a
switch to the CUDA simulator, may call) rebuilds the config from it.
"""

from __future__ import annotations

import os

import numba

USER_CHOICE = os.environ.get("NUMBA_THREADING_LAYER")  # None: minivae chooses
if USER_CHOICE is None:
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    numba.config.THREADING_LAYER = "workqueue"
