#!/usr/bin/env bash
# The main job: builds condconv and runs condconv-bench with no arguments.
# On a GPU: the expert-count sweep over EfficientNet-CondConv-B0's CondConv
# layers at batch 32, against the static cuDNN convolution in the same run.
# Without a GPU: a clear notice, then the CPU reference path on a small
# layer with its timing and cost model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
build=${BUILD_DIR:-build}
# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)" --target condconv-bench >/dev/null
exec "$build/bench/condconv-bench" "$@"
