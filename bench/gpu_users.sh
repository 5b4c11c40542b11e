#!/usr/bin/env bash
# The users' benchmarks (bench/users.py, bench/png.py) on a CUDA machine without internet, in
# three back-to-back calls of the device tool (DEVELOPERS.md, "GPU machine"). Run from a
# carried folder that holds:
#   src/        a copy of the checkout with its generated gRPC stubs
#   whl/        wheels missing there (dlib-bin, grpcio(+health-checking, reflection), protobuf,
#               trimesh, pygltflib + dataclasses-json, deprecated, marshmallow,
#               diffrp-nvdiffrast), call 1 only
#   dlib/       sp68.dat.xz.part00 (call 1) or part01 + sp68.sha256 (call 2)
#   cache/      facemodels/default-v1.npz (the built head), call 2 and 3
#   photos/     real photos, call 2 and 3;  tex.png a real 1024 texture, call 1
#
#   bash src/bench/gpu_users.sh prep|users|serve OUT_DIR
set -uo pipefail
part="${1:?usage: gpu_users.sh prep|users|serve OUT_DIR}"
out="${2:-${OUT:-/tmp/gpu_out}}"
P=/root/persist   # survives between calls while the machine stays warm
mkdir -p "$out" "$P"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TORCH_CUDA_ARCH_LIST=9.0
export TORCH_EXTENSIONS_DIR=$P/torch_ext FFHQUV_CACHE_DIR="$PWD/cache"
export PYTHONPATH="$PWD/src:$P/site:$P/frm"
step() { local name="$1" lim="$2"; shift 2; echo "=== $name: $*"; local t0=$SECONDS
  timeout "$lim" "$@" 2>&1 | tee "$out/$name.log"; echo "=== $name rc=${PIPESTATUS[0]} $((SECONDS - t0)) s"; }
case "$part" in
  prep)
    cp dlib/sp68.dat.xz.part00 "$P/" || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$P/site" whl/*.whl || exit 1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    nproc | tee -a "$out/gpu.txt"
    # build nvdiffrast's CUDA plugin once (cached under TORCH_EXTENSIONS_DIR)
    # (through the project's loader: it puts the build folder on sys.path, which a bare
    # RasterizeCudaContext() of diffrp-nvdiffrast 0.3.3 needs and lacks)
    step nvdiffrast 400 python3 -c 'from services.fitter.renderer import get_backend; print(get_backend("cuda", prefer="nvdiffrast"))'
    step png 120 python3 src/bench/png.py --image tex.png --json "$out/png.json"
    ;;
  users|serve)
    if [ ! -f "$P/frm/face_recognition_models/models/shape_predictor_68_face_landmarks.dat" ]; then
      mkdir -p "$P/frm/face_recognition_models/models"
      cat "$P/sp68.dat.xz.part00" dlib/sp68.dat.xz.part01 | xz -dc \
        > "$P/frm/face_recognition_models/models/shape_predictor_68_face_landmarks.dat" || exit 1
      echo "$(cat dlib/sp68.sha256)  $P/frm/face_recognition_models/models/shape_predictor_68_face_landmarks.dat" \
        | sha256sum -c - || exit 1
      echo '"""dlib model files (carried to this machine)."""' > "$P/frm/face_recognition_models/__init__.py"
    fi
    cd src || exit 1
    if [ "$part" = users ]; then
      step warm 150 python3 bench/users.py warm --photos ../photos --device cuda --count 6 \
        --json "$out/warm.json"
      step cli1 170 python3 bench/users.py cli --photos ../photos --device cuda --cold-runs 2 \
        --batch-sizes 1 --count 8 --json "$out/cli1.json"
      step cli8 250 python3 bench/users.py cli --photos ../photos --device cuda --cold-runs 0 \
        --batch-sizes 8,16 --count 64 --json "$out/cli8.json"
    else
      step serve 560 python3 bench/users.py serve --photos ../photos --device cuda \
        --clients 1,32 --seconds-single 40 --seconds "${SERVE_SECONDS:-120}" \
        --json "$out/serve.json"
    fi
    ;;
  *) echo "unknown part $part"; exit 2 ;;
esac
