"""Training runs: the loop, checkpoints that survive crashes, exact resume, metrics and pictures.

A run directory holds::

    config.json          the fully resolved configuration: the backend actually chosen (never
                         "auto") and, for the MNIST family, the data directory actually read
    metrics.jsonl        one JSON record per epoch
    checkpoint.safetensors  parameters + optimiser state (tensors) and, in the header's metadata,
                         the epoch, the step within it and the generator's state (JSON); written
                         atomically (temporary file + rename), so it is always a complete checkpoint
    summary.json         final test -ELBO and IWAE NLL (with standard errors)
    *.png                pictures (see minivae.pictures)

With ``patience`` (early stopping) the run ends with the weights of its best validation epoch, not
its last: the checkpoint carries a copy of them while training goes on, and the final checkpoint,
summary and pictures are those of the best epoch.

Every random draw of a run (batch order, eps, binarization) comes from generators derived from the
run's seed, and their state is saved in every checkpoint, so ``resume`` ends with bitwise the weights
of an uninterrupted run (on the CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from minivae import _checks, philox
from minivae._files import TMP_SUFFIX, atomic_write, atomic_write_text
from minivae.backends import BACKENDS, BackendUnavailable, get_backend
from minivae.layers import ACTIVATIONS
from minivae.likelihoods import LIKELIHOODS
from minivae.model import VAE
from minivae.optim import clip_grad_norm, first_nonfinite, make_optimizer

CHECKPOINT = "checkpoint.safetensors"
# 2: epochs in metrics.jsonl, summary.json and best_epoch count from 1, as the console does
# (version 1 counted from 0; its checkpoints are read and converted).
FORMAT_VERSION = 2


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used (missing, foreign, corrupt, mismatched)."""


class NonFiniteError(FloatingPointError):
    """The loss or a gradient became NaN or inf during training."""


@dataclass
class TrainConfig:
    """Everything that defines a run. Saved as config.json; ``from_dict`` checks every field."""

    data: str = "digits"
    data_dir: str | None = None
    key: str | None = None
    binarize: str = "dynamic"  # none | static | dynamic
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    hidden: tuple[int, ...] = (128,)
    z_dim: int = 8
    activation: str = "relu"
    likelihood: str = "bernoulli"
    sigma: float = 1.0
    conditional: bool = False
    dtype: str = "float32"
    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    beta: float = 1.0
    warmup_epochs: int = 0
    clip: float | None = None
    patience: int | None = None
    n_samples: int = 1
    seed: int = 0
    iwae_k: int = 1000
    on_nonfinite: str = "stop"  # stop | skip
    pictures: bool = True
    backend: str = "numpy"

    def __post_init__(self) -> None:
        self.hidden = _checks.sizes("hidden", self.hidden)
        for name in ("z_dim", "epochs", "batch_size", "n_samples", "iwae_k"):
            setattr(self, name, _checks.positive_int(name, getattr(self, name)))
        for name in ("lr", "momentum", "weight_decay", "beta"):
            setattr(self, name, _checks.non_negative_float(name, getattr(self, name)))
        if self.momentum >= 1:  # the velocity would never decay: SGD diverges
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        self.sigma = _checks.positive_float("sigma", self.sigma)
        self.warmup_epochs = _checks.non_negative_int("warmup_epochs", self.warmup_epochs)
        self.seed = _checks.non_negative_int("seed", self.seed)
        if self.clip is not None:
            self.clip = _checks.positive_float("clip", self.clip)
        if self.patience is not None:
            self.patience = _checks.positive_int("patience", self.patience)
        for name in ("val_fraction", "test_fraction"):
            v = _checks.non_negative_float(name, getattr(self, name))
            if v >= 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {v}")
            setattr(self, name, v)
        if self.patience is not None and self.val_fraction == 0:
            raise ValueError(f"patience {self.patience} needs a validation split to watch: "
                             "expected val_fraction > 0, got 0")
        _checks.choice("binarize", self.binarize, ("none", "static", "dynamic"))
        _checks.choice("activation", self.activation, tuple(ACTIVATIONS))
        _checks.choice("likelihood", self.likelihood, tuple(LIKELIHOODS))
        _checks.choice("optimizer", self.optimizer, ("sgd", "adam", "adamw"))
        _checks.choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        _checks.choice("backend", self.backend, (*BACKENDS, "auto"))
        _checks.float_dtype("dtype", self.dtype)
        self.dtype = str(np.dtype(self.dtype))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown configuration key {unknown[0]!r}; known keys: "
                             f"{', '.join(sorted(names))}")
        return cls(**{k: _hidden(v) if k == "hidden" else v for k, v in d.items()})

    def beta_at(self, epoch: int) -> float:
        """KL warm-up: beta grows linearly from beta/warmup to beta over the first epochs."""
        if self.warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, (epoch + 1) / self.warmup_epochs)


