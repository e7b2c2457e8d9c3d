#!/usr/bin/env bash
# Builds the safetensors fuzz target with clang (libFuzzer, AddressSanitizer
# with leak detection, UBSan with no recovery) and runs it from a copy of
# the seed corpus. Fails on any crash, leak, out-of-bounds access or
# undefined behaviour, and when fewer executions ran than asked for.
#
#   tests/fuzz/run_fuzz.sh <build-dir> [runs] [libFuzzer options...]
#
# runs: executions (default 100000); -1 runs until a libFuzzer option such
# as -max_total_time=3600 stops it. <build-dir> is a configured condconv
# build with the library built (CTest passes its own); include and library
# paths come from <build-dir>/tests/fuzz/fuzz.env, written by CMake, and so
# do the build's warning flags (-Werror with CONDCONV_WERROR=ON).
# FUZZ_BUILD_ONLY=1 builds the target and stops (CI's warnings guard).
# Exit 77 (skipped) when clang or its libFuzzer runtime is missing.
set -euo pipefail
build=$(cd "$1" && pwd)
runs=${2:-100000}
shift $(($# < 2 ? $# : 2))
env_file=$build/tests/fuzz/fuzz.env
[[ -f $env_file ]] || { echo "run_fuzz: $env_file not found: configure the build first" >&2; exit 1; }
# shellcheck source=/dev/null
source "$env_file" # FUZZ_SRC, FUZZ_CFLAGS, FUZZ_LIBS, FUZZ_WARNINGS

cc=${FUZZ_CC:-clang}
work=${FUZZ_WORK:-$build/tests/fuzz/work} # FUZZ_WORK: keep a long campaign apart from CTest's
mkdir -p "$work/obj"
if ! command -v "$cc" >/dev/null; then
  echo "run_fuzz: SKIPPED - $cc not found (scripts/setup.sh --ci installs clang and libclang-rt-dev)"
  exit 77
fi
probe=$work/probe.c
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$probe"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe" -o "$work/probe" 2>"$work/probe.log"; then
  echo "run_fuzz: SKIPPED - $cc cannot link libFuzzer (install libclang-rt-dev):"
  cat "$work/probe.log"
  exit 77
fi

# The loader's path is compiled instrumented: the parser, the loader, layer
# creation, descriptor checks, messages and the CPU forward. The rest of the
# library (GPU planning, kernels; never reached from a CPU context) comes
# uninstrumented from the static library.
sources=(host/safetensors.c host/weights_safetensors.c host/layer.c host/layer_desc.c host/error.c
         host/forward_cpu.c host/reference.c tests/fuzz/fuzz_safetensors.c)
# shellcheck disable=SC2054 # the commas belong to -fsanitize=
flags=(-std=c11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=all ${FUZZ_WARNINGS[@]+"${FUZZ_WARNINGS[@]}"} "${FUZZ_CFLAGS[@]}")
objects=()
for src in "${sources[@]}"; do
  obj=$work/obj/$(basename "${src%.c}").o
  "$cc" "${flags[@]}" -c "$FUZZ_SRC/$src" -o "$obj"
  objects+=("$obj")
done
rpaths=()
for lib in "${FUZZ_LIBS[@]}"; do
  [[ $lib == *.so* ]] && rpaths+=("-Wl,-rpath,$(dirname "$lib")")
done
"$cc" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all "${objects[@]}" "${FUZZ_LIBS[@]}" \
  -lstdc++ -lm -ldl -lpthread "${rpaths[@]}" -o "$work/fuzz_safetensors"
if [[ ${FUZZ_BUILD_ONLY:-0} == 1 ]]; then
  echo "run_fuzz: built $work/fuzz_safetensors (FUZZ_BUILD_ONLY=1: not run)"
  exit 0
fi

rm -rf "$work/corpus"
cp -r "$FUZZ_SRC/tests/fuzz/corpus" "$work/corpus"
log=$work/fuzz.log
# libFuzzer exits 77 on a crash by default, which CTest would read as "skipped":
# every non-zero status is turned into 1 below.
start=$(date +%s)
set +e
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  "$work/fuzz_safetensors" -runs="$runs" -seed="${FUZZ_SEED:-1}" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -dict="$FUZZ_SRC/tests/fuzz/safetensors.dict" -print_final_stats=1 -artifact_prefix="$work/" "$@" "$work/corpus" \
  >"$log" 2>&1
status=$?
set -e
elapsed=$(($(date +%s) - start))
grep -E "^(INFO: Seed|stat::|Done|#[0-9]+ *DONE)" "$log" || true
if ((status != 0)); then
  echo "run_fuzz: FAILED (exit $status) after ${elapsed}s; the end of $log:"
  tail -n 60 "$log"
  exit 1
fi
executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
echo "run_fuzz: ${executed:-?} executions in ${elapsed}s, no crash, leak or undefined behaviour; corpus grew to $(find "$work/corpus" -type f | wc -l) files"
if ((runs > 0)) && [[ -z $executed || $executed -lt $runs ]]; then
  echo "run_fuzz: FAILED: only ${executed:-no} executions were reported, $runs were asked for"
  exit 1
fi
