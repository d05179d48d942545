"""llama.cpp: GGUF models on `llama-server` (parallel slots), or llama-cpp-python's server where none is built.

`engine.py` plans and launches it and talks to it, `install.py` builds llama-server (`install-runner llama.cpp`),
`python_server.py` is the fallback's entry point.
"""

from .engine import (
    DEFAULT_SLOTS,
    ENV_LLAMA_SERVER,
    IMPL_PYTHON,
    IMPL_SERVER,
    INSTALL_COMMAND,
    LLAMA_SERVER_FLAGS,
    LlamaServer,
    parse_reasoning_budget,
)

__all__ = ["DEFAULT_SLOTS", "ENV_LLAMA_SERVER", "IMPL_PYTHON", "IMPL_SERVER", "INSTALL_COMMAND", "LLAMA_SERVER_FLAGS",
           "LlamaServer", "parse_reasoning_budget"]
