"""The .proto API: compiles from scratch, has the expected packages / services / methods, every
field is documented, and is additive relative to the released descriptor set
(protos/released/ffhquv_v1.binpb): inside a v1 package nothing is removed, renumbered,
renamed or retyped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from ffhquv import protogen

PROTO_ROOT = protogen.PROTO_ROOT
RELEASED = protogen.RELEASED_DESCRIPTORS
FDP = descriptor_pb2.FieldDescriptorProto

PACKAGES = ["ffhquv.common.v1", "ffhquv.detector.v1", "ffhquv.exporter.v1",
            "ffhquv.eyeball.v1", "ffhquv.fitter.v1", "ffhquv.gateway.v1"]
# service -> method -> (client streaming, server streaming)
SERVICES = {
    "ffhquv.detector.v1.Detector": {"Detect": (False, False)},
    "ffhquv.fitter.v1.Fitter": {"Fit": (False, True), "DescribeModel": (False, False)},
    "ffhquv.eyeball.v1.Eyeball": {"Place": (False, False)},
    "ffhquv.exporter.v1.Exporter": {"Export": (False, False)},
    "ffhquv.gateway.v1.Reconstruction": {"Reconstruct": (False, False),
                                         "ReconstructStream": (False, True),
                                         "GetArtifact": (False, True)},
}


def compile_protos(root: Path, out: Path, stubs: bool = False) -> descriptor_pb2.FileDescriptorSet:
    """Compile every ``root/ffhquv/**/*.proto`` with grpc_tools' protoc into ``out`` (Python
    stubs when ``stubs``) and return the FileDescriptorSet with source info."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    names = [str(p.relative_to(root)) for p in protogen.proto_files(root)]
    fds_path = out / "all.binpb"
    args = ["grpc_tools.protoc", f"-I{root}", f"-I{files('grpc_tools') / '_proto'}",
            f"--descriptor_set_out={fds_path}", "--include_source_info"]
    if stubs:
        args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    code = protoc.main([*args, *names])
    assert code == 0, f"protoc failed ({code}) on {root}"
    return descriptor_pb2.FileDescriptorSet.FromString(fds_path.read_bytes())


@pytest.fixture(scope="module")
def current(tmp_path_factory) -> descriptor_pb2.FileDescriptorSet:
    return compile_protos(PROTO_ROOT, tmp_path_factory.mktemp("protos"), stubs=True)


def _messages(fds) -> dict[str, descriptor_pb2.DescriptorProto]:
    out = {}

    def walk(prefix, msgs):
        for m in msgs:
            out[f"{prefix}.{m.name}"] = m
            walk(f"{prefix}.{m.name}", m.nested_type)

    for f in fds.file:
        walk(f.package, f.message_type)
    return out


def _enums(fds) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    out = {}
    for f in fds.file:
        for e in f.enum_type:
            out[f"{f.package}.{e.name}"] = e
    for name, m in _messages(fds).items():
        for e in m.enum_type:
            out[f"{name}.{e.name}"] = e
    return out


def _services(fds) -> dict[str, descriptor_pb2.ServiceDescriptorProto]:
    return {f"{f.package}.{s.name}": s for f in fds.file for s in f.service}


def _type_of(field: FDP) -> str:
    t = FDP.Type.Name(field.type).removeprefix("TYPE_").lower()
    return field.type_name.lstrip(".") if field.type_name else t


def _label_of(field: FDP, msg: descriptor_pb2.DescriptorProto) -> str:
    if field.label == FDP.LABEL_REPEATED:
        return "repeated"
    if field.HasField("oneof_index") and not field.proto3_optional:
        return f"oneof {msg.oneof_decl[field.oneof_index].name}"
    return "optional" if field.proto3_optional else "singular"


