"""The container images (docker/): no Docker engine here, so the Dockerfiles are parsed and
checked for the policy (pinned base images, non-root user, exec-form commands, no HEALTHCHECK,
stubs generated before installing, the GPU fitter on CUDA with nvdiffrast compiled at build
time) and for agreement with the Kubernetes manifests (uid, ports, cache folder)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ffhquv_deploy import deploy

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "fitter": DOCKER / "Dockerfile.fitter"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def stages(instrs: list[tuple[str, str]]) -> list[dict]:
    """Each FROM stage: its base image (global ARG defaults substituted) and instructions."""
    global_args: dict[str, str] = {}
    result: list[dict] = []
    for instr, args in instrs:
        if instr == "ARG" and not result:
            name, _, default = args.partition("=")
            global_args[name] = default.strip('"')
        elif instr == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], args.split()[0])
            name = args.split()[2] if " AS " in args.upper() else None
            result.append({"image": image, "name": name, "instrs": []})
        elif result:
            result[-1]["instrs"].append((instr, args))
    return result


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request) -> tuple[str, list[dict]]:
    return request.param, stages(parse_dockerfile(DOCKERFILES[request.param].read_text()))


def _all(stage: dict, instr: str) -> list[str]:
    return [a for i, a in stage["instrs"] if i == instr]


def _manifest_deployments() -> dict[str, dict]:
    return {d["metadata"]["name"].removeprefix("ffhquv-"): d
            for d in deploy.build(REPO / "k8s" / "overlays" / "prod") if d["kind"] == "Deployment"}


def test_base_images_pinned(dockerfile):
    _, st = dockerfile
    for s in st:
        image = s["image"]
        if image in {x["name"] for x in st if x["name"]}:
            continue  # FROM an earlier stage
        name, tag, digest = deploy._split_image(image)
        assert tag or digest, f"{image}: unpinned base image"
        assert tag != "latest" and "latest" not in image
        assert digest or re.search(r"\d+\.\d+(\.\d+)?", tag), f"{image}: tag is not a version"


def test_non_root_exec_form_no_healthcheck(dockerfile):
    kind, st = dockerfile
    final = st[-1]
    users = _all(final, "USER")
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {users[-1]}"
    for s in st:
        assert not _all(s, "HEALTHCHECK"), "Kubernetes probes do the health checking"
    (cmd,) = _all(final, "CMD")
    assert isinstance(json.loads(cmd), list), "exec-form CMD"
    for e in _all(final, "ENTRYPOINT"):
        assert isinstance(json.loads(e), list)
    exposed = {p for e in _all(final, "EXPOSE") for p in e.split()}
    assert exposed == {"50051", "9090"}
    env = " ".join(_all(final, "ENV"))
    assert "FFHQUV_CACHE_DIR=/opt/ffhquv/cache" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    # the manifests run the same uid, with the same cache folder and ports
    deps = _manifest_deployments()
    services = ["fitter"] if kind == "fitter" else ["detector", "eyeball", "exporter", "gateway"]
    for svc in services:
        pod = deps[svc]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsGroup"] == int(users[-1].split(":")[1])
    cm = next(d for d in deploy.build(REPO / "k8s" / "overlays" / "prod")
              if d["kind"] == "ConfigMap")
    assert cm["data"]["FFHQUV_CACHE_DIR"] == "/opt/ffhquv/cache"


def test_build_steps(dockerfile):
    kind, st = dockerfile
    build = st[0]
    runs = "\n".join(_all(build, "RUN"))
    assert 'torch==${TORCH_VERSION}' in runs
    assert any(a == "TORCH_VERSION=2.13.0" for a in _all(build, "ARG"))
    install = "pip install ." if kind == "cpu" else 'pip install --no-build-isolation ".[gpu]"'
    assert runs.index("grpcio-tools") < runs.index("python -m ffhquv.protogen") \
        < runs.index(install), "stubs are generated before the package is installed"
    assert "pip install -e" not in runs, "images install the package, not an editable checkout"
    assert "ffhquv build-model" in runs
    sources = [a.split()[0] for a in _all(build, "COPY") if not a.startswith("--")]
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    assert "ffhquv_cli/" in sources, "the services run as `ffhquv serve` (the CLI package)"
    assert not any(s.startswith("ffhquv_deploy") for s in sources), \
        "the deploy tool stays out of the service images"
    extras = {e for group in re.findall(r"\.\[([\w,-]+)\]", runs) for e in group.split(",")}
    assert "deploy" not in extras, "no deploy extra in the images"
    final = st[-1]
    copies = _all(final, "COPY")
    assert any("/opt/venv" in c and "--from=build" in c for c in copies)
    assert any("/opt/ffhquv/cache" in c for c in copies)
    assert not _all(final, "ADD")
    if kind == "fitter":
        assert st[0]["image"].startswith("nvidia/cuda:") and "-devel-" in st[0]["image"]
        assert final["image"].startswith("nvidia/cuda:") and "-runtime-" in final["image"]
        assert st[0]["image"].split("-")[0] == final["image"].split("-")[0], "same CUDA"
        assert re.search(r"python -c \"import torch, nvdiffrast\.torch, "
                         r"nvdiffrast\.nvdiffrast_plugin", runs), "nvdiffrast warm-up"
        assert "TORCH_CUDA_ARCH_LIST" in " ".join(_all(build, "ENV"))
    else:
        assert st[0]["image"] == final["image"]
        assert re.match(r"python:3\.11\.\d+-slim", final["image"])
        assert "SERVICE" in [a.split("=")[0] for a in _all(build, "ARG")]
        assert '[ "$SERVICE" = "fitter" ]' in runs, "only the fitter bakes the face model"
        assert "--index-url https://download.pytorch.org/whl/cpu" in runs


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rules: last matching pattern wins, '!' re-includes, a pattern
    that matches a parent folder matches everything inside it."""
    def rx(p: str) -> re.Pattern:
        p = p.strip("/")
        out = ""
        i = 0
        while i < len(p):
            if p.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif p.startswith("**", i):
                out += ".*"
                i += 2
            elif p[i] == "*":
                out += "[^/]*"
                i += 1
            elif p[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(p[i])
                i += 1
        return re.compile(out + "$")

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        r = rx(pat[1:] if neg else pat)
        if any(r.match(p) for p in prefixes):
            excluded = not neg
    return excluded


def test_dockerignore():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    sent = ["pyproject.toml", "README.md", "protos/ffhquv/detector/v1/detector.proto",
            "protos/released/ffhquv_v1.binpb", "ffhquv_cli/main.py", "ffhquv/server.py",
            "ffhquv/render/camera.py", "services/fitter/core.py", "gateway/server.py"]
    kept_out = [".git/HEAD", ".venv/bin/python", ".cache/anny/v14/model.pt", "tests/conftest.py",
                "k8s/base/fitter.yaml", "docker/Dockerfile.cpu",
                "ffhquv/detector/v1/detector_pb2.py",
                "ffhquv/_protos_stamp.txt", "ffhquv_cli/__pycache__/main.cpython-311.pyc",
                "services/fitter/__pycache__/x.pyc", "ffhquv.egg-info/PKG-INFO", "out/x/y.obj",
                ".ruff_cache/x", "run", ".ci/run", "bench/x.py", "ffhquv_deploy/deploy.py"]
    for p in sent:
        assert not _dockerignore_excludes(patterns, p), f"{p} must be in the build context"
    for p in kept_out:
        assert _dockerignore_excludes(patterns, p), f"{p} must not be in the build context"
