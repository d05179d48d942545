#!/usr/bin/env bash
# Create .venv and install the project into it (editable), with the extras named as arguments.
# Usage: bash scripts/install.sh [extra ...]     e.g. bash scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "jupyter-modelrunner needs Python 3.11 or newer ($("$PYTHON" --version) found); set PYTHON=..." >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=$(IFS=,; echo "$*")
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
