#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU (H100/H200):
#   1. configure for sm_90 and build (Release, NVTX on)
#   2. every CTest test, both labels
#   3. the GPU tests under compute-sanitizer: memcheck, racecheck, initcheck
#   4. a short condconv-bench (--quick), the timm side-by-side, the merged
#      table and the plots
# Everything goes to $OUT (default ./out): summary.txt (also printed last),
# bench.csv, bench.json, peer.csv, merged.csv, merged.md, plots.tar.gz and
# logs.tar.gz -- eight files, what the device tool brings back.
#
# The whole run keeps to DEVICE_CHECK_SECONDS (default 540): each step gets
# at most what is left, so a slow step cuts the next ones short instead of
# losing the results. Steps that fail are reported, and the script goes on.
#
# The GPU machine has no package registry: if it lacks Jansson, carry the
# .deps folder made by scripts/fetch-device-deps.sh.
set -uo pipefail
# The GPU machine may not have the toolkit on PATH.
[[ -d /usr/local/cuda/bin ]] && export PATH=/usr/local/cuda/bin:$PATH
cd "$(dirname "$0")/.."
root=$PWD
OUT=${OUT:-$root/out}
mkdir -p "$OUT/logs"
summary=$OUT/summary.txt
: >"$summary"
deadline=$(($(date +%s) + ${DEVICE_CHECK_SECONDS:-540}))
build=${BUILD_DIR:-$root/build-sm90}
jobs=$(nproc)

note() { echo "$*" | tee -a "$summary"; }
left() { echo $((deadline - $(date +%s))); }
# step NAME CAP_SECONDS COMMAND...: runs with a timeout of min(CAP, time left), logs to logs/NAME.log
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

note "== condconv device check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 |
  sed 's/^/gpu: /' | tee -a "$summary"
note "nvcc: $(nvcc --version | tail -n 1)"

finish() {
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
  note "== done with $(left)s of the budget left"
  echo
  echo "---- bench (tail) ----"
  tar -xzOf "$OUT/logs.tar.gz" logs/bench.log 2>/dev/null | tail -n 60
  [[ -s "$OUT/merged.md" ]] && { echo "---- condconv vs timm vs static ----"; head -n 60 "$OUT/merged.md"; }
  echo "---- summary ----"
  cat "$summary"
}

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
if ! step build 180 cmake --build "$build" -j"$jobs"; then
  note "build failed: stopping"
  finish
  exit 1
fi

# 2. every test once, without sanitizer; GPU tests four at a time.
step ctest 120 ctest --test-dir "$build" --output-on-failure -j4 --timeout 100
grep -E "tests passed|Skipped|Failed|\*\*\*" "$OUT/logs/ctest.log" | sed 's/^/    /' | tee -a "$summary"

# 3. benchmark, timm side by side, merged table, plots.
step bench 170 "$build/bench/condconv-bench" --quick --csv "$OUT/bench.csv" --json "$OUT/bench.json"
cp "$OUT/logs/bench.log" "$OUT/logs/bench-table.txt" 2>/dev/null
if [[ -s "$OUT/bench.csv" ]]; then
  step peer_timm 100 python3 bench/peer_timm.py --from-csv "$OUT/bench.csv" --csv "$OUT/peer.csv"
  [[ -s "$OUT/peer.csv" ]] &&
    step merge 20 python3 bench/merge_peer.py "$OUT/bench.csv" "$OUT/peer.csv" --out "$OUT/merged.csv" --md "$OUT/merged.md"
  step plot 40 python3 bench/plot.py "$OUT/bench.csv" --out "$OUT/plots" --mode both &&
    tar -czf "$OUT/plots.tar.gz" -C "$OUT" plots && rm -rf "$OUT/plots"
fi

# 4. ncu: duration, DRAM throughput, occupancy, registers, spills of each
#    custom kernel on two shapes (EffNet-CC-B0's 1152->192 1x1 at 7x7 and a
#    5x5 depthwise at 14x14), so kernels can be tuned later without a GPU.
step ncu 60 ncu --csv --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
  --kernel-name-base function --kernel-name 'regex:routing|aggregate|depthwise|bias_activation|mixture_combine|gather' \
  --launch-count 40 --log-file "$OUT/logs/ncu.csv" \
  "$build/bench/condconv-bench" --layer 1152,192,1,1,1,7 --layer 672,672,5,1,672,14 --batch 32 \
  --experts 8 --algo cudnn_grouped,gemm_batched,depthwise_fused,mixture --warmup 1 --reps 1 --iters 1 \
  --no-graph --no-phases --no-ceilings

# 5. the aggregation kernel's variants (bench/dev).
step aggregate_dev 40 "$build/bench/aggregate_dev"

# 6. compute-sanitizer with whatever time is left, few random cases each:
#    memcheck on every algorithm, racecheck on the kernels with shared
#    memory, initcheck on the whole forward.
export CONDCONV_TEST_CASES=4
t=$build/tests
# An array, not a shell function: `timeout` (in step) runs programs only.
san=(compute-sanitizer --error-exitcode 1 --print-limit 20 --tool)
step memcheck.routing 40 "${san[@]}" memcheck "$t/test_gpu_routing"
for algo in cudnn_grouped gemm_batched depthwise_fused mixture; do
  step "memcheck.$algo" 50 "${san[@]}" memcheck "$t/test_gpu_forward" "$algo"
done
step racecheck.depthwise 50 "${san[@]}" racecheck "$t/test_gpu_forward" depthwise_fused
step racecheck.routing 40 "${san[@]}" racecheck "$t/test_gpu_routing"
step racecheck.aggregate 50 "${san[@]}" racecheck "$t/test_gpu_forward" gemm_batched
step initcheck.forward 50 "${san[@]}" initcheck "$t/test_gpu_forward" auto
step memcheck.graph 40 "${san[@]}" memcheck "$t/test_gpu_graph"
step memcheck.bad_inputs 40 "${san[@]}" memcheck "$t/test_gpu_bad_inputs"
step memcheck.golden 50 "${san[@]}" memcheck "$t/test_golden_gpu"
step memcheck.example 50 "${san[@]}" memcheck --leak-check full "$build/examples/condconv_server" \
  tests/data/golden_depthwise5x5_s2.safetensors --require-gpu --workers 2 --requests 16 --verify
unset CONDCONV_TEST_CASES
finish
