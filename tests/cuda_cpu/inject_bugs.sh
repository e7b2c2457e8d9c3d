#!/usr/bin/env bash
# Proof that the CPU execution layer catches kernel bugs: each bug of
# tests/cuda_cpu/bugs.txt is injected, one at a time, into a copy of
# kernels/; the emu test named for it is rebuilt in the build named for it
# (ASan + UBSan, or TSan) and run, and must fail. First every such test must
# pass on the unmodified copy, so that a failure means the bug was seen.
# Exits 1 unless every bug is caught; prints how each one was.
#
# Usage: tests/cuda_cpu/inject_bugs.sh [PREFIX]   (build trees PREFIX-asan and
#        PREFIX-tsan, kernel copy in PREFIX-kernels; default build-emu-bugs)
# Environment: JOBS (default 2), BUG_TIMEOUT (seconds per test run, default 300).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
prefix=$root/${1:-build-emu-bugs}
copy=$prefix-kernels
jobs=${JOBS:-2}
timeout_s=${BUG_TIMEOUT:-300}
list=$root/tests/cuda_cpu/bugs.txt
start=$(date +%s)

# --- the bug list ----------------------------------------------------------------------------------
names=() files=() builds=() tests=() froms=() tos=()
while IFS= read -r line || [[ -n $line ]]; do
  [[ $line =~ ^(bug|file|build|test|from|to):[[:space:]]{1,}(.*)$ ]] || continue
  key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
  case $key in
  bug) names+=("$value") ;;
  file) files+=("$value") ;;
  build) builds+=("$value") ;;
  test) tests+=("$value") ;;
  from) froms+=("$value") ;;
  to) tos+=("$value") ;;
  esac
done <"$list"
count=${#names[@]}
if ((count == 0)) || ((${#files[@]} != count || ${#builds[@]} != count || ${#tests[@]} != count ||
  ${#froms[@]} != count || ${#tos[@]} != count)); then
  echo "inject_bugs: $list: every bug needs bug, file, build, test, from and to" >&2
  exit 2
fi

# --- the builds, on a copy of kernels/ -------------------------------------------------------------------
rm -rf "$copy" && mkdir -p "$copy" && cp -a kernels/. "$copy"/
configure() { # build (asan|tsan)
  local dir=$prefix-$1 sanitize=address
  [[ $1 == tsan ]] && sanitize=thread
  [[ -f $dir/CMakeCache.txt ]] && return 0
  mkdir -p "$dir"
  # -O1: these builds recompile a kernel for every bug.
  cmake -S tests/cuda_cpu -B "$dir" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_C_FLAGS="-O1 -g" -DCMAKE_CXX_FLAGS="-O1 -g" -DCC_EMU_SANITIZE=$sanitize -DCC_EMU_KERNEL_DIR="$copy" \
    >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; return 1; }
}
build() { # build test log
  cmake --build "$prefix-$1" -j"$jobs" --target "$2" >"$3" 2>&1
}
run() { # build test log -> exit status of the test
  local status=0
  (
    export CC_EMU_STOP_AT_FIRST_FAILURE=1 CC_CPU_WATCHDOG_SECONDS=20
    export ASAN_OPTIONS=abort_on_error=1:halt_on_error=1:detect_leaks=1
    export UBSAN_OPTIONS=abort_on_error=1:halt_on_error=1:print_stacktrace=1
    export TSAN_OPTIONS=halt_on_error=1:exitcode=66
    cd "$prefix-$1" && timeout "$timeout_s" "./$2"
  ) >"$3" 2>&1 || status=$?
  return "$status"
}

for b in asan tsan; do configure "$b" || exit 1; done
echo "inject_bugs: $count bugs; first, the tests on the unmodified kernels ($(($(date +%s) - start)) s)"
declare -A baseline
for i in "${!names[@]}"; do
  key="${builds[$i]} ${tests[$i]}"
  [[ -n ${baseline[$key]:-} ]] && continue
  log=$prefix-${builds[$i]}/${tests[$i]}.baseline.log
  if ! build "${builds[$i]}" "${tests[$i]}" "$log"; then
    echo "inject_bugs: FAILED: ${tests[$i]} does not build (${builds[$i]}); see $log"
    exit 1
  fi
  if ! run "${builds[$i]}" "${tests[$i]}" "$log"; then
    echo "inject_bugs: FAILED: ${tests[$i]} fails on the unmodified kernels (${builds[$i]}); see $log"
    exit 1
  fi
  baseline[$key]=ok
  echo "  ${tests[$i]} (${builds[$i]}): passes ($(($(date +%s) - start)) s)"
done

# How a failing run saw the bug, from its output.
how() { # log
  local m
  if m=$(grep -m1 -oE "ThreadSanitizer: [a-z -]+" "$1"); then echo "TSan: ${m#ThreadSanitizer: }"
  elif m=$(grep -m1 -oE "AddressSanitizer: [a-z-]+" "$1"); then echo "ASan: ${m#AddressSanitizer: }"
  elif m=$(grep -m1 -oE "runtime error: .{0,60}" "$1"); then echo "UBSan: ${m#runtime error: }"
  elif m=$(grep -m1 -oE "cuda_cpu: FAULT: .{0,70}" "$1"); then echo "layer: ${m#cuda_cpu: FAULT: }"
  elif m=$(grep -m1 -oE "refused \([a-zA-Z]+\)" "$1"); then echo "layer: launch $m"
  elif m=$(grep -m1 -oE "FAIL [^ ]+: .{0,60}" "$1"); then echo "reference: ${m#FAIL }"
  else echo "exit status only"
  fi
}

# --- one bug at a time ---------------------------------------------------------------------------------------
caught=0
results=()
for i in "${!names[@]}"; do
  t0=$(date +%s)
  cp kernels/. "$copy"/ -a # restore the previous bug's file
  target=$copy/${files[$i]}
  log=$prefix-${builds[$i]}/bug$((i + 1)).log
  if ! FROM=${froms[$i]} TO=${tos[$i]} perl -0777 -i -pe '
        BEGIN { ($f, $t) = ($ENV{FROM}, $ENV{TO}); s/\\n/\n/g for $f, $t; }
        my $n = () = /\Q$f\E/g;
        die "the text to replace occurs $n times, not once\n" if $n != 1;
        s/\Q$f\E/$t/;' "$target" 2>"$log"; then
    results+=("ERROR   ${names[$i]}: $(cat "$log") (update tests/cuda_cpu/bugs.txt)")
    continue
  fi
  if ! build "${builds[$i]}" "${tests[$i]}" "$log"; then
    results+=("ERROR   ${names[$i]}: the injected bug does not compile (see $log)")
    continue
  fi
  run "${builds[$i]}" "${tests[$i]}" "$log"
  status=$?
  if ((status == 124)); then
    results+=("MISSED  ${names[$i]}: ${tests[$i]} timed out after ${timeout_s} s (the watchdog should have stopped it)")
  elif ((status != 0)); then
    caught=$((caught + 1))
    results+=("CAUGHT  ${names[$i]}: $(how "$log") [${builds[$i]} ${tests[$i]}]")
  else
    results+=("MISSED  ${names[$i]}: ${tests[$i]} passed with the bug [${builds[$i]}]")
  fi
  echo "  bug $((i + 1))/$count: ${results[-1]%%:*} ($(($(date +%s) - t0)) s)"
done
cp kernels/. "$copy"/ -a

echo
echo "==== injected bugs: $caught of $count caught ($(($(date +%s) - start)) s) ===="
printf '%s\n' "${results[@]}"
((caught == count))
