"""Robustness: crashes, disk trouble, hostile checkpoints and extreme values never lose a run or
turn into a silently wrong number.

The SIGKILL test runs ``MINIVAE_CRASH_TRIALS`` trials (3 in CI; ``MINIVAE_CRASH_TRIALS=10 python -m
pytest tests/test_robustness.py`` for the full count).
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivae import cli, runs
from minivae import train as train_mod
from minivae.config import TrainConfig
from minivae.data import load_dataset
from minivae.model import IWAE_CHUNK_ELEMENTS, VAE
from minivae.runs import CHECKPOINT, RunError, read_checkpoint
from minivae.train import train

CRASH_TRIALS = int(os.environ.get("MINIVAE_CRASH_TRIALS", "3"))
RUN_FLAGS = ["--epochs", "80", "--hidden", "16", "--z-dim", "2", "--iwae-k", "8", "--no-pictures",
             "--no-progress"]
RUN_CONFIG = dict(epochs=80, hidden=(16,), z_dim=2, iwae_k=8, pictures=False)


def _quiet(_msg: str) -> None:
    pass


def _minivae(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minivae", *args], capture_output=True, text=True,
                          timeout=timeout)


def _strip_seconds(run: Path) -> list[dict]:
    """The epoch records of a run without their wall-clock field (the only one that may differ)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"} for line in lines]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# The kill lands in epoch `after` + u of the run, `after` drawn in [1, epochs - KILL_MARGIN_EPOCHS):
# the margin (15 epochs, ~0.25 s here) keeps every kill before the end of training even when the
# watching process is descheduled for a while on a loaded machine.
KILL_MARGIN_EPOCHS = 15


