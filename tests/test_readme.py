"""The README's promises, kept true: its Python snippets run as printed, its commands are the
command line's, and the result it quotes for the main command is what that command prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from minivae import cli

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.DOTALL)


def test_the_readme_has_python_snippets():
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_every_python_snippet_runs_as_printed(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index + 1}", "exec"), {})


def test_every_minivae_command_in_the_readme_exists():
    commands = set(re.findall(r"`minivae (\w+)", TEXT)) | set(re.findall(r"^minivae (\w+)", TEXT,
                                                                            re.MULTILINE))
    known = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert commands and commands <= known, commands - known


def test_the_main_command_prints_the_result_the_readme_quotes(tmp_path):
    """`minivae train` with no flags: its stdout is the block the README quotes, to the digit (the
    run is deterministic on the CPU with the same NumPy and BLAS)."""
    quoted = re.search(r"```\n(test -ELBO .*?)```", TEXT, re.DOTALL)
    assert quoted, "the README quotes no result"
    run = subprocess.run([sys.executable, "-m", "minivae", "train", "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout == quoted.group(1)
