"""Which engine runs a model here, and why: the decision the user always gets to see.

GGUF goes to llama.cpp; safetensors goes to vLLM when a usable vLLM is installed (an NVIDIA GPU with
vLLM, or vLLM's CPU build), and otherwise fails with the fix. A forced engine is honoured or refused
with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import mediatypes as mt
from .base import Engine, EngineUnavailable, UnknownEngine
from .hardware import Hardware
from .llamacpp import LlamaCppEngine
from .vllm import VllmEngine

if TYPE_CHECKING:
    from ..store import Model

ENGINE_ALIASES = {"llama.cpp": "llama.cpp", "llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "vllm": "vllm"}


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    device: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"engine": self.engine.name, "device": self.device, "reason": self.reason}


def default_engines() -> list[Engine]:
    return [LlamaCppEngine(), VllmEngine()]


def select_engine(
    model: Model, hardware: Hardware, engines: Sequence[Engine] | None = None, *, forced: str | None = None
) -> EngineChoice:
    """Choose the engine for `model`; raises `EngineUnavailable` with the fix when none fits."""
    engines = list(engines or default_engines())
    by_name = {engine.name: engine for engine in engines}
    fmt = model.format or mt.FORMAT_GGUF
    if forced:
        name = ENGINE_ALIASES.get(forced.lower())
        if name is None or name not in by_name:
            raise UnknownEngine(f"Unknown engine {forced!r}; choose one of {', '.join(by_name)}.")
        engine = by_name[name]
        if fmt not in engine.formats:
            raise EngineUnavailable(f"{engine.name} cannot run {fmt} models; {_natural(fmt)} does.")
        availability = engine.availability(hardware)
        if not availability.ok:
            raise EngineUnavailable(availability.reason)
        return EngineChoice(engine, availability.device, f"{engine.name} was requested; {availability.reason}")

    wanted = "vllm" if fmt == mt.FORMAT_SAFETENSORS else "llama.cpp"
    engine = by_name.get(wanted)
    if engine is None:
        raise EngineUnavailable(f"No engine for {fmt} models is configured.")
    availability = engine.availability(hardware)
    if not availability.ok:
        raise EngineUnavailable(f"Cannot run {fmt} model {model.short_id}: {availability.reason}.")
    return EngineChoice(engine, availability.device, f"{fmt} model → {availability.reason}")


def _natural(fmt: str) -> str:
    return "vLLM" if fmt == mt.FORMAT_SAFETENSORS else "llama.cpp"
