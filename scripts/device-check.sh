#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU (H100/H200), in
# order of value, so that a run cut short still brings back what matters most:
#   1. configure for sm_90 and build (Release, NVTX on); stops if this fails
#   2. every CTest test once, both labels, without sanitizer; then the
#      Python package's GPU tests (pytest, if the machine's python3 has it)
#   2b. the candidates' dev drivers (routing, aggregation, fused NHWC loaders):
#      validate, then time each library variant against the byte floor; then
#      a bench row per candidate on CC-B0's 1x1 layers (f16 NHWC, f32 NCHW)
#   3. condconv-bench --quick (the bench layer set, batch 1/32/128, E = 8,
#      every algorithm and the static yardstick) with its CSV and JSON, then
#      the timm side by side, the merged table and the plots; then the same
#      sweep in f16 NHWC (E = 1/8/32) with timm fp16 channels-last (into logs/);
#      between them the whole-network benchmark (bench/network, into logs/)
#   4. ncu metrics of each custom kernel on two shapes (duration, DRAM
#      throughput, occupancy, registers), so kernels can be tuned later
#      without a GPU
#   5. compute-sanitizer with whatever time is left: memcheck on every
#      algorithm and test, racecheck on the kernels with shared memory,
#      initcheck on the whole forward, the half/NHWC paths, a few random
#      cases each
# Everything goes to $OUT (default ./out): summary.txt (also printed last),
# bench.csv, bench.json, peer.csv, merged.csv, merged.md, plots.tar.gz and
# logs.tar.gz -- at most eight files, what the device tool brings back.
#
# The whole run keeps to DEVICE_CHECK_SECONDS (default 540): each step gets
# at most min(its cap, what is left), so a slow step cuts the later ones
# short instead of losing the results. Steps that fail are reported, and the
# script goes on. The caps add up to more than the budget on purpose: the
# later steps (sanitizers) take whatever the earlier ones left.
#
#   scripts/device-check.sh            on the GPU machine (see README: GPU checks)
#   scripts/device-check.sh --dry-run  anywhere: configures and builds for real,
#       stubs every step that needs a GPU as "skipped: no GPU (dry run)", and
#       checks what the script leaves in $OUT (CI runs this, so the script's
#       own logic is tested on every submission)
#
# The GPU machine has no package registry: if it lacks Jansson, carry the
# .deps folder made by scripts/fetch-device-deps.sh.
set -uo pipefail
# The GPU machine may not have the toolkit on PATH.
[[ -d /usr/local/cuda/bin ]] && export PATH=/usr/local/cuda/bin:$PATH
cd "$(dirname "$0")/.."
root=$PWD
dry_run=0
[[ "${1:-}" == "--dry-run" ]] && dry_run=1
OUT=${OUT:-$root/out}
rm -rf "$OUT/logs"
mkdir -p "$OUT/logs"
summary=$OUT/summary.txt
: >"$summary"
# A dry run builds on whatever runs it (CI: 2 cores), not on the GPU
# machine (16 cores): the GPU run's budget and build cap would time its
# build out (it took 220 s of the 240 s cap in CI's dry run of stop 24),
# which says nothing about the script. It gets 40 minutes, the build 30.
default_budget=540 build_cap=240
((dry_run)) && default_budget=2400 build_cap=1800
deadline=$(($(date +%s) + ${DEVICE_CHECK_SECONDS:-$default_budget}))
build=${BUILD_DIR:-$root/build-sm90}
jobs=$(nproc)

