"""Generate the gRPC / protobuf Python stubs from ``protos/`` into the ``ffhquv`` package.

The stubs are build products: ``setup.py``'s ``build_py`` hook calls :func:`generate` for a
wheel or ``pip install .`` (it loads this file without importing the package), and the
developer install step runs ``python -m ffhquv.protogen``; they are git-ignored and never
edited by hand. :func:`ensure_stubs` regenerates them when the ``.proto``
sources changed since the last generation (a stamp file holds the sources' hash), so a
checkout never runs stale stubs.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
PROTO_ROOT = REPO_ROOT / "protos"
STAMP = PACKAGE_DIR / "_protos_stamp.txt"
SERVICES = ("common", "detector", "fitter", "eyeball", "exporter", "gateway")
RELEASED_DESCRIPTORS = PROTO_ROOT / "released" / "ffhquv_v1.binpb"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """All ``.proto`` files under ``root/ffhquv``, sorted."""
    return sorted((root / "ffhquv").rglob("*.proto"))


def sources_hash(root: Path = PROTO_ROOT) -> str:
    h = hashlib.sha256()
    for p in proto_files(root):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _protoc(args: list[str]) -> None:
    from importlib.resources import files

    from grpc_tools import protoc

    include = str(files("grpc_tools") / "_proto")
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", *args])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} for {args[-3:]}")


def mypy_grpc_plugin() -> str | None:
    """mypy-protobuf's ``protoc-gen-mypy_grpc`` (typed ``*_pb2_grpc.pyi``), if installed."""
    beside = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    return str(beside) if beside.is_file() else shutil.which("protoc-gen-mypy_grpc")


def generate(out_dir: Path = REPO_ROOT) -> list[Path]:
    """Compile every proto into ``out_dir`` (``ffhquv/<svc>/v1/*_pb2*.py`` and ``.pyi``: the
    messages' from grpcio-tools, the services' from mypy-protobuf when it is installed, which
    the wheel build requires). Returns the files."""
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    if not files:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT}")
    typed_grpc = []
    plugin = mypy_grpc_plugin()
    if plugin:
        typed_grpc = [f"--plugin=protoc-gen-mypy_grpc={plugin}", f"--mypy_grpc_out={out_dir}"]
    _protoc([f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}",
             *typed_grpc, *files])
    for svc in SERVICES:
        for d in (out_dir / "ffhquv" / svc, out_dir / "ffhquv" / svc / "v1"):
            d.mkdir(parents=True, exist_ok=True)
            (d / "__init__.py").touch()
    if out_dir == REPO_ROOT:
        STAMP.write_text(sources_hash() + "\n")
    return sorted((out_dir / "ffhquv").glob("*/v1/*_pb2*.py*"))


def descriptor_set(path: Path) -> None:
    """Write a FileDescriptorSet of all protos (with imports and source info) to ``path``."""
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    _protoc([f"--descriptor_set_out={path}", "--include_imports", "--include_source_info",
             *files])


def stubs_current() -> bool:
    return STAMP.exists() and STAMP.read_text().strip() == sources_hash()


def ensure_stubs() -> None:
    """Regenerate the stubs if the protos changed; no-op for an installed wheel (no protos/)."""
    if not (PROTO_ROOT / "ffhquv").is_dir() or not (REPO_ROOT / "pyproject.toml").is_file() \
            or stubs_current():
        return
    generate()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--release":
        RELEASED_DESCRIPTORS.parent.mkdir(parents=True, exist_ok=True)
        descriptor_set(RELEASED_DESCRIPTORS)
        print(f"wrote {RELEASED_DESCRIPTORS}")
        return 0
    out = generate()
    print(f"generated {len(out)} stub files from {len(proto_files())} protos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
