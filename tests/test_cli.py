"""The ``minivae`` command line, end to end on tiny runs trained once per module.

Properties proven: every command does its job through ``cli.main`` exactly as its Python function
in ``minivae.commands`` does; ``evaluate`` reproduces the numbers training wrote to summary.json
(so it sees the same test split and binarisation); every flag's --help shows its exact default
(for train: TrainConfig's, and what None means); ``info`` reports the backends exactly as
``minivae.backends.available()`` does; and bad input anywhere ends as exit code 2 with one
``minivae: error:`` line on stderr that names the problem, no traceback, and the file system
untouched. A non-finite stop exits 1 and an interrupt 130, each with a one-line message.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from minivae import backends, cli, commands, data
from minivae.backends import BACKENDS
from minivae.config import TrainConfig
from minivae.data import IDX_FILES
from minivae.model import VAE
from minivae.readers import write_idx

# gradcheck's model flags for a small two-hidden-layer tanh model (12-8,6-3): a quick full check
SMALL_MODEL = ["--x-dim", "12", "--hidden", "8,6", "--z-dim", "3", "--activation", "tanh"]
TINY = ["--epochs", "2", "--hidden", "16", "--z-dim", "2", "--iwae-k", "10", "--no-pictures",
        "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_mnist(folder: Path) -> None:
    """Four IDX files of a tiny MNIST look-alike: 24 training and 8 test images of 4x4 pixels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for part, n in (("train", 24), ("t10k", 8)):
        write_idx(folder / f"{part}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 4, 4), dtype=np.uint8))
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs, trained once: digits (plain and conditional), flat data without an image shape,
    flat data without a test split, and an MNIST run whose data files have since gone."""
    root = tmp_path_factory.mktemp("runs")
    flat = root / "flat.npy"
    np.save(flat, (np.random.default_rng(0).random((60, 6)) < 0.5).astype(np.float32))
    r = SimpleNamespace(root=root, plain=root / "plain", cond=root / "cond", flat=root / "flat",
                        no_test=root / "no-test", gone=root / "gone")
    assert cli.main(["train", *TINY, "--out", str(r.plain)]) == 0
    assert cli.main(["train", *TINY, "--conditional", "--out", str(r.cond)]) == 0
    assert cli.main(["train", *TINY, "--data", str(flat), "--out", str(r.flat)]) == 0
    assert cli.main(["train", *TINY, "--data", str(flat), "--test-fraction", "0",
                     "--out", str(r.no_test)]) == 0
    data_dir = root / "gone-data"
    _fake_mnist(data_dir / "mnist")
    assert cli.main(["train", *TINY, "--data", "mnist", "--data-dir", str(data_dir),
                     "--out", str(r.gone)]) == 0
    shutil.rmtree(data_dir)
    return r


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test runs in its own folder with its own (empty) data directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "data"))


def _snapshot(*roots: Path) -> dict:
    """Every file and folder under ``roots`` with its mtime and size: a write shows as a change."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size)
            for root in roots for p in (root, *root.rglob("*"))}


# ------------------------------------------------------------------------------------------------
# bad input: exit 2, one line, no traceback, nothing written

# Every train flag that takes a value: each has a missing-value row and malformed or
# out-of-range rows below (test_the_bad_input_table_covers_every_train_flag checks it).
TRAIN_VALUE_FLAGS = [*(f"--{name.replace('_', '-')}" for name in cli.TRAIN_FLAGS), "--config",
                     "--out", "--resume", "--preset"]

