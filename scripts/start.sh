#!/usr/bin/env bash
# The main job: install jupyter-modelrunner with the llama.cpp engine and start a Jupyter server with the
# extension. Its log prints the URL with the token; the API is under <that URL>modelrunner/ and the OpenAI
# endpoint under <that URL>modelrunner/engines/v1. Extra arguments go to `jupyter server`
# (e.g. --port=8899, --allow-root in a container).
# (The notebook and sidebar issues turn this into "start JupyterLab with the offline demo".)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/install-engines.sh llamacpp
extra=()
if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi
exec .venv/bin/jupyter server --ServerApp.open_browser=False "${extra[@]}" "$@"
