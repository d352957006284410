"""Training runs: exact resume (bitwise on the CPU), interrupts, checkpoints and non-finite values."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from minivae.train import (
    CHECKPOINT,
    NonFiniteError,
    RunError,
    TrainConfig,
    read_checkpoint,
    train,
)

TINY = dict(hidden=(16,), z_dim=2, epochs=3, batch_size=64, iwae_k=8, pictures=False)


def _quiet(_msg: str) -> None:
    pass


def _params(run: Path) -> dict[str, np.ndarray]:
    return read_checkpoint(run)[2]


def test_default_config_trains_digits_and_writes_a_complete_run(tmp_path):
    cfg = TrainConfig(**TINY | {"pictures": True, "epochs": 2})
    res = train(cfg, tmp_path / "run", progress=False, log=_quiet)
    run = tmp_path / "run"
    assert res.epochs_done == 2 and not res.interrupted
    for name in ("config.json", "metrics.jsonl", CHECKPOINT, "summary.json", "reconstructions.png"):
        assert (run / name).is_file(), name
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in recs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_iwae_nll"] <= summary["test_elbo_loss"] + 3 * summary["test_elbo_loss_stderr"]
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()


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
    strip = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in full]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in cut]


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
    cfg = TrainConfig(**TINY | {"epochs": 1})
    train(cfg, tmp_path / "r", progress=False, log=_quiet)
    good = (tmp_path / "r" / CHECKPOINT).read_bytes()
    # resume with a learning rate so large that the weights blow up
    config, state, params, optim = read_checkpoint(tmp_path / "r")
    bad = TrainConfig(**(config.to_dict() | {"hidden": (16,), "epochs": 40, "lr": 1e12,
                                             "likelihood": "gaussian", "binarize": "none"}))
    with pytest.raises(NonFiniteError, match=r"non-finite .* at epoch \d+, step \d+"):
        train(bad, tmp_path / "boom", progress=False, log=_quiet)
    assert (tmp_path / "r" / CHECKPOINT).read_bytes() == good
    ckpt = tmp_path / "boom" / CHECKPOINT
    if ckpt.exists():  # the last good checkpoint is loadable and finite
        _, _, p, _ = read_checkpoint(tmp_path / "boom")
        assert all(np.isfinite(v).all() for v in p.values())


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
