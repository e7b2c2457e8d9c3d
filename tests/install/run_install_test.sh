#!/usr/bin/env bash
# Installs the built library into a scratch prefix, then builds and runs a
# program outside the tree against it three ways: the CMake package (shared
# and static targets) and pkg-config.
# Usage: run_install_test.sh <build-dir> <consumer-source-dir> <scratch-dir>
set -euo pipefail
build=$1 consumer=$2 scratch=$3
rm -rf "$scratch"
mkdir -p "$scratch"
prefix=$scratch/prefix

cmake --install "$build" --prefix "$prefix" >"$scratch/install.log"

cmake -S "$consumer" -B "$scratch/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  >"$scratch/configure.log" || { cat "$scratch/configure.log"; exit 1; }
cmake --build "$scratch/build" >"$scratch/build.log" || { cat "$scratch/build.log"; exit 1; }
"$scratch/build/consumer"
"$scratch/build/consumer_static"

libdir=$(dirname "$(find "$prefix" -name condconv.pc | head -n1)")/..
export PKG_CONFIG_PATH=$libdir/pkgconfig
# shellcheck disable=SC2046
cc -std=c11 -o "$scratch/consumer_pc" "$consumer/main.c" $(pkg-config --cflags --libs condconv) \
  -Wl,-rpath,"$libdir"
"$scratch/consumer_pc"
echo "install test: CMake package (shared, static) and pkg-config consumers passed"
