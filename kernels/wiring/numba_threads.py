"""The threading layer of minivae's parallel Numba CPU kernels, chosen before any of them runs.

Numba's parallel kernels share the cores with the vendor BLAS's own threads, and a training step
alternates between the two: a fused Numba pass, then a BLAS GEMM, then another pass. So the
threads of a parallel region must give the cores back as soon as it ends. Numba's OpenMP layer
keeps its threads spinning after each region by default (libgomp's active wait), taking the cores
from the GEMMs that follow: measured on 2 cores, the 784-400-20 training step at batch 128 took
26 ms so, against 8 ms on the workqueue layer, whose threads sleep between regions.

With ``OMP_WAIT_POLICY=passive`` the OpenMP threads sleep too, and they wake faster than the
workqueue's: an empty parallel region (a ``prange(2)`` kernel, timed from Python) took 4 us on
passive OpenMP, 22 us on workqueue and 1.8 us on spinning OpenMP (2-core Intel Xeon, 2026-12-03;
on another 2-core machine the workqueue's took 160-185 us). The one parallel region of a step at
batch 128, the optimiser's update of every parameter (``kernels/adam/numba_cpu.py``, adam_many),
took 0.33 ms on passive OpenMP against 0.61 ms (median) on workqueue and 0.42 ms on one thread.

So minivae asks for the OpenMP layer with passive waiting, and for workqueue where Numba finds no
OpenMP runtime (libgomp), unless the user chose a layer with NUMBA_THREADING_LAYER (then nothing
here changes; an OMP_WAIT_POLICY the user set is kept too). Kernels still go parallel only where a
pass costs well above a wake-up (each module's PARALLEL_MIN_ELEMENTS).

Numba reads ``numba.config`` when it starts its thread pool, at the first launch of a parallel
kernel, and libgomp reads OMP_WAIT_POLICY when it is loaded, which is then; every kernel module of
this package imports this one first. The choices also go into the environment, because
``numba.config.reload_config()`` (which other code, e.g. a switch to the CUDA simulator, may call)
rebuilds the config from it. PyTorch and scikit-learn load their own copies of libgomp, which read
the environment when they are imported, not this setting after it.
"""

from __future__ import annotations

import os

import numba

USER_CHOICE = os.environ.get("NUMBA_THREADING_LAYER")  # None: minivae chooses
PRIORITY = ("omp", "workqueue", "tbb")  # the first that loads (Numba wants all three named)
if USER_CHOICE is None:
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    os.environ["NUMBA_THREADING_LAYER"] = "default"
    os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = " ".join(PRIORITY)
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = list(PRIORITY)
