"""vLLM: safetensors models, on an NVIDIA GPU or vLLM's CPU build, in an environment of its own.

`engine.py` plans and launches it (with a standby interpreter whose imports are done, `standby.py`) and talks to
it; `install.py` makes its environment (`install-runner vllm`).
"""

from .engine import Vllm, default_vllm_python, reasoning_parser, tool_call_parser

__all__ = ["Vllm", "default_vllm_python", "reasoning_parser", "tool_call_parser"]