def breaking_changes(old, new) -> list[str]:
    """Every non-additive change from FileDescriptorSet ``old`` to ``new``: removed messages,
    fields, enum values, services or methods; fields renumbered, renamed, retyped, moved in or
    out of a oneof or between singular and repeated; methods with other types or streaming;
    new fields on numbers or names the old version reserved."""
    problems: list[str] = []
    old_m, new_m = _messages(old), _messages(new)
    for name, om in old_m.items():
        nm = new_m.get(name)
        if nm is None:
            problems.append(f"message {name} removed")
            continue
        new_by_num = {f.number: f for f in nm.field}
        new_by_name = {f.name: f for f in nm.field}
        for of in om.field:
            nf = new_by_num.get(of.number)
            if nf is None:
                moved = new_by_name.get(of.name)
                problems.append(f"{name}.{of.name} = {of.number}: "
                                + (f"renumbered to {moved.number}" if moved else "removed"))
                continue
            if nf.name != of.name:
                problems.append(f"{name} field {of.number}: renamed {of.name} -> {nf.name}")
            if _type_of(nf) != _type_of(of):
                problems.append(f"{name}.{of.name} = {of.number}: type changed "
                                f"{_type_of(of)} -> {_type_of(nf)}")
            if _label_of(nf, nm) != _label_of(of, om):
                problems.append(f"{name}.{of.name} = {of.number}: {_label_of(of, om)} -> "
                                f"{_label_of(nf, nm)}")
        old_numbers = {f.number for f in om.field}
        for nf in nm.field:
            if nf.number in old_numbers:
                continue
            if any(r.start <= nf.number < r.end for r in om.reserved_range) \
                    or nf.name in om.reserved_name:
                problems.append(f"{name}.{nf.name} = {nf.number}: reuses a reserved "
                                "number or name")
    old_e, new_e = _enums(old), _enums(new)
    for name, oe in old_e.items():
        ne = new_e.get(name)
        if ne is None:
            problems.append(f"enum {name} removed")
            continue
        new_vals = {v.number: v.name for v in ne.value}
        for v in oe.value:
            if v.number not in new_vals:
                problems.append(f"enum value {name}.{v.name} = {v.number} removed")
            elif new_vals[v.number] != v.name:
                problems.append(f"enum value {name} {v.number}: renamed {v.name} -> "
                                f"{new_vals[v.number]}")
    old_s, new_s = _services(old), _services(new)
    for name, osvc in old_s.items():
        nsvc = new_s.get(name)
        if nsvc is None:
            problems.append(f"service {name} removed")
            continue
        new_methods = {m.name: m for m in nsvc.method}
        for om_ in osvc.method:
            nm_ = new_methods.get(om_.name)
            if nm_ is None:
                problems.append(f"method {name}.{om_.name} removed")
                continue
            for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(om_, attr) != getattr(nm_, attr):
                    problems.append(f"method {name}.{om_.name}: {attr} "
                                    f"{getattr(om_, attr)} -> {getattr(nm_, attr)}")
    return problems


def undocumented_fields(fds) -> list[str]:
    """``file:line message.field`` for every message field without a leading comment."""
    missing = []
    for f in fds.file:
        if not f.name.startswith("ffhquv/"):
            continue
        locs = {tuple(loc.path): loc for loc in f.source_code_info.location}

        def walk(prefix, path, msgs, f=f, locs=locs):
            for i, m in enumerate(msgs):
                mpath = (*path, i)
                if m.options.map_entry:  # synthetic key/value of a map<,> field
                    continue
                for j, fld in enumerate(m.field):
                    loc = locs.get((*mpath, 2, j))
                    if loc is None or not loc.leading_comments.strip():
                        line = loc.span[0] + 1 if loc is not None else 0
                        missing.append(f"{f.name}:{line} {prefix}.{m.name}.{fld.name}")
                walk(f"{prefix}.{m.name}", (*mpath, 3), m.nested_type)

        walk(f.package, (4,), f.message_type)
    return missing


def test_compiles_from_scratch_with_the_expected_packages(current, tmp_path):
    protos = {f.name: f for f in current.file if f.name.startswith("ffhquv/")}
    assert sorted(f.package for f in protos.values()) == sorted(PACKAGES)
    for f in protos.values():
        svc = f.package.split(".")[1]
        assert f.name == f"ffhquv/{svc}/v1/{Path(f.name).name}"
        assert f.syntax == "proto3"
    out = tmp_path / "stubs"
    compile_protos(PROTO_ROOT, out, stubs=True)
    for name in protos:
        stem = out / name.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert Path(str(stem) + suffix).is_file(), str(stem) + suffix


def test_services_and_methods(current):
    services = _services(current)
    assert sorted(services) == sorted(SERVICES)
    for name, methods in SERVICES.items():
        have = {m.name: (m.client_streaming, m.server_streaming) for m in services[name].method}
        assert have == methods, name
    gw = {m.name: m for m in services["ffhquv.gateway.v1.Reconstruction"].method}
    assert gw["GetArtifact"].output_type == ".ffhquv.common.v1.ArtifactChunk"
    assert gw["Reconstruct"].input_type == gw["ReconstructStream"].input_type