BAD = [
    # (argv, a piece of the message that names the problem)
    ("frobnicate", "invalid choice: 'frobnicate'"),
    # sample
    ("sample", "required: RUN"),
    ("sample {tmp}/nope", "nope is not a directory"),
    ("sample {afile}", "afile.txt is not a directory"),
    ("sample {empty}", "no checkpoint.safetensors"),
    ("sample {corrupt}", "not a readable checkpoint"),
    ("sample {gone}", "is missing from"),
    ("sample {flat}", "has no image shape"),
    ("sample {plain} --n 0", "argument --n: expected an integer >= 1, got '0'"),
    ("sample {plain} --n -3", "argument --n: expected an integer >= 1, got '-3'"),
    ("sample {plain} --n many", "argument --n: expected an integer >= 1, got 'many'"),
    ("sample {plain} --seed -1", "argument --seed: expected an integer >= 0, got '-1'"),
    ("sample {plain} --label 1", "is not conditional"),
    ("sample {cond} --label 10", "label must be an integer in 0..9, got 10"),
    ("sample {cond} --label -1", "label must be an integer in 0..9, got -1"),
    ("sample {cond} --label one", "argument --label: invalid int value: 'one'"),
    ("sample {plain} --out {existing}", "exists.png already exists (use --overwrite"),
    ("sample {plain} --out {tmp}/grid.jpg", "must be a file name ending in .png"),
    ("sample {plain} --out {png_dir}", "is a directory"),
    ("sample {plain} --frobnicate", "unrecognized arguments: --frobnicate"),
    # reconstruct
    ("reconstruct", "required: RUN"),
    ("reconstruct {tmp}/nope", "is not a directory"),
    ("reconstruct {empty}", "no checkpoint.safetensors"),
    ("reconstruct {plain} --n 0", "argument --n: expected an integer >= 1"),
    ("reconstruct {plain} --n 1000", "n 1000 is more than the 180 test examples of"),
    ("reconstruct {plain} --out {existing}", "already exists"),
    ("reconstruct {flat}", "has no image shape"),
    ("reconstruct {gone}", "is missing from"),
    # evaluate
    ("evaluate", "required: RUN"),
    ("evaluate {empty}", "no checkpoint.safetensors"),
    ("evaluate {plain} --iwae-k -1", "argument --iwae-k: expected an integer >= 1, got '-1'"),
    ("evaluate {plain} --iwae-k 0", "argument --iwae-k: expected an integer >= 1, got '0'"),
    ("evaluate {plain} --batch-size 0", "argument --batch-size: expected an integer >= 1"),
    ("evaluate {plain} --seed x", "argument --seed: expected an integer >= 0, got 'x'"),
    ("evaluate {no_test}", "has no test split (test_fraction = 0.0)"),
    ("evaluate {plain} --json extra", "unrecognized arguments: extra"),
    # gradcheck
    ("gradcheck --activation swish", "activation must be one of 'relu', 'leaky_relu'"),
    ("gradcheck --likelihood poisson", "likelihood must be one of 'bernoulli'"),
    ("gradcheck --x-dim 0", "argument --x-dim: expected an integer >= 1, got '0'"),
    ("gradcheck --z-dim -1", "z_dim must be a positive integer, got -1"),
    ("gradcheck --hidden 8,x", "argument --hidden: expected comma-separated integers"),
    ("gradcheck --hidden 8,0", "hidden[1] must be a positive integer, got 0"),
    ("gradcheck --sigma 0", "sigma must be a finite number > 0, got 0.0"),
    ("gradcheck --beta -1", "beta must be a finite number >= 0, got -1.0"),
    ("gradcheck --beta nan", "beta must be a finite number >= 0, got nan"),
    ("gradcheck --batch-size 0", "argument --batch-size: expected an integer >= 1"),
    ("gradcheck {plain} --hidden 4", "--hidden cannot be given with it (only --batch-size"),
    ("gradcheck {empty}", "no checkpoint.safetensors"),
    ("gradcheck --n-samples 0", "n_samples must be a positive integer, got 0"),
    ("gradcheck --mode partial", "argument --mode: invalid choice: 'partial'"),
    ("gradcheck --seed -1", "argument --seed: expected an integer >= 0"),
    # info, data
    ("info --verbose", "unrecognized arguments: --verbose"),
    ("info --data-dir {afile}", "afile.txt is not a directory"),
    ("data", "required: {list,fetch}"),
    ("data frobnicate", "invalid choice: 'frobnicate'"),
    ("data list --data-dir {afile}", "afile.txt is not a directory"),
    ("data fetch", "required: NAME"),
    ("data fetch cifar10", "cannot fetch 'cifar10'"),
    ("data fetch digits", "digits ships with scikit-learn: nothing to fetch"),
    ("data fetch mnist --data-dir {afile}", "afile.txt is not a directory"),
    # train
    ("train --lr -1", "lr must be a finite number >= 0, got -1.0"),
    ("train --batch-size 0", "batch_size must be a positive integer, got 0"),
    ("train --z-dim 0", "z_dim must be a positive integer, got 0"),
    ("train --likelihood poisson", "likelihood must be one of"),
    ("train --epochs many", "argument --epochs: invalid int value: 'many'"),
    ("train --hidden 0", "hidden[0] must be a positive integer, got 0"),
    ("train --out {plain}", "already exists and is not empty (use --overwrite to replace it or "
                            "--resume to continue it, or --out for another directory)"),
    ("train --resume {plain} --epochs 3", "--resume continues a run with its saved configuration"),
    ("train --resume {empty}", "no checkpoint.safetensors"),
    ("train --config {bad_toml}", "bad.toml: not valid TOML"),
    ("train --config {tmp}/missing.toml", "missing.toml: no such file"),
    ("train --config {unknown_toml}", "unknown configuration key 'epoch'"),
    ("train --data nosuch", "'nosuch' is neither a built-in"),
    *[(f"train {flag}", f"argument {flag}: expected one argument") for flag in TRAIN_VALUE_FLAGS],
    ("train --data {arrays} --key nope", "arrays.npz: key 'nope' not found; arrays present: x"),
    ("train --data mnist --data-dir {corrupt_idx}",
     "train-images-idx3-ubyte.gz: wrong magic 01 02, expected 00 00"),
    ("train --data mnist --data-dir {afile}", "afile.txt is a file (from --data-dir"),
    ("train --data mnist --data-dir {tmp}/nodata", "is missing from"),
    ("train --key x", "key='x' given for built-in data set 'digits'"),
    ("train --binarize maybe", "binarize must be one of 'none', 'static', 'dynamic', got 'maybe'"),
    ("train --val-fraction 0.5", "val_fraction must be in [0, 0.5), got 0.5"),
    ("train --val-fraction tenth", "argument --val-fraction: invalid float value: 'tenth'"),
    ("train --test-fraction -0.1", "test_fraction must be a finite number >= 0, got -0.1"),
    ("train --hidden 8,x", "argument --hidden: expected comma-separated integers, got '8,x'"),
    ("train --hidden 8,-3", "hidden[1] must be a positive integer, got -3"),
    ("train --z-dim two", "argument --z-dim: invalid int value: 'two'"),
    ("train --activation swish", "activation must be one of"),
    ("train --sigma 0", "sigma must be a finite number > 0, got 0.0"),
    ("train --sigma nan", "sigma must be a finite number > 0, got nan"),
    ("train --dtype float16", "dtype must be 'float32' or 'float64', got 'float16'"),
    ("train --epochs 0", "epochs must be a positive integer, got 0"),
    ("train --batch-size 1.5", "argument --batch-size: invalid int value: '1.5'"),
    ("train --optimizer lamb", "optimizer must be one of 'sgd', 'adam', 'adamw', got 'lamb'"),
    ("train --lr abc", "argument --lr: invalid float value: 'abc'"),
    ("train --lr-schedule cosine", "lr_schedule must be one of 'constant', 'burda', got 'cosine'"),
    ("train --lr-schedule burda --schedule-scale 0", "schedule_scale must be a finite number > 0"),
    ("train --schedule-scale x", "argument --schedule-scale: invalid float value: 'x'"),
    ("train --adam-eps 0", "adam_eps must be a finite number > 0, got 0.0"),
    ("train --schedule-scale 0.1", "schedule_scale 0.1 scales the burda schedule: expected "
                                   "lr_schedule 'burda'"),
    ("train --hidden 64,,32", "argument --hidden: expected comma-separated integers, got '64,,32'"),
    ("gradcheck --bogus", "gradcheck: unrecognized arguments: --bogus"),
    ("train --config {typed_toml}", "pictures must be true or false, got 'no'"),
    ("train --adam-eps nan", "adam_eps must be a finite number > 0, got nan"),
    ("train --preset burda", "preset must be one of 'burda2015', got 'burda'"),
    ("train --resume {plain} --preset burda2015", "--preset cannot be given with it"),
    ("train --lr inf", "lr must be a finite number >= 0, got inf"),
    ("train --momentum 2", "momentum must be in [0, 1), got 2.0"),
    ("train --momentum 1", "momentum must be in [0, 1), got 1.0"),
    ("train --momentum -0.5", "momentum must be a finite number >= 0, got -0.5"),
    ("train --weight-decay -1", "weight_decay must be a finite number >= 0, got -1.0"),
    ("train --beta nan", "beta must be a finite number >= 0, got nan"),
    ("train --warmup-epochs -1", "warmup_epochs must be an integer >= 0, got -1"),
    ("train --warmup-epochs x", "argument --warmup-epochs: invalid int value: 'x'"),
    ("train --clip 0", "clip must be a finite number > 0, got 0.0"),
    ("train --clip -1", "clip must be a finite number > 0, got -1.0"),
    ("train --patience 0", "patience must be a positive integer, got 0"),
    ("train --patience 2 --val-fraction 0", "patience 2 needs a validation split to watch"),
    ("train --n-samples 0", "n_samples must be a positive integer, got 0"),
    ("train --objective vimco", "objective must be one of 'elbo', 'iwae', got 'vimco'"),
    ("train --objective iwae --beta 0.5", "weighs its KL by 1: expected beta 1 and no warm-up"),
    ("train --estimator stl", "estimator must be one of 'standard', 'dreg', got 'stl'"),
    ("train --estimator dreg", "estimator 'dreg' estimates the importance-weighted bound's gradient"),
    ("train --seed -1", "seed must be an integer >= 0, got -1"),
    ("train --seed 1.5", "argument --seed: invalid int value: '1.5'"),
    ("train --iwae-k 0", "iwae_k must be a positive integer, got 0"),
    ("train --on-nonfinite ignore", "on_nonfinite must be one of 'stop', 'skip', got 'ignore'"),
    ("train --backend tpu", "backend must be one of 'numpy', 'numba', 'cupy', 'numba-cuda', 'auto'"),
    ("train --out {afile}", "afile.txt is a file; expected a folder"),
    ("train --resume {afile}", "afile.txt is not a directory"),
    ("train --resume {plain} --overwrite", "--overwrite cannot be given with it (only --backend"),
    ("train --resume {plain} --out {tmp}/x --lr 1", "--lr, --out cannot be given with it"),
    ("train --resume {plain} --backend tpu", "backend must be one of"),
]


