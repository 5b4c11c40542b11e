"""Packaging: a wheel built from a clean checkout carries the generated gRPC stubs.

The wheel is built from a copy of the tracked files (so the git-ignored stubs of this checkout
cannot leak in), without build isolation (no downloads), and imported from its contents.
The full fresh-venv install + ``ffhquv fit`` is a bench: ``bench/fresh_install.sh``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = [f"ffhquv/{svc}/v1/{svc}_pb2{suffix}"
         for svc in ("common", "detector", "fitter", "eyeball", "exporter", "gateway")
         for suffix in (".py", ".pyi", "_grpc.py")]


def _clean_copy(dst: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the tracked files")
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in names:
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    _clean_copy(src)
    assert not (src / "ffhquv" / "gateway").exists()
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", str(src), "-w", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("ffhquv-*.whl")
    return whl


def test_wheel_from_a_clean_checkout_holds_typed_stubs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [s for s in STUBS if s not in names]
    assert not missing, missing
    if importlib.util.find_spec("mypy_protobuf") is not None:  # a build requirement
        typed = [s.replace("_grpc.py", "_grpc.pyi") for s in STUBS if s.endswith("_grpc.py")]
        assert not [s for s in typed if s not in names], names
    assert "ffhquv/py.typed" in names
    assert "ffhquv/common/v1/__init__.py" in names
    assert not any(n.startswith("protos/") for n in names)


def test_stubs_import_from_the_unpacked_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import ffhquv.pb as pb; from ffhquv.pb import gateway_pb2, gateway_pb2_grpc; "
            "print(pb.__file__); print(gateway_pb2_grpc.ReconstructionStub.__name__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(site / "ffhquv" / "pb.py"), "ReconstructionStub"]
