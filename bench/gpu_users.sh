#!/usr/bin/env bash
# The users' benchmarks (bench/users.py, bench/png.py, bench/quality.py, bench/recovery.py) on a
# CUDA machine without internet, in back-to-back calls of the device tool (DEVELOPERS.md, "GPU
# machine"). Run from the repository root (the tool sends the checkout); the carried items sit
# in the git-ignored folder .tp/ (TP=DIR to use another; bench/tp_prepare.sh makes them all),
# any of them in any call:
#   whl/        wheels missing there (dlib-bin, grpcio, grpcio-health-checking, grpcio-reflection,
#               grpcio-status, googleapis-common-protos, protobuf, grpcio-tools, trimesh,
#               pygltflib + dataclasses-json, deprecated, marshmallow, diffrp-nvdiffrast)
#   pyspy/      the py-spy wheel, for CLI_SPY (a folder of its own: whl/ with it no longer fits
#               call 1)
#   dlib/       sp68.dat.xz.part00 and part01 (dlib's 68-point model, xz, in two halves carried
#               by two calls) + sp68.sha256; resnet.dat.xz + resnet.sha256 (dlib's
#               face-recognition model, bench/quality.py's identity distances)
#   stubs/      the generated gRPC stubs (ffhquv/{common,...}/ and _protos_stamp.txt)
#   cache/      facemodels/default-v1.npz (the built head)
#   photos/     faces-dev/ and ref/ (real photos);  tex.png  a real 1024 texture
#   faces/      AlignedFace .npz files (AlignedFace.save_npz) for split without dlib
# Every call first copies what it carried to /root/persist/tp (kept while the machine stays
# warm), installs carried wheels into /root/persist/site and unpacks dlib's models once both
# halves are there, so later calls carry only what they add. A cold machine: start again.
# (The older layout, a carried folder with src/ = the checkout, still works from that folder.)
#
#   bash bench/gpu_users.sh PART[,PART...] [OUT_DIR]
#   PART = prep      wheels, GPU facts, imports, nvdiffrast's plugin build, bench/png.py
#          quality   bench/quality.py on photos/faces-dev + photos/ref (sheets as sheets.tar*;
#                    QUALITY_PHOTOS faces-dev globs, QUALITY_SETS ";"-separated --set lists)
#          users     bench/users.py warm, cli (1 photo cold, folder of 8, folders of 64)
#          cli       bench/users.py cli alone (CLI_COLD, CLI_BATCHES: "" none, CLI_COUNT,
#                    CLI_WORKERS: --workers values, e.g. "1,4", default the CLI's own;
#                    CLI_SPY=1 records the cold runs with py-spy)
#          bytecode  compileall of site-packages, the carried wheels and the checkout into
#                    $P/pycache (with BYTECODE=1 on this and later calls: the cold rows as on a
#                    machine where pip compiled at install)
#          warm      bench/users.py warm alone (users' first step, for a short session)
#          altcli    the cli part from the tree in alt/ (as altwarm)
#          altserve  the serve part (one run) from the tree in alt/
#          serve     bench/users.py serve (SERVE_SECONDS per many-clients row, default 120;
#                    SERVE_FITTERS="1 2 4" one run per FFHQUV_FITTER_REPLICAS, SERVE_GATEWAYS
#                    the same per FFHQUV_GATEWAY_REPLICAS, SERVE_ONE_CONNECTION=1 the clients
#                    on one shared connection, SERVE_CLIENTS,
#                    SERVE_MAX_CONCURRENT the gateway's limit; SERVE_SPY=1 py-spy of every
#                    process during the many-clients rows, SERVE_SPY=gil only the threads
#                    holding a GIL, carry pyspy/; serve all under its own CUDA MPS daemon
#                    unless FFHQUV_CUDA_MPS=off; serve all's own log comes back as
#                    serve_all.log; SERVE_LIMIT the step's limit, default SERVE_SECONDS + 240;
#                    SERVE_REMOTE_FOLDER=64 then `ffhquv fit --remote` of a folder of 64, timed)
#          mpskill   serve all's MPS daemon after a SIGTERM and a SIGKILL of serve all
#          profile   bench/fit.py --cprofile: the fitter's host CPU seconds by function
#          devtests  pytest of the device-path tests (DEVTESTS overrides the selection)
#          profilebatch  bench/fit.py --profile of PROFILE_BATCH (4) copies of fd05
#          spyfit    py-spy --gil of bench/fit.py in batches of SPY_BATCH (carry pyspy/)
#          split     bench/split.py: one photo's time by function (SPLIT_PHOTOS tags;
#                    SPLIT_ARGS more arguments, e.g. "--late-images")
#          fitab     bench/fit.py from this checkout and from .tp/alt (FIT_BATCHES; FIT_SETS
#                    ";"-separated --set lists, one run each; FIT_ALT=0 skips alt)
#          compileab bench/fit.py with FFHQUV_COMPILE=0, then =1 twice (compiling, then cached)
#          compilefill  bench/fit.py with FFHQUV_COMPILE=1 once (FIT_BATCHES, default 1,2,4):
#                    fills torch's compile caches for a following FFHQUV_COMPILE=1 serve
#          gemm      bench/basis_gemm.py: the basis product's formulations
#          cudawait  bench/cudawait.py: CPU burnt by a waiting thread, spin / auto / block
#          spyfolder py-spy of `ffhquv fit` on a folder (SPY_COUNT, SPY_ARGS; carry pyspy/)
#          profilefirst  bench/fit.py --cprofile-first: a new process's first fit by function
#          recovery  bench/recovery.py (kill -9 of each child under load), --device cuda when
#                    the script has that flag
set -uo pipefail
parts="${1:?usage: gpu_users.sh prep|quality|users|cli|bytecode|warm|altwarm|serve|profile|profilefirst|recovery[,...] [OUT_DIR]}"
out="${2:-${OUT:-/tmp/gpu_out}}"
P="${GPU_PERSIST:-/root/persist}"   # survives between calls while the machine stays warm
if [ -f bench/gpu_users.sh ]; then ROOT=$PWD; TP="${TP:-$PWD/.tp}"
else ROOT=$PWD/src; TP="${TP:-$PWD}"; fi
S=$P/tp           # the carried items, gathered over the calls
M=$P/frm/face_recognition_models/models
mkdir -p "$out" "$S" "$M"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export TORCH_EXTENSIONS_DIR=$P/torch_ext FFHQUV_CACHE_DIR=$S/cache
export PYTHONPATH="$ROOT:$P/site:$P/frm" PATH="$P/site/bin:$PATH"
# BYTECODE=1: Python keeps its bytecode under $P/pycache, as pip's install-time compile gives a
# user's machine (the lent machine's torch folder has none: each new process compiled torch's
# modules again, ~4 s); the part "bytecode" compiles it once
[ "${BYTECODE:-0}" = 1 ] && export PYTHONPYCACHEPREFIX=$P/pycache
step() { local name="$1" lim="$2"; shift 2; echo "=== $name: $*"; local t0=$SECONDS
  timeout "$lim" "$@" 2>&1 | tee "$out/$name.log"; echo "=== $name rc=${PIPESTATUS[0]} $((SECONDS - t0)) s"; }

