#!/usr/bin/env bash
# Installs the built library into a scratch prefix, then builds and runs a
# program outside the tree against it three ways: the CMake package (shared
# and static targets) and pkg-config.
# Usage: run_install_test.sh <build-dir> <consumer-source-dir> <scratch-dir> [extra-prefixes]
# extra-prefixes: the build's own CMAKE_PREFIX_PATH (a ;-list), where the
# dependencies came from when they are not in the system's directories (the
# GPU machine's Jansson is unpacked from carried packages): the consumer must
# find them the same way.
set -euo pipefail
build=$1 consumer=$2 scratch=$3 extra=${4:-}
rm -rf "$scratch"
mkdir -p "$scratch"
prefix=$scratch/prefix

cmake --install "$build" --prefix "$prefix" >"$scratch/install.log"
# A clone is complete, and so is an install: the bench's anchor tables and the valgrind
# suppressions travel with the package.
# (The anchors come with condconv-bench, when it is built.)
wanted=(share/condconv/valgrind-cuda-libs.supp)
[[ -x "$prefix/bin/condconv-bench" ]] &&
  wanted+=(share/condconv/bench/anchors/README.md share/condconv/bench/anchors/timm-vs-static-h200-2026-11-28.csv
    share/condconv/bench/anchors/timm-effnet-models-h200-2026-11-28.csv)
for f in "${wanted[@]}"; do
  [[ -f "$prefix/$f" ]] || { echo "install test: $f is not installed" >&2; exit 1; }
done

cmake -S "$consumer" -B "$scratch/build" -DCMAKE_PREFIX_PATH="$prefix${extra:+;$extra}" -DCMAKE_BUILD_TYPE=Release \
  >"$scratch/configure.log" || { cat "$scratch/configure.log"; exit 1; }
cmake --build "$scratch/build" >"$scratch/build.log" || { cat "$scratch/build.log"; exit 1; }
"$scratch/build/consumer"
"$scratch/build/consumer_static"

libdir=$(dirname "$(find "$prefix" -name condconv.pc | head -n1)")/..
if ! command -v pkg-config >/dev/null; then
  echo "install test: CMake package (shared, static) consumers passed; pkg-config is not installed here, so" \
    "the pkg-config consumer was not built (scripts/setup.sh installs it)"
  exit 0
fi
pc_path=$libdir/pkgconfig
IFS=';' read -r -a extra_dirs <<<"$extra"
for dir in "${extra_dirs[@]}"; do
  for sub in lib/pkgconfig lib/x86_64-linux-gnu/pkgconfig lib64/pkgconfig share/pkgconfig; do
    [[ -d "$dir/$sub" ]] && pc_path=$pc_path:$dir/$sub
  done
done
export PKG_CONFIG_PATH=$pc_path${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
# shellcheck disable=SC2046
cc -std=c11 -o "$scratch/consumer_pc" "$consumer/main.c" $(pkg-config --cflags --libs condconv) \
  -Wl,-rpath,"$libdir"
"$scratch/consumer_pc"
supp=$(pkg-config --variable=valgrind_suppressions condconv)
[[ -f "$supp" ]] || { echo "install test: pkg-config's valgrind_suppressions '$supp' is not an installed file" >&2; exit 1; }
echo "install test: CMake package (shared, static) and pkg-config consumers passed"