def _hidden(v: object) -> tuple:
    """Hidden widths as a sequence, or as the flag's comma-separated string ("64,32")."""
    if isinstance(v, str):
        try:
            return tuple(int(w) for w in v.split(",") if w.strip())
        except ValueError:
            raise ValueError(f"hidden must be comma-separated positive integers, got {v!r}") from None
    if isinstance(v, (list, tuple)):
        return tuple(v)
    raise ValueError(f"hidden must be a list of positive integers or a string like \"64,32\", "
                     f"got {v!r}")


@dataclass
class RunState:
    """Where a run stands; saved in the checkpoint's metadata."""

    epoch: int = 0  # epochs completed: the 0-based index of the epoch in progress
    step: int = 0  # batches of ``epoch`` already taken
    global_step: int = 0
    skipped_steps: int = 0
    best_val: float = math.inf
    best_epoch: int | None = None  # the epoch of best_val (1-based, as in metrics.jsonl)
    epochs_since_best: int = 0
    rng_state: dict = field(default_factory=dict)  # the training generator after the last step
    epoch_rng_state: dict = field(default_factory=dict)  # ... at the start of ``epoch``
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # loss, recon, kl, n
    eps_offset: int = 0  # position in the Philox stream of eps (seed = the run's seed)
    done: bool = False


# ------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(run_dir: Path, model: VAE, optimizer, config: TrainConfig,
                    state: RunState, best: dict | None = None) -> None:
    """``best``: the weights of the best validation epoch so far (early stopping keeps them)."""
    host = model.backend.to_host
    tensors = {f"param/{k}": host(v) for k, v in model.params.items()}
    tensors |= {f"optim/{k}": host(v) for k, v in optimizer.state_dict().items()}
    tensors |= {f"best/{k}": v for k, v in (best or {}).items()}
    meta = {"format": "minivae-checkpoint", "version": str(FORMAT_VERSION),
            "config": json.dumps(config.to_dict()), "state": json.dumps(dataclasses.asdict(state))}
    # Serialised in memory and written by Python: safetensors' own file writer reports a full disk
    # as a SafetensorError, not as the OSError (ENOSPC, naming the file) every other write gives.
    blob = safetensors_bytes(tensors, metadata=meta)
    atomic_write(run_dir / CHECKPOINT, lambda fh: fh.write(blob))


def read_checkpoint(run_dir: Path) -> tuple[TrainConfig, RunState, dict, dict]:
    """(config, state, params, optimiser state) of a run directory; RunError if unusable."""
    config, state, groups = _load_checkpoint(run_dir)
    return config, state, groups["param"], groups["optim"]


def _load_checkpoint(run_dir: Path) -> tuple[TrainConfig, RunState, dict[str, dict]]:
    """(config, state, {"param": ..., "optim": ..., "best": ...}) of a run directory."""
    path = Path(run_dir) / CHECKPOINT
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir} is not a directory (expected a run directory made by "
                       "`minivae train`)")
    if not path.is_file():
        if (Path(run_dir) / "config.json").is_file():  # a run stopped before its first checkpoint
            raise RunError(f"{run_dir} has no {CHECKPOINT}: its run stopped before writing one, "
                           f"so there is nothing to use or resume (start it again with --out "
                           f"{run_dir} --overwrite)")
        raise RunError(f"{run_dir} is not a minivae run directory: it has no {CHECKPOINT}")
    try:  # safetensors reports an unreadable file as missing: let the OS say what is wrong
        with open(path, "rb"):
            pass
    except OSError as e:
        raise RunError(f"{path} cannot be read: {e.strerror}") from None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types on corrupt headers
        raise RunError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if meta.get("format") != "minivae-checkpoint":
        raise RunError(f"{path} is not a minivae checkpoint (no minivae metadata)")
    try:
        config = TrainConfig.from_dict(json.loads(meta["config"]))
        state = RunState(**json.loads(meta["state"]))
        version = int(meta.get("version", "1"))
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path} has a damaged header: {e}") from None
    if version > FORMAT_VERSION:
        raise RunError(f"{path} is a version {version} checkpoint; this minivae reads versions up "
                       f"to {FORMAT_VERSION} (expected a checkpoint of this or an older minivae)")
    if version == 1 and state.best_epoch is not None:
        state.best_epoch += 1
    groups: dict[str, dict] = {"param": {}, "optim": {}, "best": {}}
    for k, v in tensors.items():
        group, _, name = k.partition("/")
        if group not in groups:
            raise RunError(f"{path} holds an unknown tensor {k!r} (expected param/, optim/ or "
                           "best/ names)")
        groups[group][name] = v
    return config, state, groups


