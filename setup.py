"""Build hook: the gRPC / protobuf stubs are generated from ``protos/`` while the package is
built, so ``pip install .`` and a wheel from a clean checkout carry them.

All metadata lives in ``pyproject.toml``; this file only swaps in a ``build_py`` command. It
loads :mod:`ffhquv.protogen` from its file (standard library + ``grpc_tools`` only, no
import of the package or its runtime dependencies); ``grpcio-tools`` is a build requirement.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _protogen():
    spec = importlib.util.spec_from_file_location("_ffhquv_protogen",
                                                  ROOT / "ffhquv" / "protogen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithStubs(build_py):
    """``build_py`` that also compiles the protos into the build tree (or, for an editable
    install, into the source tree, where the stamp keeps them current)."""

    def run(self) -> None:
        super().run()
        gen = _protogen()
        if getattr(self, "editable_mode", False):
            gen.generate()
            return
        out = Path(self.build_lib)
        made = gen.generate(out)
        self.announce(f"generated {len(made)} gRPC / protobuf stub files into {out}", level=2)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outs = list(super().get_outputs(include_bytecode))
        stubs = Path(self.build_lib) / "ffhquv"
        if stubs.is_dir():
            outs += [str(p) for svc in _protogen().SERVICES
                     for p in (stubs / svc).rglob("*") if p.is_file()]
        return sorted(set(outs))


setup(cmdclass={"build_py": BuildPyWithStubs})
