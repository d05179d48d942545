"""llama.cpp through llama-cpp-python's OpenAI-compatible server, on a Unix socket.

llama-cpp-python's own CLI can only listen on TCP, so the process runs our small launcher
(`llamacpp_server.py`), which builds the same FastAPI app and serves it with uvicorn on a socket in a
user-only directory: no port, no key, no other local user can reach it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import mediatypes as mt
from .base import MODE_EMBEDDING, Availability, Engine, FlagSpec, Launch, ModelFacts, RunConfig
from .hardware import Hardware

if TYPE_CHECKING:
    from ..store import Model

INSTALL_HINT = (
    "install it with `bash scripts/install-engines.sh llamacpp` (or `pip install 'jupyter-modelrunner[llamacpp]'`)"
)


class LlamaCppEngine(Engine):
    name = "llama.cpp"
    formats = frozenset({mt.FORMAT_GGUF})
    load_timeout = 180.0
    overhead_bytes = 192 * 1024**2
    # Flags of llama-cpp-python's server a user may set per model; everything else is refused.
    allowed_flags = {
        "--n_threads": FlagSpec(help="threads for generation"),
        "--n_threads_batch": FlagSpec(help="threads for prompt processing"),
        "--n_batch": FlagSpec(help="prompt batch size"),
        "--n_ubatch": FlagSpec(help="physical batch size"),
        "--n_gpu_layers": FlagSpec(help="layers to offload to the GPU (-1: all)"),
        "--main_gpu": FlagSpec(help="GPU to use"),
        "--tensor_split": FlagSpec(help="split across GPUs"),
        "--flash_attn": FlagSpec(help="flash attention (true/false)"),
        "--rope_freq_base": FlagSpec(), "--rope_freq_scale": FlagSpec(),
        "--type_k": FlagSpec(help="KV cache key type"), "--type_v": FlagSpec(help="KV cache value type"),
        "--seed": FlagSpec(), "--use_mlock": FlagSpec(), "--use_mmap": FlagSpec(),
        "--chat_format": FlagSpec(help="override the chat format"),
        "--cache": FlagSpec(help="prompt cache (true/false)"),
        "--verbose": FlagSpec(),
    }

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def availability(self, hardware: Hardware) -> Availability:
        if self.python == sys.executable:
            if importlib.util.find_spec("llama_cpp") is None:
                return Availability(False, f"llama-cpp-python is not installed; {INSTALL_HINT}")
            try:
                version = importlib.metadata.version("llama-cpp-python")
            except importlib.metadata.PackageNotFoundError:
                version = None
            if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("fastapi") is None:
                return Availability(False, f"llama-cpp-python's server extra is missing; {INSTALL_HINT}")
        else:
            version = None
        device = "cuda" if hardware.cuda else "cpu"
        where = "all layers on the GPU" if hardware.cuda else "on the CPU"
        return Availability(True, f"llama.cpp {version or ''} runs GGUF models {where}".replace("  ", " "),
                            device=device, version=version)

    def launch(
        self, model: Model, *, workdir: Path, config: RunConfig, hardware: Hardware, mode: str,
        cache_dir: Path | None = None,
    ) -> Launch:
        ggufs = model.gguf_files()
        if not ggufs:
            raise FileNotFoundError(f"The bundle of {model.short_id} has no GGUF file")
        facts = ModelFacts.of(model)
        socket = workdir / "engine.sock"
        argv = [
            self.python, "-m", "jupyter_modelrunner.engines.llamacpp_server",
            "--uds", str(socket),
            "--model", str(ggufs[0]),
            "--model_alias", "model",
            "--n_ctx", str(config.context_size or self.default_context(facts)),
            "--n_gpu_layers", "-1" if hardware.cuda else "0",
        ]
        template = model.bundle / "template.jinja"
        if template.is_file():
            argv += ["--chat_template_file", str(template)]
        if mode == MODE_EMBEDDING:
            argv += ["--embedding", "true"]
            if not facts.extra.get("pooling_type"):
                argv += ["--pooling_type", "mean"]  # a generative model: one vector per input, not per token
        argv += list(config.runtime_flags)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER_", "JPY_"))}
        return Launch(argv=argv, env=env, socket=socket, health_path="/v1/models")
