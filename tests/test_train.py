"""Training runs: exact resume (bitwise on the CPU), interrupts, checkpoints and non-finite values."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_cupy_backend_emulated import emulated_cupy  # noqa: F401  (the fixture)

from minivae import backends, pictures, runs
from minivae import train as train_mod
from minivae.config import TrainConfig
from minivae.kernels.wiring import emulate
from minivae.model import VAE
from minivae.readers import write_idx
from minivae.runs import CHECKPOINT, RunError, is_minivae_file, read_checkpoint
from minivae.train import NonFiniteError, train

TINY = dict(hidden=(16,), z_dim=2, epochs=3, batch_size=64, iwae_k=8, pictures=False)


def _quiet(_msg: str) -> None:
    pass


def _params(run: Path) -> dict[str, np.ndarray]:
    return read_checkpoint(run)[2]


def _same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _rewrite_checkpoint(run: Path, tensors=lambda t: t, config=lambda c: c) -> bytes:
    """Rewrite a run's checkpoint through ``tensors`` and ``config`` (its metadata's config dict);
    returns the new bytes."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = run / CHECKPOINT
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    meta["config"] = json.dumps(config(json.loads(meta["config"])))
    save_file(tensors(load_file(str(path))), str(path), metadata=meta)
    return path.read_bytes()


def test_default_config_trains_digits_and_writes_a_complete_run(tmp_path):
    cfg = TrainConfig(**TINY | {"pictures": True, "epochs": 2})
    res = train(cfg, tmp_path / "run", progress=False, log=_quiet)
    run = tmp_path / "run"
    assert res.epochs_done == 2 and not res.interrupted
    for name in ("config.json", "metrics.jsonl", CHECKPOINT, "summary.json", "reconstructions.png"):
        assert (run / name).is_file(), name
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]  # as the console counts them
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in recs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_iwae_nll"] <= summary["test_elbo_loss"] + 3 * summary["test_elbo_loss_stderr"]
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict() == res.config.to_dict()


def test_training_lowers_the_loss(tmp_path):
    cfg = TrainConfig(**TINY | {"epochs": 8, "hidden": (32,)})
    train(cfg, tmp_path / "r", progress=False, log=_quiet)
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["val_loss"] < recs[0]["val_loss"] - 2.0


@pytest.mark.parametrize("stops", [[7], [7, 5], [12], [1, 1, 30]])
def test_resume_gives_bitwise_the_weights_of_an_uninterrupted_run(tmp_path, stops):
    """Stops mid-epoch and at epoch boundaries (12 steps = 3 epochs of ~ 4 batches... any split)."""
    cfg = TrainConfig(**TINY)
    train(cfg, tmp_path / "full", progress=False, log=_quiet)
    first = train(cfg, tmp_path / "cut", progress=False, log=_quiet, max_steps=stops[0])
    assert first.interrupted
    for s in stops[1:]:
        train(None, tmp_path / "cut", resume=True, progress=False, log=_quiet, max_steps=s)
    train(None, tmp_path / "cut", resume=True, progress=False, log=_quiet)
    a, b = _params(tmp_path / "full"), _params(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"} for line in full]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"} for line in cut]


def test_same_seed_same_run_bitwise(tmp_path):
    cfg = TrainConfig(**TINY | {"epochs": 2})
    train(cfg, tmp_path / "a", progress=False, log=_quiet)
    train(cfg, tmp_path / "b", progress=False, log=_quiet)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_existing_run_directory_is_refused_unless_overwrite(tmp_path):
    cfg = TrainConfig(**TINY | {"epochs": 1})
    train(cfg, tmp_path / "r", progress=False, log=_quiet)
    before = (tmp_path / "r" / CHECKPOINT).read_bytes()
    with pytest.raises(RunError, match="already exists"):
        train(cfg, tmp_path / "r", progress=False, log=_quiet)
    assert (tmp_path / "r" / CHECKPOINT).read_bytes() == before
    train(cfg, tmp_path / "r", overwrite=True, progress=False, log=_quiet)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    """A learning rate of 1e12: the first step's loss is finite and Adam moves every weight by
    ~1e12, so the resumed run's next loss overflows. The stop names that step and the tensor, and
    the checkpoint written before it is left byte for byte."""
    run = tmp_path / "r"
    cfg = TrainConfig(**TINY | {"lr": 1e12})
    assert train(cfg, run, progress=False, log=_quiet, max_steps=1).interrupted
    good = (run / CHECKPOINT).read_bytes()
    assert all(np.isfinite(v).all() for v in _params(run).values())  # a good checkpoint
    with pytest.raises(NonFiniteError) as info:
        train(None, run, resume=True, progress=False, log=_quiet)
    assert str(info.value) == ("non-finite loss at epoch 1, step 2 (global step 2); the last good "
                               "checkpoint is kept")
    assert (run / CHECKPOINT).read_bytes() == good
    assert read_checkpoint(run)[1].global_step == 1


