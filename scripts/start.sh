#!/usr/bin/env bash
# The main job: install jupyter-modelrunner and show what it can do.
# (The server-extension and demo issues turn this into "start JupyterLab with the offline demo".)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/jupyter modelrunner --help