# gather what this call carried
for x in dlib stubs cache photos faces tex.png alt; do
  if [ -e "$TP/$x" ]; then cp -r "$TP/$x" "$S/" || exit 1; fi
done
if [ -d "$TP/whl" ] && [ "$(ls "$TP/whl")" != "$(cat "$P/site/.wheels" 2>/dev/null)" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$P/site" "$TP"/whl/*.whl || exit 1
  ls "$TP/whl" > "$P/site/.wheels"
fi
if [ -d "$TP/pyspy" ] && ! command -v py-spy > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade \
    --target "$P/site" "$TP"/pyspy/*.whl || exit 1
fi
[ -d "$S/stubs" ] && cp -r "$S/stubs/." "$ROOT/ffhquv/"
# dlib's models, once their parts are there (checked against the sha256 made here)
unpack() {  # unpack NAME SHAFILE XZFILES...
  local dst="$M/$1" sha="$2"; shift 2
  [ -f "$dst" ] && return 0
  for f in "$@"; do [ -f "$f" ] || return 0; done
  cat "$@" | xz -dc > "$dst.tmp" || { rm -f "$dst.tmp"; return 1; }
  echo "$(cat "$sha")  $dst.tmp" | sha256sum -c --quiet - || { rm -f "$dst.tmp"; return 1; }
  mv "$dst.tmp" "$dst" && rm -f "$@" && echo "unpacked $dst"
}
unpack shape_predictor_68_face_landmarks.dat "$S/dlib/sp68.sha256" \
  "$S/dlib/sp68.dat.xz.part00" "$S/dlib/sp68.dat.xz.part01" || exit 1
unpack dlib_face_recognition_resnet_model_v1.dat "$S/dlib/resnet.sha256" \
  "$S/dlib/resnet.dat.xz" || exit 1
init=$P/frm/face_recognition_models/__init__.py
[ -f "$init" ] || echo '"""dlib model files (carried to this machine)."""' > "$init"
need() {  # need FILE...: stop this part when a carried file is missing
  for f in "$@"; do
    [ -e "$f" ] || { echo "missing: $f (carry it, see the header)"; return 1; }
  done
}
sp68=$M/shape_predictor_68_face_landmarks.dat
# the photo of the fitter-core parts (profile, profilebatch, spyfit, fitab, profilefirst)
fd05="$(ls "$S"/photos/faces-dev/fd05* 2>/dev/null | head -1)"
# (a saved AlignedFace when faces/ came instead: no dlib model needed for those parts)
[ -z "$fd05" ] && [ -f "$S/faces/fd05.npz" ] && fd05="$S/faces/fd05.npz"
cd "$ROOT" || exit 1

rc=0
for part in ${parts//,/ }; do
  case "$part" in
    prep)
      need "$P/site" || { rc=1; continue; }
      { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
        python3 - <<'EOF'
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda")
for m in ("dlib", "grpc", "grpc_health.v1.health", "grpc_reflection.v1alpha.reflection",
          "grpc_status.rpc_status", "google.rpc.status_pb2", "google.protobuf", "grpc_tools",
          "pygltflib", "trimesh", "nvdiffrast.torch", "cv2", "skimage", "scipy", "PIL",
          "prometheus_client", "pynvml", "tqdm", "ffhquv.pb", "ffhquv_cli.commands",
          "gateway.server", "services.fitter.pipeline", "services.detector.core", "services.exporter.glb"):
    try:
        mod = importlib.import_module(m)
        print(f"  ok   {m} {getattr(mod, '__version__', '')} {getattr(mod, '__file__', '')}")
    except Exception as e:  # noqa: BLE001
        print(f"  FAIL {m}: {type(e).__name__}: {e}")
EOF
      } 2>&1 | tee "$out/gpu.txt"
      # nvdiffrast's CUDA plugin, built once (cached under TORCH_EXTENSIONS_DIR), through the
      # project's loader: it puts the build folder on sys.path, which a bare
      # RasterizeCudaContext() of diffrp-nvdiffrast 0.3.3 needs and lacks
      step nvdiffrast 400 python3 -c 'from ffhquv.render.raster import get_backend; print(get_backend("cuda", prefer="nvdiffrast"))'
      if need "$S/tex.png"; then
        step png 120 python3 bench/png.py --image "$S/tex.png" --json "$out/png.json"
      fi
      ;;
    quality)
      need "$sp68" "$M/dlib_face_recognition_resnet_model_v1.dat" "$S/cache" \
        "$S/photos/faces-dev" "$S/photos/ref" || { rc=1; continue; }
      rm -rf /tmp/sheets
      # QUALITY_PHOTOS: globs of faces-dev names (space-separated) instead of all of them and ref/;
      # QUALITY_SETS: ";"-separated bench/quality.py --set lists, one run each (q0.json, ...)
      qin=(); for g in ${QUALITY_PHOTOS:-}; do qin+=("$S"/photos/faces-dev/$g); done
      [ ${#qin[@]} -eq 0 ] && qin=("$S/photos/faces-dev" "$S/photos/ref")
      qi=0
      IFS=';' read -r -a qsets <<< "${QUALITY_SETS:-}"
      [ ${#qsets[@]} -eq 0 ] && qsets=("")
      for qs in "${qsets[@]}"; do
        qargs=(); for kv in $qs; do qargs+=(--set "$kv"); done
        sheets=(--sheets /tmp/sheets); [ $qi -gt 0 ] && sheets=()
        step "quality$qi" "${QUALITY_LIMIT:-540}" python3 bench/quality.py "${qin[@]}" \
          --device cuda --preset standard --threads 8 "${sheets[@]}" "${qargs[@]}" \
          --json "$out/q$qi.json"
        qi=$((qi + 1))
      done
      # one file back per 15 MiB (the tool returns at most 8 files): cat sheets.tar.* | tar x
      if [ -d /tmp/sheets ]; then
        tar -C /tmp -cf - sheets | split -b 15m -d - "$out/sheets.tar."
        ls -la "$out"/sheets.tar.*
      fi
      ;;
    users)
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      step warm 150 python3 bench/users.py warm --photos "$S/photos/faces-dev" --device cuda \
        --count 6 --json "$out/warm.json"
      step cli1 170 python3 bench/users.py cli --photos "$S/photos/faces-dev" --device cuda \
        --cold-runs 2 --batch-sizes 1 --count 8 --json "$out/cli1.json"
      # where a cold process's time goes: interpreter + torch, CUDA context, project imports;
      # then one cold photo without CUDA-graph capture (is capture worth it for one photo?)
      step coldparts 60 python3 -c 'import time; t = time.perf_counter(); import torch
a = time.perf_counter(); torch.zeros(1, device="cuda"); torch.cuda.synchronize(); b = time.perf_counter()
import ffhquv_cli.commands, gateway.orchestrator, services.fitter.core, services.detector.core, services.eyeball.core, services.exporter.core
c = time.perf_counter(); print(f"import torch {a - t:.2f} s, CUDA context {b - a:.2f} s, project imports {c - b:.2f} s")'
      step cli1_nographs 120 env FFHQUV_CUDA_GRAPHS=0 python3 bench/users.py cli \
        --photos "$S/photos/faces-dev" --device cuda --cold-runs 2 --batch-sizes "" \
        --json "$out/cli1_nographs.json"
      step cli8 250 python3 bench/users.py cli --photos "$S/photos/faces-dev" --device cuda \
        --cold-runs 0 --batch-sizes 8,16 --count 64 --json "$out/cli8.json"
      ;;
    cli)
      # ffhquv fit as users run it: one photo cold (CLI_COLD runs), a folder of CLI_COUNT
      # photos with each of CLI_BATCHES
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      # CLI_SPY=1: each cold run recorded by py-spy (carry its wheel in pyspy/), summaries in spy/
      step cli "${CLI_LIMIT:-400}" python3 bench/users.py cli --photos "$S/photos/faces-dev" \
        --device cuda --cold-runs "${CLI_COLD:-2}" --batch-sizes "${CLI_BATCHES-8}" \
        --count "${CLI_COUNT:-64}" --workers "${CLI_WORKERS:-0}" --json "$out/cli.json" \
        ${CLI_SPY:+--spy "$out/spy"}
      ;;
    bytecode)
      # what pip's install-time compile gives a user: bytecode for every module (BYTECODE=1)
      [ -n "$PYTHONPYCACHEPREFIX" ] || { echo "bytecode: set BYTECODE=1"; rc=1; continue; }
      step bytecode 300 python3 -m compileall -q -j 0 \
        "$(python3 -c 'import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))')" \
        "$P/site" "$ROOT" | tail -5
      ;;
    warm)
      # the warm rows alone (users' first step), for a short session
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      step warm 150 python3 bench/users.py warm --photos "$S/photos/faces-dev" --device cuda \
        --count 6 --json "$out/warm.json"
      ;;
    altwarm)
      # the warm rows again from another tree of the code (.tp/alt: e.g. a branch under test,
      # `git -C WORKTREE archive HEAD | tar -x -C .tp/alt`), to compare it with this checkout
      need "$sp68" "$S/cache" "$S/photos/faces-dev" "$S/alt" || { rc=1; continue; }
      cp -r "$S/stubs/." "$S/alt/ffhquv/"
      step altwarm 150 env PYTHONPATH="$S/alt:$P/site:$P/frm" python3 "$S/alt/bench/users.py" \
        warm --photos "$S/photos/faces-dev" --device cuda --count 6 --json "$out/altwarm.json"
      ;;
    altcli)
      # the cli rows (CLI_COLD, CLI_BATCHES, CLI_COUNT) from the tree in .tp/alt, to compare
      need "$sp68" "$S/cache" "$S/photos/faces-dev" "$S/alt" || { rc=1; continue; }
      cp -r "$S/stubs/." "$S/alt/ffhquv/"
      step altcli "${CLI_LIMIT:-400}" env PYTHONPATH="$S/alt:$P/site:$P/frm" \
        python3 "$S/alt/bench/users.py" cli --photos "$S/photos/faces-dev" --device cuda \
        --cold-runs "${CLI_COLD:-2}" --batch-sizes "${CLI_BATCHES-8}" \
        --count "${CLI_COUNT:-64}" --json "$out/altcli.json"
      ;;
    serve)
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      # SERVE_FITTERS="1 4": one run per fitter replica count (default: serve all's own);
      # SERVE_GATEWAYS="1 2": one run per gateway process count (FFHQUV_GATEWAY_REPLICAS);
      # SERVE_ONE_CONNECTION=1: the clients share one connection (the rows before session 18)
      # SERVE_REMOTE_FOLDER=64: then `ffhquv fit --remote` of a folder of 64 against the same
      # serve all (SERVE_IN_FLIGHT its --in-flight values, e.g. 16,32,64: a run each);
      # SERVE_CLIENTS=0: no client rows
      for r in ${SERVE_FITTERS:-default}; do
      for gw in ${SERVE_GATEWAYS:-default}; do
        fr=(env); sfx=""
        [ "$r" != default ] && { fr+=("FFHQUV_FITTER_REPLICAS=$r"); sfx="-f$r"; }
        [ "$gw" != default ] && { fr+=("FFHQUV_GATEWAY_REPLICAS=$gw"); sfx="$sfx-g$gw"; }
        step "serve$sfx" "${SERVE_LIMIT:-$((${SERVE_SECONDS:-120} + 240))}" "${fr[@]}" \
          python3 bench/users.py serve --photos "$S/photos/faces-dev" --device cuda \
          --clients "${SERVE_CLIENTS:-1,32}" --seconds-single 40 \
          ${SERVE_ONE_CONNECTION:+--one-connection} \
          --max-concurrent "${SERVE_MAX_CONCURRENT:-0}" ${SERVE_SPY:+--spy /tmp/spy$sfx} \
          $([ "${SERVE_SPY:-}" = gil ] && echo --spy-gil) \
          --seconds "${SERVE_SECONDS:-120}" --json "$out/serve$sfx.json" \
          --remote-folder "${SERVE_REMOTE_FOLDER:-0}" --in-flight "${SERVE_IN_FLIGHT:-0}" \
          --serve-log "$out/serve${sfx}_all.log"
        # SERVE_SPY=1 (carry pyspy/): every process's CPU by function; the summary comes back
        for f in /tmp/spy$sfx/*_summary.txt; do
          [ -f "$f" ] && cp "$f" "$out/spy${sfx}_$(basename "$f")"
        done
        # ... and the raw stacks, for splits the summary does not make
        for f in /tmp/spy$sfx/serve*.txt; do
          case "$f" in *_summary.txt) ;; *) [ -f "$f" ] && gzip -c "$f" > "$out/spy${sfx}_$(basename "$f").gz" ;; esac
        done
      done
      done
      ;;
    compilefill)
      # FFHQUV_COMPILE=1's programs of the step functions (a batch of one, every larger batch)
      # compiled once into torch's on-disk caches (Inductor's and Triton's, outside the
      # checkout: kept while the machine stays warm), so that a later
      # `FFHQUV_COMPILE=1 ... serve` has its fitters load them while they warm up instead of
      # six processes compiling at once (bench/fit.py's table: the compiled fits' stages)
      need "$S/cache" "$fd05" || { rc=1; continue; }
      step compilefill "${COMPILE_LIMIT:-420}" env FFHQUV_COMPILE=1 python3 bench/fit.py \
        --presets standard --device cuda --threads 4 --batch "${FIT_BATCHES:-1,2,4}" \
        --repeat 2 --photo "$fd05" --json "$out/compilefill.json"
      ;;
    altserve)
      # the serve rows (SERVE_SECONDS, SERVE_CLIENTS, one run) from the tree in .tp/alt
      need "$sp68" "$S/cache" "$S/photos/faces-dev" "$S/alt" || { rc=1; continue; }
      cp -r "$S/stubs/." "$S/alt/ffhquv/"
      step altserve "${SERVE_LIMIT:-$((${SERVE_SECONDS:-120} + 240))}" \
        env PYTHONPATH="$S/alt:$P/site:$P/frm" python3 "$S/alt/bench/users.py" serve \
        --photos "$S/photos/faces-dev" --device cuda --clients "${SERVE_CLIENTS:-1,32}" \
        --seconds-single 40 --max-concurrent "${SERVE_MAX_CONCURRENT:-0}" \
        --seconds "${SERVE_SECONDS:-120}" --json "$out/altserve.json"
      ;;
    mpskill)
      # serve all's own CUDA MPS daemon (FFHQUV_CUDA_MPS=auto) ends with serve all: stopped
      # (SIGTERM) and killed (SIGKILL), the MPS processes left after each are listed
      for sig in TERM KILL; do
        rm -f /tmp/mpskill.log
        python3 -m ffhquv_cli serve all --device cuda --port 50990 > /tmp/mpskill.log 2>&1 &
        spid=$!
        for _ in $(seq 180); do grep -q "ffhquv exporter on" /tmp/mpskill.log && break; sleep 1; done
        sleep 3
        echo "=== mpskill $sig: serve all $spid up; MPS processes:"; grep -i mps /tmp/mpskill.log
        pgrep -a nvidia-cuda-mps
        kill -$sig $spid; wait $spid; echo "serve all exit $?"
        for _ in $(seq 30); do pgrep nvidia-cuda-mps > /dev/null || break; sleep 1; done
        echo "=== mpskill $sig: MPS processes left:"; pgrep -a nvidia-cuda-mps || echo none
        echo "ffhquv processes left:"; pgrep -af "ffhquv_cli serve" || echo none
        ls -d /tmp/ffhquv-mps-* 2>/dev/null; cp /tmp/mpskill.log "$out/mpskill_$sig.log"
        pkill -9 -f "ffhquv_cli serve" 2>/dev/null; sleep 1
      done
      ;;
    split)
      # one photo's time by function (bench/split.py: detect, fit, eyeballs, export in one
      # process, batch 1), for each faces-dev photo matching SPLIT_PHOTOS ("fd05 fd13 fd17");
      # with faces/ carried (AlignedFace .npz, AlignedFace.save_npz), those, detection
      # skipped: no dlib model needed, one call
      if [ -d "$S/faces" ]; then
        for ph in "$S"/faces/*.npz; do
          step "split_$(basename "$ph" .npz)" 200 python3 bench/split.py --photo "$ph" \
            --device cuda --repeat 4 ${SPLIT_ARGS:-} --json "$out/split_$(basename "$ph" .npz).json"
        done
        continue
      fi
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      for tag in ${SPLIT_PHOTOS:-fd05 fd13 fd17}; do
        ph="$(ls "$S"/photos/faces-dev/"$tag"* 2>/dev/null | head -1)"
        [ -n "$ph" ] || continue
        step "split_$tag" 200 python3 bench/split.py --photo "$ph" --device cuda --repeat 4 ${SPLIT_ARGS:-} \
          --json "$out/split_$tag.json"
      done
      ;;
    profile)
      # where a fitter process's host CPU goes (bench/fit.py --cprofile; 4 threads as one of
      # serve all's four fitters on 16 cores), and the fitter core's batch sizes
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      step profile 240 python3 bench/fit.py --presets standard --device cuda --threads 4 \
        --batch 1,8 --repeat 3 --photo "$fd05" \
        --cprofile "$out/cprofile.txt" --json "$out/fit.json"
      ;;
    devtests)
      # the tests whose device path only a CUDA machine runs (DEVTESTS: other pytest args;
      # the compiled batch test compiles for minutes: DEVTESTS_LIMIT, default 560 s)
      need "$sp68" "$S/cache" || { rc=1; continue; }
      step devtests "${DEVTESTS_LIMIT:-560}" python3 -m pytest -q -p no:cacheprovider ${DEVTESTS:-tests/test_texture_seams.py \
        tests/test_texture_imageops.py tests/test_fitter_photos.py tests/test_texture_head.py \
        tests/test_serve_all_stop.py -k "gpu or device or cuda or batch"}
      ;;
    profilebatch)
      # torch.profiler of one fit of PROFILE_BATCH copies of fd05: device time by kernel and
      # the operators by input shape
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      step profilebatch 240 python3 bench/fit.py --presets standard --device cuda --threads 4 \
        --batch 1 --photo "$fd05" \
        --profile "$out/prof_b${PROFILE_BATCH:-4}.txt" --profile-batch "${PROFILE_BATCH:-4}" ${PROFILE_ARGS:-}
      ;;
    spyfit)
      # where the fitter core holds the GIL in batches of SPY_BATCH (4) photos: py-spy --gil
      # samples only the thread holding it (a fitter process of `serve all` runs its Python
      # on one core at a time: the GIL-held seconds a photo bound its photos/s)
      need "$S/cache" "$fd05" || { rc=1; continue; }
      command -v py-spy > /dev/null || { echo "spyfit: carry pyspy/"; rc=1; continue; }
      # (SPY_FLAGS="--idle": every thread's wall clock instead, waits included: a batch-1
      # fit's critical path)
      step spyfit 300 py-spy record ${SPY_FLAGS:---gil} --threads -r 100 -f raw \
        -o /tmp/spyfit.txt -- python3 bench/fit.py --presets standard --device cuda \
        --threads 4 --batch "${SPY_BATCH:-4}" --repeat 4 --photo "$fd05"
      python3 bench/stacks.py /tmp/spyfit.txt --rate 100 --top 80 > "$out/spyfit_summary.txt"
      gzip -c /tmp/spyfit.txt > "$out/spyfit.txt.gz"
      ;;
    fitab)
      # the fitter core alone (bench/fit.py, fd05, FIT_BATCHES "1,4", 3 repeats) from this
      # checkout, then from the tree in .tp/alt, in the same lease
      need "$S/cache" "$fd05" || { rc=1; continue; }
      # FIT_SETS: ";"-separated bench/fit.py --set lists, one run of this checkout each
      IFS=';' read -r -a fsets <<< "${FIT_SETS:-}"
      [ ${#fsets[@]} -eq 0 ] && fsets=("")
      fi_=0
      for fs in "${fsets[@]}"; do
        fargs=(); for kv in $fs; do fargs+=(--set "$kv"); done
        step "fit$fi_" 200 python3 bench/fit.py --presets standard --device cuda --threads 4 \
          --batch "${FIT_BATCHES:-1,4}" --repeat 3 --photo "$fd05" "${fargs[@]}" \
          --json "$out/fit$fi_.json"
        fi_=$((fi_ + 1))
      done
      [ "${FIT_ALT:-1}" = 1 ] || continue
      need "$S/alt" || { rc=1; continue; }
      cp -r "$S/stubs/." "$S/alt/ffhquv/"
      step altfit 200 env PYTHONPATH="$S/alt:$P/site:$P/frm" python3 "$S/alt/bench/fit.py" \
        --presets standard --device cuda --threads 4 --batch "${FIT_BATCHES:-1,4}" --repeat 3 \
        --photo "$fd05" --json "$out/altfit.json"
      ;;
    compileab)
      # the fitter core (bench/fit.py, fd05, FIT_BATCHES "1,4", 3 repeats) with
      # FFHQUV_COMPILE=0, then =1 in two new processes: the first compiles, the second finds
      # torch's on-disk cache (a user's second run); dynamo's graph breaks are logged
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      for mode in off on1 on2; do
        c=1; [ "$mode" = off ] && c=0
        step "fit_$mode" 400 env FFHQUV_COMPILE=$c TORCH_LOGS="${COMPILE_LOGS-graph_breaks}" \
          python3 bench/fit.py --presets standard --device cuda --threads 4 \
          --batch "${FIT_BATCHES:-1,4}" --repeat 3 --photo "$fd05" --json "$out/fit_$mode.json"
      done
      ;;
    gemm)
      # the face model's basis product, forward + backward, per formulation and batch size
      step gemm 120 python3 bench/basis_gemm.py --device cuda
      ;;
    cudawait)
      # host CPU burnt while a thread waits for the GPU, per FFHQUV_CUDA_WAIT mode
      step cudawait 120 python3 bench/cudawait.py --json "$out/cudawait.json"
      ;;
    spyfolder)
      # where the host CPU of `ffhquv fit` on a folder of SPY_COUNT photos goes, every worker
      # process sampled by py-spy (active samples only: CPU seconds), summed by function
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      command -v py-spy > /dev/null || { echo "spyfolder: carry pyspy/"; rc=1; continue; }
      rm -rf /tmp/spyf && mkdir -p /tmp/spyf/in
      python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from bench.users import folder_of, photos_in
folder_of(photos_in('$S/photos/faces-dev'), ${SPY_COUNT:-64}, Path('/tmp/spyf/in'))"
      step spyfolder 300 /usr/bin/time -v py-spy record --subprocesses --threads -r 50 -f raw \
        -o /tmp/spyf/spyfolder.txt -- python3 -m ffhquv_cli fit /tmp/spyf/in -o /tmp/spyf/out \
        --device cuda --overwrite ${SPY_ARGS:-}
      # the recording stays on that machine (tens of MB); its summary comes back
      python3 bench/stacks.py /tmp/spyf/spyfolder.txt --rate 50 --top 80 \
        > "$out/spyfolder_summary.txt"
      ls /tmp/spyf/out | head -3; ls /tmp/spyf/out | wc -l
      ;;
    profilefirst)
      # where a new process's first fit goes (wall clock, cProfile): cold start
      need "$sp68" "$S/cache" "$S/photos/faces-dev" || { rc=1; continue; }
      step profilefirst 200 python3 bench/fit.py --presets standard --device cuda --threads 4 \
        --batch 1 --photo "$fd05" \
        --cprofile-first "$out/cprofile_first.txt"
      ;;
    recovery)
      need "$sp68" "$S/cache" || { rc=1; continue; }
      dev=()
      python3 bench/recovery.py --help 2>/dev/null | grep -q -- '--device' && dev=(--device cuda)
      step recovery "${RECOVERY_LIMIT:-240}" python3 bench/recovery.py "${dev[@]}" \
        --json "$out/recovery.json"
      ;;
    *) echo "unknown part $part"; rc=2 ;;
  esac
done
exit $rc