def test_nonfinite_gradient_stops_naming_the_tensor(tmp_path, monkeypatch):
    """A finite loss with a NaN in one gradient: the stop names that gradient and the step."""
    run = tmp_path / "r"
    cfg = TrainConfig(**TINY)
    train(cfg, run, progress=False, log=_quiet, max_steps=2)
    good = (run / CHECKPOINT).read_bytes()
    real_loss = VAE.loss

    def nan_gradient(self, *args, **kwargs):
        res = real_loss(self, *args, **kwargs)
        res.grads["dec.0.W"][0, 0] = np.nan
        return res

    monkeypatch.setattr(VAE, "loss", nan_gradient)
    with pytest.raises(NonFiniteError) as info:
        train(None, run, resume=True, progress=False, log=_quiet)
    assert str(info.value) == ("non-finite gradient of dec.0.W at epoch 1, step 3 (global step 3); "
                               "the last good checkpoint is kept")
    assert (run / CHECKPOINT).read_bytes() == good


def test_nonfinite_steps_can_be_skipped_and_counted(tmp_path):
    cfg = TrainConfig(**TINY | {"epochs": 3, "lr": 1e12, "likelihood": "gaussian",
                                "binarize": "none", "on_nonfinite": "skip"})
    res = train(cfg, tmp_path / "r", progress=False, log=_quiet)
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["skipped_steps"] > 0
    assert all(np.isfinite(v).all() for v in res.model.params.values())


def test_checkpoint_that_does_not_match_its_config_is_refused(tmp_path):
    cfg = TrainConfig(**TINY | {"epochs": 1})
    train(cfg, tmp_path / "r", progress=False, log=_quiet)
    path = tmp_path / "r" / CHECKPOINT
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    tensors["param/enc.0.W"] = tensors["param/enc.0.W"][:, :10].copy()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(RunError, match=r"parameter enc.0.W is float32\[16, 10\]"):
        train(None, tmp_path / "r", resume=True, progress=False, log=_quiet)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_checkpoint_is_a_run_error(tmp_path, content):
    (tmp_path / CHECKPOINT).write_bytes(content)
    with pytest.raises(RunError):
        read_checkpoint(tmp_path)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunError, match="not a minivae run directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(RunError, match="is not a directory"):
        read_checkpoint(tmp_path / "nope")


def test_kl_warmup_ramps_beta():
    cfg = TrainConfig(beta=2.0, warmup_epochs=4)
    assert [cfg.beta_at(e) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert TrainConfig(beta=2.0).beta_at(0) == 2.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1), "lr must be"), (dict(batch_size=0), "batch_size must be a positive"),
    (dict(z_dim=0), "z_dim must be a positive"), (dict(likelihood="x"), "likelihood must be"),
    (dict(val_fraction=0.7), "val_fraction must be in"), (dict(seed=-1), "seed must be"),
    (dict(hidden=(0,)), r"hidden\[0\]"), (dict(optimizer="lamb"), "optimizer must be"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
    (dict(momentum=2), r"momentum must be in \[0, 1\), got 2.0"),
    (dict(patience=3, val_fraction=0.0), "patience 3 needs a validation split"),
    (dict(backend="tpu"), "backend must be one of"),
])
def test_bad_config_values_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="unknown configuration key 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.timeout(120)
def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """Ctrl-C during training: a checkpoint at a step boundary, a clean exit, and --resume ends
    bitwise where an uninterrupted run ends."""
    run = tmp_path / "r"
    args = [sys.executable, "-m", "minivae", "train", "--epochs", "60", "--hidden", "16",
            "--z-dim", "2", "--iwae-k", "8", "--no-pictures", "--no-progress", "--out", str(run)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / CHECKPOINT).exists():
        time.sleep(0.05)
    assert (run / CHECKPOINT).exists(), "training never wrote a checkpoint"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoint saved" in err and "Traceback" not in err
    assert subprocess.run([sys.executable, "-m", "minivae", "train", "--resume", str(run),
                           "--no-progress"], capture_output=True, timeout=120).returncode == 0
    cfg = TrainConfig(**{**TINY, "epochs": 60, "batch_size": 128})
    train(cfg, tmp_path / "full", progress=False, log=_quiet)
    a, b = _params(tmp_path / "full"), _params(run)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert os.path.exists(run / "summary.json")


