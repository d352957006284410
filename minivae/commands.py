"""The Python functions behind the ``minivae`` commands; ``cli.py`` only parses flags and prints.

Every function checks its arguments and inputs before it writes anything, and reports bad input
as a one-line ``ValueError`` (or its subclasses ``DataError`` and ``RunError``) that names the
argument, what it was and what was expected. The ``*_text`` functions format results for a terminal.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import minivae
from minivae import _checks, data
from minivae.backends import BACKENDS, BackendUnavailable, get_backend
from minivae.config import TrainConfig
from minivae.gradcheck import GradcheckResult, gradcheck
from minivae.model import VAE
from minivae.runs import CHECKPOINT, RunError, load_params, read_checkpoint
from minivae.train import (
    ACTIVE_UNIT_THRESHOLD,
    IWAE_SALT,
    TEST_ELBO_SALT,
    active_units,
    build_model,
    eval_elbo,
    finite_or_none,
    held_out,
)

# Labels of a conditional gradcheck model: three classes, so that a mix-up between one-hot columns
# (not only between "a label" and "no label") changes the loss.
GRADCHECK_CLASSES = 3
# The data dimension of a fresh gradcheck model: the bundled digits' 8x8 pixels.
GRADCHECK_X_DIM = 64
# Directions of the directional mode: a wrong gradient shows in every direction with probability
# one; several guard against one draw nearly orthogonal to the error.
GRADCHECK_DIRECTIONS = 4


# ------------------------------------------------------------------------------------------------
# a trained run


@dataclass
class Run:
    """A run directory loaded for use: its configuration, model (weights loaded) and data."""

    run_dir: Path
    config: TrainConfig
    model: VAE
    dataset: data.Dataset


def load_run(run_dir: str | os.PathLike) -> Run:
    """The run in ``run_dir`` with its checkpoint's weights; RunError/DataError if unusable.

    The data set is loaded (as the run's configuration names it) for the model's sizes, the
    image shape and the test split; a checkpoint that does not fit the data is refused.
    """
    run_dir = Path(run_dir)
    config, _, params, _ = read_checkpoint(run_dir)
    ds = data.load_dataset(config.data, data_dir=config.data_dir, key=config.key)
    model = build_model(config, ds.x.shape[1], ds.n_classes)
    load_params(model, params, str(run_dir / CHECKPOINT))
    return Run(run_dir, config, model, ds)


def run_test_split(run: Run) -> tuple[data.Dataset, np.ndarray]:
    """The run's test split and its inputs exactly as training's final evaluation saw them: the
    same seeded split and the same fixed binarisation (seed + 1), in the model's dtype."""
    c = run.config
    _, _, test_ds, _, x = held_out(c, run.dataset, run.model.dtype)
    if x is None:
        raise RunError(f"{run.run_dir} has no test split (test_fraction = {c.test_fraction}): "
                       "expected a run trained with test_fraction > 0")
    run.model.likelihood.check_data(f"the test split of {c.data!r}", x)
    return test_ds, x


def _image_shape(run: Run, what: str) -> tuple[int, int]:
    shape = run.dataset.image_shape
    if shape is None:
        raise ValueError(f"{what} draws images, but the data {run.config.data!r} of {run.run_dir} "
                         "has no image shape (expected (N, H, W) arrays or PNG images)")
    return shape


def _output(out: str | os.PathLike | None, default: Path, overwrite: bool) -> Path:
    """Where a picture goes; refuses a name that is not .png, a folder, or (unless ``overwrite``)
    an existing file."""
    path = default if out is None else Path(out)
    if path.suffix.lower() != ".png":
        raise ValueError(f"out {str(path)!r} must be a file name ending in .png")
    if path.is_dir():
        raise ValueError(f"out {str(path)!r} is a directory, expected a .png file name")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists (use --overwrite to replace it)")
    return path


def sample(run_dir: str | os.PathLike, *, n: int = 64, label: int | None = None, seed: int = 0,
           out: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write a grid of ``n`` prior samples of the run's model (decoder means at z ~ N(0, I)).

    ``label`` (conditional runs only) gives every sample that class; without it a conditional
    model's columns cycle through the classes. z is drawn from np.random.default_rng(seed).
    Default ``out``: <run_dir>/samples-<seed>-<n>.png, or samples-<seed>-<n>-label<label>.png:
    each setting its own file. Returns the path written.
    """
    n = _checks.positive_int("n", n)
    seed = _checks.non_negative_int("seed", seed)
    run = load_run(run_dir)
    if label is not None:
        k = run.model.n_classes
        if k == 0:
            raise ValueError(f"label {label!r} was given, but the run in {run.run_dir} is not "
                             "conditional (trained without --conditional)")
        if not _checks.is_int(label) or not 0 <= label < k:
            raise ValueError(f"label must be an integer in 0..{k - 1}, got {label!r}")
    shape = _image_shape(run, "sample")
    name = f"samples-{seed}-{n}" + ("" if label is None else f"-label{label}")
    path = _output(out, run.run_dir / f"{name}.png", overwrite)
    from minivae import pictures  # here, not at the top: matplotlib costs every command 0.3 s

    return pictures.prior_samples(run.model, np.random.default_rng(seed), shape, path, n=n,
                                  y=label)


def reconstruct(run_dir: str | os.PathLike, *, n: int = 16, out: str | os.PathLike | None = None,
                overwrite: bool = False) -> Path:
    """Write the first ``n`` inputs of the run's test split above their reconstructions.

    Default ``out``: <run_dir>/reconstructions-<n>.png. Returns the path written.
    """
    n = _checks.positive_int("n", n)
    run = load_run(run_dir)
    shape = _image_shape(run, "reconstruct")
    test_ds, x = run_test_split(run)
    if n > len(x):
        raise ValueError(f"n {n} is more than the {len(x)} test examples of {run.run_dir}: "
                         f"expected n <= {len(x)}")
    from minivae import pictures

    if n > pictures.MAX_RECONSTRUCTIONS:
        raise ValueError(f"n must be at most {pictures.MAX_RECONSTRUCTIONS} (a picture of more "
                         f"inputs has tiles too small to see), got {n}")
    path = _output(out, run.run_dir / f"reconstructions-{n}.png", overwrite)
    grey = test_ds.x if run.config.binarize != "none" else None
    return pictures.reconstructions(run.model, x, test_ds.y, shape, path, n=n, originals=grey)


def evaluate(run_dir: str | os.PathLike, *, iwae_k: int = 5000, batch_size: int = 100,
             seed: int | None = None) -> dict[str, Any]:
    """Test -ELBO and the IWAE estimate of the NLL (nats per example, with standard errors).

    ``seed`` (default: the run's seed) keys the draws; with the run's seed, its ``iwae_k`` and
    batch_size 100 the numbers are those of the run's summary.json. The keys are summary.json's.
    """
    iwae_k = _checks.positive_int("iwae_k", iwae_k)
    batch_size = _checks.positive_int("batch_size", batch_size)
    run = load_run(run_dir)
    seed = run.config.seed if seed is None else _checks.non_negative_int("seed", seed)
    test_ds, x = run_test_split(run)
    model = run.model
    elbo = eval_elbo(model, test_ds, x, seed, TEST_ELBO_SALT)
    iw = model.iwae(x, test_ds.y if model.n_classes else None, k=iwae_k, batch_size=batch_size,
                    rng=np.random.default_rng([seed, IWAE_SALT]))
    return {"run": str(run.run_dir), "n_test": len(x), "seed": seed, "batch_size": batch_size,
            "test_elbo_loss": elbo["loss"], "test_elbo_loss_stderr": elbo["stderr"],
            "test_recon": elbo["recon"], "test_kl": elbo["kl"], "iwae_k": iwae_k,
            "test_iwae_nll": iw.nll, "test_iwae_nll_stderr": finite_or_none(iw.stderr),
            "z_dim": model.z_dim} | active_units(model, test_ds, x)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def evaluation_text(r: dict[str, Any]) -> str:
    """``evaluate``'s result as a small table."""
    rows = [("test -ELBO", r["test_elbo_loss"], r["test_elbo_loss_stderr"]),
            ("  reconstruction", r["test_recon"], None),
            ("  KL", r["test_kl"], None),
            (f"IWAE NLL (K={r['iwae_k']})", r["test_iwae_nll"], r["test_iwae_nll_stderr"])]
    w = max(len(name) for name, _, _ in rows)
    lines = [f"{r['run']}: {r['n_test']} test examples, seed {r['seed']}",
             f"{'':{w}}  {'nats':>10}  {'stderr':>8}"]
    lines += [f"{name:{w}}  {_fmt(v):>10}  {_fmt(se):>8}" for name, v, se in rows]
    lines.append(f"active units: {r['active_units']} of {r['z_dim']} (Var_x E_q[z_u|x] > "
                 f"{ACTIVE_UNIT_THRESHOLD:g}, Burda et al. 2015)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# gradient check of a freshly built model


def _gradcheck(model: VAE, x: np.ndarray, y: np.ndarray | None, *, n_samples: int, beta: float,
               objective: str,
               rng: np.random.Generator, mode: str) -> GradcheckResult:
    """The check itself: eps drawn once from ``rng`` and held fixed, then every parameter."""
    eps = model.draw_eps(len(x), rng, n_samples)
    # the loss's exact gradient: for the iwae objective that is the standard estimator's (DReG's
    # is the gradient of a surrogate, checked in tests/test_iwae.py)
    def loss():
        return model.loss(x, y, eps=eps, beta=beta, objective=objective)

    grads = loss().grads
    return gradcheck(lambda: loss().loss, model.params, grads,
                     mode=mode, n_directions=GRADCHECK_DIRECTIONS, rng=rng)


def gradcheck_model(*, x_dim: int = GRADCHECK_X_DIM, hidden=TrainConfig.hidden,
                    z_dim: int = TrainConfig.z_dim, activation: str = TrainConfig.activation,
                    likelihood: str = TrainConfig.likelihood, sigma: float = TrainConfig.sigma,
                    conditional: bool = False, n_samples: int = TrainConfig.n_samples,
                    beta: float = TrainConfig.beta, objective: str = TrainConfig.objective,
                    batch_size: int = 4, seed: int = 0,
                    mode: str = "full") -> GradcheckResult:
    """Check VAE.loss's gradient of every parameter against finite differences, in float64.

    The model flags and their defaults are ``minivae train``'s (TrainConfig's). The model, a random
    batch in the likelihood's support (binary for bernoulli, in (0, 1) for cbernoulli, standard
    normal for the gaussians), labels (when ``conditional``) and the noise eps are all drawn from
    np.random.default_rng(seed) and then held fixed.
    """
    # checked as `minivae train` checks them: the same messages
    c = TrainConfig(hidden=tuple(hidden), z_dim=z_dim, activation=activation, likelihood=likelihood,
                    sigma=sigma, n_samples=n_samples, beta=beta, objective=objective)
    _checks.choice("mode", mode, ("full", "directional"))
    batch_size = _checks.positive_int("batch_size", batch_size)
    rng = np.random.default_rng(_checks.non_negative_int("seed", seed))
    model = VAE(x_dim, c.z_dim, c.hidden, activation=c.activation, likelihood=c.likelihood,
                sigma=c.sigma, n_classes=GRADCHECK_CLASSES if conditional else 0, dtype="float64",
                rng=rng)
    shape = (batch_size, model.x_dim)
    if likelihood == "bernoulli":
        x = (rng.random(shape) < 0.5).astype(np.float64)
    elif likelihood == "cbernoulli":
        x = rng.uniform(0.05, 0.95, shape)
    else:
        x = rng.standard_normal(shape)
    y = rng.integers(0, GRADCHECK_CLASSES, batch_size) if conditional else None
    return _gradcheck(model, x, y, n_samples=c.n_samples, beta=c.beta, objective=c.objective, rng=rng,
                      mode=mode)


def gradcheck_run(run_dir: str | os.PathLike, *, batch_size: int = 4, seed: int = 0,
                  mode: str = "full") -> GradcheckResult:
    """Check the gradients of a trained run's model at its trained weights, in float64.

    The model is the run's (its configuration, its checkpoint's weights cast to float64, on the
    numpy backend); the batch is ``batch_size`` examples of the run's data drawn with
    np.random.default_rng(seed), binarised as its held-out sets are when the run binarises, with
    their labels for a conditional run; eps comes from the same generator. The loss is the run's
    objective (for an iwae run, the K-sample bound with K = its n_samples) and the gradient its
    exact one, the standard estimator's, also for a run trained with DReG (whose encoder gradient
    is that of a surrogate, checked in tests/test_iwae.py).
    """
    batch_size = _checks.positive_int("batch_size", batch_size)
    _checks.choice("mode", mode, ("full", "directional"))
    rng = np.random.default_rng(_checks.non_negative_int("seed", seed))
    run = load_run(run_dir)
    c = run.config
    config64 = dataclasses.replace(c, dtype="float64", backend="numpy")
    model = build_model(config64, run.dataset.x.shape[1], run.dataset.n_classes)
    host = run.model.backend.to_host
    load_params(model, {k: np.asarray(host(v), dtype=np.float64) for k, v in run.model.params.items()},
                str(run.run_dir))
    idx = rng.choice(len(run.dataset.x), size=min(batch_size, len(run.dataset.x)), replace=False)
    binarize = data.Binarizer("static" if c.binarize != "none" else "none", c.seed + 1)
    x = binarize(run.dataset.x[idx].astype(np.float64), 0)
    y = run.dataset.y[idx] if model.n_classes else None
    return _gradcheck(model, x, y, n_samples=c.n_samples, beta=c.beta, objective=c.objective, rng=rng,
                      mode=mode)


# ------------------------------------------------------------------------------------------------
# the environment


def blas_info() -> list[dict[str, Any]]:
    """The BLAS (and OpenMP) libraries loaded, from threadpoolctl; without it, the BLAS numpy was
    built against, from numpy's build configuration (no thread count then)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        except (TypeError, KeyError):  # numpy < 1.26 has no mode="dicts"
            return []
        return [{"user_api": "blas", "internal_api": blas.get("name"), "version": blas.get("version"),
                 "num_threads": None, "source": "numpy build configuration"}]
    return [{k: d.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                   "architecture", "filepath")} for d in threadpool_info()]


def _try_import(module: str) -> tuple[Any, str | None]:
    """(module, None), or (None, why it failed): a broken GPU stack raises far more than
    ImportError on import (missing driver libraries, CUDA version errors)."""
    try:
        return importlib.import_module(module), None
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def _numba_cuda_version(numba: Any) -> str | None:
    """The numba-cuda package's version where it is installed (it then provides ``numba.cuda``),
    else numba's own: older numba releases ship ``numba.cuda`` themselves."""
    try:
        return importlib.metadata.version("numba-cuda")
    except importlib.metadata.PackageNotFoundError:
        return getattr(numba, "__version__", None)


def _gpu(name: str, module: Any) -> tuple[bool | None, str | None]:
    """(a GPU seen?, a note) for a GPU backend's library; (None, None) for a CPU backend."""
    try:
        if name == "numba-cuda":
            if module.jit.__module__.startswith("numba.cuda.simulator"):
                return False, "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): no GPU, CPU threads"
            return bool(module.is_available()), None
        if name == "cupy":
            count = int(module.cuda.runtime.getDeviceCount())
            return count > 0, f"{count} device(s)"
    except Exception as e:  # no driver, wrong toolkit: no GPU for us either way
        return False, f"{type(e).__name__}: {e}".splitlines()[0]
    return None, None


# The library each backend runs on, imported to report its version and whether it sees a GPU.
BACKEND_LIBRARIES = {"numpy": "numpy", "numba": "numba", "numba-cuda": "numba.cuda", "cupy": "cupy"}


def backends() -> list[dict[str, Any]]:
    """Every backend of minivae.backends.BACKENDS, as this machine has it.

    ``available`` is exactly the verdict of ``minivae.backends.available()`` (the backend loads
    and runs here); ``importable``, ``version`` and ``gpu`` describe the library behind it (numba's
    ``numba.cuda`` for numba-cuda, from the numba-cuda package where that is installed), and
    ``note`` says why a backend is not available, or what else is worth knowing.
    """
    rows: list[dict[str, Any]] = []
    for name in BACKENDS:
        try:
            get_backend(name)
            available, why = True, None
        except BackendUnavailable as e:  # what available() reports as the reason
            available, why = False, str(e)
        except Exception as e:  # a broken GPU stack: report it, as available() cannot
            available, why = False, f"{type(e).__name__}: {e}".splitlines()[0]
        module, import_error = _try_import(BACKEND_LIBRARIES[name])
        if name == "numba-cuda":
            version = None if module is None else _numba_cuda_version(sys.modules.get("numba"))
        else:
            version = getattr(module, "__version__", None)
        gpu, gpu_note = (None, None) if module is None else _gpu(name, module)
        note = why or gpu_note or ("the reference; always available" if name == "numpy" else None)
        rows.append({"name": name, "available": available, "importable": module is not None,
                     "version": version, "gpu": gpu,
                     "note": note if module is not None else (why or import_error)})
    return rows


def info(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Versions, BLAS, CPUs, backends and the data directory with the data sets present there."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"minivae": minivae.__version__, "python": platform.python_version(),
            "python_executable": sys.executable, "numpy": np.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "blas": blas_info(), "backends": backends(),
            "data_dir": str(data.default_data_dir(data_dir)), "datasets": data_list(data_dir)}


def info_text(d: dict[str, Any]) -> str:
    """``info``'s result for a terminal."""
    lines = [f"minivae {d['minivae']}, Python {d['python']} ({d['python_executable']}), "
             f"numpy {d['numpy']}",
             f"platform: {d['platform']}",
             f"CPUs: {d['cpu_count']} ({d['cpus_usable']} usable by this process)"]
    if d["blas"]:
        lines += [f"{b['user_api']}: {b['internal_api']} {b['version']}, "
                  f"{_fmt(b['num_threads'], 'd')} threads"
                  + (f", {b['architecture']}" if b.get("architecture") else "")
                  for b in d["blas"]]
    else:
        lines.append("blas: unknown (install threadpoolctl to see it)")
    lines.append("backends:")
    for b in d["backends"]:
        library = f"{BACKEND_LIBRARIES[b['name']]} {b['version']}" if b["importable"] else \
            f"{BACKEND_LIBRARIES[b['name']]} not importable"
        gpu = "" if b["gpu"] is None else f", GPU: {'yes' if b['gpu'] else 'no'}"
        note = f"  [{b['note']}]" if b["note"] else ""
        lines.append(f"  {b['name']:<11} available: {'yes' if b['available'] else 'no '}  "
                     f"({library}{gpu}){note}")
    lines.append(f"data directory: {d['data_dir']}")
    lines.append(datasets_text(d["datasets"], indent="  "))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# data sets


def _data_dir(data_dir: str | os.PathLike | None) -> Path:
    root = data.default_data_dir(data_dir)
    if root.exists() and not root.is_dir():
        raise data.DataError(f"data directory {root} is not a directory (from --data-dir or "
                             "$MINIVAE_DATA); expected a folder")
    return root


def data_list(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The built-in data sets and whether each is present in the data directory."""
    return data.list_datasets(_data_dir(data_dir))


def datasets_text(rows: list[dict[str, Any]], indent: str = "") -> str:
    """``data_list``'s rows as a table."""
    w = max(len(r["name"]) for r in rows)
    lines = []
    for r in rows:
        where = r["path"] or r["source"]
        state = "present" if r["present"] else \
            f"missing {len(r['missing'])} of {len(data.IDX_FILES)} files"
        lines.append(f"{indent}{r['name']:<{w}}  {state:<24}  {where}")
    return "\n".join(lines)


def data_fetch(name: str, data_dir: str | os.PathLike | None = None, *,
               progress: bool = True) -> Path:
    """Download and verify the built-in data set ``name``; returns its folder.

    Without network this raises DataError saying which files to put where; folders created for
    the download are removed again, so a failed fetch leaves nothing behind.
    """
    root = _data_dir(data_dir)
    folder = root / name
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        return data.fetch(name, root, progress=progress)
    except BaseException:
        for p in created:  # innermost first
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
