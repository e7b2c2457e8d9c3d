#!/usr/bin/env bash
# Installs what building and testing condconv needs on a fresh Debian/Ubuntu
# machine, skipping whatever is already there. The CUDA toolkit (nvcc,
# cuBLAS) and cuDNN are expected to be installed already (see README).
# Usage: scripts/setup.sh [--ci]   (--ci adds the tools of the CI guard
# rails, scripts/ci-guards.sh: clang-format, clang-tidy, cppcheck, git)
set -euo pipefail

# Debian package -> a file that shows it is installed.
packages=(
  "cmake:/usr/bin/cmake"
  "make:/usr/bin/make"
  "gcc:/usr/bin/gcc"
  "g++:/usr/bin/g++"
  "pkg-config:/usr/bin/pkg-config"
  "libjansson-dev:/usr/include/jansson.h"
  # The test suite itself: the fuzz test builds with clang + libFuzzer, and
  # the leak tests run under valgrind.
  "clang:/usr/bin/clang"
  "libclang-rt-dev:/usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a"
  "valgrind:/usr/bin/valgrind"
)
if [[ "${1:-}" == "--ci" ]]; then
  packages+=(
    "clang-format:/usr/bin/clang-format"
    "clang-tidy:/usr/bin/clang-tidy"
    "cppcheck:/usr/bin/cppcheck"
    "git:/usr/bin/git"
  )
fi

missing=()
for entry in "${packages[@]}"; do
  pkg=${entry%%:*} file=${entry#*:}
  [[ -e "$file" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq || echo "setup: apt-get update failed; trying the cached package lists"
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || {
  echo "setup: nvcc not found: install the CUDA toolkit (13.x) and put its bin/ on PATH" >&2
  exit 1
}
echo "setup: all build and test dependencies are present"