# ------------------------------------------------------------------------------------------------
# Ctrl-C during the final evaluation


def _interrupt_the_iwae(monkeypatch) -> list[int]:
    """Make the final evaluation's IWAE send this process SIGINT, as Ctrl-C would mid-way."""
    calls = []
    real_iwae = VAE.iwae

    def iwae(self, *args, **kwargs):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler interrupts this long before it ends
        return real_iwae(self, *args, **kwargs)

    monkeypatch.setattr(VAE, "iwae", iwae)
    return calls


def test_sigint_during_the_final_evaluation_exits_cleanly_and_resume_evaluates(tmp_path,
                                                                                monkeypatch):
    run, logged = tmp_path / "r", []
    calls = _interrupt_the_iwae(monkeypatch)
    t0 = time.perf_counter()
    res = train(TrainConfig(**TINY | {"epochs": 2}), run, progress=False, log=logged.append)
    assert time.perf_counter() - t0 < 5 and calls == [1]
    assert res.interrupted and res.summary == {}
    assert logged[-1] == ("interrupted during the final evaluation: training is complete and its "
                          f"checkpoint intact; `minivae train --resume {run}` evaluates it again")
    assert not (run / "summary.json").exists()
    config, state, params, _ = read_checkpoint(run)
    assert state.done and state.epoch == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    good = (run / CHECKPOINT).read_bytes()
    monkeypatch.undo()
    again = train(None, run, resume=True, progress=False, log=_quiet)
    assert not again.interrupted and again.summary["epochs"] == 2
    assert (run / "summary.json").is_file() and (run / CHECKPOINT).read_bytes() == good


# ------------------------------------------------------------------------------------------------
# config.json: the fully resolved configuration


def _fake_mnist(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for part, n in (("train", 40), ("t10k", 10)):
        write_idx(folder / f"{part}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 4, 4), dtype=np.uint8))
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))


def test_config_json_records_the_backend_auto_chose_and_the_data_directory_read(tmp_path,
                                                                             monkeypatch):
    data_dir = tmp_path / "data"
    _fake_mnist(data_dir / "mnist")
    monkeypatch.setenv("MINIVAE_DATA", str(data_dir))
    cfg = TrainConfig(**TINY | {"data": "mnist", "backend": "auto", "batch_size": 16})
    run = tmp_path / "r"
    train(cfg, run, progress=False, log=_quiet, max_steps=2)
    saved = json.loads((run / "config.json").read_text())
    assert saved["backend"] == backends.get_backend("auto").name != "auto"
    assert saved["data_dir"] == str(data_dir.resolve())
    assert read_checkpoint(run)[0].to_dict() == saved
    # the recorded folder, not the environment of the day, is what a resume reads
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "elsewhere"))
    assert train(None, run, resume=True, progress=False, log=_quiet).epochs_done == 3
    # digits reads no data directory: nothing to record
    train(TrainConfig(**TINY | {"epochs": 1}), tmp_path / "d", progress=False, log=_quiet)
    assert json.loads((tmp_path / "d" / "config.json").read_text())["data_dir"] is None


def test_resume_on_a_machine_without_the_recorded_backend(tmp_path, no_cupy):
    """Refused with a message that names the backend and the way out; --backend moves the run,
    which then ends as an uninterrupted run on that backend would."""
    run = tmp_path / "r"
    cfg = TrainConfig(**TINY)
    train(cfg, run, progress=False, log=_quiet, max_steps=5)
    recorded = _rewrite_checkpoint(run, config=lambda c: c | {"backend": "cupy"})
    with pytest.raises(RunError) as info:
        train(None, run, resume=True, progress=False, log=_quiet)
    assert str(info.value).startswith(f"{run} was trained with backend 'cupy', which cannot run "
                                      "here (backend 'cupy' is not available: no CUDA GPU")
    assert str(info.value).endswith(f"`minivae train --resume {run} --backend numpy`")
    assert (run / CHECKPOINT).read_bytes() == recorded
    logged: list[str] = []
    res = train(None, run, resume=True, backend="numpy", progress=False, log=logged.append)
    assert res.epochs_done == 3 and res.config.backend == "numpy"
    assert any(line.startswith("note: continuing on backend 'numpy'; the run so far used 'cupy'")
               for line in logged)
    assert json.loads((run / "config.json").read_text())["backend"] == "numpy"
    train(cfg, tmp_path / "full", progress=False, log=_quiet)
    assert _same_params(_params(tmp_path / "full"), _params(run))  # it was numpy all along


