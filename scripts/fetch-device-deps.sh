#!/usr/bin/env bash
# Downloads the Debian packages the GPU machine may lack (it cannot reach a
# package registry) into .deps/debs, which is git-ignored: pass `.deps` in
# the device tool's `carry` list. scripts/device-check.sh unpacks them into
# .deps/root only when the machine has no Jansson of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/debs
cd .deps/debs
apt-get download libjansson4 libjansson-dev
ls -l
