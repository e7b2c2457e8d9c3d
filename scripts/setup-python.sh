#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment the Python tests and
# guards run in, and installs the pinned packages it lacks. The environment
# lives outside the clone, at ${CONDCONV_VENV:-$HOME/.cache/condconv/venv},
# so CI runs reuse it: the first install with torch takes about 6 minutes and
# 5.5 GB, a rerun with everything present takes about a second and installs
# nothing.
#
# Usage: scripts/setup-python.sh [--no-torch]
#   --no-torch  only numpy, pytest, ruff and scikit-build-core (enough for the
#               NumPy core's tests and the `python` guard); without it also
#               torch, torchvision and timm (condconv.torch's tests)
# Environment: CONDCONV_VENV (the environment), PYTHON (the interpreter that
# creates it, default python3; Python >= 3.9 with the venv module).
set -euo pipefail

with_torch=1
for arg in "$@"; do
  case $arg in
  --no-torch) with_torch=0 ;;
  -h | --help)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "setup-python: unknown argument '$arg' (use --no-torch or --help)" >&2
    exit 2
    ;;
  esac
done

venv=${CONDCONV_VENV:-$HOME/.cache/condconv/venv}
python=${PYTHON:-python3}

# Pinned to what the tests were last run with; raise together, deliberately.
pins=(numpy==2.4.6 pytest==9.2.0 ruff==0.17.6 scikit-build-core==1.1.2)
((with_torch)) && pins+=(torch==2.15.0 torchvision==0.29.2 timm==1.0.31)

if [[ ! -x "$venv/bin/python" ]]; then
  command -v "$python" >/dev/null || {
    echo "setup-python: '$python' not found; install Python >= 3.9 with its venv module (Debian: python3-venv)" >&2
    exit 1
  }
  echo "setup-python: creating $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv" || {
    echo "setup-python: '$python -m venv' failed; install the venv module (Debian: python3-venv)" >&2
    exit 1
  }
fi

# Which pins are not satisfied exactly (absent, or another version)?
mapfile -t missing < <("$venv/bin/python" - "${pins[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        print(pin)
EOF
)
if ((${#missing[@]})); then
  echo "setup-python: installing ${missing[*]} into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --quiet "${missing[@]}"
else
  echo "setup-python: $venv has ${pins[*]}"
fi
