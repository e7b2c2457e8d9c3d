#!/usr/bin/env bash
# Downloads the Debian packages the GPU machine may lack (it cannot reach a
# package registry) into .deps/debs, which is git-ignored: pass `.deps` in
# the device tool's `carry` list. scripts/device-check.sh unpacks them into
# .deps/root only when the machine has no Jansson of its own. Also pytest's
# wheels (pure Python) into .deps/wheels, which the device check puts on
# PYTHONPATH for the Python package's GPU tests when the machine's python3
# has no pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/debs
cd .deps/debs
apt-get download libjansson4 libjansson-dev
ls -l
cd ..
mkdir -p wheels
python3 -m pip download --quiet --no-deps --only-binary=:all: -d wheels pytest==9.2.0 pluggy iniconfig packaging pygments
ls -l wheels
