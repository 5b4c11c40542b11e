#!/usr/bin/env bash
# Fills the git-ignored folder .tp/ that bench/gpu_users.sh carries to the GPU machine
# (DEVELOPERS.md, "GPU machine"): the wheels that machine lacks, at the versions of this
# checkout's .venv, for its Python 3.12; dlib's 68-point model in two xz halves and its
# face-recognition model; the generated stubs; the built default head model; real photos;
# py-spy; optionally the tree of another revision for the alt* parts.
#
#   bash bench/tp_prepare.sh [ALT_REV]      # from the repository root, after ./run once
#
# Needs pip's index (downloads here, never on the GPU machine) and xz. Re-running replaces
# what it makes; the photos come from ../shared/data (skipped when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run ./run once first (it makes .venv)"; exit 1; }
mkdir -p .git/info
grep -qx "/.tp/" .git/info/exclude 2>/dev/null || echo "/.tp/" >> .git/info/exclude
TP=.tp
mkdir -p "$TP"/whl "$TP"/pyspy "$TP"/dlib "$TP"/stubs "$TP"/cache/facemodels "$TP"/photos

# the wheels, pinned to what this checkout's venv runs (stubs and runtime must match)
ver() { "$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
plat=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 \
         manylinux1_x86_64; do plat+=(--platform "$p"); done
get() {  # get DIR NAME [VERSION]
  local spec="$2"; [ -n "${3:-}" ] && spec="$2==$3"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d "$1" "$spec"
}
rm -f "$TP"/whl/*.whl
for n in dlib-bin grpcio grpcio-health-checking grpcio-reflection grpcio-status \
         googleapis-common-protos protobuf grpcio-tools trimesh pygltflib dataclasses-json \
         deprecated marshmallow; do
  get "$TP/whl" "$n" "$(ver "$n")"
done
get "$TP/whl" diffrp-nvdiffrast
[ -n "$(ls "$TP"/pyspy/*.whl 2>/dev/null)" ] || get "$TP/pyspy" py-spy

# dlib's models: the 68-point one in two halves (each call of the device tool carries 64 MiB)
M=$("$PY" -c 'import face_recognition_models, os; print(os.path.dirname(face_recognition_models.__file__))' 2>/dev/null)/models
xz -9 -T2 -c "$M/shape_predictor_68_face_landmarks.dat" > "$TP/dlib/sp68.dat.xz"
sha256sum "$M/shape_predictor_68_face_landmarks.dat" | cut -d' ' -f1 > "$TP/dlib/sp68.sha256"
rm -f "$TP"/dlib/sp68.dat.xz.part*
split -b 37000000 -d "$TP/dlib/sp68.dat.xz" "$TP/dlib/sp68.dat.xz.part" && rm "$TP/dlib/sp68.dat.xz"
xz -9 -T2 -c "$M/dlib_face_recognition_resnet_model_v1.dat" > "$TP/dlib/resnet.dat.xz"
sha256sum "$M/dlib_face_recognition_resnet_model_v1.dat" | cut -d' ' -f1 > "$TP/dlib/resnet.sha256"

# the generated stubs and the built default head model
"$PY" -m ffhquv.protogen > /dev/null 2>&1
rm -rf "$TP"/stubs/*
cp -r ffhquv/common ffhquv/detector ffhquv/fitter ffhquv/eyeball ffhquv/exporter ffhquv/gateway \
  ffhquv/_protos_stamp.txt "$TP/stubs/"
find "$TP/stubs" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -c "from services.fitter.facemodel.default import ensure_default_model as e; print(e(progress=False))" \
  2>/dev/null | tail -1 | xargs -I{} cp {} "$TP/cache/facemodels/"

# real photos (faces-dev and a few FFHQ ones), when the shared data is there
D=../shared/data
if [ -d "$D/faces-dev" ]; then
  mkdir -p "$TP/photos/faces-dev" "$TP/photos/ref"
  cp "$D"/faces-dev/fd* "$TP/photos/faces-dev/"
  for f in 000007.jpg 000055.jpg 015309.jpg 01223.png; do
    [ -f "$D/ffhq-uv-reference/$f" ] && cp "$D/ffhq-uv-reference/$f" "$TP/photos/ref/"
  done
fi

# another revision's tree for altwarm / altcli / altserve
if [ -n "${1:-}" ]; then
  rm -rf "$TP/alt" && mkdir "$TP/alt" && git archive "$1" | tar -x -C "$TP/alt"
fi
du -sh "$TP"/* | sort -h
