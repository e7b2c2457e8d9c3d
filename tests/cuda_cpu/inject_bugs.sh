#!/usr/bin/env bash
# Proof that the CPU execution layer catches kernel and host-code bugs: each
# bug of tests/cuda_cpu/bugs.txt is injected, one at a time, into a copy of
# kernels/ (or of host/, for a file named host/...); the emu test named for
# it is rebuilt in the build named for it (ASan + UBSan, or TSan) and run,
# and must fail. First every such test must
# pass on the unmodified copy, so that a failure means the bug was seen.
# Exits 1 unless every bug is caught; prints how each one was.
#
# Three workers run side by side, each with its own build on its own copy:
# the TSan bugs, and the ASan bugs in two shards by test (ASAN_SHARD2_TESTS
# go to the second). A bug's time is mostly one single-threaded compile, so
# one ASan worker left a core idle for most of CI's run once the TSan bugs
# were done; the shards are sized to finish together.
#
# Usage: tests/cuda_cpu/inject_bugs.sh [PREFIX]   (build trees PREFIX-asan,
#        PREFIX-asan2 and PREFIX-tsan on copies PREFIX-kernels-<worker> and
#        PREFIX-host-<worker>; default build-emu-bugs)
# Environment: JOBS (default 2), BUG_TIMEOUT (seconds per test run, default 480: an
#   unmodified test_fused_conv_tc2 under ASan takes 2-4 min beside the other workers),
#   BUG_LIST (default tests/cuda_cpu/bugs.txt: another file of records, e.g. only
#   the ones being written, to prove a few without the whole list's hour),
#   ASAN_SHARD2_TESTS (the tests whose ASan bugs the second ASan worker takes),
#   BUG_SAMPLE=K/N (only the records whose position in the list, from 0, is K
#   mod N: CI proves a sixth of the list per run, rotating with the commit,
#   because the whole list takes about 45 minutes on 2 cores and CI has 90 in
#   all; run the whole list, or a BUG_LIST of new records, when adding them),
#   EMU_CTEST=1 (CI's emu guard: first build every emu test in the asan and
#   tsan workers' builds and run them all with ctest, the sanitizers'
#   findings failing the run; the per-test baselines are then skipped, since
#   every test just passed unmodified in builds of the same flags, the asan2
#   worker's included. One build per sanitizer instead of two, and no test
#   run twice unmodified: that saved CI about 15 minutes).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
prefix=$root/${1:-build-emu-bugs}
jobs=${JOBS:-2}
timeout_s=${BUG_TIMEOUT:-480}
list=${BUG_LIST:-$root/tests/cuda_cpu/bugs.txt}
start=$(date +%s)
shard2=" ${ASAN_SHARD2_TESTS:-test_fused_conv test_emu_forward test_emu_formats test_emu_graph test_emu_gather} "

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
# The worker of each bug: its build, the ASan ones split by test.
workers=()
for i in "${!names[@]}"; do
  w=${builds[$i]}
  if [[ $w != asan && $w != tsan ]]; then
    echo "inject_bugs: $list: bug '${names[$i]}': build '$w' (asan or tsan)" >&2
    exit 2
  fi
  [[ $w == asan && $shard2 == *" ${tests[$i]} "* ]] && w=asan2
  workers+=("$w")
