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
# Engines: llama.cpp (built once portably and cached; a cold machine compiles it in ~10 minutes on 2 cores)
# and vLLM's CPU build in its own environment (~3 minutes), so both engine paths are tested for real.
bash scripts/install-engines.sh llamacpp vllm

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