@pytest.mark.timeout(120 + 60 * CRASH_TRIALS)
def test_sigkill_during_training_never_loses_the_run(tmp_path):
    """Every trial SIGKILLs a training process at a seeded moment inside training; afterwards the run
    holds a loadable checkpoint that is not past the kill, and ``--resume`` ends with bitwise the
    weights and the epoch records of an uninterrupted run.

    The moment: wait until the run has recorded ``after`` epochs (drawn from a seeded generator),
    then sleep a drawn fraction of one epoch's time (measured on the reference run), so kills land
    mid-epoch, between a metrics line and its checkpoint, and during checkpoint writes. CI runs
    MINIVAE_CRASH_TRIALS=3 trials (the default); the full count of ten is
    ``MINIVAE_CRASH_TRIALS=10 python -m pytest tests/test_robustness.py -k sigkill``.
    """
    ref = tmp_path / "reference"
    assert _minivae("train", *RUN_FLAGS, "--out", str(ref)).returncode == 0
    reference, ref_metrics = read_checkpoint(ref)[2], _strip_seconds(ref)
    seconds = [json.loads(line)["elapsed_seconds"]
               for line in (ref / "metrics.jsonl").read_text().splitlines()]
    epochs = len(seconds)
    epoch_s = (seconds[-1] - seconds[0]) / (epochs - 1)
    rng = np.random.default_rng(2026)
    for trial in range(CRASH_TRIALS):
        run = tmp_path / f"run{trial}"
        after = int(rng.integers(1, epochs - KILL_MARGIN_EPOCHS))
        delay = float(rng.uniform(0, 1)) * epoch_s
        proc = subprocess.Popen([sys.executable, "-m", "minivae", "train", *RUN_FLAGS, "--out",
                                 str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.perf_counter() + 60
        while (_lines(run / "metrics.jsonl") < after or not (run / CHECKPOINT).exists()) \
                and proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
        assert proc.poll() is None, f"trial {trial}: the run ended before its kill (after {after})"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"trial {trial}: exit {proc.returncode}"
        _, state, _, _ = read_checkpoint(run)  # loadable: never a partial file
        assert not state.done and after - 1 <= state.epoch < epochs, (trial, after, state.epoch)
        done = _minivae("train", "--resume", str(run), "--no-progress")
        assert done.returncode == 0, done.stderr
        params = read_checkpoint(run)[2]
        for k, v in reference.items():
            assert np.array_equal(params[k], v), f"trial {trial} (killed after {after}): {k} differs"
        assert _strip_seconds(run) == ref_metrics, f"trial {trial}: the epoch records differ"
        assert not list(run.glob(".*.tmp")), "a temporary file was left behind"
        assert (run / "summary.json").is_file()


def _fail_while_writing(monkeypatch, err: int) -> None:
    """Checkpoint writes store part of the file, then fail with ``err`` (no file name, as
    write(2) reports it); every other file is written as usual."""
    real = runs.atomic_write

    def atomic_write(path, write):
        if Path(path).name != CHECKPOINT:
            return real(path, write)

        def partial(fh):
            fh.write(b"partial")
            raise OSError(err, os.strerror(err))

        return real(path, partial)

    monkeypatch.setattr(runs, "atomic_write", atomic_write)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_disk_trouble_while_checkpointing_keeps_the_good_checkpoint(tmp_path, monkeypatch, err):
    run = tmp_path / "run"
    cfg = TrainConfig(**RUN_CONFIG | {"epochs": 2})
    train(cfg, run, progress=False, log=_quiet, max_steps=3)  # a good mid-epoch checkpoint
    good = (run / CHECKPOINT).read_bytes()
    _fail_while_writing(monkeypatch, err)
    with pytest.raises(OSError) as info:
        train(None, run, resume=True, progress=False, log=_quiet)
    assert info.value.errno == err
    assert (run / CHECKPOINT).read_bytes() == good  # the partial write never replaced it
    read_checkpoint(run)
    with pytest.raises(OSError):
        train(cfg, tmp_path / "run2", progress=False, log=_quiet)
    assert not (tmp_path / "run2" / CHECKPOINT).exists()
    assert not list(run.glob(".*.tmp")) and not list((tmp_path / "run2").glob(".*.tmp"))


def test_disk_full_in_the_cli_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    _fail_while_writing(monkeypatch, errno.ENOSPC)
    code = cli.main(["train", *RUN_FLAGS[:-1], "--epochs", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("minivae: error:")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    assert "No space left on device" in errors[0] and "checkpoint.safetensors" in errors[0]
    assert ".tmp" not in errors[0] and "Traceback" not in err


class _FillingFile:
    """A file on a disk that fills up: the first ``budget`` bytes land (flushed, as a short write
    leaves them), then ENOSPC with no file name, as write(2) reports it."""

    def __init__(self, fh, budget: int) -> None:
        self._fh, self._room = fh, budget

    def write(self, data):
        if len(data) > self._room:
            self._fh.write(data[: self._room])
            self._fh.flush()
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


def _fill_disk_while_writing(monkeypatch, target: str, modes: str, budget: int) -> list[str]:
    """Every open() of ``target``, or of the temporary file of its atomic write, in one of the
    ``modes`` ("w", "a", "x") gets a _FillingFile. Returns the list of paths it caught."""
    import builtins
    import io

    caught: list[str] = []

    def wrap(real_open):
        def fake_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            name = Path(file).name if isinstance(file, (str, os.PathLike)) else ""
            ours = name == target or (name.startswith(f".{target}.") and name.endswith(".tmp"))
            if ours and any(m in mode for m in modes):
                caught.append(name)
                return _FillingFile(fh, budget)
            return fh

        return fake_open

    monkeypatch.setattr(builtins, "open", wrap(builtins.open))
    monkeypatch.setattr(io, "open", wrap(io.open))  # pathlib's write_text opens through io.open
    return caught


@pytest.fixture(scope="module")
def disk_runs(tmp_path_factory):
    """A complete run with pictures, a run cut mid-epoch 2 (one metrics line), and the
    uninterrupted run the cut one must end as."""
    root = tmp_path_factory.mktemp("disk")
    cfg = TrainConfig(**RUN_CONFIG | {"epochs": 3})
    train(TrainConfig(**RUN_CONFIG | {"epochs": 2, "pictures": True}), root / "complete",
          progress=False, log=_quiet)
    train(cfg, root / "cut", progress=False, log=_quiet, max_steps=15)
    train(cfg, root / "full", progress=False, log=_quiet)
    return root


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


@pytest.mark.parametrize("run_name, target, modes, budget", [
    # whole files are written to a temporary file opened exclusively ("x"), then renamed
    ("cut", "config.json", "x", 10),  # rewritten at every start, resume included
    ("cut", "metrics.jsonl", "x", 10),  # rewritten on resume (lines past the checkpoint dropped)
    pytest.param("cut", "metrics.jsonl", "a", 10, id="cut-metrics.jsonl-append"),  # cut back
    ("complete", "summary.json", "x", 10),  # rewritten when a complete run is resumed
    pytest.param("complete", "samples.png", "x", 20, id="complete-samples.png"),
])
def test_disk_full_while_writing_a_run_file_is_one_clear_line_and_corrupts_nothing(
        tmp_path, monkeypatch, capsys, disk_runs, run_name, target, modes, budget):
    """ENOSPC part-way through writing config.json, metrics.jsonl (its rewrite and its append),
    summary.json or a picture: exit code 2 with one line naming the file, every file of the run
    byte for byte as it was, no temporary file left, and once there is room again --resume ends
    with bitwise the weights of an uninterrupted run."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(disk_runs / run_name, run)
    before = _snapshot(run)
    caught = _fill_disk_while_writing(monkeypatch, target, modes, budget)
    code = cli.main(["train", "--resume", str(run), "--no-progress"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert caught, f"{target} was never opened for writing ({modes})"
    errors = [line for line in err.splitlines() if line.startswith("minivae: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "No space left on device" in errors[0] and target in errors[0], errors[0]
    assert ".tmp" not in errors[0]
    assert _snapshot(run) == before, "a file of the run changed"
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    reference = read_checkpoint(disk_runs / ("full" if run_name == "cut" else "complete"))[2]
    params = read_checkpoint(run)[2]
    assert all(np.array_equal(params[k], v) for k, v in reference.items())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories: "
                    "tests/test_disk.py mounts a real read-only tmpfs instead, and the EROFS/EACCES "
                    "paths are covered by the monkeypatched tests above")
def test_read_only_output_directory_is_a_clear_error(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code = cli.main(["train", *RUN_FLAGS[:-1], "--epochs", "1", "--out", str(ro / "r")])
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and "Permission denied" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    train(TrainConfig(**RUN_CONFIG | {"epochs": 1}), run, progress=False, log=_quiet)
    return (run / CHECKPOINT).read_bytes()


@pytest.mark.timeout(120)  # all 60 examples; a reader that hangs fails here, named
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_corrupted_checkpoints_raise_only_run_errors(tmp_path_factory, checkpoint_bytes, data):
    """Truncations, flipped bytes and lying header lengths: a RunError, never another exception,
    a hang or a huge allocation."""
    blob = bytearray(checkpoint_bytes)
    kind = data.draw(st.sampled_from(["truncate", "flip", "header_len", "header_text"]))
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    elif kind == "header_len":
        blob[:8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    else:
        n = int.from_bytes(blob[:8], "little")
        i = data.draw(st.integers(8, 8 + n - 1))
        blob[i] = data.draw(st.sampled_from(list(b'{}[]":,0-9aZ ')))
    run = tmp_path_factory.mktemp("fuzz")
    (run / CHECKPOINT).write_bytes(bytes(blob))
    try:
        config, state, params, optim = read_checkpoint(run)
    except RunError:
        return
    # a mutation the format cannot see (inside tensor data): loading must still check shapes,
    # dtypes and finiteness against the configuration
    model = train_mod.build_model(config, 64, 10)
    try:
        runs.load_params(model, params, str(run))
    except RunError:
        return
    assert all(np.isfinite(v).all() for v in model.params.values())


# ------------------------------------------------------------------------------------------------
# determinism of the Numba CPU backend

_NUMBA_RUN = r"""
import sys
from minivae.config import TrainConfig
from minivae.train import train
train(TrainConfig.from_dict(__import__("json").loads(sys.argv[1])), sys.argv[2], progress=False,
      log=lambda s: None)
"""


def _run_record(run: Path) -> tuple[dict, dict, list[dict], dict]:
    config, _, params, optim = read_checkpoint(run)
    assert config.backend == "numba", config.backend
    return params, optim, _strip_seconds(run), json.loads((run / "summary.json").read_text())


def _assert_same_run(a: tuple, b: tuple, what: str) -> None:
    for group, x, y in (("parameter", a[0], b[0]), ("optimiser state", a[1], b[1])):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), f"{what}: {group} {k}"
    assert a[2] == b[2], f"{what}: the epoch records differ"
    assert a[3] == b[3], f"{what}: the summaries differ"


@pytest.mark.timeout(300)
def test_numba_backend_is_bitwise_deterministic_across_processes_and_resume(tmp_path):
    """backend="numba" (its parallel kernels included): the same seed gives bitwise the same
    weights, optimiser state, epoch records and summary in another process, and after stops
    mid-epoch and at an epoch boundary followed by --resume."""
    pytest.importorskip("numba", reason="backend 'numba' needs numba (pip install minivae[numba])")
    cfg = TrainConfig(**RUN_CONFIG | {"epochs": 3, "backend": "numba"})
    train(cfg, tmp_path / "a", progress=False, log=_quiet)
    proc = subprocess.run([sys.executable, "-c", _NUMBA_RUN, json.dumps(cfg.to_dict()),
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n_train = len(train_mod.held_out(cfg, load_dataset("digits"), np.float32)[0])
    batches = -(-n_train // cfg.batch_size)
    first = train(cfg, tmp_path / "c", progress=False, log=_quiet, max_steps=7)
    assert first.interrupted and read_checkpoint(tmp_path / "c")[1].step == 7  # mid-epoch 1
    # the last step of epoch 2: a stop right at the epoch's end, before its record is written
    train(None, tmp_path / "c", resume=True, progress=False, log=_quiet, max_steps=2 * batches - 7)
    state = read_checkpoint(tmp_path / "c")[1]
    assert (state.epoch, state.step) == (1, batches)
    train(None, tmp_path / "c", resume=True, progress=False, log=_quiet)
    a = _run_record(tmp_path / "a")
    _assert_same_run(a, _run_record(tmp_path / "b"), "another process")
    _assert_same_run(a, _run_record(tmp_path / "c"), "stopped twice and resumed")


# ------------------------------------------------------------------------------------------------
# numerical stability at the extremes


LOG_2PI = np.log(2 * np.pi)
EXTREME_RTOL = {"float32": 2e-6, "float64": 1e-12}  # float32: a few ulps of sums of 16 terms


def _reference_likelihood(name: str, x: np.ndarray, out: np.ndarray, s: float):
    """float64 closed forms, written apart from minivae.likelihoods: per-example log p(x|out),
    d log p / d out and (gaussian_learned) d log p / d logvar per element. Exact for logits
    +-1e4: tanh(l/2) = +-1 and 1/sinh(l) = 0 there, and sigma = 1 for "gaussian"."""
    x, out = x.astype(np.float64), out.astype(np.float64)
    ds = None
    if name in ("bernoulli", "cbernoulli"):
        logp = x * out - np.logaddexp(0, out)
        dout = x - 0.5 * (1 + np.tanh(out / 2))
        if name == "cbernoulli":  # + log C(l), C(l) = l / tanh(l/2)
            with np.errstate(over="ignore"):
                logp = logp + np.log(out / np.tanh(out / 2))
                dout = dout + 1 / out - 1 / np.sinh(out)
    elif name == "gaussian":
        logp = -0.5 * ((x - out) ** 2 + LOG_2PI)
        dout = x - out
    else:
        logp = -0.5 * ((x - out) ** 2 * np.exp(-s) + s + LOG_2PI)
        dout = (x - out) * np.exp(-s)
        ds = 0.5 * ((x - out) ** 2 * np.exp(-s) - 1)
    return logp.sum(axis=1), dout, ds


def _log_prior_minus_log_q(eps: np.ndarray, logvar: float) -> np.ndarray:
    """log p(z) - log q(z|x) summed over the latent axis, for mu = 0 and z = exp(logvar/2) eps,
    in float64: 1/2 sum_j (eps_j^2 - z_j^2 + logvar)."""
    eps = eps.astype(np.float64)
    z = np.exp(0.5 * logvar) * eps
    return 0.5 * np.sum(eps**2 - z**2 + logvar, axis=-1)


def _constant_heads(likelihood: str, dtype: str, logvar_bias: float, out_bias: float) -> VAE:
    """A VAE whose last layers ignore their inputs: mu = 0, logvar = ``logvar_bias`` for every
    example and decoder output ``out_bias`` for every pixel (the likelihood's own log-variance
    too is ``logvar_bias``), so every value and gradient has a closed form."""
    m = VAE(16, 2, (8,), likelihood=likelihood, dtype=dtype, rng=np.random.default_rng(0))
    m.params["enc.1.W"][:] = 0
    m.params["enc.1.b"][:2] = 0
    m.params["enc.1.b"][2:] = logvar_bias
    m.params["dec.1.W"][:] = 0
    m.params["dec.1.b"][:] = out_bias
    if likelihood == "gaussian_learned":
        m.params["lik.logvar"][:] = logvar_bias
    return m


EXTREME_IMAGES = {"zeros": np.zeros((3, 16)), "ones": np.ones((3, 16)),
                  "random": (np.random.default_rng(3).random((3, 16)) < 0.5).astype(float)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("logvar_bias", [-80.0, 80.0])
@pytest.mark.parametrize("out_bias", [-1e4, 1e4])
@pytest.mark.parametrize("image", sorted(EXTREME_IMAGES))
@pytest.mark.parametrize("likelihood", ["bernoulli", "cbernoulli", "gaussian", "gaussian_learned"])
def test_loss_gradients_and_iwae_equal_closed_forms_at_extremes(likelihood, image, out_bias,
                                                                logvar_bias, dtype):
    """Logits (or means) +-1e4, logvar +-80, all-black, all-white and mixed images, K = 1 and
    K = 5000, float32 and float64: the loss, every gradient and the IWAE estimate equal their
    closed forms or a float64 computation of the same formula (the same eps), to a few ulps.

    The one case whose true value float32 cannot hold, gaussian_learned with logvar -80 and a
    residual of 1e4 (-r^2 e^80 / 2 ~ -3e42 nats), must be a FloatingPointError naming the term."""
    m = _constant_heads(likelihood, dtype, logvar_bias, out_bias)
    rtol = EXTREME_RTOL[dtype]
    x = EXTREME_IMAGES[image]
    n, d = x.shape[0], m.z_dim
    eps = np.random.default_rng(1).standard_normal((1, n, d), dtype=np.dtype(dtype))
    if dtype == "float32" and likelihood == "gaussian_learned" and logvar_bias < 0:
        with np.errstate(over="ignore"), \
                pytest.raises(FloatingPointError, match="reconstruction term overflowed"):
            m.loss(x, eps=eps)
        return
    res = m.loss(x, eps=eps)
    logp, dlogp_dout, dlogp_ds = _reference_likelihood(likelihood, x, np.full_like(x, out_bias),
                                                       logvar_bias)
    kl = 0.5 * d * (np.expm1(logvar_bias) - logvar_bias)
    np.testing.assert_allclose(res.recon_per_example, -logp, rtol=rtol)
    np.testing.assert_allclose(res.kl_per_example, kl, rtol=rtol)
    assert res.loss == pytest.approx(np.mean(kl - logp), rel=rtol)

    # gradients: d loss / d out = -dlogp/dout / N reaches only the decoder's last layer (its W is
    # 0, so nothing flows further back); the encoder's last layer sees only the KL's gradient
    p64 = {k: v.astype(np.float64) for k, v in m.params.items()}
    z = np.exp(0.5 * logvar_bias) * eps[0].astype(np.float64)
    h_dec = np.maximum(z @ p64["dec.0.W"].T + p64["dec.0.b"], 0)
    h_enc = np.maximum(x @ p64["enc.0.W"].T + p64["enc.0.b"], 0)
    dout = -dlogp_dout / n
    dh = np.concatenate([np.zeros((n, d)), np.full((n, d), 0.5 * np.expm1(logvar_bias) / n)], axis=1)
    want = {"dec.1.b": dout.sum(axis=0), "dec.1.W": dout.T @ h_dec,
            "enc.1.b": dh.sum(axis=0), "enc.1.W": dh.T @ h_enc}
    if dlogp_ds is not None:
        want["lik.logvar"] = -dlogp_ds.sum(axis=0) / n
    assert set(res.grads) == set(m.params)
    for k, g in res.grads.items():
        assert g.dtype == np.dtype(dtype) and np.isfinite(g).all(), k
        if k in want:
            np.testing.assert_allclose(g, want[k], rtol=rtol, atol=rtol * np.abs(want[k]).max(),
                                       err_msg=k)
        else:  # behind a zero weight matrix: exactly zero, not NaN from 0 * inf
            np.testing.assert_array_equal(g, 0, err_msg=k)

    # IWAE: log p(x|z) does not depend on z here, so log w_k = log p(x) + log p(z_k) - log q(z_k|x),
    # and the estimate is a log-mean-exp of the very eps the model draws (one chunk for a batch
    # this small: K N D is below IWAE_CHUNK_ELEMENTS)
    for k in (1, 5000):
        assert k * n * m.x_dim <= IWAE_CHUNK_ELEMENTS
        iw = m.iwae(x, k=k, rng=np.random.default_rng(2))
        eps_k = np.random.default_rng(2).standard_normal((k, n, d), dtype=np.dtype(dtype))
        log_w = logp + _log_prior_minus_log_q(eps_k, logvar_bias)  # (K, N), float64
        expect = np.logaddexp.reduce(log_w, axis=0) - np.log(k)
        np.testing.assert_allclose(iw.log_px, expect, rtol=rtol, atol=1e-9, err_msg=f"K = {k}")
    # K = 1 is the one-sample Monte-Carlo ELBO of model.loss with the same eps
    eps_1 = np.random.default_rng(2).standard_normal((1, n, d), dtype=np.dtype(dtype))
    one = m.loss(x, eps=eps_1)
    np.testing.assert_allclose(m.iwae(x, k=1, rng=np.random.default_rng(2)).log_px,
                               -one.recon_per_example + _log_prior_minus_log_q(eps_1[0], logvar_bias),
                               rtol=rtol, atol=1e-9)


def test_iwae_beyond_float32_is_an_error_not_nan():
    """Every log-weight -inf (float32 log p(x|z) overflowed): an error naming the example, as
    VAE.loss raises for the same model, never a NaN estimate."""
    m = _constant_heads("gaussian_learned", "float32", -80.0, 1e4)
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(
            FloatingPointError, match="IWAE estimate of example 0 is not finite"):
        m.iwae(EXTREME_IMAGES["ones"], k=4, rng=np.random.default_rng(2))


# ------------------------------------------------------------------------------------------------
# hostile HDF5 files: the HDF5 C library runs in a child process, so a crash in it would show as a
# failed test instead of taking the test run down


_H5_CHILD = r"""
import sys, json
from minivae.data import DataError, load_dataset
out = []
for path in sys.argv[1:]:
    try:
        ds = load_dataset(path, key="x")
        out.append("ok" if ds.x.size and (ds.x == ds.x).all() else "bad-array")
    except DataError:
        out.append("DataError")
    except Exception as e:
        out.append(f"{type(e).__name__}: {e}")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def good_h5(tmp_path_factory):
    h5py = pytest.importorskip("h5py", reason="h5py is the optional [hdf5] extra")
    path = tmp_path_factory.mktemp("h5") / "good.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    return path.read_bytes()


@settings(max_examples=6, deadline=None)
@given(data=st.data())
@pytest.mark.timeout(300)
def test_corrupted_hdf5_files_raise_only_data_errors(tmp_path_factory, good_h5, data):
    folder = tmp_path_factory.mktemp("h5fuzz")
    paths = []
    for i in range(12):
        blob = bytearray(good_h5)
        if data.draw(st.booleans(), label="truncate"):
            blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
        for _ in range(data.draw(st.integers(1, 12), label="flips") if blob else 0):
            j = data.draw(st.integers(0, len(blob) - 1), label="at")
            blob[j] = data.draw(st.integers(0, 255), label="byte")
        (folder / f"m{i}.h5").write_bytes(bytes(blob))
        paths.append(str(folder / f"m{i}.h5"))
    proc = subprocess.run([sys.executable, "-c", _H5_CHILD, *paths], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, f"the reader crashed: {proc.returncode} {proc.stderr[-500:]}"
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(o in ("ok", "DataError") for o in outcomes), outcomes
