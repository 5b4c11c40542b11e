#!/usr/bin/env bash
# GPU tests and benchmarks in one go, on a CUDA machine without internet or dlib models
# (how the GPU rows of BENCHMARKS.md are taken). Prepare on a CPU checkout first:
#
#   .devcarry/cache/facemodels/default-v1.npz   the built default head (.cache/facemodels/)
#   .devcarry/faces/*.npz                        aligned faces: bench/speed.py --save-faces DIR
#   .devcarry/stubs/                             the generated gRPC stubs (ffhquv/{common,...}
#                                                and ffhquv/_protos_stamp.txt)
#   .whl/                                        wheels missing there (diffrp-nvdiffrast, grpcio,
#                                                grpcio-health-checking, grpcio-reflection,
#                                                protobuf, trimesh, pygltflib and its deps)
#
# then run from the repository root:  bash bench/gpu_session.sh PART [OUT_DIR]
#   PART = tests   GPU tests (pytest -m gpu) + the texture tests, renderer step bench
#          fit     fitter bench (presets x batch 1 / 8), whole pipeline on the saved faces
#          parity  renderer parity table
set -uo pipefail
part="${1:?usage: gpu_session.sh tests|fit|parity [OUT_DIR]}"
out="${2:-${OUT:-/tmp/gpu_out}}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
[ -d .devcarry/stubs ] && cp -r .devcarry/stubs/. ffhquv/
export FFHQUV_CACHE_DIR="$PWD/.devcarry/cache" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' | tee -a "$out/gpu.txt"
step() { local name="$1" lim="$2"; shift 2; echo "=== $name: $*"; local t0=$SECONDS
  timeout "$lim" "$@" 2>&1 | tee "$out/$name.log"; echo "=== $name rc=${PIPESTATUS[0]} $((SECONDS - t0)) s"; }
case "$part" in
  tests)
    step pytest 330 python3 -m pytest -p no:cacheprovider -q -s -m gpu tests/test_renderer_gpu.py \
      tests/test_graphs_gpu.py tests/test_paper_mode_gpu.py
    step pytest_tex 60 python3 -m pytest -p no:cacheprovider -q tests/test_texture_seams.py
    step render 180 python3 bench/render.py --backends nvdiffrast --repeat 5 --json "$out/render_nv.json"
    ;;
  fit)
    step fit 300 python3 bench/fit.py --device cuda --presets standard,fast,best --batch 1,8 \
      --repeat 2 --photo .devcarry/faces/astronaut.npz --json "$out/fit.json"
    step speed 240 python3 bench/speed.py --device cuda --faces .devcarry/faces --presets standard \
      --batch 1,5 --face-model-file .devcarry/cache/facemodels/default-v1.npz --json "$out/speed.json"
    ;;
  parity)
    step parity 300 python3 bench/render_parity.py --json "$out/parity.json"
    ;;
  *) echo "unknown part $part"; exit 2 ;;
esac
