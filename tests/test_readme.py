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


# ---- the performance section quotes the committed results ------------------------------------------

RESULTS = README.parent / "bench" / "results" / "intel-r--xeon-r--processor-2026-12-03"


def _section(heading: str) -> str:
    start = TEXT.index(heading)
    end = TEXT.find("\n### ", start + len(heading))
    return TEXT[start:end]


def _rows(section: str, first_cell: str) -> list[list[str]]:
    return [[c.strip().strip("*") for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if re.match(rf"^\|\s*{first_cell}\s*\|", line)]


def test_the_step_table_and_goals_are_the_committed_train_run():
    import json

    res = json.loads((RESULTS / "train.json").read_text())
    timed = {(str(r["batch"]), r["impl"]): r for r in res["results"] if "median_ms" in r}
    section = _section("### The training step against its GEMM floor")
    rows = _rows(section, r"(128|1024)")
    step_rows = [r for r in rows if len(r) == 5]
    assert len(step_rows) == len(timed) >= 16
    for batch, impl, median, floor, _ in step_rows:
        r = timed[(batch, impl.removesuffix(" (OpenBLAS)"))]
        assert median == f"{r['median_ms']:.3f}" and floor == f"{r['x_gemm_floor']:.2f}x", (batch, impl)
    goals = {(str(g["batch"]), g["goal"].removeprefix("minivae-numba ")): g for g in res["goals"]}
    goal_rows = [r for r in rows if len(r) == 4]
    assert len(goal_rows) == len(goals) == 6
    for batch, goal, value, met in goal_rows:
        g = goals[(batch, goal)]
        assert value == f"{g['value']:.2f}" and met == ("yes" if g["met"] else "no"), (batch, goal)
    parts = {r[0]: (r[1], r[2]) for r in _rows(section, r"[a-zA-Z][^|]*") if len(r) == 3 and r[0] != "part"}
    b = res["breakdown"]
    quoted = {"linear_forward + linear_backward (GEMMs and their fused passes)": ["linear_forward",
                                                                                  "linear_backward"],
              "GEMM floor (the same GEMMs alone, timed beside each step)": ["GEMM floor"],
              "adam_many (every parameter's update, one call)": ["adam_many"],
              "bernoulli": ["bernoulli"],
              "latent_forward + latent_backward": ["latent_forward", "latent_backward"],
              "optimiser: finite check of the gradients, Python": ["optimiser: finite check and Python"],
              "rest: the model's Python, dispatch, allocation": ["rest: model Python, dispatch, allocation"],
              "step": ["step"]}
    assert set(parts) == set(quoted)
    for name, keys in quoted.items():
        want = tuple(f"{sum(b[batch][k] for k in keys):.3f}" for batch in ("128", "1024"))
        assert parts[name] == want, name


def test_the_ladder_rows_quoted_are_the_committed_ladder_run():
    import json

    rows = json.loads((RESULTS / "ladder.json").read_text())["rows"]
    by = {(r["op"], r["size"], r["version"]): r for r in rows}
    section = _section("### Every version of every op: the ladder")
    quoted = [r for r in _rows(section, r"128x784->400") if r[1] in ("numpy", "numba-cpu")]
    assert len(quoted) == 2
    for size, version, adds, threads, median, rate, bound, share, vs in quoted:
        r = by[("linear_forward (relu)", size, version)]
        assert (adds, threads, median, rate, bound, share, vs) == (
            r["adds"], str(r["threads"]), f"{r['median_us']:.1f}", f"{r['rate']:.1f} {r['unit']}", r["bound"],
            f"{100 * r['share_of_ceiling']:.0f}%", f"{r['vs_vendor']:.2f}x"), version
    ratios = [r for r in _rows(section, r"[a-z_]+(?: \(relu\))?") if len(r) == 3 and r[0] != "op"]
    assert len(ratios) == 8
    for op, size, ratio in ratios:
        version = "numba-cpu adam_many" if size.endswith("(adam_many)") else "numba-cpu"
        r = by[(op, size.removesuffix(" (adam_many)"), version)]
        assert ratio == f"{r['vs_vendor']:.2f}x", (op, size)