@pytest.fixture
def scene(tmp_path, runs) -> dict[str, str]:
    """The paths the bad-input table refers to."""
    (tmp_path / "exists.png").write_bytes(b"not mine to overwrite")
    (tmp_path / "afile.txt").write_text("a file, not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "bad.toml").write_text("epochs = = 3\n")
    (tmp_path / "unknown.toml").write_text("epoch = 3\n")
    (tmp_path / "typed.toml").write_text('pictures = "no"\n')
    np.savez(tmp_path / "arrays.npz", x=np.zeros((10, 4), dtype=np.float32))
    _fake_mnist(tmp_path / "corrupt-idx" / "mnist")
    (tmp_path / "corrupt-idx" / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\x01\x02\x08\x03" + bytes(100)))  # IDX magic starts with two zero bytes
    return {"tmp": str(tmp_path), "afile": str(tmp_path / "afile.txt"),
            "arrays": str(tmp_path / "arrays.npz"), "corrupt_idx": str(tmp_path / "corrupt-idx"),
            "empty": str(tmp_path / "empty"), "corrupt": str(tmp_path / "corrupt"),
            "existing": str(tmp_path / "exists.png"), "png_dir": str(tmp_path / "dir.png"),
            "bad_toml": str(tmp_path / "bad.toml"), "unknown_toml": str(tmp_path / "unknown.toml"),
            "typed_toml": str(tmp_path / "typed.toml"),
            **{k: str(getattr(runs, k)) for k in ("plain", "cond", "flat", "no_test", "gone")}}


@pytest.mark.parametrize("argv, expected", BAD, ids=[a or "(nothing)" for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, expected, scene, tmp_path, runs,
                                                          capsys):
    args = [a.format(**scene) for a in argv.split()]
    before = _snapshot(tmp_path, runs.root)
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("minivae: error: ") and err.count("\n") == 1, err
    assert not err.startswith("minivae: error: minivae"), err  # one prefix
    assert expected in err
    assert "Traceback" not in err
    assert _snapshot(tmp_path, runs.root) == before


def _train_parser() -> argparse.ArgumentParser:
    return dict(_all_parsers(cli.build_parser()))["minivae train"]


def test_the_bad_input_table_covers_every_train_flag():
    """Every train flag that takes a value has a missing-value row and at least one more."""
    takes_value = [a.option_strings[0] for a in _train_parser()._actions
                   if isinstance(a, argparse._StoreAction) and a.option_strings]
    assert sorted(takes_value) == sorted(TRAIN_VALUE_FLAGS)
    for flag in takes_value:
        rows = [argv for argv, _ in BAD if argv.startswith("train ") and flag in argv.split()]
        assert f"train {flag}" in rows and len(rows) >= 2, flag


def test_an_unavailable_backend_is_exit_2_one_line_and_no_run_directory(tmp_path, no_cupy,
                                                                        capsys):
    before = _snapshot(tmp_path)
    assert cli.main(["train", *TINY, "--backend", "cupy", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == ("minivae: error: backend 'cupy' is not available: no CUDA GPU: CuPy sees no "
                   "device\n")
    assert not (tmp_path / "r").exists() and _snapshot(tmp_path) == before


def test_a_nonfinite_stop_is_exit_1_naming_the_step_and_tensor(tmp_path, capsys):
    run = tmp_path / "r"
    assert cli.main(["train", *TINY, "--lr", "1e12", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert err == ("minivae: non-finite loss at epoch 1, step 2 (global step 2); no checkpoint had "
                   "been written yet, so there is nothing to resume: change the settings (a "
                   f"smaller --lr often helps) and start again with --out {run} --overwrite\n")
    assert not (run / "checkpoint.safetensors").exists()  # none was good enough to write


def test_ctrl_c_during_the_final_evaluation_is_exit_130_and_one_line(tmp_path, monkeypatch,
                                                                     capsys):
    def interrupted_iwae(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # interrupted long before it ends
        raise AssertionError("the SIGINT did not stop the evaluation")

    monkeypatch.setattr(VAE, "iwae", interrupted_iwae)
    run = tmp_path / "r"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines()[-1] == ("interrupted during the final evaluation: training is "
                                    "complete and its checkpoint intact; `minivae train --resume "
                                    f"{run}` evaluates it again")
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_resume_takes_backend_and_no_progress(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs.plain, run)
    assert cli.main(["train", "--resume", str(run), "--backend", "numpy", "--no-progress"]) == 0
    assert f"{run} is already complete (2 epochs)" in capsys.readouterr().err


def test_no_network_fetch_says_where_to_put_the_files_and_leaves_nothing(tmp_path, monkeypatch,
                                                                         capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data, "_open_url", offline)
    before = _snapshot(tmp_path)
    assert cli.main(["data", "fetch", "mnist", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"put them in {tmp_path / 'data' / 'mnist'}" in err
    assert all(f"{base}.gz" in err for base in IDX_FILES)
    assert not (tmp_path / "data").exists()
    assert set(_snapshot(tmp_path)) == set(before)


def test_gradcheck_failure_exits_1_with_the_table(monkeypatch, capsys):
    real_loss = VAE.loss

    def wrong_loss(self, *args, **kwargs):
        res = real_loss(self, *args, **kwargs)
        res.grads["dec.1.W"] = res.grads["dec.1.W"] * 1.01
        return res

    monkeypatch.setattr(VAE, "loss", wrong_loss)
    assert cli.main(["gradcheck", *SMALL_MODEL]) == 1
    out = capsys.readouterr().out
    assert "gradcheck FAILED: 1 of 12 rows failed" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("dec.1.W ")] == ["FAIL"]


# ------------------------------------------------------------------------------------------------
# the commands doing their jobs


def test_sample_writes_a_png_and_refuses_to_overwrite_it(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs.plain, run)
    assert cli.main(["sample", str(run)]) == 0
    path = run / "samples-0-64.png"
    assert capsys.readouterr().out == f"{path}\n"
    assert path.read_bytes().startswith(PNG_MAGIC)
    stamp = path.stat().st_mtime_ns
    assert cli.main(["sample", str(run)]) == 2
    assert path.stat().st_mtime_ns == stamp
    assert cli.main(["sample", str(run), "--overwrite"]) == 0
    # another setting is another file: no --overwrite needed
    assert cli.main(["sample", str(run), "--n", "9"]) == 0
    assert cli.main(["sample", str(run), "--seed", "7"]) == 0
    assert (run / "samples-0-9.png").read_bytes().startswith(PNG_MAGIC)
    assert (run / "samples-7-64.png").read_bytes().startswith(PNG_MAGIC)


def test_sample_of_a_conditional_run_takes_a_label(runs, tmp_path, monkeypatch):
    from minivae import pictures

    seen = []
    real = pictures.prior_samples
    monkeypatch.setattr(pictures, "prior_samples",
                        lambda *a, **k: seen.append(k["y"]) or real(*a, **k))
    out = tmp_path / "sub" / "three.png"
    assert cli.main(["sample", str(runs.cond), "--label", "3", "--n", "10", "--out", str(out)]) == 0
    assert commands.sample(runs.cond, n=10, out=tmp_path / "cycle.png") == tmp_path / "cycle.png"
    assert seen == [3, None]
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_reconstruct_writes_a_png(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs.cond, run)
    assert cli.main(["reconstruct", str(run)]) == 0
    assert capsys.readouterr().out == f"{run / 'reconstructions-16.png'}\n"
    assert (run / "reconstructions-16.png").read_bytes().startswith(PNG_MAGIC)
    out = tmp_path / "five.png"
    assert commands.reconstruct(run, n=5, out=out) == out
    assert out.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("which", ["plain", "cond"])
def test_evaluate_reproduces_the_summary_of_training(which, runs, capsys):
    """Same split, binarisation, seed and K as training's final evaluation: the same numbers."""
    run = getattr(runs, which)
    summary = json.loads((run / "summary.json").read_text())
    assert cli.main(["evaluate", str(run), "--iwae-k", "10", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    for key in ("n_test", "iwae_k", "test_elbo_loss", "test_elbo_loss_stderr", "test_recon",
                "test_kl", "test_iwae_nll", "test_iwae_nll_stderr"):
        assert got[key] == summary[key], key
    other = commands.evaluate(run, iwae_k=10, seed=1)
    assert other["test_iwae_nll"] != got["test_iwae_nll"]


def test_evaluate_prints_a_table(runs, capsys):
    assert cli.main(["evaluate", str(runs.plain), "--iwae-k", "3", "--batch-size", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{runs.plain}: 180 test examples, seed 0"
    assert lines[1].split() == ["nats", "stderr"]
    assert lines[2].startswith("test -ELBO") and lines[-2].startswith("IWAE NLL (K=3)")
    assert all(float(v) > 0 for v in lines[-2].split()[-2:])
    assert re.fullmatch(r"active units: [0-2] of 2 \(Var_x E_q\[z_u\|x\] > 0.01, Burda et al. 2015\)",
                        lines[-1]), lines[-1]


def test_gradcheck_passes_and_prints_every_parameter(capsys):
    assert cli.main(["gradcheck", *SMALL_MODEL]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gradcheck PASSED: 12 of 12 rows pass  [mode=full, dtype=float64")
    names = {line.split()[0] for line in out.splitlines()[3:]}
    expected = {f"{net}.{i}.{p}" for net in ("enc", "dec") for i in range(3) for p in "Wb"}
    assert names == expected


@pytest.mark.parametrize("likelihood", ["bernoulli", "cbernoulli", "gaussian", "gaussian_learned"])
def test_gradcheck_passes_for_every_likelihood(likelihood):
    result = commands.gradcheck_model(likelihood=likelihood, activation="softplus",
                                      conditional=True, n_samples=2, beta=0.5, x_dim=5, z_dim=2,
                                      hidden=(4,), batch_size=3, seed=1)
    assert result.ok, str(result)
    assert {r.name for r in result.rows} >= {"enc.0.W", "dec.1.b"}
    assert any(r.name.startswith("lik.") for r in result.rows) == (likelihood == "gaussian_learned")


def test_gradcheck_directional(capsys):
    assert cli.main(["gradcheck", "--mode", "directional", "--conditional", "--activation",
                     "relu", "--hidden", "5"]) == 0
    out = capsys.readouterr().out
    assert "mode=directional" in out and "direction 3" in out


def test_info(tmp_path, capsys):
    assert cli.main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["numpy"] == np.__version__ and d["cpu_count"] >= 1
    assert [b["name"] for b in d["backends"]] == list(BACKENDS)
    assert d["backends"][0]["importable"] is d["backends"][0]["available"] is True
    assert d["data_dir"] == str(tmp_path / "data")
    assert {r["name"]: r["present"] for r in d["datasets"]} == {
        "digits": True, "mnist": False, "fashion-mnist": False, "kmnist": False}
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "backends:" in text and f"data directory: {tmp_path / 'data'}" in text


def test_info_without_threadpoolctl_and_with_a_gpu_library_but_no_gpu(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake_cupy = SimpleNamespace(__version__="13.0", cuda=SimpleNamespace(
        runtime=SimpleNamespace(getDeviceCount=no_device)))
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # None in sys.modules: ImportError
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    blas = commands.blas_info()
    assert blas == [] or blas[0]["source"] == "numpy build configuration"
    cupy = {b["name"]: b for b in commands.backends()}["cupy"]
    assert cupy["importable"] is True and cupy["gpu"] is False and cupy["available"] is False
    assert cupy["version"] == "13.0" and "no CUDA-capable device" in cupy["note"]
    assert "no CUDA-capable device" in commands.info_text(commands.info())


def _numba_cuda_version() -> str:
    try:
        return importlib.metadata.version("numba-cuda")
    except importlib.metadata.PackageNotFoundError:
        return importlib.metadata.version("numba")


def test_info_reports_the_backends_exactly_as_available_does(capsys):
    assert cli.main(["info", "--json"]) == 0
    rows = {b["name"]: b for b in json.loads(capsys.readouterr().out)["backends"]}
    verdict = backends.available()
    assert list(rows) == list(verdict) == list(BACKENDS)
    for name, why in verdict.items():
        assert rows[name]["available"] is (why == "ok"), name
        if why != "ok":
            assert rows[name]["note"] == why, name
    # numba-cuda runs on numba.cuda: the library reported is that, whatever provides it
    try:
        import numba.cuda  # noqa: F401
    except Exception:
        assert rows["numba-cuda"]["importable"] is False
    else:
        assert rows["numba-cuda"]["importable"] is True
        assert rows["numba-cuda"]["version"] == _numba_cuda_version()


@pytest.mark.timeout(120)
def test_info_agrees_with_available_under_the_cuda_simulator():
    """Under NUMBA_ENABLE_CUDASIM=1 the numba-cuda backend runs (in the simulator): info must
    say so, with numba.cuda's version, and that it sees no GPU."""
    pytest.importorskip("numba")
    code = ("import json; from minivae import backends, commands; "
            "print(json.dumps([backends.available(), commands.backends()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110,
                         env=os.environ | {"NUMBA_ENABLE_CUDASIM": "1"})
    assert out.returncode == 0, out.stderr
    verdict, rows = json.loads(out.stdout)
    assert verdict["numba-cuda"] == "ok"
    assert {r["name"]: r["available"] for r in rows} == {k: v == "ok" for k, v in verdict.items()}
    row = {r["name"]: r for r in rows}["numba-cuda"]
    assert row["importable"] is True and row["gpu"] is False
    assert row["version"] == _numba_cuda_version() and "simulator" in row["note"]


def test_data_list_and_fetch(tmp_path, monkeypatch, capsys):
    _fake_mnist(tmp_path / "data" / "mnist")
    assert cli.main(["data", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "present" in rows["mnist"] and "missing 4 of 4 files" in rows["kmnist"]
    # a fetch against a stand-in server whose files the table of sums vouches for
    payload = {f"{base}.gz": gzip.compress(base.encode()) for base in IDX_FILES}
    table = {name: (len(b), hashlib.sha256(b).hexdigest()) for name, b in payload.items()}
    monkeypatch.setitem(data.SOURCES, "kmnist", ("https://example.invalid/k/", table))
    monkeypatch.setattr(data, "_open_url",
                        lambda url, timeout: io.BytesIO(payload[url.rsplit("/", 1)[1]]))
    other = tmp_path / "elsewhere"
    assert cli.main(["data", "fetch", "kmnist", "--data-dir", str(other), "--no-progress"]) == 0
    assert capsys.readouterr().out == f"{other / 'kmnist'}\n"
    assert sorted(p.name for p in (other / "kmnist").iterdir()) == sorted(payload)


# ------------------------------------------------------------------------------------------------
# train: --config and flags


def test_train_takes_settings_from_config_and_flags_win(tmp_path, capsys):
    (tmp_path / "run.toml").write_text("epochs = 1\nhidden = [8]\nz_dim = 2\niwae_k = 5\n"
                                       "pictures = false\nseed = 3\nlr = 0.01\n")
    assert cli.main(["train", "--config", "run.toml", "--z-dim", "3", "--no-progress"]) == 0
    config = json.loads((tmp_path / "runs" / "digits-3" / "config.json").read_text())
    assert (config["epochs"], config["hidden"], config["lr"], config["seed"]) == (1, [8], 0.01, 3)
    assert config["z_dim"] == 3  # the flag, not the file's 2
    assert config["pictures"] is False


# ------------------------------------------------------------------------------------------------
# --help


def _shown(default) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def _all_parsers(parser, name="minivae"):
    yield name, parser
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for sub_name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {sub_name}")


# What a train default of None means, word for word as --help must say it.
NONE_SHOWN = {
    "data_dir": "$MINIVAE_DATA, else a per-user cache directory",
    "key": "none: the array named x, else the only one besides the labels",
    "clip": "off",
    "patience": "off: train every epoch, keep the last weights",
}


def test_every_flag_has_help_that_shows_its_exact_default():
    """Each flag's help ends in one "(default: ...)" naming the default that applies: argparse's,
    or for train (whose flags default to None so that given ones can be told apart) TrainConfig's,
    with None spelled out. "None" never shows."""
    without_default = {"--config", "--resume", "--json", "--overwrite", "--no-progress", "--version"}
    config = TrainConfig()
    none_fields = {f for f in cli.TRAIN_FLAGS if getattr(config, f) is None}
    assert none_fields == set(NONE_SHOWN)
    checked_train = set()
    for name, parser in _all_parsers(cli.build_parser()):
        assert parser.description, name
        for action in parser._actions:
            if not action.option_strings or action.option_strings[0] == "-h":
                continue
            flag = action.option_strings[0]
            where = f"{name} {flag}: {action.help}"
            assert action.help and "None" not in action.help, where
            if flag in without_default:
                assert "(default: " not in action.help, where
                continue
            assert action.help.count("(default: ") == 1 and action.help.endswith(")"), where
            if (name == "minivae train" and hasattr(config, action.dest)) or (
                    name == "minivae gradcheck" and action.dest in (*cli.MODEL_FLAGS, "conditional")):
                value = getattr(config, action.dest)
                shown = NONE_SHOWN[action.dest] if value is None else _shown(value)
                checked_train.add(action.dest)
            elif action.default is not None:
                shown = _shown(action.default)
            else:  # a default that depends on other arguments, described in words
                continue
            assert action.help.endswith(f"(default: {shown})"), where
    assert checked_train == {*cli.TRAIN_FLAGS, "conditional", "pictures"}


def test_train_help_says_what_resume_allows_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "only --backend and --no-progress may be given with it" in text
    assert "exit status: 0 done, 1 stopped on a NaN/inf loss or gradient" in text
    assert "130 interrupted by Ctrl-C or SIGTERM" in text and "(default: None)" not in text


@pytest.mark.parametrize("command", ["train", "sample", "reconstruct", "evaluate", "gradcheck",
                                     "info", "data", "data list", "data fetch"])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command.split(), "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: minivae {command}")


def test_the_real_process_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "minivae", "--help"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "sample" in ok.stdout and "gradcheck" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "minivae.cli", "sample", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == f"minivae: error: {tmp_path / 'nope'} is not a directory (expected a run " \
                         "directory made by `minivae train`)\n"


# ------------------------------------------------------------------------------------------------
# what a new user meets: each test names the mishap it guards against


def _tiny_data(path: Path, rows: int, shape: tuple[int, ...] = (6,)) -> Path:
    np.save(path, (np.random.default_rng(rows).random((rows, *shape)) < 0.5).astype(np.float32))
    return path


def test_a_one_example_test_split_trains_summarises_and_resumes(tmp_path, capsys):
    """Three rows leave one test example, whose standard error does not exist: "-" on the
    console, null in summary.json, and no crash in training, resume or evaluate."""
    run = tmp_path / "r"
    data_file = _tiny_data(tmp_path / "tiny.npy", 3)
    assert cli.main(["train", *TINY, "--data", str(data_file), "--out", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert re.fullmatch(r"test -ELBO \d+\.\d{3} \+- - nats, IWAE \(K=10\) NLL \d+\.\d{3} \+- - "
                        r"nats  \(1 test examples\)", out.splitlines()[0]), out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_test"] == 1
    assert summary["test_elbo_loss_stderr"] is None and summary["test_iwae_nll_stderr"] is None
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert cli.main(["evaluate", str(run), "--iwae-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_iwae_nll_stderr"] is None


def test_a_run_on_a_relative_data_path_works_from_any_directory(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    _tiny_data(home / "good.npy", 40, (3, 3))
    assert cli.main(["train", *TINY, "--data", "good.npy", "--out", "run"]) == 0
    assert json.loads((home / "run" / "config.json").read_text())["data"] == str(home / "good.npy")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["evaluate", "home/run", "--iwae-k", "3"]) == 0
    assert cli.main(["sample", "home/run", "--n", "4"]) == 0
    assert cli.main(["train", "--resume", "home/run", "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def _minivae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minivae", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_a_nan_stop_before_any_checkpoint_says_what_is_true_and_what_to_do(tmp_path):
    """A real process: exactly one line on stderr (no RuntimeWarning from the optimiser beside
    it), saying that no checkpoint exists; --resume and a plain rerun then say the same."""
    diverging = [*TINY, "--optimizer", "sgd", "--lr", "1e6", "--momentum", "0", "--out", "r"]
    stop = _minivae("train", *diverging, cwd=tmp_path)
    assert stop.returncode == 1 and stop.stdout == ""
    assert stop.stderr.count("\n") == 1, stop.stderr
    assert stop.stderr.startswith("minivae: non-finite loss at epoch 1, step ")
    assert ("no checkpoint had been written yet, so there is nothing to resume: change the "
            "settings (a smaller --lr often helps) and start again with --out r --overwrite"
            ) in stop.stderr
    resume = _minivae("train", "--resume", "r", cwd=tmp_path)
    assert resume.returncode == 2
    assert resume.stderr == ("minivae: error: r has no checkpoint.safetensors: its run stopped "
                             "before writing one, so there is nothing to use or resume (start it "
                             "again with --out r --overwrite)\n")
    again = _minivae("train", *diverging, cwd=tmp_path)
    assert again.returncode == 2 and "--resume" not in again.stderr
    assert "(use --overwrite to replace it, or --out for another directory)" in again.stderr


def test_a_nan_stop_after_a_checkpoint_says_it_is_kept(tmp_path, monkeypatch, capsys):
    real_loss = VAE.loss
    calls = []

    def nan_in_epoch_2(self, *args, **kwargs):
        res = real_loss(self, *args, **kwargs)
        calls.append(1)
        if len(calls) > 23:  # digits: 23 steps of 64 per epoch
            res.loss = float("nan")
        return res

    monkeypatch.setattr(VAE, "loss", nan_in_epoch_2)
    run = tmp_path / "r"
    assert cli.main(["train", *TINY, "--batch-size", "64", "--out", str(run)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "minivae: non-finite loss at epoch 2, step 1 (global step 24); the last good checkpoint is "
        "kept")
    assert (run / "checkpoint.safetensors").is_file()


def test_an_epoch_whose_every_step_is_skipped_is_recorded_as_missing(tmp_path, capsys):
    run = tmp_path / "r"
    assert cli.main(["train", *TINY, "--optimizer", "sgd", "--lr", "1e6", "--momentum", "0",
                     "--on-nonfinite", "skip", "--out", str(run)]) == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = recs[-1]
    assert [last[k] for k in ("train_loss", "train_neg_elbo", "train_recon", "train_kl")] == [None] * 4
    err = capsys.readouterr().err
    assert "epoch   2/2  train -ELBO - (recon -, KL -)  (all 12 steps skipped)" in err
    skipped = last["skipped_steps"]
    assert f"warning: {skipped} of 24 steps were skipped for a non-finite loss or gradient" in err


def test_an_unreadable_checkpoint_is_called_unreadable(runs, tmp_path, monkeypatch, capsys):
    """Not "No such file or directory": the checkpoint is there, and the OS says why it cannot be
    read. (CI runs as root, for whom chmod denies nothing, so the OS's refusal is simulated.)"""
    from minivae import runs as runs_module

    real_open = open

    def no_permission(path, *args, **kwargs):
        if Path(path).name == "checkpoint.safetensors":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(runs_module, "open", no_permission, raising=False)
    assert cli.main(["evaluate", str(runs.plain)]) == 2
    assert capsys.readouterr().err == (f"minivae: error: {runs.plain / 'checkpoint.safetensors'} "
                                       "cannot be read: Permission denied\n")


def test_hidden_widths_in_a_toml_file_may_be_a_string_like_the_flag(tmp_path, capsys):
    (tmp_path / "ok.toml").write_text('hidden = "16,8"\n')
    (tmp_path / "bad.toml").write_text('hidden = "16,x"\n')
    run = tmp_path / "r"
    flags = [a for a in TINY if a not in ("--hidden", "16")]  # the file says the widths
    assert cli.main(["train", *flags, "--config", str(tmp_path / "ok.toml"), "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["hidden"] == [16, 8]
    assert cli.main(["train", *flags, "--config", str(tmp_path / "bad.toml")]) == 2
    assert capsys.readouterr().err.endswith(
        "minivae: error: hidden must be comma-separated positive integers, got '16,x'\n")


def test_ctrl_c_while_evaluating_is_exit_130_and_one_line(runs, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "evaluate", interrupted)
    assert cli.main(["evaluate", str(runs.plain)]) == 130
    assert capsys.readouterr() == ("", "minivae: interrupted\n")


def test_ctrl_c_while_the_command_line_loads_is_exit_130_and_one_line(monkeypatch, capsys):
    """The entry point imports the command line (NumPy, the model, ...) inside its handler."""
    import builtins

    import minivae.__main__ as entry

    real_import = builtins.__import__

    def slow_import(name, *args, **kwargs):
        if name == "minivae.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", slow_import)
    assert entry.main() == 130
    assert capsys.readouterr() == ("", "minivae: interrupted\n")


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_soon_after_start_leaves_no_traceback(tmp_path, delay):
    """A real process interrupted while it imports (0.3 s) or loads and starts training (1.5 s)."""
    proc = subprocess.Popen([sys.executable, "-m", "minivae", "train", "--epochs", "1000",
                             "--no-progress", "--out", "r"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines()[-1] in ("minivae: interrupted",) or err.splitlines()[-1].startswith(
        "interrupted: checkpoint saved at epoch")


def test_train_prints_its_result_on_stdout_and_its_progress_on_stderr(tmp_path, capsys):
    """`minivae train > log.txt` keeps the result in log.txt."""
    run = tmp_path / "r"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("test -ELBO ") and out.splitlines()[-1] == \
        f"run saved in {run}"
    assert "test -ELBO " not in err and "epoch   1/2" in err and "epoch" not in out


def test_gradcheck_of_a_run_checks_its_trained_weights(runs, monkeypatch, capsys):
    from minivae.runs import read_checkpoint

    seen = {}
    real = commands.gradcheck

    def spy(f, params, grads, **kwargs):
        seen.update({k: v.copy() for k, v in params.items()})
        return real(f, params, grads, **kwargs)

    monkeypatch.setattr(commands, "gradcheck", spy)
    assert cli.main(["gradcheck", str(runs.plain), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gradcheck PASSED") and "dtype=float64" in out
    trained = read_checkpoint(runs.plain)[2]
    assert seen.keys() == trained.keys()
    for k, v in trained.items():
        assert seen[k].dtype == np.float64 and np.array_equal(seen[k], v.astype(np.float64)), k


def test_gradcheck_takes_trains_model_flags_with_trains_defaults(monkeypatch):
    """`minivae gradcheck` without flags checks the model `minivae train` trains by default."""
    from minivae.config import TrainConfig as Config

    built = []
    real_vae = commands.VAE

    def spy(*args, **kwargs):
        model = real_vae(*args, **kwargs)
        built.append((args, kwargs))
        return model

    monkeypatch.setattr(commands, "VAE", spy)
    monkeypatch.setattr(commands, "gradcheck", lambda *a, **k: SimpleNamespace(ok=True))
    assert cli.main(["gradcheck"]) == 0
    (x_dim, z_dim, hidden), kwargs = built[0]
    d = Config()
    assert (x_dim, z_dim, hidden) == (commands.GRADCHECK_X_DIM, d.z_dim, d.hidden)
    assert (kwargs["activation"], kwargs["likelihood"], kwargs["sigma"]) == \
        (d.activation, d.likelihood, d.sigma)


def test_silent_conversions_are_said(tmp_path, capsys):
    """Flat rows get no image pictures, colour PNGs are made grey: one line each."""
    from PIL import Image

    flat = _tiny_data(tmp_path / "flat.npy", 40)
    assert cli.main(["train", *TINY, "--pictures", "--data", str(flat), "--out",
                     str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "flat (N, D) rows" in line] == [
        f"note: the data {str(flat)!r} are flat (N, D) rows with no image shape, so the pictures "
        "are the loss curves and the latent scatter only; save (N, H, W) arrays or PNG images "
        "for the image pictures"]
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        mode = "RGB" if i < 3 else "L"
        shape = (4, 4, 3) if mode == "RGB" else (4, 4)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    assert cli.main(["train", *TINY, "--data", str(folder), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert f"note: {folder}: 3 of 12 images are not grey (3 RGB); they were made grey" in err


def test_bare_minivae_lists_the_commands_and_version_prints_it(capsys):
    import minivae

    assert cli.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: minivae")
    for command in ("train", "sample", "reconstruct", "evaluate", "gradcheck", "info", "data"):
        assert re.search(rf"^\s+{command}\s", err, re.MULTILINE), command
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"minivae {minivae.__version__}\n"


def test_an_argparse_error_names_the_command_once(capsys):
    assert cli.main(["train", "--epochs", "x"]) == 2
    assert capsys.readouterr().err == ("minivae: error: train: argument --epochs: invalid int "
                                       "value: 'x'\n")


def test_every_file_of_a_run_gets_the_same_permissions(tmp_path):
    """Checkpoints, JSON files and pictures all get the umask's mode (no 0600 beside 0644)."""
    old = os.umask(0o022)
    try:
        assert cli.main(["train", *TINY, "--pictures", "--out", str(tmp_path / "r")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "r").iterdir()}
    assert "checkpoint.safetensors" in modes and "reconstructions.png" in modes
    assert set(modes.values()) == {0o644}, modes


def test_the_burda_preset_sets_the_papers_model_and_schedule_and_flags_win(tmp_path, monkeypatch):
    from minivae import config as config_mod
    from minivae import train as train_mod

    seen = []
    monkeypatch.setattr(train_mod, "train", lambda config, out, **kw: seen.append(config) or
                        SimpleNamespace(interrupted=False))
    assert cli.main(["train", "--preset", "burda2015", "--no-progress"]) == 0
    c = seen[-1]
    assert (c.hidden, c.z_dim, c.activation, c.likelihood, c.batch_size, c.adam_eps, c.iwae_k) == \
        ((200, 200), 50, "tanh", "bernoulli", 20, 1e-4, 5000)
    assert c.lr_schedule == "burda" and c.epochs == 3280 == sum(3**i for i in range(8))
    assert cli.main(["train", "--preset", "burda2015", "--schedule-scale", "0.01", "--z-dim", "10",
                     "--no-progress"]) == 0
    c = seen[-1]
    assert c.epochs == sum(config_mod.burda_stages(0.01)) == 36 and c.z_dim == 10
    assert cli.main(["train", "--preset", "burda2015", "--epochs", "5", "--no-progress"]) == 0
    assert seen[-1].epochs == 5


def test_info_says_how_to_install_the_gpu_extras_as_the_readme_does(monkeypatch, capsys):
    """Without CuPy the cupy backend's note is the README's install line (an editable install of
    the clone), not a package name that is not published."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    monkeypatch.delitem(backends._loaded, "cupy", raising=False)
    assert cli.main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("cupy "))
    assert 'pip install -e ".[gpu]" (CUDA 12) or -e ".[gpu13]" (CUDA 13)' in line
    assert 'pip install -e ".[gpu13]"' in (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize(("toml", "message"), [
    ("data = 5", "data must be a string, got 5"),
    ('data = "mnist"\ndata_dir = 5', "data_dir must be a string (or left out), got 5"),
    ("conditional = 1", "conditional must be true or false, got 1"),
    ('clip = "1"', "clip must be a finite number > 0, got '1'"),
    ('epochs = "3"', "epochs must be a positive integer, got '3'"),
])
def test_a_toml_setting_of_the_wrong_type_is_one_line(tmp_path, capsys, toml, message):
    (tmp_path / "c.toml").write_text(toml + "\n")
    assert cli.main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == f"minivae: error: {message}\n" and not (tmp_path / "r").exists()


def test_sigterm_outside_training_is_exit_130_and_one_line(runs, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "minivae", "evaluate", str(runs.plain), "--iwae-k",
                             "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (130, "", "minivae: interrupted\n")


def test_gradcheck_of_an_iwae_run_checks_the_bound_it_trained_on(tmp_path, monkeypatch, capsys):
    run = tmp_path / "iw"
    assert cli.main(["train", *TINY, "--objective", "iwae", "--n-samples", "3", "--estimator", "dreg",
                     "--out", str(run)]) == 0
    capsys.readouterr()
    seen = []
    real = VAE.loss
    monkeypatch.setattr(VAE, "loss", lambda self, *a, **k: seen.append(
        (k.get("objective"), k.get("estimator", "standard"), k["eps"].shape[0])) or real(self, *a, **k))
    assert cli.main(["gradcheck", str(run), "--batch-size", "2", "--mode", "directional"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("gradcheck PASSED") and "trained with DReG" in err
    assert set(seen) == {("iwae", "standard", 3)}
    seen.clear()
    assert cli.main(["gradcheck", *SMALL_MODEL, "--objective", "iwae", "--n-samples", "4"]) == 0
    assert set(seen) == {("iwae", "standard", 4)}