note() { echo "$*" | tee -a "$summary"; }
left() { echo $((deadline - $(date +%s))); }
# step NAME CAP_SECONDS COMMAND...: runs with a timeout of min(CAP, time left),
# logs to logs/NAME.log. gpu_step: the same, stubbed in a dry run.
step() {
  local name=$1 cap=$2
  shift 2
  local budget
  budget=$(left)
  ((budget > cap)) && budget=$cap
  if ((budget < 10)); then
    note "SKIPPED  $name (out of time)"
    return 1
  fi
  local start rc
  start=$(date +%s)
  timeout "$budget" "$@" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  local took=$(($(date +%s) - start))
  if ((rc == 0)); then
    note "ok       $name (${took}s)"
  elif ((rc == 124)); then
    note "TIMEOUT  $name after ${took}s"
  else
    note "FAILED   $name rc=$rc (${took}s): tail of logs/$name.log:"
    tail -n 15 "$OUT/logs/$name.log" | sed 's/^/    /' | tee -a "$summary"
  fi
  return $rc
}
missing=0
gpu_step() {
  if ((dry_run)); then
    note "skipped  $1: no GPU (dry run): ${*:3}"
    # What the step would run must have been built: a wrong path would
    # otherwise show only on the GPU machine.
    local arg
    for arg in "${@:3}"; do
      if [[ "$arg" == "$build"/* && "$arg" != "$OUT"/* && ! -x "$arg" ]]; then
        note "MISSING  $arg (step $1 would fail)"
        missing=1
      fi
    done
    return 1
  fi
  step "$@"
}

finish() {
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
  note "== done with $(left)s of the budget left"
  echo
  echo "---- bench (tail) ----"
  tar -xzOf "$OUT/logs.tar.gz" logs/bench.log 2>/dev/null | tail -n 60
  [[ -s "$OUT/merged.md" ]] && { echo "---- condconv vs timm vs static ----"; head -n 60 "$OUT/merged.md"; }
  tar -xzOf "$OUT/logs.tar.gz" logs/network/network.md 2>/dev/null | head -n 45 | sed '1i ---- whole network (bench/network) ----'
  echo "---- summary ----"
  cat "$summary"
}

# What the device tool brings back: at most 8 plain files, names of letters,
# digits, '.', '_' and '-'. A dry run fails if the script would break that.
check_out() {
  local files bad
  files=$(find "$OUT" -mindepth 1 | wc -l)
  bad=$(find "$OUT" -mindepth 1 \( ! -type f -o -name '*[^A-Za-z0-9._-]*' \) | wc -l)
  if ((files > 8 || bad > 0)) || [[ ! -s "$OUT/summary.txt" || ! -s "$OUT/logs.tar.gz" ]]; then
    echo "device-check: \$OUT holds $files entries ($bad not plain files or oddly named); the device tool" \
      "brings back at most 8 plain files, and summary.txt and logs.tar.gz must be among them" >&2
    find "$OUT" -mindepth 1 >&2
    return 1
  fi
  echo "device-check: \$OUT holds $files files, all of which the device tool brings back"
}

note "== condconv device check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$( ((dry_run)) && echo ', DRY RUN')"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 |
    sed 's/^/gpu: /' | tee -a "$summary"
else
  note "gpu: none (nvidia-smi not found)"
fi
note "nvcc: $(nvcc --version | tail -n 1)"

# Jansson: the machine's own, or the carried Debian packages.
cmake_extra=()
if [[ ! -e /usr/include/jansson.h ]]; then
  if compgen -G ".deps/debs/*.deb" >/dev/null; then
    mkdir -p .deps/root
    for deb in .deps/debs/*.deb; do dpkg -x "$deb" .deps/root; done
    cmake_extra+=("-DCMAKE_PREFIX_PATH=$root/.deps/root/usr")
    export CMAKE_PREFIX_PATH=$root/.deps/root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    export LD_LIBRARY_PATH=$root/.deps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
    note "jansson: unpacked the carried packages into .deps/root"
  else
    note "jansson: not installed and not carried (run scripts/fetch-device-deps.sh, carry .deps)"
  fi
fi

# 1. build. Nothing else can run without it.
if ! step configure 90 cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 "${cmake_extra[@]}"; then
  note "configure failed: stopping"
  finish
  exit 1
fi
if ! step build "$build_cap" cmake --build "$build" -j"$jobs"; then
  note "build failed: stopping"
  finish
  exit 1
fi

# 2. every test once, without sanitizer; GPU tests four at a time.
if gpu_step ctest 120 ctest --test-dir "$build" --output-on-failure -j4 --timeout 100 ||
  [[ -s "$OUT/logs/ctest.log" ]]; then
  grep -E "tests passed|Skipped|Failed|\*\*\*" "$OUT/logs/ctest.log" | sed 's/^/    /' | tee -a "$summary"
fi

# 2a. the Python face's GPU tests (issue 17): the NumPy core's GPU pointers and
#     condconv.torch on CUDA tensors in every dtype and both layouts, inside a
#     CUDA graph too; the package from this build, as in 3a. Needs pytest
#     there (the machine has torch and timm, no registry).
if ! python3 -c "import pytest" 2>/dev/null && compgen -G ".deps/wheels/*.whl" >/dev/null; then
  mkdir -p .deps/site
  for whl in .deps/wheels/*.whl; do python3 -m zipfile -e "$whl" .deps/site; done
  export PYTHONPATH=$root/.deps/site${PYTHONPATH:+:$PYTHONPATH}
  note "pytest: unpacked the carried wheels into .deps/site"
fi
if ((dry_run)) || python3 -c "import pytest" 2>/dev/null; then
  gpu_step pytest_gpu 90 env CONDCONV_LIBRARY="$build/libcondconv.so" PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}" \
    python3 -m pytest -q -p no:cacheprovider python/tests/test_core_gpu.py python/tests/test_torch_cuda.py
  [[ -s "$OUT/logs/pytest_gpu.log" ]] && tail -n 3 "$OUT/logs/pytest_gpu.log" | sed 's/^/    /' | tee -a "$summary"
else
  note "SKIPPED  pytest_gpu: python3 has no pytest here (run scripts/fetch-device-deps.sh, carry .deps)"
fi

# 2b. the candidates first (issue 19): each kernel family's dev driver validates
#     its library variants against a CPU reference, then times them against the
#     byte floor (routing, aggregation, the fused kernel's NHWC loaders); AUTO
#     rows in the bench below list every candidate AUTO timed at prepare.
gpu_step routing_dev 40 "$build/bench/routing_dev"
gpu_step aggregate_dev 40 "$build/bench/aggregate_dev"
gpu_step fused_dev 40 "$build/bench/fused_dev"
gpu_step fused_dev_tc 40 "$build/bench/fused_dev" --tc
#     Then a bench row per candidate (--candidates: each variant AUTO lists,
#     forced by its name, and each routing/aggregation kernel variant), with
#     the static yardstick, floor and x-floor, on EfficientNet-CC-B0's 1x1
#     layers at batch 32 and 128, E = 8: f16 NHWC and strict f32 NCHW.
candidate_layers=(--layer 1152,192,1,1,1,7 --layer 112,672,1,1,1,14 --batch 32,128 --experts 8 --algo auto
  --candidates --reps 7 --iters 10 --max-row-ms 100 --no-phases)
gpu_step bench_candidates_f16 60 "$build/bench/condconv-bench" "${candidate_layers[@]}" --dtype f16 --layout nhwc \
  --csv "$OUT/logs/bench_candidates_f16.csv"
gpu_step bench_candidates_f32 45 "$build/bench/condconv-bench" "${candidate_layers[@]}" \
  --csv "$OUT/logs/bench_candidates_f32.csv"

# 3. benchmark (CSV written row by row, so a timeout keeps what ran), timm
#    side by side, merged table, plots.
gpu_step bench 200 "$build/bench/condconv-bench" --quick --csv "$OUT/bench.csv" --json "$OUT/bench.json"
if [[ -s "$OUT/bench.csv" ]]; then
  step peer_timm 100 python3 bench/peer_timm.py --from-csv "$OUT/bench.csv" --csv "$OUT/peer.csv"
  [[ -s "$OUT/peer.csv" ]] &&
    step merge 20 python3 bench/merge_peer.py "$OUT/bench.csv" "$OUT/peer.csv" --out "$OUT/merged.csv" --md "$OUT/merged.md"
  step plot 40 python3 bench/plot.py "$OUT/bench.csv" --out "$OUT/plots" --mode both &&
    tar -czf "$OUT/plots.tar.gz" -C "$OUT" plots
  rm -rf "$OUT/plots"
fi

# 3a. whole networks (issue 17): timm's CC-B0-8e, the same converted to
#     condconv.torch, static B0; eager, CUDA graph and a training step (issue
#     20); f32, TF32, f16 and bf16
#     channels-last; batch 1/32/128, target points first. The package comes from
#     this build (CONDCONV_LIBRARY + PYTHONPATH; the machine has torch and timm
#     but no registry to pip install from). It stops starting points 45 s before
#     its cap so that it writes its table; into logs/ (the eight files are taken).
net_cap=180
net_left=$(left)
((net_left < net_cap)) && net_cap=$net_left
gpu_step network "$net_cap" env PYTHONPATH="$root/python" python3 bench/network/bench_network.py \
  --library "$build/libcondconv.so" --out "$OUT/logs/network" --modes eager,graph,train --warmup 3 --iters 10 --reps 3 \
  --budget-seconds $((net_cap > 90 ? net_cap - 45 : net_cap / 2))
if [[ -s "$OUT/logs/network/network.md" ]]; then
  grep -E '^\| (tf32|f16) \| (32|128) \|' "$OUT/logs/network/network.md" | sed 's/^/    /' | tee -a "$summary"
fi

# 3b. the same sweep in f16 channels-last (issue 12's target: <= 2x static f16
#     NHWC, geomean at E = 8), timm fp16 channels-last beside it. Into logs/:
#     the eight files the device tool brings back are taken.
gpu_step bench_f16_nhwc 150 "$build/bench/condconv-bench" --quick --dtype f16 --layout nhwc --experts 1,8,32 \
  --csv "$OUT/logs/bench_f16_nhwc.csv"
if [[ -s "$OUT/logs/bench_f16_nhwc.csv" ]]; then
  step peer_timm_f16 100 python3 bench/peer_timm.py --from-csv "$OUT/logs/bench_f16_nhwc.csv" \
    --csv "$OUT/logs/peer_f16.csv"
  [[ -s "$OUT/logs/peer_f16.csv" ]] &&
    step merge_f16 20 python3 bench/merge_peer.py "$OUT/logs/bench_f16_nhwc.csv" "$OUT/logs/peer_f16.csv" \
      --out "$OUT/logs/merged_f16.csv" --md "$OUT/logs/merged_f16.md"
fi

# 3c. training (issue 20): forward + backward per layer, f16 channels-last,
#     E = 8, against the static convolution's forward + backward (target:
#     <= 1.5x, geomean) and timm's (peer_timm --backward, eager; target: >= 3x
#     faster); no GPU has run condconv_backward before this step.
gpu_step bench_backward_f16 90 "$build/bench/condconv-bench" --quick --backward --dtype f16 --layout nhwc \
  --experts 8 --algo static,auto --csv "$OUT/logs/bench_backward_f16.csv"
if [[ -s "$OUT/logs/bench_backward_f16.csv" ]]; then
  step peer_backward_f16 90 python3 bench/peer_timm.py --backward --from-csv "$OUT/logs/bench_backward_f16.csv" \
    --methods static,timm_grouped --csv "$OUT/logs/peer_backward_f16.csv"
  [[ -s "$OUT/logs/peer_backward_f16.csv" ]] &&
    step merge_backward_f16 20 python3 bench/merge_peer.py "$OUT/logs/bench_backward_f16.csv" \
      "$OUT/logs/peer_backward_f16.csv" --out "$OUT/logs/merged_backward_f16.csv" --md "$OUT/logs/merged_backward_f16.md"
fi

# 4. ncu on our kernels, two shapes: EffNet-CC-B0's 1152->192 1x1 at 7x7 and
#    a 5x5 depthwise at 14x14, batch 32, E = 8. Kernels are selected by the
#    library's NVTX range (--nvtx --nvtx-include 'condconv.forward/': launched
#    inside a forward, wherever that sits in the caller's range stack), and
#    by name among them: a profile with no kernel means the ranges did not
#    reach the profiler (tests/nvtx checks them without one), and is reported.
if gpu_step ncu 60 ncu --csv --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
  --nvtx --nvtx-include 'condconv.forward/' \
  --kernel-name-base function --kernel-name 'regex:routing|aggregate|depthwise|bias_activation|mixture_combine|gather|fused' \
  --launch-count 40 --log-file "$OUT/logs/ncu.csv" \
  "$build/bench/condconv-bench" --layer 1152,192,1,1,1,7 --layer 672,672,5,1,672,14 --batch 32 \
  --experts 8 --algo fused,gemm_batched,depthwise_fused,mixture --warmup 1 --reps 1 --iters 1 \
  --no-graph --no-phases --no-ceilings; then
  kernels=$(grep -c '"Duration"' "$OUT/logs/ncu.csv" 2>/dev/null)
  if ((${kernels:-0} == 0)); then
    note "FAILED   ncu: no kernel profiled inside the NVTX range condconv.forward (did the ranges reach ncu?)"
  else
    note "    ncu: $kernels kernel(s) inside condconv.forward, selected by NVTX range"
  fi
fi

# 5. compute-sanitizer with whatever time is left, few random cases each.
export CONDCONV_TEST_CASES=4
t=$build/tests
# An array, not a shell function: `timeout` (in step) runs programs only.
san=(compute-sanitizer --error-exitcode 1 --print-limit 20 --tool)
gpu_step memcheck.routing 60 "${san[@]}" memcheck "$t/test_gpu_routing"
for algo in fused cudnn_grouped gemm_batched depthwise_fused mixture; do
  gpu_step "memcheck.$algo" 50 "${san[@]}" memcheck "$t/test_gpu_forward" "$algo"
done
gpu_step racecheck.depthwise 50 "${san[@]}" racecheck "$t/test_gpu_forward" depthwise_fused
gpu_step racecheck.fused 50 "${san[@]}" racecheck "$t/test_gpu_forward" fused
gpu_step racecheck.aggregate 50 "${san[@]}" racecheck "$t/test_gpu_forward" gemm_batched
gpu_step initcheck.forward 50 "${san[@]}" initcheck "$t/test_gpu_forward" auto
# The half-precision and channels-last kernels (vector paths, transposing epilogue).
gpu_step memcheck.f16_nhwc 50 "${san[@]}" memcheck "$t/test_gpu_forward" auto f16 nhwc
gpu_step memcheck.grouped_bf16_nhwc 50 "${san[@]}" memcheck "$t/test_gpu_forward" cudnn_grouped bf16 nhwc
gpu_step racecheck.depthwise_f16_nhwc 50 "${san[@]}" racecheck "$t/test_gpu_forward" depthwise_fused f16 nhwc
gpu_step memcheck.graph 40 "${san[@]}" memcheck "$t/test_gpu_graph"
gpu_step memcheck.backward 60 "${san[@]}" memcheck "$t/test_gpu_backward"
gpu_step memcheck.bad_inputs 40 "${san[@]}" memcheck "$t/test_gpu_bad_inputs"
gpu_step memcheck.golden 50 "${san[@]}" memcheck "$t/test_golden_gpu"
# The server example's pattern (every GPU, f16 NHWC, 3 chunks in flight, padded and split
# batches, completion by events): no leak on shutdown, no invalid access.
gpu_step memcheck.example 50 "${san[@]}" memcheck --leak-check full "$build/examples/condconv_server" \
  tests/data/golden_depthwise5x5_s2.safetensors --require-gpu --devices all --dtype f16 --layout nhwc \
  --inflight 3 --workers 2 --requests 16 --verify
# Racecheck is slow on the routing test's 224x224 planes: last, with a bigger cap.
gpu_step racecheck.routing 120 "${san[@]}" racecheck "$t/test_gpu_routing"
unset CONDCONV_TEST_CASES
finish
if ((dry_run)); then
  check_out || exit 1
  ((missing == 0)) || { echo "device-check: a GPU step names a program the build does not make" >&2; exit 1; }
fi
