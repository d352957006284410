"""The threading layer of minivae's parallel Numba CPU kernels, chosen before any of them runs.

Numba's parallel kernels share the cores with the vendor BLAS's own threads, and a training step
alternates between the two: a fused Numba pass, then a BLAS GEMM, then another pass. Numba's
OpenMP layer (its default where libgomp is found) keeps its threads spinning after each parallel
region, so they take the cores away from the GEMMs that follow: measured on 2 cores, the
784-400-20 training step at batch 128 took 26 ms on the OpenMP layer against 8 ms on the
workqueue layer, whose threads sleep between regions (compare `NUMBA_THREADING_LAYER=omp python
-m bench train --quick` with the plain command; the table records the layer). So minivae asks for
the workqueue layer, unless the user chose a layer with NUMBA_THREADING_LAYER.

The price of sleeping threads is the wake-up: on the 2-core virtual machines here an empty
parallel region (one task per thread, `python -c` timing of a `prange(2)` kernel) took ~10 us on
one machine and 160-185 us on another (2026-12-01), against ~2 us on the spinning OpenMP layer.
So the kernels go parallel only where one pass costs far more than that even on the slow machine
(each module's PARALLEL_MIN_ELEMENTS: ~0.3 ms of serial work and up); a training step at batch 128
runs on one Numba thread, and its GEMMs on all the BLAS threads.

Both wake-ups are the virtual machine's as much as Numba's: a sleeping thread's vCPU halts, and
waking it costs what the hypervisor takes. Measured on one 2-core Intel Xeon VM (2026-12-03), an
empty region took 140-160 us on workqueue with the other vCPU idle and 22 us with it busy. OpenMP
with ``OMP_WAIT_POLICY=passive`` (threads that sleep too) took 84-92 us idle, but it is not safe to
ask for: PyTorch's wheels ship their own ``libgomp.so.1``, and when torch is imported first Numba's
OpenMP layer binds to that copy, whose threads spin (it read the environment at torch's import):
2.4 us wake-ups, and a training step at batch 128 of 8.2 ms against 4.1 ms with the same update on
one thread. So workqueue it stays, and a step at batch 128 runs every pass, the optimiser's
included (``kernels/adam/numba_cpu.py``), on one Numba thread.

The parallel loops themselves run slowly on workqueue here: the linear op's fused backward pass at
4096 x 1024 (relu, ``kernels/linear/numba_cpu.py``) took 2.4-3.4 ms on one thread, 4.8 ms on two
workqueue threads and 8.0 ms on one (NUMBA_NUM_THREADS=1), against 1.4 ms on two OpenMP threads.
Why the workqueue's workers run the same code slower is not known.

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
