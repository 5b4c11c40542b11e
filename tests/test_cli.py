"""The ``ffhquv`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh
from PIL import Image

SEED_FILES = ("stage3_mesh_id.obj", "stage3_mesh.mtl", "stage3_uv.png", "L_ball.obj",
              "R_ball.obj", "eye_ball_tex.mtl", "eye_ball_tex.png")


def ffhquv(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ffhquv_cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help():
    r = ffhquv("--help")
    assert r.returncode == 0
    for sub in ("fit", "serve", "clear", "build-model"):
        assert sub in r.stdout
    r = ffhquv("serve", "--help")
    assert "detector" in r.stdout and "all" in r.stdout
    assert "exit codes: 0 all photos done" in " ".join(ffhquv("fit", "--help").stdout.split())


@pytest.mark.parametrize("sub", ["fit", "serve", "clear", "deploy", "build-model"])
def test_every_subcommand_answers_help(sub):
    r = ffhquv(sub, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ffhquv " + sub), r.stdout[:200]


@pytest.mark.parametrize("missing", ["ffhquv_deploy", "yaml"])
def test_deploy_without_its_extra_names_the_extra(monkeypatch, capsys, missing):
    """The service images carry neither the deploy tool nor its extra: ``ffhquv deploy`` then
    says what to install (exit 2) instead of a traceback."""
    from ffhquv_cli.main import main

    for name in ("ffhquv_deploy", "ffhquv_deploy.deploy"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, missing, None)  # import of it raises ModuleNotFoundError
    assert main(["deploy", "status"]) == 2
    err = capsys.readouterr().err
    assert "'deploy' extra" in err and "pip install -e '.[deploy]'" in err and missing in err


def test_usage_errors_exit_2_before_any_work(tmp_path, astronaut_png):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["fit", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "o")],
         "no such file or folder"),
        (["fit", str(astronaut_png), "-o", str(a_file / "sub")], "cannot create output folder"),
        (["fit", str(astronaut_png), "-o", str(tmp_path / "o"), "--landmark-model",
          str(tmp_path / "nope.dat")], f"landmark model missing: {tmp_path / 'nope.dat'}"),
        (["fit", str(astronaut_png), "-o", str(tmp_path / "o"), "--face", "left"],
         "--face must be"),
        (["fit", str(astronaut_png), "-o", str(tmp_path / "o"), "--formats", "obj,fbx"],
         "unknown format 'fbx'"),
        (["fit", str(astronaut_png), "-o", str(tmp_path / "o"), "--workers", "-1"],
         "--workers must be 0"),
        (["fit", str(astronaut_png), "-o", str(tmp_path / "o"), "--workers", "2", "--remote",
          "127.0.0.1:1"], "--workers applies to local fits"),
    ]
    for args, message in cases:
        r = ffhquv(*args, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ffhquv fit: ") and message in lines[0], \
            r.stderr
        assert r.stdout == ""
    assert not (tmp_path / "o" / "astronaut").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_exit_2(tmp_path, astronaut_png):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        r = ffhquv("fit", str(astronaut_png), "-o", str(out), timeout=120)
    finally:
        out.chmod(0o755)
    assert r.returncode == 2 and "is not writable" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_remote_retries_a_full_queue_then_reports(tmp_path, astronaut_png):
    """--remote against a gateway that admits nothing: RESOURCE_EXHAUSTED is retried (with the
    server's RetryInfo) until the deadline, then the photo fails with the gateway's reason and
    the same summary as a local run. (The backends are one real server that answers health
    SERVING, so the gateway's backend check passes and admission is what refuses.)"""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health_pb2_grpc

    from ffhquv.server import HealthServicer
    from gateway.backends import GrpcBackends
    from gateway.orchestrator import Orchestrator
    from gateway.server import GatewayLimits, GatewayServer
    from gateway.storage import LocalArtifactStore

    healthy = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), healthy)
    up = f"127.0.0.1:{healthy.add_insecure_port('127.0.0.1:0')}"
    healthy.start()
    backends = GrpcBackends(detector=up, fitter=up, eyeball=up, exporter=up)
    gw = GatewayServer(Orchestrator(backends), LocalArtifactStore(tmp_path / "store"),
                       limits=GatewayLimits(max_concurrent=0, max_queue=0),
                       close_backends=backends.close)
    gw.start_in_thread()
    try:
        r = ffhquv("fit", str(astronaut_png), "-o", str(tmp_path / "out"), "--remote",
                   gw.address, "--retry-deadline", "5", "--json", timeout=120)
    finally:
        gw.stop(1.0)
        healthy.stop(None)
    assert r.returncode == 1, r.stderr
    assert "RESOURCE_EXHAUSTED" in r.stderr and "retrying in" in r.stderr, r.stderr
    assert "ffhquv fit: 1 photo(s): 0 ok, 1 failed, 0 skipped" in r.stderr
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["status"] == "failed" and rec["name"] == "astronaut"
    assert rec["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert rec["error"]["reason"] == "QUEUE_FULL"
    assert not (tmp_path / "out" / "astronaut").exists()


class _HoldingGateway:
    """A real gRPC server of the gateway's Reconstruction service that holds each
    ReconstructStream until ``together`` of them are open at once (a barrier, not a clock),
    then refuses the photo with FAILED_PRECONDITION; it records the most open at once."""

    def __init__(self, together: int):
        import threading
        from concurrent import futures

        import grpc

        from ffhquv.pb import gateway_pb2_grpc

        self.lock, self.open, self.peak, self.seen = threading.Lock(), 0, 0, []
        self.barrier = threading.Barrier(together, timeout=120) if together > 1 else None
        outer = self

        class Servicer(gateway_pb2_grpc.ReconstructionServicer):
            def ReconstructStream(self, request, context):
                with outer.lock:
                    outer.open += 1
                    outer.peak = max(outer.peak, outer.open)
                    outer.seen.append(request.image.filename)
                try:
                    if outer.barrier is not None:
                        outer.barrier.wait()
                finally:
                    with outer.lock:
                        outer.open -= 1
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"held {request.image.filename}")

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        gateway_pb2_grpc.add_ReconstructionServicer_to_server(Servicer(), self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


@pytest.mark.parametrize("in_flight", [1, 3])
def test_remote_sends_a_folder_in_flight_together(tmp_path, astronaut_png, in_flight):
    """``--remote`` keeps ``--in-flight`` photos open at the gateway at once (a photo at a time
    left one ``serve all`` on a GPU at a tenth of its rate): with 3 the gateway holds each
    photo until all three are open (a barrier: one at a time would break it), with 1 it never
    sees two. Each photo's failure is reported on its own, nothing is written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c"):
        (photos / f"{name}.png").write_bytes(astronaut_png.read_bytes())
    gw = _HoldingGateway(together=in_flight)
    try:
        r = ffhquv("fit", str(photos), "-o", str(tmp_path / "out"), "--remote", gw.address,
                   "--in-flight", str(in_flight), "--json", timeout=300)
    finally:
        gw.server.stop(None)
    assert r.returncode == 1, r.stderr
    assert sorted(gw.seen) == ["a.png", "b.png", "c.png"] and gw.peak == in_flight
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(x["name"] for x in recs) == ["a", "b", "c"]
    for x in recs:
        assert x["status"] == "failed" and x["error"]["code"] == "FAILED_PRECONDITION"
        assert x["error"]["message"] == f"held {x['name']}.png"
    assert "ffhquv fit: 3 photo(s): 0 ok, 3 failed, 0 skipped" in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_remote_photo_gone_before_it_is_sent_fails_alone(tmp_path, astronaut_png, capsys):
    """A photo that cannot be read when its turn comes (deleted since the folder was listed)
    is reported failed with INPUT_READ_FAILED and its path; the others are still sent."""
    from ffhquv_cli.commands import _fit_remote
    from ffhquv_cli.main import build_parser
    from ffhquv_cli.reporting import FitReporter

    gw = _HoldingGateway(together=1)
    out = tmp_path / "out"
    args = build_parser().parse_args(["fit", str(astronaut_png), "-o", str(out), "--remote",
                                      gw.address, "--in-flight", "2"])
    rep = FitReporter(json_lines=True, tty=False)
    try:
        code = _fit_remote(args, [(tmp_path / "gone.png", "gone"), (astronaut_png, "here")],
                           out, rep)
    finally:
        gw.server.stop(None)
    assert code == 1 and gw.seen == ["astronaut.png"]
    recs = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert recs["gone"]["error"]["code"] == "INPUT_READ_FAILED"
    assert recs["gone"]["error"]["message"].startswith(f"cannot read {tmp_path / 'gone.png'}: ")
    assert recs["here"]["error"]["code"] == "FAILED_PRECONDITION"


def test_remote_ctrl_c_with_photos_in_flight_stops_and_writes_nothing(tmp_path, astronaut_png):
    """Ctrl-C while the gateway holds every photo in flight: the CLI stops (exit 130, its
    in-flight calls cancelled with the channel) without a traceback, and no output folder or
    partial file is left."""
    import signal
    import time

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c"):
        (photos / f"{name}.png").write_bytes(astronaut_png.read_bytes())
    gw = _HoldingGateway(together=4)  # never four: all three are held
    proc = subprocess.Popen([sys.executable, "-m", "ffhquv_cli", "fit", str(photos), "-o",
                             str(tmp_path / "out"), "--remote", gw.address, "--in-flight", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while len(gw.seen) < 3 and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)  # until the gateway holds all three (no clock decides the test)
        assert len(gw.seen) == 3, gw.seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        gw.barrier.abort()
        gw.server.stop(None)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _on_a_terminal(argv: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run the CLI with its stderr on a 40 x 120 pseudo-terminal (a new one has no size:
    tqdm would draw nothing); returns its exit code and what the terminal showed, escape
    sequences removed."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks = []
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ffhquv_cli", *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=slave)
        os.close(slave)
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal's other end closed: the CLI has exited
                break
            if not data:
                break
            chunks.append(data)
        rc = proc.wait(timeout=timeout)
    finally:
        os.close(master)
    return rc, re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))


def test_a_folder_on_a_terminal_gets_one_bar(tmp_path, astronaut_png):
    """On a terminal, photos fitted at once share one bar (photos done of all) with their
    result lines above it, instead of a bar each overwriting the others."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c"):
        (photos / f"{name}.png").write_bytes(astronaut_png.read_bytes())
    gw = _HoldingGateway(together=3)
    try:
        rc, text = _on_a_terminal(["fit", str(photos), "-o", str(tmp_path / "out"),
                                   "--remote", gw.address, "--in-flight", "3"], timeout=120)
    finally:
        gw.server.stop(None)
    assert rc == 1
    assert "ffhquv fit" in text and "3/3" in text, text
    for name in ("a", "b", "c"):
        assert f"{name}.png: FAILED_PRECONDITION: held {name}.png" in text, text
    assert "ffhquv fit: 3 photo(s): 0 ok, 3 failed, 0 skipped" in text