done
if ((count == 0)) || ((${#files[@]} != count || ${#builds[@]} != count || ${#tests[@]} != count ||
  ${#froms[@]} != count || ${#tos[@]} != count)); then
  echo "inject_bugs: $list: every bug needs bug, file, build, test, from and to" >&2
  exit 2
fi
# A sample: the records left out get no worker (every loop below skips them).
# Every record's `from` must still match its file exactly once, sampled or not.
total=$count
if [[ -n ${BUG_SAMPLE:-} ]]; then
  if ! [[ $BUG_SAMPLE =~ ^([0-9]+)/([1-9][0-9]*)$ ]] || ((BASH_REMATCH[1] >= BASH_REMATCH[2])); then
    echo "inject_bugs: BUG_SAMPLE=$BUG_SAMPLE: want K/N with 0 <= K < N" >&2
    exit 2
  fi
  k=${BASH_REMATCH[1]} n=${BASH_REMATCH[2]} count=0
  for i in "${!names[@]}"; do
    target=kernels/${files[$i]}
    [[ ${files[$i]} == host/* ]] && target=${files[$i]}
    if ! FROM=${froms[$i]} perl -0777 -ne 'BEGIN { ($f) = ($ENV{FROM}); $f =~ s/\\n/\n/g; }
          my $n = () = /\Q$f\E/g; exit($n == 1 ? 0 : 1);' "$target"; then
      echo "inject_bugs: bug '${names[$i]}': its from text does not occur exactly once in $target (update $list)" >&2
      exit 2
    fi
    if ((i % n == k)); then count=$((count + 1)); else workers[i]=""; fi
  done
  echo "inject_bugs: BUG_SAMPLE=$BUG_SAMPLE: $count of the $total bugs (positions $k mod $n)"
fi

# --- the builds, each on its own copy of kernels/ -----------------------------------------------------------
# Makes the copy equal to kernels/: a file that differs is copied with a new
# time stamp, so that whatever was built from its injected version is
# rebuilt (a copy that kept the original's older stamp would leave the bug
# compiled in the objects).
sync_dir() { # source copy
  local f
  for f in "$1"/*; do cmp -s "$f" "$2/${f##*/}" || cp "$f" "$2/" || return 1; done
}
sync_copy() { # build
  sync_dir kernels "$prefix-kernels-$1" && sync_dir host "$prefix-host-$1"
}
configure() { # worker (asan|asan2|tsan)
  local dir=$prefix-$1 copy=$prefix-kernels-$1 sanitize=address
  [[ $1 == tsan ]] && sanitize=thread
  mkdir -p "$copy" "$prefix-host-$1" "$dir" && sync_copy "$1" || return 1
  # -O1 -g0: these builds recompile a kernel for every bug, and that
  # compile is most of a bug's time (fused_conv.cu under ASan: 65 s with -g,
  # 29 s without, against a 20-40 s run; -O0 compiles in 2 s but runs 3x
  # slower). The sanitizers name the kind of error without debug info.
  cmake -S tests/cuda_cpu -B "$dir" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_C_FLAGS="-O1 -g0" -DCMAKE_CXX_FLAGS="-O1 -g0" -DCC_EMU_SANITIZE=$sanitize -DCC_EMU_KERNEL_DIR="$copy" \
    -DCC_EMU_HOST_DIR="$prefix-host-$1" \
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

# Every emu test in the build, unmodified, under its sanitizer (EMU_CTEST=1).
# LeakSanitizer at exit is part of the fault-injection test; TSan stops at
# its first report (exit 66). The end-to-end tests (label emu_e2e: host code
# and the emulated cuDNN/cuBLAS around the same kernels) run under ASan only:
# under TSan they would take most of CI's time and see no block thread that
# the per-kernel tests do not.
emu_ctest() { # build (asan|tsan)
  local dir=$prefix-$1 status=0 skip=()
  [[ $1 == tsan ]] && skip=(-LE emu_e2e)
  echo "  $1: building every emu test ($(($(date +%s) - start)) s)"
  cmake --build "$dir" -j"$jobs" >"$dir/build-all.log" 2>&1 || { tail -n 40 "$dir/build-all.log"; return 1; }
  (
    cd "$dir" &&
      ASAN_OPTIONS=abort_on_error=1:halt_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1 \
      UBSAN_OPTIONS=abort_on_error=1:halt_on_error=1:print_stacktrace=1 TSAN_OPTIONS=halt_on_error=1:exitcode=66 \
        ctest -L emu "${skip[@]}" -j"$jobs" --output-on-failure --no-tests=error
  ) || status=1
  # The layer's self-test runs wrong kernels in child processes and keeps
  # their reports to itself: anything a sanitizer printed here is a finding.
  if grep -nE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|WARNING: ThreadSanitizer" \
    "$dir/Testing/Temporary/LastTest.log"; then
    echo "inject_bugs: a sanitizer reported an error (above; full output in $dir/Testing/Temporary/LastTest.log)"
    status=1
  fi
  echo "  $1: every emu test ran unmodified, status $status ($(($(date +%s) - start)) s)"
  return "$status"
}

# Everything for one build: its tests on the unmodified copy (unless
# EMU_CTEST ran them all), then its bugs, one at a time; each bug's result
# goes to a file, printed in list order.
inject() { # build
  local b=$1 i log status t0 result target
  local -A seen
  for i in "${!names[@]}"; do
    [[ -z ${EMU_CTEST:-} ]] || break
    [[ ${workers[$i]} == "$b" && -z ${seen[${tests[$i]}]:-} ]] || continue
    seen[${tests[$i]}]=1
    log=$prefix-$b/${tests[$i]}.baseline.log
    if ! build "$b" "${tests[$i]}" "$log" || ! run "$b" "${tests[$i]}" "$log"; then
      echo "inject_bugs: FAILED: ${tests[$i]} does not build or fails on the unmodified kernels ($b); see $log"
      return 1
    fi
    echo "  $b: ${tests[$i]} passes unmodified ($(($(date +%s) - start)) s)"
  done
  for i in "${!names[@]}"; do
    [[ ${workers[$i]} == "$b" ]] || continue
    t0=$(date +%s)
    sync_copy "$b" # undo the previous bug
    log=$prefix-$b/bug$((i + 1)).log
    target=$prefix-kernels-$b/${files[$i]}
    [[ ${files[$i]} == host/* ]] && target=$prefix-host-$b/${files[$i]#host/}
    if ! FROM=${froms[$i]} TO=${tos[$i]} perl -0777 -i -pe '
          BEGIN { ($f, $t) = ($ENV{FROM}, $ENV{TO}); s/\\n/\n/g for $f, $t; }
          my $n = () = /\Q$f\E/g;
          die "the text to replace occurs $n times, not once\n" if $n != 1;
          s/\Q$f\E/$t/;' "$target" 2>"$log"; then
      result="ERROR   ${names[$i]}: $(cat "$log") (update tests/cuda_cpu/bugs.txt)"
    elif ! build "$b" "${tests[$i]}" "$log"; then
      result="ERROR   ${names[$i]}: the injected bug does not compile (see $log)"
    else
      run "$b" "${tests[$i]}" "$log"
      status=$?
      if ((status == 124)); then
        result="MISSED  ${names[$i]}: ${tests[$i]} timed out after ${timeout_s} s (the watchdog should have stopped it)"
      elif ((status != 0)); then
        result="CAUGHT  ${names[$i]}: $(how "$log") [$b ${tests[$i]}]"
      else
        result="MISSED  ${names[$i]}: ${tests[$i]} passed with the bug [$b]"
      fi
    fi
    echo "$result" >"$prefix-$b/result.$i"
    echo "  $b: bug $((i + 1))/$count ${result%%  *} ($(($(date +%s) - t0)) s)"
  done
  sync_copy "$b"
}

# Only the workers that have bugs (a BUG_LIST of a few records may need one).
active=()
for b in asan asan2 tsan; do
  for w in "${workers[@]}"; do [[ $w == "$b" ]] && { active+=("$b"); break; }; done
done
if [[ -n ${EMU_CTEST:-} ]]; then
  for b in asan tsan; do [[ " ${active[*]} " == *" $b "* ]] || active+=("$b"); done
fi
for b in "${active[@]}"; do configure "$b" || exit 1; done
if [[ -n ${EMU_CTEST:-} ]]; then
  ctest_failed=0
  for b in asan tsan; do emu_ctest "$b" || ctest_failed=1; done
  ((ctest_failed == 0)) || { echo "inject_bugs: the emu tests fail unmodified; no bug injected"; exit 1; }
fi
for b in "${active[@]}"; do rm -f "$prefix-$b"/result.* "$prefix-$b/worker.rc"; done
echo "inject_bugs: $count bugs; workers side by side: ${active[*]}"
# Each worker's status goes through a file: `wait PID` can lose it (a CI run
# was told "pid is not a child of this shell" once the other worker's
# thousands of processes had recycled the finished worker's pid).
for b in "${active[@]}"; do
  (
    inject "$b"
    echo $? >"$prefix-$b/worker.rc"
  ) &
done
wait
failed_workers=0
for b in "${active[@]}"; do
  rc=$(cat "$prefix-$b/worker.rc" 2>/dev/null || echo "no status")
  [[ $rc == 0 ]] || { echo "inject_bugs: the $b worker ended with status $rc"; failed_workers=1; }
done
((failed_workers == 0)) || exit 1

caught=0
echo
for i in "${!names[@]}"; do
  [[ -n ${workers[$i]} ]] || continue # not in the sample
  f=$prefix-${workers[$i]}/result.$i
  if [[ -f $f ]]; then
    [[ $(cat "$f") == CAUGHT* ]] && caught=$((caught + 1))
  else
    echo "ERROR   ${names[$i]}: no result (its worker ${workers[$i]} stopped before it)" >"$f"
  fi
done
echo "==== injected bugs: $caught of $count caught ($(($(date +%s) - start)) s) ===="
for i in "${!names[@]}"; do [[ -z ${workers[$i]} ]] || cat "$prefix-${workers[$i]}/result.$i"; done
((caught == count))
