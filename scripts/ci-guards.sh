#!/usr/bin/env bash
# The guard rails CI runs after scripts/test.sh (.ci/run). Each guard is a
# labelled section of the log ("==== guard: NAME ===="); a summary table
# closes the run, and any failed guard fails it.
#
#   werror    the whole tree (library, kernels, tests, bench, examples, the
#             fuzz target) built with CONDCONV_WERROR=ON: host C with -Wall
#             -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wconversion,
#             nvcc with -Werror all-warnings
#   asan      a second build, CONDCONV_SANITIZE=ON (host C with
#             AddressSanitizer + UBSan, halting at the first finding), and
#             the `cpu` tests in it
#   valgrind  every `cpu` test program (found with `ctest --show-only`, so a
#             new test is covered without editing this file) and the
#             example's CPU path under valgrind memcheck: a definite leak or
#             an invalid access fails
#   format    clang-format --dry-run --Werror over the C, C++, header and
#             CUDA files git tracks
#   tidy      clang-tidy (.clang-tidy) over host/*.c, tests/*.c, the CPU
#             execution layer's C tests and C++ engine (tests/cuda_cpu/*.c, the NVTX recorder tests/nvtx/nvtx_recorder.c,
#             tests/cuda_cpu/src/*.cpp) and the project's headers, with
#             compile_commands.json of the werror build
#   cppcheck  cppcheck over host/, include/ and tests/
#   spills    every kernel instance of kernels/*.cu compiled for sm_80 and
#             sm_90 (nvcc -Xptxas -v) spills 0 bytes, unless a
#             "// spill-accepted: KERNEL: why" comment at the kernel says
#             why a spill is accepted (scripts/check-spills.sh; ~40 s on
#             2 cores)
#   emu       the CPU execution layer (tests/cuda_cpu: the CUDA kernels and
#             condconv_forward run on the CPU) built with ASan + UBSan and
#             with TSan, every emu test in each, then the bug-injection
#             proof in the same builds (tests/cuda_cpu/inject_bugs.sh
#             EMU_CTEST=1: each listed kernel bug must make its test
#             fail): a sixth of the list per run, chosen
#             by the commit's first two hex digits mod 6, since the whole
#             list takes ~45 min on 2 cores and CI has 90 in all with the
#             rest near 75 (BUG_SAMPLE=K/N picks another share;
#             BUG_SAMPLE= (set, empty) runs the whole list)
#   python    ruff check and ruff format --check over python/ and bench/network/ (config in
#             pyproject.toml), then one real `pip install .` of the clone
#             into a throwaway virtual environment (its own, no system or
#             cached-venv packages; built for sm_90 only), then a smoke import
#             and one CPU forward from the installed wheel, the library
#             resolving every dependency through its RPATH, and the core's
#             tests (python/tests/test_core.py) against that wheel
#
# Usage: scripts/ci-guards.sh [GUARD...]   (default: all nine, in that order)
# Environment: GUARDS_BUILD_PREFIX (default build: builds go to build-werror
# and build-asan), GUARDS_WERROR_DIR (the werror build's directory, default
# PREFIX-werror: .ci/run points it at scripts/test.sh's build, which it
# configures with CONDCONV_WERROR=ON, so that the tree is compiled once, not
# twice; the guard reconfigures it with the werror flags, so a build made
# without them is rebuilt, never taken as one), JOBS (default 2, CI's cores).
# Tools come from Debian packages: scripts/setup.sh --ci installs missing
# ones; a tool still missing after that fails the run with its name.

