"""Training: the loop that turns a configuration into a trained run, and its exact resume.

``train`` reads top to bottom:

1. ``_open``: a new run (its configuration resolved, its folder checked) or a checkpoint to
   continue; the data, the model and the optimiser (their state restored on resume);
2. ``_train_epoch`` for every epoch: the epoch's batch order, then ``_step`` per batch (the
   model's loss and gradients, checked for NaN/inf, then the optimiser's update);
3. ``_close_epoch``: the metrics record, validation, early stopping and the checkpoint;
4. ``_finish``: test -ELBO, IWAE NLL and pictures.

Checkpoints, the metrics log and the run directory's files are ``minivae.runs``; the settings are
``minivae.config.TrainConfig``.

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
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minivae import philox
from minivae._files import atomic_write_text
from minivae.backends import BackendUnavailable, get_backend
from minivae.config import TrainConfig
from minivae.model import VAE
from minivae.optim import clip_grad_norm, first_nonfinite, make_optimizer
from minivae.runs import (
    CHECKPOINT,
    RunError,
    RunState,
    check_optimizer_state,
    check_params,
    load_checkpoint,
    load_params,
    read_metrics,
    record_metrics,
    remove_earlier_run,
    remove_leftovers,
    save_checkpoint,
    truncate_metrics,
    write_config,
)


class NonFiniteError(FloatingPointError):
    """The loss or a gradient became NaN or inf during training."""


@dataclass
class TrainResult:
    run_dir: Path
    model: VAE
    epochs_done: int
    interrupted: bool
    stopped_early: bool
    summary: dict
    config: TrainConfig | None = None  # the resolved configuration the run used


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
    log = log or (lambda s: print(s, file=sys.stderr))
    report = report or print
    run = _open(config, Path(run_dir), overwrite=overwrite, resume=resume, backend=backend,
                log=log, max_steps=max_steps)
    state = run.state
    summary: dict = {}
    interrupted = stopped_early = False
    with _Interrupt() as intr:
        with _blas_threads_for(run.config, run.model):  # the steps; the evaluation keeps them all
            while not state.done and state.epoch < run.config.epochs:
                interrupted = _train_epoch(run, intr, progress)
                if interrupted:
                    save_checkpoint(run.dir, run.model, run.optimizer, run.config, state, run.best)
                    log(f"interrupted: checkpoint saved at epoch {state.epoch + 1}, step "
                        f"{state.step}; continue with `minivae train --resume {run.dir}`")
                    break
                stopped_early = _close_epoch(run)
                if stopped_early:
                    break
        if state.skipped_steps * 2 > state.global_step and not interrupted:
            log(f"warning: {state.skipped_steps} of {state.global_step} steps were skipped for a "
                "non-finite loss or gradient: the model has barely trained (lower --lr, or try "
                "--clip)")
        if state.done and not interrupted:
            summary, interrupted = _final_evaluation(run, intr, report)
    return TrainResult(run.dir, run.model, state.epoch, interrupted, stopped_early, summary,
                       run.config)


@dataclass
class _Run:
    """What one call of ``train`` works on."""

    dir: Path
    config: TrainConfig
    state: RunState
    model: VAE
    optimizer: Any
    data: Any  # the whole data set (minivae.data.Dataset)
    splits: tuple  # (train, val, test) Datasets, then the validation and test inputs (or None)
    binarizer: Any
    best: dict | None  # early stopping: the weights of the best validation epoch so far
    log: Callable[[str], None]
    steps_left: int | None  # max_steps: optimiser steps this call may still take
    # the batch-order generator; its state is the run's (state.epoch_rng_state, rng_state)
    rng: np.random.Generator = dataclasses.field(default_factory=np.random.default_rng)
    started: float = dataclasses.field(default_factory=time.perf_counter)


def _open(config: TrainConfig | None, run_dir: Path, *, overwrite: bool, resume: bool,
          backend: str | None, log: Callable[[str], None], max_steps: int | None) -> _Run:
    """Everything a run needs before its first step, checked before anything is written: the
    configuration (new or saved), the data, the model and optimiser (restored on resume); then
    the run directory is prepared and config.json written."""
    from minivae import data as data_mod

    best: dict | None = None
    if resume:
        config, state, groups = load_checkpoint(run_dir)
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
    _check_data(config, ds, log)
    model = build_model(config, ds.x.shape[1], ds.n_classes)
    splits = held_out(config, ds, model.dtype)
    optimizer = _make_optimizer(config, model)

    if resume:
        where = str(run_dir / CHECKPOINT)
        load_params(model, params, where)
        check_optimizer_state(optim_state, where)
        try:
            optimizer.load_state_dict(optim_state)
        except ValueError as e:
            raise RunError(f"{where}: optimiser state does not match: {e}") from None
        if best is not None:
            check_params(model, best, where, "best-epoch weight")
        elif config.patience is not None and state.best_epoch is not None and not state.done:
            raise RunError(f"{where}: early stopping needs the weights of the best epoch "
                           f"({state.best_epoch}), and the checkpoint has none")
        truncate_metrics(run_dir, state.epoch)
        if state.done:
            log(f"{run_dir} is already complete ({state.epoch} epochs)")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_earlier_run(run_dir)
        state.rng_state = np.random.default_rng([config.seed, TRAIN_SALT]).bit_generator.state
        state.epoch_rng_state = state.rng_state
    remove_leftovers(run_dir)
    write_config(run_dir, config)
    return _Run(run_dir, config, state, model, optimizer, ds, splits,
                data_mod.Binarizer(config.binarize, config.seed), best, log, max_steps,
                rng=np.random.default_rng([config.seed, TRAIN_SALT]))


def _check_data(config: TrainConfig, ds, log: Callable[[str], None]) -> None:
    """Refuse data the model cannot take; say what reading changed or what will not be drawn."""
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


def _train_epoch(run: _Run, intr: _Interrupt, progress: bool) -> bool:
    """The remaining steps of epoch ``state.epoch``; True when a signal or ``max_steps`` stopped
    it at a step boundary."""
    c, state, model = run.config, run.state, run.model
    train_ds = run.splits[0]
    epoch, n = state.epoch, len(train_ds.x)
    n_batches = math.ceil(n / c.batch_size)
    # the batch order is drawn at the start of the epoch; a mid-epoch resume redraws it
    run.rng.bit_generator.state = state.epoch_rng_state
    perm = run.rng.permutation(n)
    if state.step:
        run.rng.bit_generator.state = state.rng_state
    x_epoch = model._dev(run.binarizer(train_ds.x.astype(model.dtype), epoch)
                         .astype(model.dtype, copy=False))
    beta = c.beta_at(epoch)
    run.optimizer.lr = c.lr_at(epoch)  # a function of the epoch: a resumed run sets it again
    bar = _progress(progress, n_batches, state.step, f"epoch {epoch + 1}/{c.epochs}")
    try:
        while state.step < n_batches:
            idx = perm[state.step * c.batch_size:(state.step + 1) * c.batch_size]
            # eps from the counter-based stream: every backend draws the same noise
            stream = philox.Stream(c.seed, state.eps_offset)
            y = train_ds.y[idx] if model.n_classes else None
            res, bad = _step(run, x_epoch[model._dev(idx)], y, beta, stream)
            if bad is not None:
                msg = (f"non-finite {bad} at epoch {epoch + 1}, step {state.step + 1} "
                       f"(global step {state.global_step + 1})")
                if c.on_nonfinite == "stop":
                    raise NonFiniteError(msg + _kept(run.dir))
                state.skipped_steps += 1
                run.log(f"skipped: {msg}")
            else:
                for i, v in enumerate((res.loss, res.recon, res.kl, 1.0)):
                    state.sums[i] += v * len(idx)
            state.step += 1
            state.global_step += 1
            state.rng_state = run.rng.bit_generator.state
            state.eps_offset = stream.offset
            if bar is not None:
                bar.update(1)
                if bad is None:
                    bar.set_postfix(loss=f"{res.loss:.2f}", recon=f"{res.recon:.2f}",
                                    kl=f"{res.kl:.2f}")
            if run.steps_left is not None:
                run.steps_left -= 1
            if intr.hit or run.steps_left == 0:
                return True
    finally:
        if bar is not None:
            bar.close()
    return False


def _step(run: _Run, x, y, beta: float, stream: philox.Stream):
    """One optimiser step on the batch (x, y): the loss and every gradient (``VAE.loss``),
    checked, then the update. Returns (result, None), or (result or None, what was not finite),
    in which case nothing was updated."""
    c, model = run.config, run.model
    # overflow is detected and reported by the caller, not warned about: an update that overflows
    # shows as a non-finite loss at the next step
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            res = model.loss(x, y, rng=stream, beta=beta, n_samples=c.n_samples, check=False,
                             objective=c.objective, estimator=c.estimator)
        except FloatingPointError:
            return None, "loss"
        bad = _first_nonfinite(res, model.backend.xp)
        if bad is None:
            if c.clip is not None:
                clip_grad_norm(res.grads, c.clip, xp=model.backend.xp)
            run.optimizer.step(res.grads, check_finite=False)  # checked just above
    return res, bad


def _close_epoch(run: _Run) -> bool:
    """The end of epoch ``state.epoch``: its metrics record and console line, validation, early
    stopping and the checkpoint. True when early stopping ends the run here."""
    c, state, model = run.config, run.state, run.model
    _, val_ds, _, val_x, _ = run.splits
    epoch, beta, s = state.epoch, c.beta_at(state.epoch), state.sums
    # train_loss is the objective optimised (recon + beta KL, or the negative K-sample bound);
    # train_neg_elbo is -ELBO (with the Monte-Carlo KL under iwae); an epoch whose every step was
    # skipped has none of them (null, not 0)
    loss, neg_elbo, recon, kl = ((v / s[3] if s[3] else None)
                                 for v in (s[0], s[1] + s[2], s[1], s[2]))
    rec = {"epoch": epoch + 1, "objective": c.objective, "lr": c.lr_at(epoch), "beta": beta,
           "train_loss": loss,
           "train_neg_elbo": neg_elbo, "train_recon": recon, "train_kl": kl,
           "skipped_steps": state.skipped_steps,
           "elapsed_seconds": round(time.perf_counter() - run.started, 3)}
    if val_x is not None:
        v = eval_elbo(model, val_ds, val_x, c.seed, VAL_SALT)
        if v is None:
            msg = f"non-finite validation loss at epoch {epoch + 1}"
            if c.on_nonfinite == "stop":
                raise NonFiniteError(msg + _kept(run.dir))
            run.log(msg)
            v = {"loss": None, "recon": None, "kl": None}
        rec |= {"val_loss": v["loss"], "val_recon": v["recon"], "val_kl": v["kl"]}
        if v["loss"] is not None and v["loss"] < state.best_val:
            state.best_val, state.best_epoch, state.epochs_since_best = v["loss"], epoch + 1, 0
            if c.patience is not None:
                host = model.backend.to_host
                run.best = {k: np.array(host(p)) for k, p in model.params.items()}
        else:
            state.epochs_since_best += 1
    record_metrics(run.dir, rec)
    skipped_all = f"  (all {state.step} steps skipped)" if not s[3] else ""
    run.log(f"epoch {epoch + 1:3d}/{c.epochs}  train -ELBO {_fmt(neg_elbo, '8.3f')} "
            f"(recon {_fmt(recon)}, KL {_fmt(kl)})"
            + (f"  objective {_fmt(loss)} (beta {beta:g})" if beta != 1 else "")
            + (f"  -IWAE bound (K={c.n_samples}) {_fmt(loss)}" if c.objective == "iwae" else "")
            + (f"  val -ELBO {rec['val_loss']:8.3f}" if rec.get("val_loss") is not None else "")
            + skipped_all)
    state.epoch, state.step, state.sums = epoch + 1, 0, [0.0, 0.0, 0.0, 0.0]
    state.epoch_rng_state = state.rng_state  # the next epoch draws the next permutation
    stopped_early = c.patience is not None and state.epochs_since_best >= c.patience
    if stopped_early:
        run.log(f"early stop: validation -ELBO has not improved for {c.patience} epochs")
    if stopped_early or state.epoch >= c.epochs:
        state.done = True
        if run.best is not None and state.best_epoch != epoch + 1:
            load_params(model, run.best, "the best epoch's weights")
            run.log(f"keeping the weights of epoch {state.best_epoch}, the best "
                    f"validation -ELBO ({state.best_val:.3f})")
    save_checkpoint(run.dir, model, run.optimizer, c, state, None if state.done else run.best)
    return stopped_early


def _final_evaluation(run: _Run, intr: _Interrupt, report: Callable[[str], None]
                      ) -> tuple[dict, bool]:
    """``_finish`` under the interrupt handler's raising mode: (summary, interrupted)."""
    stop = (f"interrupted during the final evaluation: training is complete and its "
            f"checkpoint intact; `minivae train --resume {run.dir}` evaluates it again")
    if intr.hit:  # the signal came after the last step: nothing of the evaluation ran
        run.log(stop)
        return {}, True
    intr.raising = True
    try:
        return _finish(run, report), False
    except _Stop:
        run.log(stop)
        return {}, True
    finally:
        intr.raising = False


