#!/usr/bin/env bash
# Fresh-venv install + first fit, as a new user would do it (a bench, not a CI test: it
# installs torch and every dependency from the package index, minutes and ~1 GB):
#
#   bash bench/fresh_install.sh [PHOTO]      # default: ../shared/data/ffhq-uv-reference/000007.jpg
#
# 1. a clean checkout: the tracked files of HEAD (`git archive`, no generated stubs, no .venv);
# 2. a new venv; torch first (FFHQUV_TORCH_SPEC, default the CPU build ./run uses), then
#    `pip install <checkout>` (the build hook generates the gRPC stubs into the wheel);
# 3. from another folder (so the checkout is not on sys.path): `ffhquv fit PHOTO -o OUT --json`
#    with an empty cache (the head model is built on first use), and the output is checked.
# Prints one line: install seconds, fit seconds, the photo's metrics. Cleans up after itself.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PHOTO="$(realpath "${1:-$ROOT/../shared/data/ffhq-uv-reference/000007.jpg}")"
PY="${PYTHON:-python3.11}"
TORCH_SPEC="${FFHQUV_TORCH_SPEC:-torch==2.13.0}"
WORK="$(mktemp -d -t ffhquv-fresh-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

mkdir "$WORK/src"
git -C "$ROOT" archive HEAD | tar -x -C "$WORK/src"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade "pip>=24"
t0=$(date +%s)
"$WORK/venv/bin/python" -m pip install -q "$TORCH_SPEC"
"$WORK/venv/bin/python" -m pip install -q "$WORK/src"
t1=$(date +%s)

cd "$WORK"
FFHQUV_CACHE_DIR="$WORK/cache" "$WORK/venv/bin/ffhquv" fit "$PHOTO" -o "$WORK/out" \
  --preset fast --device cpu --json > "$WORK/fit.jsonl" 2> "$WORK/fit.err" \
  || { tail -20 "$WORK/fit.err"; exit 1; }
t2=$(date +%s)
"$WORK/venv/bin/python" - "$WORK/fit.jsonl" "$WORK/out" <<'PY'
import json, pathlib, sys
(rec,) = [json.loads(line) for line in open(sys.argv[1])]
assert rec["status"] == "ok", rec
head = pathlib.Path(rec["output"])
for name in ("stage3_mesh_id.obj", "stage3_uv.png", "L_ball.obj", "R_ball.obj", "report.json"):
    assert (head / name).is_file(), name
print(f"metrics: landmark error {rec['metrics']['landmark_error_iod']:.3f} IOD, "
      f"total {rec['timings']['total_s']:.1f} s")
PY
echo "fresh install: $((t1 - t0)) s (torch + ffhquv), first fit incl. head model build: $((t2 - t1)) s" \
  "($(date -u +%F), $(uname -m), $("$WORK/venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
