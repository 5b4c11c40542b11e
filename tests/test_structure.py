"""Structure rules of the code base, checked on the source with ``ast`` (nothing is run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_PARAMS = 8


def _param_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Positional and keyword parameters, without ``self`` / ``cls`` and ``*args`` / ``**kw``."""
    a = fn.args
    params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    if params and params[0].arg in ("self", "cls"):
        params = params[1:]
    return len(params)


def _long_signatures(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = _param_count(node)
                where = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                if n > MAX_PARAMS:
                    found.append(f"{where} line {node.lineno} ({n} parameters)")
    return found


@pytest.mark.parametrize("folder", ["services/fitter", "ffhquv/render"])
def test_no_function_takes_more_than_eight_parameters(folder):
    """Stages exchange named contexts (``services.fitter.pipeline``), the renderer takes a
    ``Surface`` and ``RasterOptions`` / ``PreviewOptions`` (``ffhquv.render.renderer``), not
    long lists."""
    assert not _long_signatures(ROOT / folder)


def test_the_rule_sees_long_signatures(tmp_path):
    """The counter counts positional and keyword-only parameters, not ``self``."""
    (tmp_path / "m.py").write_text(
        "class A:\n"
        "    def ok(self, a, b, c, d, e, f, g, h): ...\n"
        "def long(a, b, c, d, e, f, g, h, *, i=1): ...\n")
    tree = ast.parse((tmp_path / "m.py").read_text())
    counts = {n.name: _param_count(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert counts == {"ok": 8, "long": 9}


def test_fitter_stage_modules_do_not_import_each_other():
    """Shared helpers live in neutral modules (sampling, landmark_bases, pipeline, texture)."""
    stages = {"services.fitter.stage1", "services.fitter.stage3"}
    bad = []
    for name in ("stage1", "stage3", "texture"):
        base = ROOT / "services/fitter" / name
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
        for path in files:
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                        else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                bad += [f"{path.relative_to(ROOT)} imports {m}" for m in mods
                        if m in stages and not m.endswith(name)]
    assert not bad


def _environment_writes(folder: Path, root: Path = ROOT) -> list[str]:
    """``os.environ[...] = ...``, ``os.environ.setdefault / update / pop / clear``,
    ``os.putenv`` / ``os.unsetenv`` and ``del os.environ[...]`` under ``folder``."""
    def is_environ(n: ast.AST) -> bool:
        return isinstance(n, ast.Attribute) and n.attr == "environ"

    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            hit = (
                isinstance(node, ast.Assign | ast.AugAssign | ast.Delete)
                and any(isinstance(t, ast.Subscript) and is_environ(t.value)
                        for t in (node.targets if isinstance(node, ast.Assign | ast.Delete)
                                  else [node.target]))
            ) or (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and ((node.func.attr in ("setdefault", "update", "pop", "clear", "popitem")
                      and is_environ(node.func.value))
                     or node.func.attr in ("putenv", "unsetenv"))
            )
            if hit:
                found.append(f"{path.relative_to(root).as_posix()} line {node.lineno}")
    return found


@pytest.mark.parametrize("folder", ["services", "gateway", "ffhquv"])
def test_services_never_write_the_environment(folder):
    """The services, the gateway and the base package never change the process environment:
    they run on threads, and a setenv while another thread's native code reads it (getenv in
    dlib, OpenCV, OpenMP) can crash the process in libc (a fresh install's first `ffhquv fit`
    did: the face model's build set ANNY_CACHE_DIR on the fitter's warm-up thread). Settings go
    to the library (e.g. ``anny.paths.set_anny_cache_path``) or to a child's own environment;
    the command line sets what it must at start, before any thread."""
    assert _environment_writes(ROOT / folder) == []


def test_the_environment_rule_sees_writes(tmp_path):
    (tmp_path / "m.py").write_text(
        "import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '2')\nos.putenv('C', '3')\n"
        "x = os.environ.get('D')\nenv = dict(os.environ)\nenv['E'] = '4'\n")
    assert _environment_writes(tmp_path, tmp_path) == ["m.py line 2", "m.py line 3",
                                                       "m.py line 4"]


def _constants_set_twice(folder: Path) -> list[str]:
    """Module-level UPPER_CASE names assigned more than once in one module."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        seen: dict[str, int] = {}
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            for t in targets:
                if isinstance(t, ast.Name) and t.id.isupper():
                    if t.id in seen:
                        found.append(f"{folder.name}/{path.relative_to(folder).as_posix()}: {t.id} "
                                     f"(lines {seen[t.id]} and {node.lineno})")
                    seen.setdefault(t.id, node.lineno)
    return found


@pytest.mark.parametrize("folder", ["services", "ffhquv", "gateway", "ffhquv_cli"])
def test_no_module_sets_a_constant_twice(folder):
    """One place for each name: a constant set again further down a module silently changes
    what the code above it reads (``hair.py``'s ``FRINGE_SEEN`` for the forehead's glimpsed
    skin, 0.03, once became a new rule's 0.3: every photo's forehead weights moved)."""
    assert not _constants_set_twice(ROOT / folder)


def test_the_constant_rule_sees_a_second_assignment(tmp_path):
    (tmp_path / "m.py").write_text("A = 1\nB: int = 2\ndef f():\n    A = 3\nA = 4\n")
    found = _constants_set_twice(tmp_path)
    assert len(found) == 1 and found[0].endswith("/m.py: A (lines 1 and 5)"), found
