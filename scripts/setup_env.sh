#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh machine (run as root): Debian's Fashion-MNIST package
# and a Python 3.11 virtual environment in .venv with xaijax installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