# shellcheck disable=SC2317 # the guard_* functions are called as "guard_$name"
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
jobs=${JOBS:-2}
prefix=${GUARDS_BUILD_PREFIX:-build}
werror_dir=${GUARDS_WERROR_DIR:-$prefix-werror}
[[ $werror_dir == /* ]] || werror_dir=$root/$werror_dir
asan_dir=$root/$prefix-asan
all_guards=(werror asan valgrind format tidy cppcheck spills emu python)
guards=("$@")
((${#guards[@]})) || guards=("${all_guards[@]}")
for g in "${guards[@]}"; do
  [[ " ${all_guards[*]} " == *" $g "* ]] || { echo "ci-guards: unknown guard '$g' (one of: ${all_guards[*]})" >&2; exit 2; }
done

run_start=$(date +%s)
echo "==== ci-guards: set-up ===="
scripts/setup.sh --ci || { echo "ci-guards: FAILED: scripts/setup.sh --ci could not install the CI tools" >&2; exit 1; }
export PATH=$PATH:/usr/local/cuda/bin
# Tool -> the Debian package that provides it.
required=(cmake:cmake gcc:gcc git:git clang:clang clang-format:clang-format clang-tidy:clang-tidy
          cppcheck:cppcheck valgrind:valgrind nvcc:"the CUDA toolkit")
missing=0
for entry in "${required[@]}"; do
  tool=${entry%%:*} pkg=${entry#*:}
  if ! command -v "$tool" >/dev/null; then
    echo "ci-guards: FAILED: '$tool' is not installed after scripts/setup.sh --ci (install $pkg)" >&2
    missing=1
  fi
done
((missing == 0)) || exit 1
for tool in gcc clang-format clang-tidy cppcheck valgrind; do
  printf '  %-13s %s\n' "$tool" "$("$tool" --version 2>&1 | head -n1)"
done

# --- builds ------------------------------------------------------------------
configure_and_build() { # dir, cmake args...
  local dir=$1
  shift
  mkdir -p "$dir"
  cmake -S "$root" -B "$dir" "$@" >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; return 1; }
  cmake --build "$dir" -j"$jobs"
}
werror_built=0
build_werror() {
  ((werror_built)) && return 0
  configure_and_build "$werror_dir" -DCMAKE_BUILD_TYPE=Release -DCONDCONV_WERROR=ON -DCONDCONV_SANITIZE=OFF &&
    werror_built=1
}

# --- the guards --------------------------------------------------------------
guard_werror() {
  build_werror || return 1
  # The fuzz target is compiled by run_fuzz.sh (clang), outside CMake, with
  # the same warning flags; build it without running it.
  local rc=0
  FUZZ_BUILD_ONLY=1 FUZZ_WORK="$werror_dir/tests/fuzz/werror" tests/fuzz/run_fuzz.sh "$werror_dir" || rc=$?
  ((rc == 0)) || { echo "ci-guards: the fuzz target did not build with -Werror (exit $rc)"; return 1; }
}

guard_asan() {
  configure_and_build "$asan_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONDCONV_SANITIZE=ON -DCONDCONV_WERROR=OFF ||
    return 1
  # The sanitizers are really in: a test program loads libasan and libubsan.
  # ldd's output is captured first: `ldd | grep -q` under pipefail fails at
  # random when grep exits at its first match and ldd dies of SIGPIPE (1 in
  # 300 here; the likely cause of a failed CI run).
  local deps
  deps=$(ldd "$asan_dir/tests/test_reference_cases") || deps=
  if [[ $deps != *libasan* || $deps != *libubsan* ]]; then
    echo "ci-guards: $asan_dir/tests/test_reference_cases is not linked with ASan and UBSan"
    return 1
  fi
  # Left out, because they cannot run under ASan:
  #  test_install           installs the library and builds programs outside the tree without
  #                         sanitizers; an uninstrumented program cannot load an ASan library
  #  test_fuzz_safetensors  builds its own clang libFuzzer+ASan+UBSan target, which cannot link
  #                         the gcc-ASan static library of this build (it runs in scripts/test.sh)
  #  *_valgrind             valgrind and ASan cannot share a process (the valgrind guard runs them)
  local exclude='^(test_install|test_fuzz_safetensors|.*_valgrind)$'
  local rc=0
  (
    cd "$asan_dir" &&
      ASAN_OPTIONS=abort_on_error=1:halt_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1 \
      UBSAN_OPTIONS=abort_on_error=1:halt_on_error=1:print_stacktrace=1 \
        ctest -L cpu -E "$exclude" -j"$jobs" --output-on-failure --no-tests=error
  ) || rc=1
  # A WILL_FAIL test passes on any non-zero exit: make sure no sanitizer spoke anyway.
  if grep -nE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$asan_dir/Testing/Temporary/LastTest.log"; then
    echo "ci-guards: a sanitizer reported an error (above; full output in $asan_dir/Testing/Temporary/LastTest.log)"
    rc=1
  fi
  return "$rc"
}

guard_valgrind() {
  build_werror || return 1
  local list=$werror_dir/valgrind/tests.txt logs=$werror_dir/valgrind
  rm -rf "$logs" && mkdir -p "$logs"
  # Not the CPU execution layer's tests (label emu): a GPU grid emulated
  # with real threads is far too slow under valgrind, and the layer has its
  # own ASan and TSan builds (guard emu).
  (cd "$werror_dir" && ctest -L cpu -LE emu --show-only=json-v1 >"$logs/tests.json") || return 1
  cmake -DJSON="$logs/tests.json" -DOUT="$list" -P scripts/ctest-commands.cmake || return 1
  local -a names=() workdirs=() will_fail=() commands=()
  local sep=$'\x1f' name wf wd cmd
  while IFS= read -r line; do
    IFS=$sep read -r -a fields <<<"$line"
    name=${fields[0]} wf=${fields[1]} wd=${fields[2]} cmd=${fields[3]}
    # Already run under valgrind by CTest: run them as they are, below.
    if [[ $(basename "$cmd") == valgrind ]]; then
      echo "  $name: already a valgrind test; run by CTest below"
      continue
    fi
    # Script-driven tests (install, fuzz) run programs of their own.
    if [[ ! -x $cmd ]] || [[ $(head -c4 "$cmd" | od -An -c | tr -d ' ') != '177ELF' ]]; then
      echo "  $name: skipped, $(basename "$cmd") is a script, not a test program"
      continue
    fi
    names+=("$name") workdirs+=("$wd") will_fail+=("$wf")
    commands+=("$(printf '%q ' "${fields[@]:3}")")
  done <"$list"
  ((${#names[@]})) || { echo "ci-guards: no cpu test program found to run under valgrind"; return 1; }

  # The tests' random cases are fewer here (CONDCONV_TEST_CASES): valgrind
  # is ~50x slower, and the paths are the same.
  local vg=(valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99
            --suppressions="$root/tests/valgrind-cuda-libs.supp")
  run_one() { # index -> exit status 0 (pass) or 1
    local i=$1 log=$logs/${names[$1]}.log rc=0 ok=0
    (cd "${workdirs[$i]:-$werror_dir}" && eval "CONDCONV_TEST_CASES=3 $(printf '%q ' "${vg[@]}") ${commands[$i]}") \
      >"$log" 2>&1 || rc=$?
    if ((rc == 99)); then
      ok=0
    elif ((will_fail[i])); then
      ((rc != 0)) && ok=1
    else
      ((rc == 0)) && ok=1
    fi
    if ((ok)); then
      echo "  valgrind: ${names[$i]} passed (exit $rc)"
    else
      echo "  valgrind: ${names[$i]} FAILED (exit $rc; 99 = memcheck found an error); the end of $log:"
      tail -n 40 "$log" | sed 's/^/    /'
      return 1
    fi
  }
  local failed=0 i running=0
  for i in "${!names[@]}"; do
    run_one "$i" &
    running=$((running + 1))
    if ((running >= jobs)); then
      wait -n || failed=1
      running=$((running - 1))
    fi
  done
  while ((running > 0)); do
    wait -n || failed=1
    running=$((running - 1))
  done
  # The tests that were valgrind tests already (hostile safetensors files, the
  # example's shutdown), with their own stricter settings.
  (cd "$werror_dir" && ctest -L cpu -R '_valgrind$' -j"$jobs" --output-on-failure --no-tests=error) || failed=1
  return "$failed"
}

guard_format() {
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "ci-guards: not a git checkout"; return 1; }
  local files
  files=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.cpp' | wc -l)
  echo "  checking $files files"
  git ls-files -z '*.c' '*.h' '*.cu' '*.cuh' '*.cpp' | xargs -0 clang-format --dry-run --Werror ||
    { echo "ci-guards: unformatted files (above); fix with: clang-format -i FILE"; return 1; }
}

guard_tidy() {
  build_werror || return 1
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "ci-guards: not a git checkout"; return 1; }
  # Top-level files only: tests/fuzz/ is built by run_fuzz.sh, not CMake,
  # so it has no entry in compile_commands.json. Headers come in through
  # HeaderFilterRegex.
  local out=$werror_dir/clang-tidy.log rc=0 db=$werror_dir/tidy-db
  # The library's own compile commands for host/*.c and tests/*.c: they are
  # compiled a second time for the CPU execution layer (-DCONDCONV_CUDA_CPU,
  # its headers first on the path), and clang-tidy would analyse that variant
  # too. The layer's own sources (tests/cuda_cpu) have only the layer's
  # commands. Its headers (tests/cuda_cpu/include) are not in
  # HeaderFilterRegex: they define CUDA's own names (__syncthreads,
  # __shfl_sync, ...), all reserved identifiers.
  mkdir -p "$db"
  python3 - "$werror_dir/compile_commands.json" "$db/compile_commands.json" <<'PY' || return 1
import json, sys
entries = json.load(open(sys.argv[1]))
def emu_variant_elsewhere(e):
    command = e.get("command", " ".join(e.get("arguments", [])))
    return "CONDCONV_CUDA_CPU" in command and "/tests/cuda_cpu/" not in e["file"]
json.dump([e for e in entries if not emu_variant_elsewhere(e)], open(sys.argv[2], "w"))
PY
  local -a globs=(':(glob)host/*.c' ':(glob)tests/*.c' ':(glob)tests/cuda_cpu/*.c' ':(glob)tests/cuda_cpu/src/*.cpp' ':(glob)tests/nvtx/nvtx_recorder.c')
  git ls-files -z "${globs[@]}" |
    xargs -0 -n1 -P"$jobs" clang-tidy -p "$db" --quiet --warnings-as-errors='*' >"$out" 2>&1 || rc=1
  grep -vE '^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$|^Suppressed [0-9]+ warnings|^Use -header-filter|^$' \
    "$out" || true
  ((rc == 0)) || { echo "ci-guards: clang-tidy findings (above): fix them, or NOLINT(check) with a reason"; return 1; }
  echo "  clang-tidy: $(git ls-files "${globs[@]}" | wc -l) files, no findings"
}

guard_cppcheck() {
  # --library=posix: the code calls fstat/fileno/strerror_r; without it
  # cppcheck cannot see a FILE* leak through them.
  cppcheck --enable=warning,performance,portability --error-exitcode=1 --inline-suppr --std=c11 --library=posix \
    -j"$jobs" -q -I include -I host -I kernels -I tests host include tests ||
    { echo "ci-guards: cppcheck findings (above): fix them, or suppress inline with a reason"; return 1; }
  echo "  cppcheck: host/ include/ tests/, no findings"
}

guard_spills() {
  JOBS=$jobs scripts/check-spills.sh "$prefix-spills"
}

guard_emu() {
  # nvcc: the layer reads each kernel's __launch_bounds__ and static shared
  # memory from nvcc's PTX of it. inject_bugs.sh with EMU_CTEST=1 builds the
  # layer with ASan + UBSan and with TSan, runs every emu test in each (the
  # end-to-end ones under ASan only), then injects the bugs into the same
  # builds (their unmodified baselines are those ctest runs).
  local sample head
  head=$(git rev-parse HEAD 2>/dev/null || echo 0)
  sample=${BUG_SAMPLE-$((16#${head:0:2} % 6))/6}
  JOBS=$jobs EMU_CTEST=1 BUG_SAMPLE=$sample tests/cuda_cpu/inject_bugs.sh "$prefix-emu-bugs" || return 1
}

guard_python() {
  local venv=${CONDCONV_VENV:-$HOME/.cache/condconv/venv}
  # ruff (pinned) from the cached environment; torch is not needed here.
  scripts/setup-python.sh --no-torch || { echo "ci-guards: scripts/setup-python.sh failed"; return 1; }
  "$venv/bin/ruff" check python bench/network || { echo "ci-guards: ruff findings (above)"; return 1; }
  "$venv/bin/ruff" format --check python bench/network || { echo "ci-guards: unformatted (fix with: ruff format python bench/network)"; return 1; }

  # The one command a user runs, from this clone, into a fresh environment: no
  # --system-site-packages and not the cached venv, so nothing there can
  # stand in for what the wheel should carry. pip's own wheel cache
  # (~/.cache/pip) spares downloading numpy and the build backend again.
  # The build directory is fresh too (not pyproject's build-py/), so the
  # wheel is built from the sources alone. CMAKE_ARGS builds the kernels for
  # sm_90 only, half the compile time of the default sm_80;sm_90: the guard
  # checks packaging, the architectures are the C build's business.
  local tmp rc=0
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/condconv-pip.XXXXXX")
  python3 -m venv "$tmp/venv" || { echo "ci-guards: python3 -m venv failed (Debian: python3-venv)"; rm -rf "$tmp"; return 1; }
  CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" "$tmp/venv/bin/python" -m pip install --disable-pip-version-check \
    --config-settings=build-dir="$tmp/build" . >"$tmp/pip.log" 2>&1 ||
    { tail -n 60 "$tmp/pip.log"; echo "ci-guards: pip install . failed (log above)"; rm -rf "$tmp"; return 1; }
  # Outside the clone and without CONDCONV_LIBRARY/PYTHONPATH: only the installed package can answer.
  (cd "$tmp" && env -u CONDCONV_LIBRARY -u PYTHONPATH "$tmp/venv/bin/python" - <<'PY') || rc=1
import pathlib, subprocess, sys

import numpy as np

import condconv
from condconv import _lib

path = _lib.library_path()
assert pathlib.Path(sys.prefix).resolve() in path.resolve().parents, f"loaded {path}, not the wheel's copy"
ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
assert "not found" not in ldd, ldd
with condconv.Context("cpu") as ctx:
    spec = condconv.LayerSpec(4, 8, 3, padding="same", num_experts=2, activation="silu")
    rng = np.random.default_rng(0)
    layer = condconv.Layer(ctx, spec, rng.standard_normal(spec.expert_shape), rng.standard_normal((2, 8)),
                           rng.standard_normal((2, 4)))
    y = layer.forward(rng.standard_normal((1, 4, 5, 5)).astype(np.float32))
    assert y.shape == (1, 8, 5, 5) and np.isfinite(y).all()
print(f"  installed condconv {condconv.version()} from {path}: one CPU forward ok")
PY
  readelf -d "$tmp"/venv/lib/python3*/site-packages/condconv/_native/libcondconv.so | grep -E 'RUNPATH|RPATH' || true
  # The core's tests against the installed wheel (pytest from the pinned version; python/ is not on the path).
  if ((rc == 0)); then
    "$tmp/venv/bin/python" -m pip install --disable-pip-version-check --quiet pytest==9.2.0 >>"$tmp/pip.log" 2>&1 &&
      env -u CONDCONV_LIBRARY -u PYTHONPATH "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider \
        python/tests/test_core.py || rc=1
  fi
  rm -rf "$tmp"
  return "$rc"
}

# --- run them ----------------------------------------------------------------
declare -A result seconds
for g in "${guards[@]}"; do
  echo
  echo "==== guard: $g ===="
  start=$(date +%s)
  if "guard_$g"; then result[$g]=PASS; else result[$g]=FAIL; fi
  seconds[$g]=$(($(date +%s) - start))
  echo "==== guard: $g: ${result[$g]} (${seconds[$g]} s) ===="
done

echo
echo "==== ci-guards: summary ===="
printf '%-10s %-6s %8s\n' guard result seconds
status=0
for g in "${guards[@]}"; do
  printf '%-10s %-6s %8s\n' "$g" "${result[$g]}" "${seconds[$g]}"
  [[ ${result[$g]} == PASS ]] || status=1
done
printf '%-10s %-6s %8s\n' total "$( ((status)) && echo FAIL || echo PASS)" "$(($(date +%s) - run_start))"
exit $status