def build_model(config: TrainConfig, x_dim: int, n_classes: int) -> VAE:
    return VAE(x_dim, config.z_dim, config.hidden, activation=config.activation,
               likelihood=config.likelihood, n_classes=n_classes if config.conditional else 0,
               sigma=config.sigma, dtype=config.dtype,
               rng=np.random.default_rng([config.seed, INIT_SALT]),
               backend=config.backend)


def load_params(model: VAE, params: dict, where: str, what: str = "parameter") -> None:
    """Copy checkpoint arrays into the model, refusing any mismatch of names, shapes or dtypes
    and any NaN or inf; nothing is copied unless every array passes."""
    check_params(model, params, where, what)
    for k, v in params.items():
        model.params[k][...] = v


def check_params(model: VAE, params: dict, where: str, what: str = "parameter") -> None:
    """RunError unless ``params`` has the model's names, shapes and dtypes and is finite."""
    if set(params) != set(model.params):
        missing = sorted(set(model.params) - set(params))
        extra = sorted(set(params) - set(model.params))
        raise RunError(f"{where} does not match its configuration: {what}s missing {missing}, "
                       f"unexpected {extra}")
    for k, v in params.items():
        p = model.params[k]
        if v.shape != p.shape or v.dtype != p.dtype:
            raise RunError(f"{where}: {what} {k} is {v.dtype}{list(v.shape)}, the "
                           f"configuration needs {p.dtype}{list(p.shape)}")
        if not np.isfinite(v).all():
            raise RunError(f"{where}: {what} {k} holds non-finite values (NaN or inf)")


def _check_optimizer_state(optim_state: dict, where: str) -> None:
    """Refuse NaN or inf in a saved optimiser state: resuming would poison every later step."""
    for k, v in optim_state.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise RunError(f"{where}: optimiser state {k} holds non-finite values (NaN or inf); "
                           "this checkpoint cannot be resumed")


# ------------------------------------------------------------------------------------------------
# the loop


def _make_optimizer(config: TrainConfig, model: VAE):
    kw: dict = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        if model.backend.on_gpu:
            raise ValueError(f"optimizer 'sgd' runs on the CPU; with backend "
                             f"{model.backend.name!r} use adam or adamw")
        kw["momentum"] = config.momentum
    else:
        kw["backend"] = model.backend  # its fused Adam kernel, where it has one
    return make_optimizer(config.optimizer, model.params, **kw)


def _record(run_dir: Path, rec: dict) -> None:
    """Append one epoch's line to metrics.jsonl. If the write fails (a full disk), the file is cut
    back to its earlier length, so no partial line stays, and the error names the file."""
    path = run_dir / "metrics.jsonl"
    data = memoryview((json.dumps(rec) + "\n").encode())
    with open(path, "ab", buffering=0) as fh:  # unbuffered: nothing is left to flush on close
        size = fh.tell()
        try:
            while data:  # a raw write may take only part of the bytes
                data = data[fh.write(data):]
            os.fsync(fh.fileno())
        except OSError as e:
            try:
                fh.truncate(size)
            except OSError:
                pass  # the partial line is dropped when the run is read back (_read_metrics)
            raise OSError(e.errno, e.strerror, str(path)) from None


def _read_metrics(run_dir: Path) -> list[dict]:
    """The epoch records; a line cut short by a crash mid-write is dropped (the resumed run
    rewrites that epoch's record)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
            out.append(rec)
    if any(rec["epoch"] == 0 for rec in out):  # written before epochs counted from 1
        out = [rec | {"epoch": rec["epoch"] + 1} for rec in out]
    return out


def _truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """A crash between writing a metrics line and the checkpoint leaves a line for an epoch the
    checkpoint does not have: drop lines past the checkpoint so the resumed run rewrites them."""
    recs = [r for r in _read_metrics(run_dir) if r["epoch"] <= epochs_done]
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in recs))


class _Stop(KeyboardInterrupt):
    """SIGINT/SIGTERM during the final evaluation, raised by ``_Interrupt`` in its ``raising``
    mode; ``train`` catches it and exits like an interrupt during training."""


class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a checkpoint is written at a
    step boundary and the run exits cleanly. With ``raising`` set (the final evaluation, which
    has no steps to check between, and whose checkpoint is already written) the signal raises
    ``_Stop`` instead."""

    def __init__(self) -> None:
        self.hit = False
        self.raising = False
        self._old: dict = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.hit = True
        if self.raising:
            self.raising = False  # a second Ctrl-C while _Stop unwinds must not raise again
            raise _Stop

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class TrainResult:
    run_dir: Path
    model: VAE
    epochs_done: int
    interrupted: bool
    stopped_early: bool
    summary: dict
    config: TrainConfig | None = None  # the resolved configuration the run used


