"""Every ``FFHQUV_*`` environment variable is listed in ``ffhquv/config.py`` and the README, and
Python code reads them through :mod:`ffhquv.config` (known exceptions below)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from ffhquv import config

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"FFHQUV_[A-Z][A-Z0-9_]*[A-Z0-9]")

# Files that read FFHQUV_* variables from os.environ themselves. This list may only shrink (a
# stale entry fails the test): switch the file to the ffhquv.config accessors and remove it.
DIRECT_READERS: dict[str, str] = {
    "ffhquv/config.py": "the owner",
}


def _tracked(*patterns: str) -> list[str]:
    return subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.split()


def _expand_braces(text: str) -> str:
    """``FFHQUV_{A,B}_ADDR`` -> ``FFHQUV_A_ADDR FFHQUV_B_ADDR`` (the README's shorthand)."""
    def one(m: re.Match) -> str:
        return " ".join(m.group(1) + x + m.group(3) for x in m.group(2).split(","))
    return re.sub(r"(FFHQUV_)\{([A-Z0-9_,]+)\}(\w*)", one, text)


def test_every_variable_in_the_code_is_documented():
    used: dict[str, set[str]] = {}
    for rel in _tracked():
        if rel.startswith("tests/") or not (ROOT / rel).is_file():
            continue
        try:
            text = (ROOT / rel).read_text()
        except UnicodeDecodeError:
            continue
        for name in NAME.findall(_expand_braces(text)):
            used.setdefault(name, set()).add(rel)
    undocumented = {k: sorted(v) for k, v in used.items() if k not in config.VARIABLES}
    assert not undocumented, ("FFHQUV_* variables missing from ffhquv.config.VARIABLES "
                              f"(and the README's table): {undocumented}")
    config_doc = config.__doc__ or ""
    readme = _expand_braces((ROOT / "README.md").read_text())
    for name in config.VARIABLES:
        assert name in readme, f"{name} is not in the README's configuration table"
        short = re.sub(r"^FFHQUV_(TLS)_(KEY|CA)$", r"_\2", name)
        is_addr = re.fullmatch(r"FFHQUV_[A-Z]+_ADDR", name)
        assert short in config_doc or is_addr, f"{name} is not in ffhquv/config.py's table"


def _environ_reads(tree: ast.AST) -> list[int]:
    """Lines reading os.environ / os.getenv with an FFHQUV_ name (literal or f-string)."""
    def is_ffhquv(arg: ast.AST) -> bool:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value.startswith("FFHQUV_")
        if isinstance(arg, ast.JoinedStr) and arg.values:
            first = arg.values[0]
            return isinstance(first, ast.Constant) and str(first.value).startswith("FFHQUV_")
        return False

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and is_ffhquv(node.args[0]):
            f = node.func
            if isinstance(f, ast.Attribute) and (
                    (f.attr in ("get", "setdefault") and is_environ(f.value))
                    or f.attr == "getenv"):
                lines.append(node.lineno)
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                and is_environ(node.value) and is_ffhquv(node.slice)):  # writes are settings
            lines.append(node.lineno)
    return lines


def test_variables_are_read_through_config():
    readers = {}
    for rel in _tracked("services", "gateway", "ffhquv", "ffhquv_cli", "ffhquv_deploy"):
        if rel.endswith(".py"):
            lines = _environ_reads(ast.parse((ROOT / rel).read_text(), filename=rel))
            if lines:
                readers[rel] = lines
    new = {k: v for k, v in readers.items() if k not in DIRECT_READERS}
    assert not new, f"read FFHQUV_* variables through ffhquv.config, not os.environ: {new}"
    stale = sorted(set(DIRECT_READERS) - set(readers))
    assert not stale, f"remove from DIRECT_READERS, they no longer read os.environ: {stale}"


@pytest.mark.parametrize("value, on", [("0", False), ("off", False), (" NO ", False),
                                       ("false", False), ("1", True), ("yes", True)])
def test_cuda_graphs_switch(monkeypatch, value, on):
    monkeypatch.setenv("FFHQUV_CUDA_GRAPHS", value)
    assert config.cuda_graphs() is on


def test_accessors_defaults_and_values(monkeypatch, tmp_path):
    for name in config.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FFHQUV_CACHE_DIR", str(tmp_path))
    assert config.cuda_graphs() is True
    assert config.fitter_concurrency() == 1
    assert (config.max_queue(), config.max_concurrent()) == (64, 16)
    assert config.fitter_max_batch() is None and config.fitter_max_delay_s() == 0.02
    assert config.storage_dir() == tmp_path / "artifacts"
    assert config.storage_max_bytes() == 5 * 1024 ** 3
    assert config.auth_token() is None and config.tls_files() == (None, None, None)
    assert config.log_level() == "INFO" and config.log_level("WARNING") == "WARNING"
    assert config.log_format("json") == "json"
    assert all(config.service_addr(s) is None for s in config.SERVICES)
    for name, value in zip(("FFHQUV_FITTER_CONCURRENCY", "FFHQUV_MAX_QUEUE",
                            "FFHQUV_FITTER_ADDR", "FFHQUV_TLS_CA", "FFHQUV_LOG_LEVEL"),
                           ("3", "20", "dns:///fitter:50051", "/ca.pem", "DEBUG"),
                           strict=True):
        monkeypatch.setenv(name, value)
    assert config.fitter_concurrency() == 3 and config.max_queue() == 20
    assert config.service_addr("fitter") == "dns:///fitter:50051"
    assert config.tls_files() == (None, None, "/ca.pem")
    assert config.log_level() == "DEBUG"


def test_env_refuses_undocumented_names():
    with pytest.raises(KeyError, match="not a documented"):
        config.env("FFHQUV_NOT_A_VARIABLE")


@pytest.mark.parametrize("value,want", [(None, None), ("auto", None), ("1", True), ("on", True),
                                        ("0", False), ("no", False)])
def test_fitter_warm(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("FFHQUV_FITTER_WARM", raising=False)
    else:
        monkeypatch.setenv("FFHQUV_FITTER_WARM", value)
    assert config.fitter_warm() is want


def test_fitter_warm_refuses_other_values(monkeypatch):
    monkeypatch.setenv("FFHQUV_FITTER_WARM", "maybe")
    with pytest.raises(ValueError, match="FFHQUV_FITTER_WARM"):
        config.fitter_warm()


@pytest.mark.parametrize("value,want", [(None, 10.0), ("0", 0.0), ("2.5", 2.5), ("600", 600.0)])
def test_drain_seconds(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("FFHQUV_DRAIN_SECONDS", raising=False)
    else:
        monkeypatch.setenv("FFHQUV_DRAIN_SECONDS", value)
    assert config.drain_seconds() == want


@pytest.mark.parametrize("value", ["-1", "ten", "nan"])
def test_drain_seconds_refuses_other_values(monkeypatch, value):
    monkeypatch.setenv("FFHQUV_DRAIN_SECONDS", value)
    with pytest.raises(ValueError, match="FFHQUV_DRAIN_SECONDS must be a number"):
        config.drain_seconds()