def test_every_field_has_a_leading_comment(current):
    missing = undocumented_fields(current)
    assert not missing, (f"{len(missing)} proto fields have no leading comment (document them "
                         "in protos/):\n" + "\n".join(missing))


def test_current_protos_are_additive_to_the_release(current):
    released = descriptor_pb2.FileDescriptorSet.FromString(RELEASED.read_bytes())
    assert {f.package for f in released.file if f.name.startswith("ffhquv/")} == set(PACKAGES)
    problems = breaking_changes(released, current)
    assert not problems, "breaking changes against protos/released/ffhquv_v1.binpb:\n" + \
        "\n".join(problems)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert re.search(old, text), f"{old!r} not in {path.name}"
    path.write_text(re.sub(old, new, text, count=1))


def test_breaking_change_detector_catches_each_kind(tmp_path, current):
    root = tmp_path / "protos"
    shutil.copytree(PROTO_ROOT / "ffhquv", root / "ffhquv")
    det = root / "ffhquv/detector/v1/detector.proto"
    _edit(det, r"\n\s*uint32 face_index = 4;", "\n  reserved 4;")               # removed
    _edit(det, r"bool want_visualization = 6;", "bool want_visualization = 16;")  # renumbered
    _edit(det, r"string parse_source = 7;", "bytes parse_source = 7;")           # retyped
    _edit(det, r"repeated string notes = 8;", "string notes = 8;")               # relabelled
    _edit(det, r"uint32 unwrap_size = 5;", "uint32 crop_size = 5;")              # renamed
    _edit(det, r"\n\s*DETECTOR_BACKEND_CNN = 2;[^\n]*", "")                     # enum value
    _edit(root / "ffhquv/fitter/v1/fitter.proto", r"\n\s*rpc DescribeModel\([^;]*;", "")
    _edit(root / "ffhquv/gateway/v1/gateway.proto",
          r"returns \(stream ffhquv.common.v1.ArtifactChunk\)",
          "returns (ffhquv.common.v1.ArtifactChunk)")
    _edit(root / "ffhquv/common/v1/common.proto", r"uint64 total_size = 3;",  # additive: fine
          "uint64 total_size = 3;\n  // New.\n  string etag = 4;")
    problems = breaking_changes(current, compile_protos(root, tmp_path / "out"))
    text = "\n".join(problems)
    expected = [
        "ffhquv.detector.v1.DetectRequest.face_index = 4: removed",
        "ffhquv.detector.v1.DetectRequest.want_visualization = 6: renumbered to 16",
        "ffhquv.detector.v1.AlignedFace.parse_source = 7: type changed string -> bytes",
        "ffhquv.detector.v1.DetectResponse.notes = 8: repeated -> singular",
        "ffhquv.detector.v1.DetectRequest field 5: renamed unwrap_size -> crop_size",
        "enum value ffhquv.detector.v1.DetectorBackend.DETECTOR_BACKEND_CNN = 2 removed",
        "method ffhquv.fitter.v1.Fitter.DescribeModel removed",
        "method ffhquv.gateway.v1.Reconstruction.GetArtifact: server_streaming True -> False",
    ]
    for e in expected:
        assert e in problems, f"missing {e!r} in:\n{text}"
    assert len(problems) == len(expected), text
    # a field on a number the old version reserved
    problems = breaking_changes(compile_protos(root, tmp_path / "out2"), current)
    assert "ffhquv.detector.v1.DetectRequest.face_index = 4: reuses a reserved number or name" \
        in problems


# -- buf (lint STANDARD + COMMENTS, breaking against the release) ------------------------------
ROOT = PROTO_ROOT.parent
BUF_VERSION = "1.75.0"


def _buf() -> str:
    for cand in (os.environ.get("FFHQUV_BUF"), ROOT / ".tools" / "node_modules" / ".bin" / "buf",
                 shutil.which("buf")):
        if cand and Path(cand).is_file():
            return str(cand)
    pytest.skip("buf is not installed: `npm install --prefix .tools @bufbuild/buf@"
                f"{BUF_VERSION}` (./run test does this when npm exists), or set FFHQUV_BUF")


def test_buf_lint_clean_with_the_documented_ignores():
    """buf.yaml: STANDARD + COMMENTS; the only ignores are names frozen by the v1 release."""
    r = subprocess.run([_buf(), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_buf_breaking_against_the_release():
    r = subprocess.run([_buf(), "breaking", "--against", str(RELEASED.relative_to(ROOT))],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