def test_backend_is_only_for_resume(tmp_path):
    with pytest.raises(ValueError, match="backend='numpy' is for resume"):
        train(TrainConfig(**TINY), tmp_path / "r", backend="numpy", progress=False, log=_quiet)
    assert not (tmp_path / "r").exists()


def test_a_backend_that_cannot_run_writes_no_run_directory(tmp_path, no_cupy):
    with pytest.raises(backends.BackendUnavailable, match="backend 'cupy' is not available"):
        train(TrainConfig(**TINY | {"backend": "cupy"}), tmp_path / "r", progress=False,
              log=_quiet)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# --overwrite


def test_overwrite_deletes_every_file_an_earlier_run_wrote_and_nothing_else(tmp_path):
    run = tmp_path / "r"
    train(TrainConfig(**TINY | {"epochs": 1}), run, progress=False, log=_quiet)
    stale = [*pictures.FILENAMES.values(), "samples-0.png", "samples-17.png",
             "reconstructions-16.png", ".checkpoint.safetensors.k2j4x9.tmp",
             ".manifold.png.4242.deadbeef.tmp"]
    mine = ["notes.txt", "samples-best.png", "my-manifold.png", "reconstructions.jpg",
            "config.json.bak", ".hidden.tmp"]
    for name in stale + mine:
        (run / name).write_bytes(b"from before")
    (run / "plots").mkdir()
    (run / "plots" / "manifold.png").write_bytes(b"the user's")
    with pytest.raises(RunError, match="already exists and is not empty"):
        train(TrainConfig(**TINY | {"epochs": 1}), run, progress=False, log=_quiet)
    assert all((run / name).read_bytes() == b"from before" for name in stale + mine)
    # a new configuration without pictures: none of the old ones may stay to mislead
    train(TrainConfig(**TINY | {"epochs": 1, "z_dim": 3}), run, overwrite=True, progress=False,
          log=_quiet)
    left = sorted(p.name for p in run.iterdir())
    assert left == sorted([*mine, "plots", "config.json", "metrics.jsonl", CHECKPOINT,
                           "summary.json"])
    assert all((run / name).read_bytes() == b"from before" for name in mine)
    assert (run / "plots" / "manifold.png").read_bytes() == b"the user's"
    assert json.loads((run / "config.json").read_text())["z_dim"] == 3


@pytest.mark.parametrize("name, ours", [
    ("config.json", True), ("metrics.jsonl", True), ("summary.json", True), (CHECKPOINT, True),
    ("loss_curves.png", True), ("class_grid.png", True), ("samples-3.png", True),
    ("reconstructions-100.png", True), (".metrics.jsonl.abc123.tmp", True),
    (".samples-3.png.99.ab.tmp", True), ("samples-.png", False), ("samples-3.png.bak", False),
    ("xconfig.json", False), (".config.json.tmp", False), ("notes.tmp", False),
    ("checkpoint.safetensors.old", False), ("Manifold.png", False),
])
def test_is_minivae_file(name, ours):
    assert is_minivae_file(name) is ours


def test_a_run_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(RunError, match="is a file; expected a folder"):
        train(TrainConfig(**TINY), tmp_path / "f", overwrite=True, progress=False, log=_quiet)
    assert (tmp_path / "f").read_text() == "mine"


# ------------------------------------------------------------------------------------------------
# hostile checkpoints on resume


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_resume_refuses_an_optimiser_state_with_nan_or_inf(tmp_path, bad):
    run = tmp_path / "r"
    train(TrainConfig(**TINY), run, progress=False, log=_quiet, max_steps=3)

    def poison(t):
        t["optim/exp_avg_sq/dec.0.b"][1] = bad
        return t

    written = _rewrite_checkpoint(run, poison)
    with pytest.raises(RunError, match=r"optimiser state exp_avg_sq/dec.0.b holds non-finite "
                                       r"values \(NaN or inf\); this checkpoint cannot be resumed"):
        train(None, run, resume=True, progress=False, log=_quiet)
    assert (run / CHECKPOINT).read_bytes() == written


