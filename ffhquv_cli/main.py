"""The ``ffhquv`` command line.

    ffhquv fit PHOTO_OR_DIR... -o OUT [--preset fast|standard|best] [--device cpu|cuda] [--json]
    ffhquv serve <detector|fitter|eyeball|exporter|gateway|all> --port N
    ffhquv clear OUT
    ffhquv deploy ...
    ffhquv build-model [--rebuild]

Exit codes: 0 all photos done (or skipped), 1 some photos failed, 2 usage (bad arguments,
missing input, unwritable output folder, missing landmark model), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from ffhquv import vocab

EPILOG = ("exit codes: 0 all photos done (or skipped), 1 some photos failed, 2 usage error "
          "(bad arguments, missing input, unwritable output folder), 130 interrupted")

#: ``ffhquv fit --remote``: photos in flight at once by default. The serve benchmark's 32
#: clients are what keep one ``serve all`` on a GPU at its peak (BENCHMARKS.md); a gateway
#: replica admits 16 running and 64 queued, so one CLI alone is never refused
REMOTE_IN_FLIGHT = 32

SERVICES = ("detector", "fitter", "eyeball", "exporter", "gateway", "all")


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="photos in, textured heads out (OUT/<photo stem>/)",
                       description="Photos in, textured heads out (OUT/<photo stem>/). Without "
                       "a terminal, progress is one plain stderr line per stage per photo.",
                       epilog=EPILOG)
    p.add_argument("inputs", nargs="+", help="image files (.jpg/.jpeg/.png) or folders of them")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--preset", choices=vocab.PRESETS, default=vocab.DEFAULT_PRESET)
    p.add_argument("--device", choices=vocab.DEVICES, default=vocab.DEFAULT_DEVICE)
    p.add_argument("--face-model", default=vocab.DEFAULT_FACE_MODEL, choices=vocab.FACE_MODELS)
    p.add_argument("--texture-size", type=int, default=vocab.TEXTURE_SIZE_DEFAULT)
    p.add_argument("--detector", choices=("hog", "cnn"), default="hog")
    p.add_argument("--face", default="largest",
                   help="'largest' (default), 'only' (fail on several faces) or an index")
    p.add_argument("--formats", default="",
                   help="comma list of obj,glb,blend,preview,turntable,zip,intermediates "
                        "(default: all available but turntable; without intermediates the "
                        "fitter makes no stage1_* / stage2_* / stage3_coeffs.* files)")
    p.add_argument("--units", choices=vocab.EXPORT_UNITS, default=None,
                   help="unit of every mesh file; default: GLB and .blend in metres, OBJ in "
                        "the face model's units (about decimetres)")
    p.add_argument("--subdivision", type=int, choices=vocab.SUBDIVISION_LEVELS, default=0,
                   help="levels of Loop subdivision of the exported head: 0 (default) as "
                        "fitted, 1 = four times the triangles, smoother up close (morph "
                        "targets and UVs subdivided with it; a larger GLB)")
    p.add_argument("--checkpoints-dir", default=None, help="the paper's checkpoints/ (optional)")
    p.add_argument("--topo-dir", default=None, help="the paper's topo_assets/ (for hifi3dpp)")
    p.add_argument("--remote", default=None, metavar="ADDR",
                   help="send the work to a gateway at ADDR instead of running in process")
    p.add_argument("--retry-deadline", type=float, default=600.0, metavar="S",
                   help="--remote: keep retrying RESOURCE_EXHAUSTED / UNAVAILABLE (jittered "
                        "backoff, honouring the server's RetryInfo) for up to S seconds per "
                        "photo (default 600)")
    p.add_argument("--in-flight", type=int, default=REMOTE_IN_FLIGHT, metavar="N",
                   help="--remote: photos sent at once (default %(default)s, what keeps one "
                        "`serve all` on a GPU busy; the gateway queues what it cannot start)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per photo on stdout (input, output, files, "
                        "metrics, timings, warnings, error)")
    p.add_argument("--landmark-model", default=None, metavar="FILE",
                   help="dlib 68-point shape predictor .dat to use instead of the one in "
                        "face_recognition_models (non-commercial terms; README 'Models and "
                        "licences'); also FFHQUV_LANDMARK_MODEL")
    p.add_argument("--token", default=None, help="bearer token for --remote (visible in ps: "
                   "prefer --token-file or FFHQUV_AUTH_TOKEN)")
    p.add_argument("--token-file", default=None, help="file holding the bearer token")
    p.add_argument("--overwrite", action="store_true", help="replace existing OUT/<stem>/")
    p.add_argument("--batch-size", type=int, default=0,
                   help="photos fitted together (0 = 1 on CPU, up to 8 on CUDA)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the fit (same seed, device and preset: the same "
                        "result up to float rounding)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that share the photos, each fitting its share in batches "
                        "(0 = one per 2 cores, 2 to 8, as host and GPU memory allow; never "
                        "more than the photos)")
    p.add_argument("--worker-stems", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve one service (or all of them) over gRPC")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (0.0.0.0 in containers)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus /metrics port (default: port + 1000; -1 disables)")
    p.add_argument("--workers", type=int, default=0, help="worker threads (0 = service default)")
    p.add_argument("--device", choices=vocab.DEVICES, default=vocab.DEFAULT_DEVICE)
    p.add_argument("--detector-addr", default=None)
    p.add_argument("--fitter-addr", default=None)
    p.add_argument("--eyeball-addr", default=None)
    p.add_argument("--exporter-addr", default=None)
    p.add_argument("--storage-dir", default=None, help="gateway artifact folder")
    p.add_argument("--max-queue", type=int, default=None, help="gateway queue bound")
    p.add_argument("--max-concurrent", type=int, default=None, help="gateway fits in parallel")
    p.add_argument("--token", default=None, help="require this bearer token (gateway; visible "
                   "in ps: prefer --token-file or FFHQUV_AUTH_TOKEN[_FILE])")
    p.add_argument("--token-file", default=None, help="file holding the gateway's bearer token")
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.add_argument("--tls-ca", default=None, help="CA for client certificates (mTLS)")
    p.add_argument("--landmark-model", default=None, metavar="FILE",
                   help="detector: dlib 68-point shape predictor .dat (also "
                        "FFHQUV_LANDMARK_MODEL)")
    p.add_argument("--port-file", default=None, help=argparse.SUPPRESS)
    # serve all's gateway replicas: share the public port (SO_REUSEPORT)
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ffhquv",
        description="One face photo in, a textured 3D head out (FFHQ-UV RGB fitting).",
        epilog=EPILOG,
    )
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command")
    _add_fit(sub)
    _add_serve(sub)
    p = sub.add_parser("clear", help="empty an output folder made by 'ffhquv fit'")
    p.add_argument("output")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")
    p = sub.add_parser("deploy", help="render k8s overlays, roll out one service, roll back "
                       "(ffhquv deploy --help)", add_help=False)
    p.add_argument("deploy_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("build-model", help="build (or check) the cached default face model")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    p.add_argument("--preview", default=None, metavar="DIR",
                   help="also render the mean head and random heads to DIR")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["deploy"]:
        # deploy has its own parser (sub-actions, --help) in ffhquv_deploy.
        from ffhquv_cli.commands import run_deploy

        return run_deploy(argv[1:])
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.version:
        from ffhquv import __version__

        print(__version__)
        return 0
    if args.command is None:
        ap.print_help()
        return 0
    from ffhquv_cli import commands

    try:
        return int(getattr(commands, "cmd_" + args.command.replace("-", "_"))(args) or 0)
    except commands.UsageError as e:
        print(f"ffhquv {args.command}: {e}", file=sys.stderr)
        return commands.EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