# Each use of randomness in a run has its own generator, seeded by [seed, salt]: evaluating never
# perturbs training, and `minivae evaluate` reproduces a run's final numbers exactly.
INIT_SALT, TRAIN_SALT, VAL_SALT, TEST_ELBO_SALT, IWAE_SALT, PICTURES_SALT = range(6)
EVAL_BATCH = 1000  # held-out examples per loss evaluation: bounds memory on MNIST-sized sets


def held_out(config: TrainConfig, ds, dtype) -> tuple:
    """(train, val, test) splits of ``ds`` as the run sees them, plus the validation and test inputs
    binarized once with a fixed seed (seed + 1: the usual protocol for held-out sets; None when a
    split is empty)."""
    from minivae import data as data_mod

    train_ds, val_ds, test_ds = data_mod.split(ds, val_fraction=config.val_fraction,
                                               test_fraction=config.test_fraction, seed=config.seed)
    fixed = data_mod.Binarizer("static" if config.binarize != "none" else "none", config.seed + 1)
    val_x = fixed(val_ds.x.astype(dtype), 0) if len(val_ds.x) else None
    test_x = fixed(test_ds.x.astype(dtype), 0) if len(test_ds.x) else None
    return train_ds, val_ds, test_ds, val_x, test_x


def eval_elbo(model: VAE, ds, x: np.ndarray, seed: int, salt: int) -> dict | None:
    """-ELBO on held-out data (nats per example, with its standard error) from its own generator;
    None when it is not finite."""
    rng = np.random.default_rng([seed, salt])
    recon, kl = [], []
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(0, len(x), EVAL_BATCH):
            y = ds.y[s:s + EVAL_BATCH] if model.n_classes else None
            try:
                res = model.loss(x[s:s + EVAL_BATCH], y, rng=rng)
            except FloatingPointError:
                return None
            recon.append(model.backend.to_host(res.recon_per_example))
            kl.append(model.backend.to_host(res.kl_per_example))
    r, k = np.concatenate(recon), np.concatenate(kl)
    per = r + k
    return {"loss": float(per.mean()), "recon": float(r.mean()), "kl": float(k.mean()),
            "stderr": float(per.std(ddof=1) / math.sqrt(len(per))) if len(per) > 1 else None}


# Files a run directory may hold that minivae wrote: the run's own, its pictures (named in
# minivae.pictures.FILENAMES), the default outputs of `minivae sample` and `minivae reconstruct`
# (samples-<seed>-<n>[-label<k>].png, samples-<seed>.png of earlier versions,
# reconstructions-<n>.png) and the temporary files of their atomic writes.
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", CHECKPOINT)
COMMAND_PICTURES = r"(?:samples-\d+(?:-\d+(?:-label\d+)?)?|reconstructions-\d+)\.png"


def is_minivae_file(name: str) -> bool:
    """True for a file name some minivae run (or command on it) writes into a run directory, or a
    temporary file of such a write; ``--overwrite`` deletes these and nothing else."""
    from minivae.pictures import FILENAMES  # here: matplotlib costs 0.3 s to import

    known = "|".join(map(re.escape, (*RUN_FILES, *FILENAMES.values())))
    base = rf"(?:{known}|{COMMAND_PICTURES})"
    return re.fullmatch(rf"{base}|\.{base}\..+{re.escape(TMP_SUFFIX)}", name) is not None


def _remove_earlier_run(run_dir: Path) -> None:
    for path in run_dir.iterdir():
        if is_minivae_file(path.name) and not path.is_dir():
            path.unlink(missing_ok=True)


