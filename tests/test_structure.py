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
