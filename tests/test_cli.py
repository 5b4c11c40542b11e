"""The ``ffhquv`` command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trimesh
from PIL import Image

SEED_FILES = ("stage3_mesh_id.obj", "stage3_mesh.mtl", "stage3_uv.png", "L_ball.obj",
              "R_ball.obj", "eye_ball_tex.mtl", "eye_ball_tex.png")


def ffhquv(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ffhquv.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help():
    r = ffhquv("--help")
    assert r.returncode == 0
    for sub in ("fit", "serve", "clear", "build-model"):
        assert sub in r.stdout
    r = ffhquv("serve", "--help")
    assert "detector" in r.stdout and "all" in r.stdout


@pytest.mark.slow
def test_fit_folder_with_a_bad_file_then_clear(tmp_path, astronaut_rgb):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut_rgb).save(photos / "astronaut.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (photos / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    r = ffhquv("fit", str(photos), "-o", str(out), "--preset", "fast", "--device", "cpu",
               "--texture-size", "512")
    assert r.returncode == 1, r.stderr  # one photo failed
    assert "broken.jpg: INVALID_ARGUMENT" in r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["astronaut"], list(out.iterdir())
    head = out / "astronaut"
    for name in SEED_FILES + ("stage3_mesh_exp.obj", "report.json", "preview.png"):
        assert (head / name).is_file(), name
    # MeshLab / Blender terms: OBJ -> MTL -> PNG resolve by relative names.
    obj = (head / "stage3_mesh_id.obj").read_text()
    assert "mtllib stage3_mesh.mtl" in obj
    assert "map_Kd stage3_uv.png" in (head / "stage3_mesh.mtl").read_text()
    mesh = trimesh.load(head / "stage3_mesh_id.obj", force="mesh")
    assert mesh.visual.material.image is not None
    eye = trimesh.load(head / "L_ball.obj", force="mesh")
    assert eye.visual.material.image is not None

    r = ffhquv("fit", str(photos / "astronaut.png"), "-o", str(out), "--preset", "fast")
    assert r.returncode == 0 and "exists; skipped" in r.stderr

    r = ffhquv("clear", str(out))
    assert r.returncode != 0 and "--yes" in r.stderr
    r = ffhquv("clear", str(out), "--yes")
    assert r.returncode == 0
    assert list(out.iterdir()) == []