def resolve(config: TrainConfig) -> TrainConfig:
    """``config`` with what it leaves to the machine made explicit, as config.json records it: the
    backend that "auto" picks here, the data directory an MNIST-family data set is read from
    ($MINIVAE_DATA or the per-user cache when data_dir is None; absolute), and the user's data
    file or folder as an absolute path (so the run can be sampled, evaluated and resumed from
    any directory). BackendUnavailable (a ValueError) if the backend cannot run here."""
    from minivae import data as data_mod

    data = config.data
    if data not in data_mod.BUILTIN and Path(data).expanduser().exists():
        data = str(Path(data).expanduser().resolve())
    data_dir = config.data_dir
    if config.data in data_mod.SOURCES:
        folder = data_mod.default_data_dir(data_dir).resolve()
        if folder.exists() and not folder.is_dir():
            raise data_mod.DataError(f"data directory {folder} is a file (from --data-dir or "
                                     "$MINIVAE_DATA); expected a folder")
        data_dir = str(folder)
    return dataclasses.replace(config, backend=get_backend(config.backend).name, data=data,
                               data_dir=data_dir)


def _resume_config(config: TrainConfig, run_dir: Path, backend: str | None,
                   log: Callable[[str], None]) -> TrainConfig:
    """The saved configuration, resolved, on ``backend`` if given, else on the recorded one."""
    recorded = config.backend
    if backend is not None:
        config = dataclasses.replace(config, backend=backend)
    try:
        config = resolve(config)
    except BackendUnavailable as e:
        if backend is not None:
            raise
        raise RunError(f"{run_dir} was trained with backend {recorded!r}, which cannot run here "
                       f"({e}); continue it on another with `minivae train --resume {run_dir} "
                       "--backend numpy`") from None
    if recorded != "auto" and config.backend != recorded:
        log(f"note: continuing on backend {config.backend!r}; the run so far used {recorded!r}, "
            f"so its weights will not be bitwise those of an uninterrupted {recorded!r} run")
    return config


