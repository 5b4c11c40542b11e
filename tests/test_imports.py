"""Imports run one way, checked on the source with ``ast`` (nothing is imported or run; only
the torch check at the end imports the base modules, in a fresh interpreter).

Layers, bottom up: the base package ``ffhquv/`` (errors, config, vocab, logs, metrics, pb,
shared types: mesh, aligned face, OBJ writing; the renderer), then the services
``services/<name>/``, then the gateway, then the wiring: the CLI package ``ffhquv_cli/`` and
the deploy tool ``ffhquv_deploy/``. Rules, for every import in a file (lazy ones inside
functions too):

1. no module under ``services/<a>/`` imports ``services.<b>`` (b != a);
2. no service imports the gateway, the CLI package or the deploy tool;
3. nothing in the base package imports a service, the gateway, the CLI package or the deploy
   tool;
4. the gateway imports neither the CLI package nor the deploy tool.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIRING = ("ffhquv_cli", "ffhquv_deploy")

# Known violations: (file, imported layer) -> why. This list must shrink, never grow: a new
# violation fails, and so does an entry that no longer matches (remove it when fixed). It is
# empty: keep it so.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def _imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """Absolute module names imported, ``from a import b`` giving both ``a`` and ``a.b``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return out


def _layer_of_import(module: str) -> str | None:
    """The layer an import reaches that the rules care about: ``services.<b>``, ``gateway`` or
    a wiring module; None for anything else."""
    parts = module.split(".")
    if parts[0] == "services" and len(parts) > 1:
        return f"services.{parts[1]}"
    if parts[0] == "gateway":
        return "gateway"
    for w in WIRING:
        if module == w or module.startswith(w + "."):
            return w
    return None


def violations(root: Path, files: list[str]) -> dict[tuple[str, str], list[int]]:
    """``(file, layer) -> lines`` of imports that break the rules (module docstring)."""
    found: dict[tuple[str, str], list[int]] = {}
    for rel in files:
        parts = rel.split("/")
        tree = ast.parse((root / rel).read_text(), filename=rel)
        for module, line in _imported_modules(tree):
            layer = _layer_of_import(module)
            if layer is None:
                continue
            if parts[0] == "services":
                bad = layer != f"services.{parts[1]}"  # another service, the gateway, wiring
            elif parts[0] == "ffhquv":
                bad = True  # a service, the gateway or the wiring
            elif parts[0] == "gateway":
                bad = layer in WIRING
            else:
                bad = False
            if bad:
                lines = found.setdefault((rel, layer), [])
                if line not in lines:
                    lines.append(line)
    return found


def _tracked_python() -> list[str]:
    out = subprocess.run(["git", "ls-files", "services", "ffhquv", "gateway"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in out if f.endswith(".py"))


def test_imports_run_one_way():
    found = violations(ROOT, _tracked_python())
    new = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    assert not new, ("imports against the layering (file, layer reached): lines "
                     f"{new}; see the rules in tests/test_imports.py and docs/conventions.md")
    fixed = sorted(k for k in KNOWN_VIOLATIONS if k not in found)
    assert not fixed, f"fixed, remove from KNOWN_VIOLATIONS: {fixed}"


def test_the_fitter_and_eyeball_use_base_types():
    """The aligned face and OBJ writing come from the base layer, not the detector / exporter."""
    found = violations(ROOT, _tracked_python())
    for rel, layer in found:
        assert not (rel.startswith(("services/fitter/", "services/eyeball/"))
                    and layer in ("services.exporter",))
        assert not (rel.startswith("services/eyeball/") and layer == "services.detector")
    for rel in ("services/fitter/core.py", "services/fitter/servicer.py"):
        mods = {m for m, _ in _imported_modules(ast.parse((ROOT / rel).read_text()))}
        assert "ffhquv.aligned" in mods and "services.detector.types" not in mods


def test_the_rules_see_violations(tmp_path):
    files = {
        "services/a/core.py": "from services.b.core import x\nimport services.a.util\n",
        "services/a/lazy.py": "def f():\n    from gateway import server\n",
        "services/b/core.py": "from services import b\nfrom services.b import util\n",
        "ffhquv/base.py": "from ffhquv_cli import commands\nimport services.a.core\n",
        "ffhquv/lazy.py": "def f():\n    from ffhquv_deploy.deploy import main\n",
        "services/b/cli.py": "import ffhquv_cli.main\n",
        "ffhquv/ok.py": "from ffhquv import errors, vocab\nimport numpy\n",
        "gateway/x.py": "from services.a import core\n",
        "gateway/y.py": "from ffhquv_cli.commands import wait_healthy\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path, sorted(files))
    assert found == {
        ("services/a/core.py", "services.b"): [1],
        ("services/a/lazy.py", "gateway"): [2],
        ("ffhquv/base.py", "ffhquv_cli"): [1],
        ("ffhquv/lazy.py", "ffhquv_deploy"): [2],
        ("services/b/cli.py", "ffhquv_cli"): [1],
        ("ffhquv/base.py", "services.a"): [2],
        ("gateway/y.py", "ffhquv_cli"): [1],
    }


# Base modules the gateway (and any service without a renderer) imports: no torch. The renderer
# package ffhquv.render itself is light; its modules import torch.
NO_TORCH = ("ffhquv", "ffhquv.errors", "ffhquv.config", "ffhquv.vocab", "ffhquv.mesh",
            "ffhquv.aligned", "ffhquv.objfile", "ffhquv.server", "ffhquv.render")


def test_base_modules_import_no_torch():
    """torch is imported only by the modules that need it (checked in a fresh interpreter)."""
    code = ("import importlib, sys\n"
            f"for m in {NO_TORCH!r}:\n"
            "    importlib.import_module(m)\n"
            "    assert 'torch' not in sys.modules, m + ' imports torch'\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
