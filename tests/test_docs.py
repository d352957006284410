"""docs/derivations.md and the code stay linked: every code name the page writes exists, and every
backward function of ``minivae/`` is named there, so a rename fails here instead of misleading a
reader.

The page names code in backticks in three forms, all checked:

* ``file: name, name`` (``minivae/layers.py: linear_backward, MLP.backward``): the file exists and
  each (dotted) name is an attribute of it. Modules of ``minivae/`` are imported and looked up;
  ``kernels/`` files are read with ``ast`` instead, since importing them would pull in Numba and
  could choose numba.cuda's target (the simulator or a GPU) before the kernel tests choose it;
* ``file`` alone (``kernels/linear/cuda_c.cu``): the file exists;
* a bare name that reads as code, ``something_forward``/``something_backward`` or
  ``Class.method``: some module of ``minivae/`` defines it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import minivae

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "derivations.md"
FILE_REF = re.compile(r"^(?P<path>(?:minivae|kernels|tests|docs|bench)/[\w./-]+\.(?:py|cu|cuh|h|md))"
                      r"(?::\s*(?P<names>.+))?$")
BARE_CODE_NAME = re.compile(r"^(?:[A-Za-z_]\w*_(?:forward|backward)|[A-Z]\w*\.\w+)$")


def _spans(text: str) -> list[str]:
    """Every backticked span outside fenced blocks, whitespace (line breaks) folded."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return [" ".join(m.split()) for m in re.findall(r"`([^`]+)`", text)]


SPANS = _spans(DOC.read_text())
FILE_REFS = [m for m in map(FILE_REF.match, SPANS) if m]
KERNELS_DOC = ROOT / "kernels" / "README.md"
KERNELS_REFS = [m for m in map(FILE_REF.match, _spans(KERNELS_DOC.read_text())) if m]
README_REFS = [m for m in map(FILE_REF.match, _spans((ROOT / "README.md").read_text())) if m]


def _minivae_modules() -> dict[str, object]:
    return {name: importlib.import_module(f"minivae.{name}")
            for _, name, _ in pkgutil.iter_modules(minivae.__path__)}


def _lookup_import(module: object, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _lookup_ast(path: Path, dotted: str) -> bool:
    """``dotted`` (name or Class.method) is defined at the top of the file, or in a top-level class
    or function (the Numba CUDA kernels are closures of a factory function)."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in dotted.split("."):
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        scope = getattr(found, "body", [])
    return True


def _module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def test_the_page_names_code_in_the_checked_forms():
    """The parse is not empty: the page's references are found (a changed convention fails here)."""
    assert len(FILE_REFS) >= 30, [m.group(0) for m in FILE_REFS]
    named = {m.group("path") for m in FILE_REFS if m.group("names")}
    assert {"minivae/layers.py", "minivae/latent.py", "minivae/likelihoods.py", "minivae/model.py",
            "minivae/backends.py", "kernels/linear/numba_cpu.py"} <= named


@pytest.mark.parametrize(("doc", "ref"), [("docs/derivations.md", m.group(0)) for m in FILE_REFS]
                         + [("kernels/README.md", m.group(0)) for m in KERNELS_REFS]
                         + [("README.md", m.group(0)) for m in README_REFS])
def test_every_code_name_the_page_writes_exists(doc, ref):
    m = FILE_REF.match(ref)
    path = ROOT / m.group("path")
    assert path.is_file(), f"{doc} names {m.group('path')}, which does not exist"
    if not m.group("names"):
        return
    names = [n.strip() for n in m.group("names").split(",")]
    if m.group("path").startswith("minivae/"):
        module = importlib.import_module(_module_name(m.group("path")))
        missing = [n for n in names if not _lookup_import(module, n)]
    else:
        missing = [n for n in names if not _lookup_ast(path, n)]
    assert not missing, f"{doc} names {missing} in {m.group('path')}, which has no such name"


# ---- kernels/README.md: the map of the study rooms ------------------------------------------------

VARIANT_FILES = ("numba_cpu.py", "numba_cuda.py", "cuda_c.cu", "cuda_c.py")


def _table_rows(section: str) -> list[list[str]]:
    """The cells of every body row of the markdown tables in ``section``."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows
            if not set(r) <= set("|-: ") and not r.startswith("| op |") and not r.startswith("| rung |")]


def _kernels_section(heading: str) -> str:
    text = KERNELS_DOC.read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _table_ops() -> set[str]:
    """The ops of the backend table: linear_forward/linear_backward -> linear, and so on."""
    from dataclasses import fields

    from minivae.backends import Backend

    ops = {f.name.removesuffix("_forward").removesuffix("_backward").removesuffix("_many")
           for f in fields(Backend) if f.name not in ("name", "xp", "on_gpu")}
    return ops


def test_the_rooms_are_the_ops_of_the_backend_table():
    rooms = {p.parent.name for p in (ROOT / "kernels").glob("*/cuda_c.cu")}
    assert rooms == _table_ops()
    for room in rooms:
        present = {f for f in VARIANT_FILES if (ROOT / "kernels" / room / f).is_file()}
        assert present == set(VARIANT_FILES), room


@pytest.mark.parametrize("op", sorted(_table_ops()))
def test_the_kernels_map_names_every_variant_test_and_bench_command_of_each_op(op):
    rows = {r[0]: " ".join(r[1:]) for r in _table_rows(_kernels_section("The map"))}
    assert op in rows, f"kernels/README.md's map has no row for {op}"
    row = rows[op]
    for f in VARIANT_FILES:
        assert f"kernels/{op}/{f}" in row, f"the {op} row does not name kernels/{op}/{f}"
    assert f"`tests/test_kernels_{op}.py`" in row and (ROOT / "tests" / f"test_kernels_{op}.py").is_file()
    assert f"`python -m bench ladder --op {op}`" in row


def test_the_ladder_table_of_kernels_readme_is_the_rungs_the_code_numbers():
    ast_rungs = next(n for n in ast.parse((ROOT / "kernels" / "linear" / "__init__.py").read_text()).body
                     if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "RUNGS")
    rungs = ast.literal_eval(ast_rungs.value)
    table = {int(r[0]): r[1] for r in _table_rows(_kernels_section("The linear ladder"))}
    assert table == rungs


def test_every_bare_code_name_on_the_page_exists_in_minivae():
    modules = _minivae_modules()
    bare = {s for s in SPANS if BARE_CODE_NAME.match(s)}
    assert bare, "no bare code names found: the parse is broken"
    missing = sorted(n for n in bare if not any(_lookup_import(mod, n) for mod in modules.values()))
    assert not missing, f"docs/derivations.md names {missing}, which no module of minivae/ defines"


def _backward_functions() -> list[tuple[str, str]]:
    """(file, qualified name) of every function or method of minivae/ whose name is ``backward`` or
    ends in ``_backward``, where it is defined (not where it is imported)."""
    found = []
    for name, module in _minivae_modules().items():
        file = f"minivae/{name}.py"
        for attr, obj in vars(module).items():
            if inspect.isfunction(obj) and obj.__module__ == module.__name__ and (
                    attr == "backward" or attr.endswith("_backward")):
                found.append((file, attr))
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                for meth, fn in vars(obj).items():
                    if inspect.isfunction(fn) and (meth == "backward" or meth.endswith("_backward")):
                        found.append((file, f"{attr}.{meth}"))
    return sorted(found)


BACKWARDS = _backward_functions()


def test_the_backward_functions_are_found():
    assert ("minivae/layers.py", "linear_backward") in BACKWARDS
    assert ("minivae/layers.py", "MLP.backward") in BACKWARDS
    assert ("minivae/likelihoods.py", "GaussianLearned.backward") in BACKWARDS


@pytest.mark.parametrize(("file", "name"), BACKWARDS)
def test_every_backward_function_is_named_on_the_page(file, name):
    named = {n.strip() for m in FILE_REFS if m.group("path") == file and m.group("names")
             for n in m.group("names").split(",")}
    assert name in named, (f"{file}: {name} is a backward with no derivation: name it in "
                           f"docs/derivations.md as `{file}: {name}` where its result is derived")


def test_the_loss_table_names_the_calls_the_model_makes():
    """The table "Backward: the forward's steps in reverse" writes the model's calls on its networks,
    the backend table and the likelihood; each must be a call VAE.loss (or its _score) makes, so the
    table cannot go on describing a composition the model no longer runs."""
    from minivae.model import VAE

    text = DOC.read_text()
    table = text[text.index("**Backward: the forward's steps in reverse**"):text.index("## IWAE bound")]
    calls = set(re.findall(r"\b((?:encoder|decoder|ops|self|likelihood)\.\w+)\(", table))
    assert {"encoder.forward", "encoder.backward", "decoder.forward", "decoder.backward",
            "ops.latent_forward", "ops.latent_backward"} <= calls, calls
    source = inspect.getsource(VAE.loss) + inspect.getsource(VAE._score)
    missing = sorted(c for c in calls if f"{c}(" not in source and f"self.{c}(" not in source)
    assert not missing, f"the loss table names {missing}, which VAE.loss does not call"


def _section(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _code_line(line: str) -> str:
    """A source line as the page quotes it: its comment dropped, whitespace folded."""
    return " ".join(line.split("  # ")[0].split())


def test_the_iwae_table_is_the_code_line_for_line():
    """The table of "The importance-weighted bound" quotes, in its first column, lines of
    VAE._iwae_loss (and VAE._score_rows): each quoted line is a line of the code, and every line of
    the method's body from its forward to its gradients is quoted, so the derivation a reader checks
    against the table is the code that runs, line for line."""
    from minivae.model import VAE

    rows = [line for line in _section("The importance-weighted bound").splitlines()
            if line.startswith("| `")]
    quoted = [" ".join(s.split()) for row in rows for s in re.findall(r"`([^`]+)`", row.split("|")[1])]
    assert len(quoted) >= 20, quoted
    method = inspect.getsource(VAE._iwae_loss)
    source = {_code_line(line) for line in (method + inspect.getsource(VAE._score_rows)).splitlines()}
    missing = [q for q in quoted if q not in source]
    assert not missing, f"the page quotes {missing}, which are not lines of VAE._iwae_loss"
    body = method[method.index("# forward"):method.index("grads = {")]
    lines = [_code_line(line) for line in body.splitlines()]
    unquoted = [line for line in lines if line and not line.startswith("#") and line not in quoted]
    assert not unquoted, f"VAE._iwae_loss runs {unquoted}, which the page's table does not quote"