def train(config: TrainConfig | None, run_dir: str | Path, *, overwrite: bool = False,
          resume: bool = False, backend: str | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None, report: Callable[[str], None] | None = None,
          max_steps: int | None = None) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``run_dir``.

    ``config`` is resolved (``resolve``) before anything is written; with ``resume`` it is read
    from the checkpoint instead (pass None), and ``backend`` may move the run to another backend
    (for one where the recorded backend cannot run; the weights are then not bitwise those the
    recorded backend would reach). ``overwrite`` replaces an earlier run: every file minivae wrote
    there (``is_minivae_file``) is deleted, anything else in the folder is left alone.
    SIGINT/SIGTERM save a checkpoint at the next step boundary; during the final evaluation they
    stop it (the checkpoint is already complete, and ``resume`` evaluates again); either way the
    result has ``interrupted`` set. ``max_steps`` stops after that many optimiser steps in this
    call (for tests of resume). ``log`` takes progress and notes (default: stderr), ``report`` the
    result lines (default: stdout).
    """
    from minivae import data as data_mod

    log = log or (lambda s: print(s, file=sys.stderr))
    report = report or print
    run_dir = Path(run_dir)
    best: dict | None = None  # early stopping: the weights of the best validation epoch so far
    if resume:
        config, state, groups = _load_checkpoint(run_dir)
        config = _resume_config(config, run_dir, backend, log)
        params, optim_state, best = groups["param"], groups["optim"], groups["best"] or None
    else:
        if backend is not None:
            raise ValueError(f"backend={backend!r} is for resume; a new run takes its backend "
                             "from its configuration")
        if run_dir.exists() and not run_dir.is_dir():
            raise RunError(f"run directory {run_dir} is a file; expected a folder (or a path that "
                           "does not exist yet)")
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            resumable = " or --resume to continue it" if (run_dir / CHECKPOINT).is_file() else ""
            raise RunError(f"run directory {run_dir} already exists and is not empty (use "
                           f"--overwrite to replace it{resumable}, or --out for another directory)")
        config = resolve(config)
        state = RunState()

    ds = data_mod.load_dataset(config.data, data_dir=config.data_dir, key=config.key)
    if config.likelihood in ("bernoulli", "cbernoulli") and (ds.x.min() < 0 or ds.x.max() > 1):
        raise ValueError(f"data {config.data!r} has values outside [0, 1]: the "
                         f"{config.likelihood} likelihood needs data in [0, 1]")
    if config.conditional and ds.y is None:
        raise ValueError(f"conditional=True needs labels, and data {config.data!r} has none")
    if config.binarize != "none" and config.likelihood not in ("bernoulli",):
        log(f"note: binarize={config.binarize} with the {config.likelihood} likelihood")
    for note in ds.notes:
        log(f"note: {note}")
    if ds.image_shape is None and config.pictures:
        log(f"note: the data {config.data!r} are flat (N, D) rows with no image shape, so the "
            "pictures are the loss curves and the latent scatter only; save (N, H, W) arrays or "
            "PNG images for the image pictures")
    model = build_model(config, ds.x.shape[1], ds.n_classes)
    train_ds, val_ds, test_ds, val_x, test_x = held_out(config, ds, model.dtype)
    optimizer = _make_optimizer(config, model)
    binarizer = data_mod.Binarizer(config.binarize, config.seed)

    if resume:
        where = str(run_dir / CHECKPOINT)
        load_params(model, params, where)
        _check_optimizer_state(optim_state, where)
        try:
            optimizer.load_state_dict(optim_state)
        except ValueError as e:
            raise RunError(f"{where}: optimiser state does not match: {e}") from None
        if best is not None:
            check_params(model, best, where, "best-epoch weight")
        elif config.patience is not None and state.best_epoch is not None and not state.done:
            raise RunError(f"{where}: early stopping needs the weights of the best epoch "
                           f"({state.best_epoch}), and the checkpoint has none")
        _truncate_metrics(run_dir, state.epoch)
        if state.done:
            log(f"{run_dir} is already complete ({state.epoch} epochs)")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_earlier_run(run_dir)
        state.rng_state = np.random.default_rng([config.seed, TRAIN_SALT]).bit_generator.state
        state.epoch_rng_state = state.rng_state
    for leftover in run_dir.glob(f".*{TMP_SUFFIX}"):  # a writer killed before its rename left these
        if is_minivae_file(leftover.name):
            leftover.unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    rng = np.random.default_rng([config.seed, TRAIN_SALT])  # its state is the run's, set per epoch below
    n = len(train_ds.x)
    n_batches = math.ceil(n / config.batch_size)
    steps_this_call = 0
    interrupted = stopped_early = False
    summary: dict = {}
    xtrain = train_ds.x.astype(model.dtype)
    t0 = time.perf_counter()
    with _Interrupt() as intr, _blas_threads_for(config, model):
        while not state.done and state.epoch < config.epochs:
            epoch = state.epoch
            # the batch order is drawn at the start of the epoch; a mid-epoch resume redraws it
            rng.bit_generator.state = state.epoch_rng_state
            perm = rng.permutation(n)
            if state.step:
                rng.bit_generator.state = state.rng_state
            x_epoch = model._dev(binarizer(xtrain, epoch).astype(model.dtype, copy=False))
            beta = config.beta_at(epoch)
            bar = _progress(progress, n_batches, state.step, f"epoch {epoch + 1}/{config.epochs}")
            try:
                while state.step < n_batches:
                    idx = perm[state.step * config.batch_size:(state.step + 1) * config.batch_size]
                    # eps from the counter-based stream: every backend draws the same noise
                    stream = philox.Stream(config.seed, state.eps_offset)
                    yb = train_ds.y[idx] if model.n_classes else None
                    # overflow is detected and reported below, not warned about
                    with np.errstate(over="ignore", invalid="ignore"):
                        try:
                            res = model.loss(x_epoch[model._dev(idx)], yb, rng=stream, beta=beta,
                                             n_samples=config.n_samples, check=False)
                            bad = _first_nonfinite(res, model.backend.xp)
                        except FloatingPointError:
                            res, bad = None, "loss"
                    if bad is not None:
                        msg = (f"non-finite {bad} at epoch {epoch + 1}, step {state.step + 1} "
                               f"(global step {state.global_step + 1})")
                        if config.on_nonfinite == "stop":
                            raise NonFiniteError(msg + _kept(run_dir))
                        state.skipped_steps += 1
                        log(f"skipped: {msg}")
                    else:
                        # an update that overflows shows as a non-finite loss at the next step,
                        # which is reported there: no raw RuntimeWarning beside that message
                        with np.errstate(over="ignore", invalid="ignore"):
                            if config.clip is not None:
                                clip_grad_norm(res.grads, config.clip, xp=model.backend.xp)
                            optimizer.step(res.grads, check_finite=False)  # checked just above
                        s = state.sums
                        s[0] += res.loss * len(idx)
                        s[1] += res.recon * len(idx)
                        s[2] += res.kl * len(idx)
                        s[3] += len(idx)
                    state.step += 1
                    state.global_step += 1
                    steps_this_call += 1
                    state.rng_state = rng.bit_generator.state
                    state.eps_offset = stream.offset
                    if bar is not None:
                        bar.update(1)
                        if bad is None:
                            bar.set_postfix(loss=f"{res.loss:.2f}", recon=f"{res.recon:.2f}",
                                            kl=f"{res.kl:.2f}")
                    if intr.hit or (max_steps is not None and steps_this_call >= max_steps):
                        interrupted = True
                        break
            finally:
                if bar is not None:
                    bar.close()
            if interrupted:
                save_checkpoint(run_dir, model, optimizer, config, state, best)
                log(f"interrupted: checkpoint saved at epoch {epoch + 1}, step {state.step}; "
                    f"continue with `minivae train --resume {run_dir}`")
                break

            s = state.sums
            # train_loss is the objective optimised (recon + beta KL); train_neg_elbo is -ELBO;
            # an epoch whose every step was skipped has none of them (null, not 0)
            loss, neg_elbo, recon, kl = ((v / s[3] if s[3] else None)
                                         for v in (s[0], s[1] + s[2], s[1], s[2]))
            rec = {"epoch": epoch + 1, "beta": beta, "train_loss": loss,
                   "train_neg_elbo": neg_elbo, "train_recon": recon,
                   "train_kl": kl, "skipped_steps": state.skipped_steps,
                   "elapsed_seconds": round(time.perf_counter() - t0, 3)}
            if val_x is not None:
                v = eval_elbo(model, val_ds, val_x, config.seed, VAL_SALT)
                if v is None:
                    msg = f"non-finite validation loss at epoch {epoch + 1}"
                    if config.on_nonfinite == "stop":
                        raise NonFiniteError(msg + _kept(run_dir))
                    log(msg)
                    v = {"loss": None, "recon": None, "kl": None}
                rec |= {"val_loss": v["loss"], "val_recon": v["recon"], "val_kl": v["kl"]}
                if v["loss"] is not None and v["loss"] < state.best_val:
                    state.best_val, state.best_epoch, state.epochs_since_best = v["loss"], epoch + 1, 0
                    if config.patience is not None:
                        host = model.backend.to_host
                        best = {k: np.array(host(p)) for k, p in model.params.items()}
                else:
                    state.epochs_since_best += 1
            _record(run_dir, rec)
            log(f"epoch {epoch + 1:3d}/{config.epochs}  train -ELBO {_fmt(rec['train_neg_elbo'], '8.3f')} "
                f"(recon {_fmt(rec['train_recon'])}, KL {_fmt(rec['train_kl'])})"
                + (f"  objective {_fmt(rec['train_loss'])} (beta {beta:g})" if beta != 1 else "")
                + (f"  val -ELBO {rec['val_loss']:8.3f}" if rec.get("val_loss") is not None else "")
                + (f"  (all {n_batches} steps skipped)" if not s[3] else ""))
            state.epoch, state.step, state.sums = epoch + 1, 0, [0.0, 0.0, 0.0, 0.0]
            state.epoch_rng_state = state.rng_state
            if config.patience is not None and state.epochs_since_best >= config.patience:
                stopped_early = True
                log(f"early stop: validation -ELBO has not improved for {config.patience} epochs")
            if stopped_early or state.epoch >= config.epochs:
                state.done = True
                if best is not None and state.best_epoch != epoch + 1:
                    load_params(model, best, "the best epoch's weights")
                    log(f"keeping the weights of epoch {state.best_epoch}, the best "
                        f"validation -ELBO ({state.best_val:.3f})")
            save_checkpoint(run_dir, model, optimizer, config, state,
                            None if state.done else best)
            if stopped_early:
                break

        if state.skipped_steps * 2 > state.global_step and not interrupted:
            log(f"warning: {state.skipped_steps} of {state.global_step} steps were skipped for a "
                "non-finite loss or gradient: the model has barely trained (lower --lr, or try "
                "--clip)")
        if state.done and not interrupted:
            stop = (f"interrupted during the final evaluation: training is complete and its "
                    f"checkpoint intact; `minivae train --resume {run_dir}` evaluates it again")
            if intr.hit:  # the signal came after the last step: nothing of the evaluation ran
                interrupted = True
                log(stop)
            else:
                intr.raising = True
                try:
                    summary = _finish(run_dir, config, model, test_ds, test_x, state, log,
                                      report)
                except _Stop:
                    interrupted = True
                    log(stop)
                finally:
                    intr.raising = False
    return TrainResult(run_dir, model, state.epoch, interrupted, stopped_early, summary, config)


# Below this many multiply-adds in a training step's largest GEMM, a second BLAS thread costs more
# (waking it, splitting a small matrix) than it saves: the default digits model (largest GEMM
# 128 x 128 x 64 = 1M) trained its 50 epochs in 1.9 s on one OpenBLAS thread and 3.7 s on two
# (2 cores, `minivae train --no-pictures`, three interleaved runs each), with the same bits.
# MNIST's 784-400 layer at batch 128 (40M) keeps every thread.
SMALL_GEMM_MACS = 1 << 23


def largest_gemm_macs(config: TrainConfig, model: VAE) -> int:
    """Multiply-adds of the largest matrix product in one training step: batch x fan-in x
    fan-out of the widest layer (the backward's products have the same size)."""
    layers = [w.shape for k, w in model.params.items() if k.endswith(".W")]
    return config.batch_size * max(math.prod(shape) for shape in layers)


def _blas_threads_for(config: TrainConfig, model: VAE):
    """One BLAS thread for the run when its GEMMs are small (``SMALL_GEMM_MACS``) and run on the
    CPU, else the BLAS's own choice; restored when the run ends."""
    if model.backend.on_gpu or largest_gemm_macs(config, model) >= SMALL_GEMM_MACS:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: a bar on a terminal, none in logs and pipes
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, disable=None,
                file=sys.stderr)