@pytest.mark.slow
def test_worker_processes_on_a_terminal_share_the_folder_bar(tmp_path, astronaut_png):
    """``--workers 2`` on a terminal: the parent shows the folder's bar and the results; its
    workers print no progress of their own (their stage lines scrolled over the bar)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        (photos / f"{name}.png").write_bytes(astronaut_png.read_bytes())
    rc, text = _on_a_terminal(["fit", str(photos), "-o", str(tmp_path / "out"), "--workers",
                               "2", "--preset", "fast", "--texture-size", "256", "--formats",
                               "obj"])
    assert rc == 0, text
    assert "2/2" in text and "ffhquv fit: 2 photo(s): 2 ok, 0 failed, 0 skipped" in text, text
    for name in ("a", "b"):
        assert f"{name}.png -> {tmp_path / 'out' / name}/" in text, text
    assert "stage 1" not in text and "detected" not in text, text
    assert (tmp_path / "out" / "a" / "stage3_mesh_id.obj").is_file()


def test_remote_in_flight_must_be_positive(tmp_path, astronaut_png):
    r = ffhquv("fit", str(astronaut_png), "-o", str(tmp_path / "o"), "--remote",
               "127.0.0.1:1", "--in-flight", "0", timeout=120)
    assert r.returncode == 2 and "--in-flight must be 1 or more, got 0" in r.stderr, r.stderr


@pytest.mark.slow
def test_fit_folder_with_a_bad_file_then_clear(tmp_path, astronaut_rgb):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut_rgb).save(photos / "astronaut.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (photos / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    r = ffhquv("fit", str(photos), "-o", str(out), "--preset", "fast", "--device", "cpu",
               "--texture-size", "512", "--json", "--seed", "3")
    assert r.returncode == 1, r.stderr  # one photo failed
    assert "broken.jpg: INVALID_ARGUMENT" in r.stderr, r.stderr
    # No terminal here: one plain progress line per stage, then a summary.
    lines = r.stderr.splitlines()
    for stage in ("detected", "stage 1", "stage 2", "stage 3", "eyeballs", "exported"):
        assert sum(ln.startswith(f"astronaut: {stage}") for ln in lines) == 1, (stage, lines)
    assert "ffhquv fit: 2 photo(s): 1 ok, 1 failed, 0 skipped" in r.stderr
    records = {rec["name"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert records["broken"]["status"] == "failed"
    assert records["broken"]["error"]["reason"] == "INVALID_IMAGE"
    assert records["broken"]["error"]["field"] == "image.data"
    ok = records["astronaut"]
    assert ok["status"] == "ok" and ok["output"] == str(out / "astronaut")
    assert "stage3_mesh_id.obj" in ok["files"] and ok["metrics"]["landmark_error_iod"] < 0.1
    assert ok["timings"]["total_s"] > 0 and "fit_s" in ok["timings"]
    assert json.loads((out / "astronaut" / "report.json").read_text())["seed"] == 3
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


def test_workers_deal_the_photos_and_how_many_by_default():
    from ffhquv_cli.workers import deal, default_workers, fit_workers

    assert deal(list(range(5)), 2) == [[0, 2, 4], [1, 3]]
    assert deal([0], 3) == [[0], [], []]
    assert fit_workers(3, "cpu", 2) == 2  # never more workers than photos
    assert fit_workers(4, "cuda", 1) == 1  # one photo: one process, no parent in between
    assert 1 <= fit_workers(0, "cpu", 64) <= 8
    # one per 2 cores, 2 to 8, as the memory holds
    assert [default_workers(c, False, None, None) for c in (1, 2, 8, 16, 64)] == [1, 2, 4, 8, 8]
    assert default_workers(16, False, 5.0, None) == 2  # 2 GB of RAM each
    assert default_workers(16, True, 100.0, 8.0) == 2  # 4 GB of GPU memory each
    assert default_workers(16, False, 100.0, 8.0) == 8  # the GPU's memory only bounds CUDA
    assert default_workers(16, True, 1.0, 1.0) == 1


def test_a_worker_gets_the_parents_options(tmp_path):
    """The worker's command line parses to the parent's options (and its own photos, output
    names and a single worker), so a photo is fitted the same either way."""
    from ffhquv_cli.main import build_parser
    from ffhquv_cli.workers import FORWARDED, worker_argv

    parent = build_parser().parse_args(
        ["fit", "a.jpg", "b.png", "c.jpg", "-o", str(tmp_path), "--preset", "best",
         "--device", "cuda", "--texture-size", "2048", "--face", "only", "--formats",
         "obj,glb", "--units", "m", "--batch-size", "4", "--seed", "7", "--overwrite",
         "--landmark-model", "/models/sp68.dat", "--workers", "3"])
    argv = worker_argv(parent, [Path("b.png")], tmp_path / "stems.json", tmp_path)
    assert argv[:4] == [sys.executable, "-m", "ffhquv_cli", "fit"]
    child = build_parser().parse_args(argv[3:])
    assert child.inputs == ["b.png"] and child.workers == 1
    assert child.worker_stems == str(tmp_path / "stems.json")
    for _, attr in FORWARDED:
        assert getattr(child, attr) == getattr(parent, attr), attr
    assert child.overwrite and not child.json


def test_a_killed_worker_reports_its_photos_failed_and_leaves_no_folder(tmp_path):
    """A worker that dies (here a real process that starts writing an output folder and is
    killed) leaves its photos reported failed with its exit code, and no temporary folder."""
    import threading

    from ffhquv_cli.reporting import FitReporter
    from ffhquv_cli.workers import _Worker

    out = tmp_path / "out"
    out.mkdir()
    dies = ("import os, sys; os.mkdir(sys.argv[1]); print('not a record', flush=True); "
            "os.kill(os.getpid(), 9)")
    rep = FitReporter(json_lines=False, tty=False)
    w = _Worker([sys.executable, "-c", dies, str(out / ".a.tmp-x1y2")], dict(os.environ),
                [(Path("a.jpg"), "a"), (Path("b.jpg"), "b")], out, rep, threading.Lock())
    w.finish()
    assert rep.counts == {"ok": 0, "failed": 2, "skipped": 0}
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_fit_folder_in_two_workers(tmp_path, astronaut_rgb):
    """``--workers 2``: the photos are dealt to two processes and reported as one run (result
    lines, one JSON record per photo, one summary); a bad photo fails alone."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut_rgb).save(photos / "a_astronaut.png")
    Image.fromarray(astronaut_rgb[:, ::-1].copy()).save(photos / "c_mirrored.png")
    (photos / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "out"
    r = ffhquv("fit", str(photos), "-o", str(out), "--preset", "fast", "--device", "cpu",
               "--texture-size", "256", "--json", "--workers", "2", "--formats", "obj")
    assert r.returncode == 1, r.stderr
    assert "ffhquv fit: 3 photo(s): 2 ok, 1 failed, 0 skipped" in r.stderr
    assert r.stderr.count("ffhquv fit:") == 1, r.stderr  # the workers print no summary
    records = {rec["name"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert sorted(records) == ["a_astronaut", "b_broken", "c_mirrored"]
    assert records["b_broken"]["error"]["reason"] == "INVALID_IMAGE"
    lines = r.stderr.splitlines()
    for name in ("a_astronaut", "c_mirrored"):
        assert records[name]["status"] == "ok"
        assert f"-> {out / name}/  landmark error" in r.stderr
        for stage in ("detected", "stage 3", "exported"):
            assert sum(ln.startswith(f"{name}: {stage}") for ln in lines) == 1, (stage, lines)
        assert (out / name / "stage3_mesh_id.obj").is_file()
        assert json.loads((out / name / "report.json").read_text())["preset"]["name"] == "fast"
        # --formats obj without intermediates: the fitter made none
        assert not [p.name for p in (out / name).glob("stage[12]_*")]
        assert not list((out / name).glob("stage3_coeffs.*"))
    assert sorted(p.name for p in out.iterdir()) == ["a_astronaut", "c_mirrored"]


def test_a_worker_that_dies_after_writing_a_folder_reports_it_done(tmp_path, capsys):
    """A worker killed after its photo's output folder appeared (one rename) but before its
    record reached the parent: that photo is reported done (its metrics read back from its
    report.json, a note saying so), the unfinished one failed; a folder older than the run
    (kept by a worker that died before replacing it) is not taken for this run's."""
    import threading

    from ffhquv_cli.reporting import FitReporter
    from ffhquv_cli.workers import _Worker

    out = tmp_path / "out"
    out.mkdir()
    old = out / "c"
    old.mkdir()
    for m in ("report.json", "stage3_uv.png", "stage3_mesh_id.obj"):
        (old / m).write_text("{}")
        os.utime(old / m, (1e9, 1e9))
    writes = (
        "import json, os, sys; d = sys.argv[1]; os.mkdir(d)\n"
        "json.dump({'metrics': {'landmark_error_iod': 0.01, 'psnr_masked': 30.0}},"
        " open(d + '/report.json', 'w'))\n"
        "open(d + '/stage3_uv.png', 'wb').close(); open(d + '/stage3_mesh_id.obj', 'w').close()\n"
        "os.kill(os.getpid(), 9)")
    rep = FitReporter(json_lines=True, tty=False)
    w = _Worker([sys.executable, "-c", writes, str(out / "a")], dict(os.environ),
                [(Path("a.jpg"), "a"), (Path("b.jpg"), "b"), (Path("c.jpg"), "c")], out, rep,
                threading.Lock())
    w.finish()
    assert rep.counts == {"ok": 1, "failed": 2, "skipped": 0}
    assert sorted(p.name for p in out.iterdir()) == ["a", "c"]
    records = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert records["a"]["status"] == "ok" and records["a"]["output"] == str(out / "a")
    assert records["a"]["metrics"]["psnr_masked"] == 30.0
    assert "report.json" in records["a"]["warnings"][0]
    assert records["a"]["files"] == ["report.json", "stage3_mesh_id.obj", "stage3_uv.png"]
    assert records["c"]["error"]["reason"] == "WORKER_EXITED"
