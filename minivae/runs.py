"""Run directories: the checkpoint, the metrics log, and which files a run owns.

A run directory holds::

    config.json          the fully resolved configuration (``minivae.config.TrainConfig``)
    metrics.jsonl        one JSON record per epoch, epochs counted from 1
    checkpoint.safetensors  parameters + optimiser state (tensors) and, in the header's metadata,
                         the configuration and the ``RunState`` (epoch, step, generator states);
                         written atomically, so it is always a complete checkpoint
    summary.json         final test -ELBO and IWAE NLL (with standard errors)
    *.png                pictures (see minivae.pictures)

Everything here refuses what it cannot use with a one-line ``RunError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from minivae._files import TMP_SUFFIX, atomic_write, atomic_write_text
from minivae.config import TrainConfig

if TYPE_CHECKING:
    from minivae.model import VAE

CHECKPOINT = "checkpoint.safetensors"
# 2: epochs in metrics.jsonl, summary.json and best_epoch count from 1, as the console does
# (version 1 counted from 0; its checkpoints are read and converted).
FORMAT_VERSION = 2


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used (missing, foreign, corrupt, mismatched)."""


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
    config, state, groups = load_checkpoint(run_dir)
    return config, state, groups["param"], groups["optim"]


def load_checkpoint(run_dir: Path) -> tuple[TrainConfig, RunState, dict[str, dict]]:
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


def check_optimizer_state(optim_state: dict, where: str) -> None:
    """Refuse NaN or inf in a saved optimiser state: resuming would poison every later step."""
    for k, v in optim_state.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise RunError(f"{where}: optimiser state {k} holds non-finite values (NaN or inf); "
                           "this checkpoint cannot be resumed")


# ------------------------------------------------------------------------------------------------
# the metrics log


def record_metrics(run_dir: Path, rec: dict) -> None:
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


def read_metrics(run_dir: Path) -> list[dict]:
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


def truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """A crash between writing a metrics line and the checkpoint leaves a line for an epoch the
    checkpoint does not have: drop lines past the checkpoint so the resumed run rewrites them."""
    recs = [r for r in read_metrics(run_dir) if r["epoch"] <= epochs_done]
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in recs))


# ------------------------------------------------------------------------------------------------
# the files of a run


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


def remove_earlier_run(run_dir: Path) -> None:
    for path in run_dir.iterdir():
        if is_minivae_file(path.name) and not path.is_dir():
            path.unlink(missing_ok=True)




def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files a writer killed before its rename left behind."""
    for leftover in run_dir.glob(f".*{TMP_SUFFIX}"):
        if is_minivae_file(leftover.name):
            leftover.unlink(missing_ok=True)


def write_config(run_dir: Path, config: TrainConfig) -> None:
    atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
