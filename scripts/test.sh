#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a real OCI registry (Debian's CNCF distribution), skopeo for interop checks,
# htpasswd for the authenticated registry, curl for the benchmark baseline.
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
command -v curl >/dev/null || missing+=(curl)
# The JupyterLab extension: Node builds it, Chromium runs its browser test.
command -v node >/dev/null || missing+=(nodejs)
command -v chromium >/dev/null || missing+=(chromium)
if ((${#missing[@]})); then
    sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    echo "Installing ${missing[*]} ..."
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project and its test dependencies, in a virtual environment of its own.
bash scripts/install.sh test
# Engines, as a user gets them: llama.cpp's llama-server (compiled once portably and cached; a cold machine
# takes ~10 minutes on 2 cores, then it is a no-op) and vLLM's CPU build in its own environment (~3 minutes),
# so both engine paths are tested for real.
.venv/bin/jupyter-modelrunner install-runner all
# llama-cpp-python's server (the fallback engine, and the benchmarks' baseline) without compiling llama.cpp a
# second time: its bindings load the libraries install-runner built from the same source (pure Python, seconds).
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" .venv/bin/python -m pip install -q "llama-cpp-python[server]==0.3.36"

# The JupyterLab extension (labextension/): dependencies from yarn's per-user cache, a fresh build for the
# browser test (tests/browser), and its unit tests (Jest). jlpm and jupyter-builder come with the venv.
(
    export PATH="$PWD/.venv/bin:$PATH"
    cd labextension
    jlpm install
    jlpm build
    jlpm test --ci
)

.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
