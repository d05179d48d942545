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
# The editable install builds the JupyterLab extension (labextension/) with Node.
if ! command -v node >/dev/null; then
    echo "Node.js (18 or newer) is needed to build the JupyterLab extension: apt-get install nodejs" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=$(IFS=,; echo "$*")
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