def _first_nonfinite(res, xp) -> str | None:
    if not math.isfinite(res.loss):
        return "loss"
    key = first_nonfinite(res.grads, xp)
    return None if key is None else f"gradient of {key}"


def finite_or_none(v: float) -> float | None:
    """``v``, or None where it is NaN or inf (a standard error of one example): JSON has no NaN."""
    return v if math.isfinite(v) else None


def _fmt(v: float | None, spec: str = ".3f") -> str:
    """A number for the console; "-" for a missing one (a skipped epoch, a one-example stderr)."""
    return "-" if v is None or math.isnan(v) else format(v, spec)


def _kept(run_dir: Path) -> str:
    """What a non-finite stop leaves behind, for its message."""
    if (run_dir / CHECKPOINT).is_file():
        return "; the last good checkpoint is kept"
    return ("; no checkpoint had been written yet, so there is nothing to resume: change the "
            f"settings (a smaller --lr often helps) and start again with --out {run_dir} "
            "--overwrite")


def _finish(run_dir: Path, config: TrainConfig, model: VAE, test_ds, test_x, state: RunState,
            log, report) -> dict:
    """Test -ELBO, IWAE NLL and pictures at the end of a run."""
    # early stopping kept the best validation epoch's weights; otherwise they are the last's
    kept = state.best_epoch if config.patience is not None and state.best_epoch is not None \
        else state.epoch
    summary: dict = {"epochs": state.epoch, "steps": state.global_step,
                     "skipped_steps": state.skipped_steps, "weights_epoch": kept}
    if test_x is not None:
        t = eval_elbo(model, test_ds, test_x, config.seed, TEST_ELBO_SALT)
        if t is None:
            log("the test -ELBO is not finite: no evaluation, no pictures")
            atomic_write_text(run_dir / "summary.json", json.dumps(summary | {
                "test_elbo_loss": None}, indent=2) + "\n")
            return summary
        y = test_ds.y if model.n_classes else None
        iw = model.iwae(test_x, y, k=config.iwae_k,
                        rng=np.random.default_rng([config.seed, IWAE_SALT]))
        summary |= {"test_elbo_loss": t["loss"], "test_elbo_loss_stderr": t["stderr"],
                    "test_recon": t["recon"], "test_kl": t["kl"], "iwae_k": config.iwae_k,
                    "test_iwae_nll": iw.nll, "test_iwae_nll_stderr": finite_or_none(iw.stderr),
                    "n_test": len(test_x)}
        report(f"test -ELBO {t['loss']:.3f} +- {_fmt(t['stderr'])} nats, IWAE (K={config.iwae_k}) "
               f"NLL {iw.nll:.3f} +- {_fmt(iw.stderr)} nats  ({len(test_x)} test examples)")
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if config.pictures and test_x is not None:
        from minivae import pictures

        shape = getattr(test_ds, "image_shape", None)
        made = pictures.make_all(model, test_x, test_ds.y, shape, run_dir,
                                 np.random.default_rng([config.seed, PICTURES_SALT]),
                                 metrics=_read_metrics(run_dir),
                                 originals=test_ds.x if config.binarize != "none" else None)
        log(f"pictures: {', '.join(p.name for p in made)}")
    report(f"run saved in {run_dir}")
    return summary