def _finish(run: _Run, report: Callable[[str], None]) -> dict:
    """Test -ELBO, IWAE NLL and pictures at the end of a run."""
    config, model, state, log = run.config, run.model, run.state, run.log
    _, _, test_ds, _, test_x = run.splits
    # early stopping kept the best validation epoch's weights; otherwise they are the last's
    kept = state.best_epoch if config.patience is not None and state.best_epoch is not None \
        else state.epoch
    summary: dict = {"epochs": state.epoch, "steps": state.global_step,
                     "skipped_steps": state.skipped_steps, "weights_epoch": kept}
    if test_x is not None:
        t = eval_elbo(model, test_ds, test_x, config.seed, TEST_ELBO_SALT)
        if t is None:
            log("the test -ELBO is not finite: no evaluation, no pictures")
            atomic_write_text(run.dir / "summary.json", json.dumps(summary | {
                "test_elbo_loss": None}, indent=2) + "\n")
            return summary
        y = test_ds.y if model.n_classes else None
        iw = model.iwae(test_x, y, k=config.iwae_k,
                        rng=np.random.default_rng([config.seed, IWAE_SALT]))
        summary |= {"test_elbo_loss": t["loss"], "test_elbo_loss_stderr": t["stderr"],
                    "test_recon": t["recon"], "test_kl": t["kl"], "iwae_k": config.iwae_k,
                    "test_iwae_nll": iw.nll, "test_iwae_nll_stderr": finite_or_none(iw.stderr),
                    "n_test": len(test_x)} | active_units(model, test_ds, test_x)
        report(f"test -ELBO {t['loss']:.3f} +- {_fmt(t['stderr'])} nats, IWAE (K={config.iwae_k}) "
               f"NLL {iw.nll:.3f} +- {_fmt(iw.stderr)} nats  ({len(test_x)} test examples)")
        report(f"active units: {summary['active_units']} of {model.z_dim} (Var_x E_q[z_u|x] > "
               f"{ACTIVE_UNIT_THRESHOLD:g})")
    atomic_write_text(run.dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if config.pictures and test_x is not None:
        from minivae import pictures

        shape = getattr(test_ds, "image_shape", None)
        made = pictures.make_all(model, test_x, test_ds.y, shape, run.dir,
                                 np.random.default_rng([config.seed, PICTURES_SALT]),
                                 metrics=read_metrics(run.dir),
                                 originals=test_ds.x if config.binarize != "none" else None,
                                 active=np.array(summary["active_unit_variances"])
                                 > ACTIVE_UNIT_THRESHOLD)
        log(f"pictures: {', '.join(p.name for p in made)}")
    report(f"run saved in {run.dir}")
    return summary


def _make_optimizer(config: TrainConfig, model: VAE):
    kw: dict = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        if model.backend.on_gpu:
            raise ValueError(f"optimizer 'sgd' runs on the CPU; with backend "
                             f"{model.backend.name!r} use adam or adamw")
        kw["momentum"] = config.momentum
    else:
        kw["eps"] = config.adam_eps
        kw["backend"] = model.backend  # its fused Adam kernel, where it has one
    return make_optimizer(config.optimizer, model.params, **kw)


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


# Each use of randomness in a run has its own generator, seeded by [seed, salt]: evaluating never
# perturbs training, and `minivae evaluate` reproduces a run's final numbers exactly.
INIT_SALT, TRAIN_SALT, VAL_SALT, TEST_ELBO_SALT, IWAE_SALT, PICTURES_SALT = range(6)
EVAL_BATCH = 1000  # held-out examples per loss evaluation: bounds memory on MNIST-sized sets


def build_model(config: TrainConfig, x_dim: int, n_classes: int) -> VAE:
    return VAE(x_dim, config.z_dim, config.hidden, activation=config.activation,
               likelihood=config.likelihood, n_classes=n_classes if config.conditional else 0,
               sigma=config.sigma, dtype=config.dtype,
               rng=np.random.default_rng([config.seed, INIT_SALT]),
               backend=config.backend)


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


# Burda, Grosse & Salakhutdinov (2015), section 5.2: a latent dimension u is active when the
# encoder's mean moves with the data, Var_x(E_q[z_u | x]) > 0.01; an inactive one is ignored.
ACTIVE_UNIT_THRESHOLD = 0.01


def active_units(model: VAE, ds, x: np.ndarray) -> dict:
    """Burda et al.'s active units of ``model`` on the inputs ``x`` (labels from ``ds`` for a
    conditional model): {"active_units": how many, "active_unit_variances": Var_x(mu_u) per
    dimension, population variance in float64}."""
    mus = []
    for s in range(0, len(x), EVAL_BATCH):
        y = ds.y[s:s + EVAL_BATCH] if model.n_classes else None
        mus.append(model.encode(x[s:s + EVAL_BATCH], y)[0].astype(np.float64))
    var = np.concatenate(mus).var(axis=0)
    return {"active_units": int((var > ACTIVE_UNIT_THRESHOLD).sum()),
            "active_unit_variances": [float(v) for v in var]}


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


# Below this many multiply-adds in a training step's largest GEMM, a second BLAS thread costs more
# (waking it, splitting a small matrix) than it saves: the default digits model (largest GEMM
# 128 x 128 x 64 = 1M) trained its 50 epochs in 1.9 s on one OpenBLAS thread and 3.7 s on two
# (2 cores, `minivae train --no-pictures`, three interleaved runs each), with the same bits.
# MNIST's 784-400 layer at batch 128 (40M) keeps every thread.
SMALL_GEMM_MACS = 1 << 23


def largest_gemm_macs(config: TrainConfig, model: VAE) -> int:
    """Multiply-adds of the largest matrix product in one training step: rows x fan-in x fan-out
    of the widest layer (the backward's products have the same size); the decoder's rows are
    the batch's K = n_samples samples of z."""
    return max(config.batch_size * (config.n_samples if k.startswith("dec.") else 1)
               * math.prod(w.shape) for k, w in model.params.items() if k.endswith(".W"))


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