@pytest.mark.parametrize("key, match", [
    ("param/enc.0.W", r"parameter enc.0.W is float64\[16, 64\], the configuration needs "
                      r"float32\[16, 64\]"),
    ("optim/exp_avg/enc.0.W", r"optimiser state does not match: .*exp_avg/enc.0.W.* dtype "
                              "float32"),
])
def test_resume_refuses_dtypes_that_do_not_match_the_config(tmp_path, key, match):
    run = tmp_path / "r"
    train(TrainConfig(**TINY), run, progress=False, log=_quiet, max_steps=3)

    def widen(t):
        t[key] = t[key].astype(np.float64)
        return t

    written = _rewrite_checkpoint(run, widen)
    with pytest.raises(RunError, match=match):
        train(None, run, resume=True, progress=False, log=_quiet)
    assert (run / CHECKPOINT).read_bytes() == written


# ------------------------------------------------------------------------------------------------
# the training loop's features


# lr 0.1 on digits: validation -ELBO improves for two epochs, then worsens (measured; seeded)
EARLY = TINY | {"epochs": 30, "patience": 1, "lr": 0.1}


def test_early_stopping_keeps_the_best_validation_epochs_weights(tmp_path):
    logged: list[str] = []
    res = train(TrainConfig(**EARLY), tmp_path / "r", progress=False, log=logged.append)
    recs = _metrics(tmp_path / "r")
    val = [r["val_loss"] for r in recs]
    best = int(np.argmin(val))
    assert res.stopped_early and len(recs) == best + 1 + EARLY["patience"] < EARLY["epochs"]
    assert "early stop: validation -ELBO has not improved for 1 epochs" in logged
    assert f"keeping the weights of epoch {best + 1}, the best validation -ELBO " \
           f"({val[best]:.3f})" in logged
    assert res.summary["weights_epoch"] == best + 1 == recs[best]["epoch"]
    # the weights are those a run of exactly best + 1 epochs ends with
    short = TrainConfig(**TINY | {"epochs": best + 1, "lr": 0.1})
    train(short, tmp_path / "short", progress=False, log=_quiet)
    assert _same_params(_params(tmp_path / "r"), _params(tmp_path / "short"))
    assert _same_params({k: np.asarray(v) for k, v in res.model.params.items()},
                        _params(tmp_path / "short"))


def test_early_stopping_resumes_bitwise_with_its_best_weights(tmp_path):
    """Interrupted after the best epoch: the checkpoint carries the best weights, so the resumed
    run ends with the same (best-epoch) weights as an uninterrupted one."""
    cfg = TrainConfig(**EARLY)
    train(cfg, tmp_path / "full", progress=False, log=_quiet)
    steps_per_epoch = 23  # ceil(1438 training rows / 64)
    train(cfg, tmp_path / "cut", progress=False, log=_quiet, max_steps=2 * steps_per_epoch + 5)
    assert read_checkpoint(tmp_path / "cut")[1].best_epoch == 2  # 1-based, as metrics.jsonl
    res = train(None, tmp_path / "cut", resume=True, progress=False, log=_quiet)
    assert res.stopped_early
    assert _same_params(_params(tmp_path / "full"), _params(tmp_path / "cut"))


def _record_grad_norms(monkeypatch) -> list[float]:
    """Every gradient the optimiser is handed, as its global 2-norm."""
    norms: list[float] = []
    real_make = train_mod.make_optimizer

    def make(*args, **kwargs):
        opt = real_make(*args, **kwargs)
        real_step = opt.step

        def step(grads, **kwargs):
            norms.append(float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2)
                                           for g in grads.values()))))
            return real_step(grads, **kwargs)

        opt.step = step
        return opt

    monkeypatch.setattr(train_mod, "make_optimizer", make)
    return norms


def test_gradient_clipping_bounds_every_step(tmp_path, monkeypatch):
    norms = _record_grad_norms(monkeypatch)
    train(TrainConfig(**TINY | {"epochs": 1}), tmp_path / "free", progress=False, log=_quiet)
    free = list(norms)
    norms.clear()
    clip = min(free) / 2
    train(TrainConfig(**TINY | {"epochs": 1, "clip": clip}), tmp_path / "clipped",
          progress=False, log=_quiet)
    assert min(free) > clip  # the clip bites at every step
    assert len(norms) == len(free) and max(norms) <= clip * (1 + 1e-5)
    assert not _same_params(_params(tmp_path / "free"), _params(tmp_path / "clipped"))


@pytest.mark.parametrize("optimizer, state", [("sgd", {"momentum_buffer"}),
                                              ("adamw", {"exp_avg", "exp_avg_sq"})])
