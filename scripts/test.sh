#!/usr/bin/env bash
# Builds condconv and runs every test: the C tests (CTest), then the Python
# tests (pytest, python/tests) against the library this build made. Installs
# missing Debian build dependencies first (scripts/setup.sh) and the pinned
# Python packages into the cached virtual environment (scripts/setup-python.sh,
# outside the clone). On a machine without a CUDA device the `gpu`-labelled
# tests are reported as skipped, not passed.
# Environment: BUILD_DIR (default build), CMAKE_ARGS (extra configure flags),
# CTEST_ARGS (extra ctest arguments: CI passes -LE emu_sanitized, see .ci/run),
# CONDCONV_VENV (the Python environment), CONDCONV_PYTHON_TORCH=0 (skip
# installing torch and timm; condconv.torch's tests then report skips).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=${BUILD_DIR:-build}
# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j"$(nproc)"
build_abs=$(cd "$build" && pwd)

# Both suites run whatever the other's result; either failing fails the script.
ctest_rc=0
# shellcheck disable=SC2086
(cd "$build" && ctest --output-on-failure -j"$(nproc)" ${CTEST_ARGS:-}) 2>&1 | tee "$build/ctest.log" || ctest_rc=$?
if grep -q "(Skipped)" "$build/ctest.log"; then
  echo "NOTE: the tests listed as Skipped need a CUDA device; they did not run here."
fi

echo "==== Python tests (pytest python/tests) ===="
venv=${CONDCONV_VENV:-$HOME/.cache/condconv/venv}
setup_args=()
[[ ${CONDCONV_PYTHON_TORCH:-1} == 0 ]] && setup_args=(--no-torch)
pytest_rc=0
if scripts/setup-python.sh "${setup_args[@]}"; then
  CONDCONV_LIBRARY="$build_abs/libcondconv.so" PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" \
    "$venv/bin/python" -m pytest python/tests -ra || pytest_rc=$?
  # Exit 5 means pytest collected nothing: a suite that did not run has not passed.
  ((pytest_rc != 5)) || echo "test.sh: pytest collected no tests from python/tests" >&2
else
  pytest_rc=$?
  echo "test.sh: scripts/setup-python.sh failed (exit $pytest_rc); the Python tests did not run" >&2
fi

echo "test.sh: ctest exit $ctest_rc, pytest exit $pytest_rc"
((ctest_rc == 0 && pytest_rc == 0))
