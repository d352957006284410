"""Disk trouble on real file systems: a run directory on a full or a read-only tmpfs.

tests/test_robustness.py fakes ENOSPC, EROFS and EACCES at every file a run writes (monkeypatched
``open``), which runs anywhere. These tests do it for real: they mount a small tmpfs, which needs
root (CAP_SYS_ADMIN), and skip with that reason elsewhere. Root ignores permission bits, so a
read-only *mount* is the only honest read-only directory for root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from minivae import cli
from minivae.config import TrainConfig
from minivae.runs import CHECKPOINT, read_checkpoint
from minivae.train import train

CONFIG = dict(epochs=3, hidden=(16,), z_dim=2, iwae_k=8, pictures=False)
pytestmark = pytest.mark.timeout(120)


def _quiet(_msg: str) -> None:
    pass


def _mount(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise OSError(out.stderr.strip() or f"{cmd} failed")


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of ``size`` bytes; all are unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"fs-{uuid.uuid4().hex[:8]}"
        where.mkdir()
        try:
            _mount(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)])
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {e}")
        mounted.append(where)
        return where

    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and the mount command")
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-epoch run stopped after its first epoch (12 steps of 128 digits), and the uninterrupted
    run it must end as."""
    root = tmp_path_factory.mktemp("disk-real")
    cfg = TrainConfig(**CONFIG)
    train(cfg, root / "cut", progress=False, log=_quiet, max_steps=12)
    train(cfg, root / "full", progress=False, log=_quiet)
    return root


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmpfs, runs, capsys):
    """The run resumes on a tmpfs with too little room left for its next checkpoint: exit 2, one
    line naming the checkpoint and ENOSPC, the files of the run unchanged (the old checkpoint
    byte for byte, no temporary file left), and with room again --resume ends bitwise as the
    uninterrupted run."""
    ckpt_size = (runs / "cut" / CHECKPOINT).stat().st_size
    fs = tmpfs(1 << 20)
    run = fs / "run"
    shutil.copytree(runs / "cut", run)
    before = _snapshot(run)
    free = shutil.disk_usage(fs).free
    filler = fs / "filler"
    # leave about a third of a checkpoint free: metrics lines fit, the next checkpoint does not
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - ckpt_size // 3, 0))
    assert shutil.disk_usage(fs).free < ckpt_size
    code = cli.main(["train", "--resume", str(run), "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("minivae: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "No space left on device" in errors[0] and CHECKPOINT in errors[0], errors[0]
    after = _snapshot(run)
    assert after[CHECKPOINT] == before[CHECKPOINT], "the last good checkpoint changed"
    assert not [n for n in after if n.endswith(".tmp")], f"a temporary file was left: {sorted(after)}"
    filler.unlink()
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    want, got = read_checkpoint(runs / "full")[2], read_checkpoint(run)[2]
    assert set(got) == set(want) and all(np.array_equal(got[k], v) for k, v in want.items())


def test_a_read_only_file_system_is_one_clear_line_and_writes_nothing(tmpfs, runs, capsys):
    """A new run into a read-only mount, and --resume of a run that lies on one: exit 2, one line
    naming the problem, nothing changed."""
    fs = tmpfs(1 << 20)
    shutil.copytree(runs / "cut", fs / "run")
    before = _snapshot(fs / "run")
    _mount(["mount", "-o", "remount,ro", str(fs)])
    new_run = ["train", "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--no-pictures",
               "--no-progress", "--out", str(fs / "new")]
    for argv in (new_run,
                 ["train", "--resume", str(fs / "run"), "--no-progress"]):
        code = cli.main(argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("minivae: error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, (argv, err)
        assert "Read-only file system" in errors[0], errors[0]
    assert not (fs / "new").exists()
    assert _snapshot(fs / "run") == before