def test_sgd_and_adamw_train_and_resume_bitwise(tmp_path, optimizer, state):
    cfg = TrainConfig(**TINY | {"epochs": 2, "optimizer": optimizer, "lr": 0.01,
                                "weight_decay": 0.1})
    train(cfg, tmp_path / "full", progress=False, log=_quiet)
    recs = _metrics(tmp_path / "full")
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    optim = read_checkpoint(tmp_path / "full")[3]
    assert {k.split("/")[0] for k in optim} == state | {"step"} and int(optim["step"]) == 46
    train(cfg, tmp_path / "cut", progress=False, log=_quiet, max_steps=30)
    train(None, tmp_path / "cut", resume=True, progress=False, log=_quiet)
    assert _same_params(_params(tmp_path / "full"), _params(tmp_path / "cut"))


def test_kl_warmup_in_the_loop_weights_the_kl_term_by_the_ramp(tmp_path):
    cfg = TrainConfig(**TINY | {"epochs": 4, "warmup_epochs": 3})
    train(cfg, tmp_path / "r", progress=False, log=_quiet)
    recs = _metrics(tmp_path / "r")
    assert [r["beta"] for r in recs] == [cfg.beta_at(e) for e in range(4)] == [1 / 3, 2 / 3, 1, 1]
    for r in recs:
        assert r["train_loss"] == pytest.approx(r["train_recon"] + r["beta"] * r["train_kl"],
                                                rel=1e-6)
        assert r["train_neg_elbo"] == pytest.approx(r["train_recon"] + r["train_kl"], rel=1e-6)
    assert recs[0]["train_loss"] < recs[0]["train_neg_elbo"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_the_running_loss_recon_and_kl(tmp_path, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    train(TrainConfig(**TINY | {"epochs": 1}), tmp_path / "r", progress=True, log=_quiet)
    shown = term.getvalue()
    assert "epoch 1/1" in shown
    for term_name in ("loss", "recon", "kl"):  # tqdm orders the postfix by name
        assert re.search(rf"\b{term_name}=\d+\.\d\d\b", shown), (term_name, shown)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    train(TrainConfig(**TINY | {"epochs": 1}), tmp_path / "q", progress=False, log=_quiet)
    assert term.getvalue() == ""


# ------------------------------------------------------------------------------------------------
# definitions the tests pin (a run compared only with another run of the same code cannot see
# a change to them)


def test_each_epoch_takes_the_next_permutation_of_the_run_generator(tmp_path, monkeypatch):
    """The batch order of epoch e (1-based) is the e-th permutation drawn from
    default_rng([seed, TRAIN_SALT]): so epochs see different orders, and a resumed run the same."""
    orders: list[np.ndarray] = []
    real_dev = VAE._dev

    def spy(self, a):
        if np.asarray(a).dtype.kind == "i":  # the step's row indices into the epoch's data
            orders.append(np.array(a))
        return real_dev(self, a)

    monkeypatch.setattr(VAE, "_dev", spy)
    cfg = TrainConfig(**TINY | {"epochs": 3, "val_fraction": 0.0, "test_fraction": 0.0})
    train(cfg, tmp_path / "r", progress=False, log=_quiet)
    n, steps = 1797, -(-1797 // cfg.batch_size)
    gen = np.random.default_rng([cfg.seed, train_mod.TRAIN_SALT])
    expected = [gen.permutation(n) for _ in range(cfg.epochs)]
    for e in range(cfg.epochs):
        assert np.array_equal(np.concatenate(orders[e * steps:(e + 1) * steps]), expected[e]), e
    assert not np.array_equal(expected[0], expected[1])


def test_adamw_decay_is_decoupled_from_adams(tmp_path):
    """One step of the loop. AdamW shrinks every weight by lr * wd * p0 before the Adam move, so
    it ends exactly -lr * wd * p0 away from plain Adam (wd = 0) after the same step; Adam's L2
    decay enters the gradient instead, which the first step's normalisation (m / sqrt(v) ~ sign)
    all but cancels, so it does not end there."""
    lr, wd = 1e-3, 0.5
    ends = {}
    for name, decay in (("adam0", 0.0), ("adamw", wd), ("adam", wd)):
        cfg = TrainConfig(**TINY | {"optimizer": name.rstrip("0"), "lr": lr, "weight_decay": decay})
        res = train(cfg, tmp_path / name, progress=False, log=_quiet, max_steps=1)
        ends[name] = {k: np.asarray(v, dtype=np.float64) for k, v in res.model.params.items()}
    p0 = train_mod.build_model(TrainConfig(**TINY), 64, 10).params
    for k, w0 in p0.items():
        shrink = -lr * wd * w0.astype(np.float64)
        np.testing.assert_allclose(ends["adamw"][k] - ends["adam0"][k], shrink, rtol=1e-3,
                                   atol=1e-8, err_msg=k)
        if k.endswith(".W"):
            assert not np.allclose(ends["adam"][k] - ends["adam0"][k], shrink, rtol=1e-2,
                                   atol=1e-8), k


def test_metrics_of_an_older_run_counting_epochs_from_0_are_read_from_1(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_neg_elbo": 1.0}) + "\n" for e in range(3)))
    assert [r["epoch"] for r in runs.read_metrics(tmp_path)] == [1, 2, 3]


def test_the_blas_runs_one_thread_for_a_small_model_and_all_for_a_large_one():
    from threadpoolctl import threadpool_info

    small = TrainConfig(**TINY)
    large = TrainConfig(**TINY | {"hidden": (400,), "batch_size": 128})
    assert train_mod.largest_gemm_macs(small, train_mod.build_model(small, 64, 10)) == 64 * 16 * 64
    big_model = train_mod.build_model(large, 784, 10)
    assert train_mod.largest_gemm_macs(large, big_model) == 128 * 400 * 784
    many = TrainConfig(**TINY | {"n_samples": 50})  # the decoder sees 50 x 64 rows
    assert train_mod.largest_gemm_macs(many, train_mod.build_model(many, 64, 10)) == 50 * 64 * 16 * 64
    before = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    with train_mod._blas_threads_for(small, train_mod.build_model(small, 64, 10)):
        assert {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"} == {1}
    with train_mod._blas_threads_for(large, big_model):
        assert [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"] == before
    assert [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"] == before


@pytest.mark.skipif(emulate.compiler() is None, reason=f"the CUDA emulator needs a C++20 compiler "
                    f"({emulate.CXX} not on PATH)")
def test_clipping_runs_on_the_cupy_backends_stand_in(tmp_path, monkeypatch, emulated_cupy):  # noqa: F811
    """A run on the cupy backend (NumPy standing in for CuPy, its kernels on the emulator) with
    --clip: every step's gradient is scaled to the clip norm."""
    monkeypatch.setitem(backends._loaded, "cupy", emulated_cupy)
    norms = _record_grad_norms(monkeypatch)
    cfg = TrainConfig(**TINY | {"epochs": 1, "backend": "cupy", "clip": 1e-3})
    train(cfg, tmp_path / "r", progress=False, log=_quiet, report=_quiet)
    assert norms and all(0.999e-3 <= v <= 1e-3 * (1 + 1e-5) for v in norms), norms


CLIP_ON_A_GPU_BACKEND = """
import json, sys
import numpy as np
from minivae import train as t
norms = []
make = t.make_optimizer
def record(*a, **k):
    opt = make(*a, **k)
    step = opt.step
    def s(grads, **kw):
        norms.append(float(np.sqrt(sum(float((np.asarray(g, np.float64) ** 2).sum())
                                       for g in grads.values()))))
        return step(grads, **kw)
    opt.step = s
    return opt
t.make_optimizer = record
np.save("d.npy", (np.random.default_rng(0).random((24, 6)) < 0.5).astype(np.float32))
cfg = t.TrainConfig(data="d.npy", hidden=(4,), z_dim=2, epochs=1, batch_size=8, iwae_k=2,
                    pictures=False, backend="numba-cuda", clip=float(sys.argv[1]))
t.train(cfg, "r", progress=False, log=lambda s: None, report=lambda s: None)
print(json.dumps(norms))
"""


def test_clipping_runs_on_the_numba_cuda_backend_in_the_simulator(tmp_path):
    """The gradients of a GPU backend are device arrays (NumPy's under the simulator): the clip
    reduces them with the backend's array module and bounds every step."""
    env = os.environ | {"NUMBA_ENABLE_CUDASIM": "1"}
    out = subprocess.run([sys.executable, "-c", CLIP_ON_A_GPU_BACKEND, "1e-3"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    norms = json.loads(out.stdout)
    # every step's gradient was larger than 1e-3 (an untrained model's are far larger), scaled to it
    assert len(norms) >= 2 and all(0.999e-3 <= v <= 1e-3 * (1 + 1e-5) for v in norms), norms


def test_active_units_count_the_dimensions_whose_posterior_mean_moves_with_the_data(tmp_path):
    """Burda et al.'s measure on a model whose encoder ignores the data in two of three mean
    coordinates (their rows of the head are zero): those two are inactive, the third is active,
    and a finished run reports the same count in summary.json."""
    cfg = TrainConfig(**TINY | {"z_dim": 3})
    model = train_mod.build_model(cfg, 64, 10)
    head = max(k for k in model.params if k.startswith("enc.") and k.endswith(".W"))
    model.params[head][:2] = 0
    model.params[head.replace(".W", ".b")][:2] = 0
    model.params[head][2] *= 50  # mu_3 swings far with the data
    x = (np.random.default_rng(0).random((200, 64)) < 0.5).astype(np.float32)
    got = train_mod.active_units(model, None, x)
    assert got["active_units"] == 1
    assert got["active_unit_variances"][:2] == [0.0, 0.0]
    assert got["active_unit_variances"][2] > train_mod.ACTIVE_UNIT_THRESHOLD
    res = train(cfg, tmp_path / "r", progress=False, log=_quiet, report=_quiet)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["active_units"] == res.summary["active_units"]
    assert summary["active_units"] == sum(v > 0.01 for v in summary["active_unit_variances"])
    assert len(summary["active_unit_variances"]) == 3


def test_the_burda_schedule_by_hand():
    """Stage i lasts 3^i epochs at lr * 10^(-i/7): epochs 0 | 1-3 | 4-12 | 13-39 | ... ."""
    from minivae.config import burda_stages

    c = TrainConfig(lr=1e-3, lr_schedule="burda", epochs=3280)
    assert burda_stages() == [1, 3, 9, 27, 81, 243, 729, 2187]
    for epoch, stage in ((0, 0), (1, 1), (3, 1), (4, 2), (12, 2), (13, 3), (39, 3), (40, 4),
                         (1092, 6), (1093, 7), (3279, 7), (9999, 7)):
        assert c.lr_at(epoch) == pytest.approx(1e-3 * 10 ** (-stage / 7), rel=1e-12), epoch
    assert burda_stages(0.01) == [1, 1, 1, 1, 1, 2, 7, 22]
    assert TrainConfig(lr=0.5).lr_at(1000) == 0.5


def test_the_loop_steps_at_each_epochs_scheduled_rate_and_adams_eps(tmp_path, monkeypatch):
    rates, made = [], []
    real_step, real_make = train_mod._step, train_mod.make_optimizer
    monkeypatch.setattr(train_mod, "_step", lambda run, *a: rates.append(
        (run.state.epoch, run.optimizer.lr)) or real_step(run, *a))
    monkeypatch.setattr(train_mod, "make_optimizer", lambda *a, **k: made.append(k) or
                        real_make(*a, **k))
    cfg = TrainConfig(**TINY | {"epochs": 4, "lr_schedule": "burda", "schedule_scale": 0.001,
                                "adam_eps": 1e-4})
    train(cfg, tmp_path / "r", progress=False, log=_quiet, report=_quiet)
    assert made[0]["eps"] == 1e-4
    assert {e: lr for e, lr in rates} == {e: cfg.lr * 10 ** (-e / 7) for e in range(4)}
    assert [r["lr"] for r in _metrics(tmp_path / "r")] == [cfg.lr * 10 ** (-e / 7) for e in range(4)]


@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_an_iwae_run_resumes_bitwise_and_records_its_objective(tmp_path, estimator):
    cfg = TrainConfig(**TINY | {"objective": "iwae", "estimator": estimator, "n_samples": 4})
    train(cfg, tmp_path / "full", progress=False, log=_quiet, report=_quiet)
    train(cfg, tmp_path / "cut", progress=False, log=_quiet, report=_quiet, max_steps=30)
    train(None, tmp_path / "cut", resume=True, progress=False, log=_quiet, report=_quiet)
    assert _same_params(_params(tmp_path / "full"), _params(tmp_path / "cut"))
    recs = _metrics(tmp_path / "full")
    assert {r["objective"] for r in recs} == {"iwae"}
    # the bound is tighter than the K-sample average ELBO it is made of (Jensen), every epoch
    assert all(r["train_loss"] <= r["train_neg_elbo"] for r in recs)
    assert read_checkpoint(tmp_path / "cut")[0].estimator == estimator


def test_an_iwae_run_on_the_numba_backend_follows_the_numpy_one(tmp_path):
    pytest.importorskip("numba")
    runs_ = {}
    for backend in ("numpy", "numba"):
        cfg = TrainConfig(**TINY | {"epochs": 1, "objective": "iwae", "n_samples": 3,
                                    "backend": backend})
        runs_[backend] = train(cfg, tmp_path / backend, progress=False, log=_quiet,
                               report=_quiet).summary
    assert runs_["numba"]["test_iwae_nll"] == pytest.approx(runs_["numpy"]["test_iwae_nll"], rel=1e-3)
