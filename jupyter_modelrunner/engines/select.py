"""Which engine runs a model here, and why: the decision the user always gets to see.

Each engine says which formats it runs and how much it wants them (`Engine.formats`, `Engine.priority`): GGUF goes
to llama.cpp; safetensors to vLLM when a usable vLLM is installed (an NVIDIA GPU with vLLM, or vLLM's CPU build), and
otherwise fails with the fix; an engine another package registers takes the formats it declares. A forced engine is
honoured or refused with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import mediatypes as mt
from ..errors import EngineUnavailable, UnknownEngine
from .base import Engine
from .hardware import Hardware
from .registry import default_engines, find_engine

if TYPE_CHECKING:
    from ..store import Model


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    device: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"engine": self.engine.name, "device": self.device, "reason": self.reason}


def select_engine(
    model: Model, hardware: Hardware, engines: Sequence[Engine] | None = None, *, forced: str | None = None
) -> EngineChoice:
    """Choose the engine for `model`: the available engine with the highest priority among those that run its
    format; raises `EngineUnavailable` with the fix (the best engine's own reason) when none can."""
    engines = list(engines or default_engines())
    fmt = model.format or mt.FORMAT_GGUF
    if forced:
        engine = find_engine(engines, forced)
        if engine is None:
            raise UnknownEngine(f"Unknown engine {forced!r}; choose one of {', '.join(e.name for e in engines)}.")
        if fmt not in engine.formats:
            runs = [e.name for e in engines if fmt in e.formats]
            raise EngineUnavailable(f"{engine.name} cannot run {fmt} models; "
                                    f"{' or '.join(runs) if runs else 'no configured engine'} does.")
        availability = engine.availability(hardware)
        if not availability.ok:
            raise EngineUnavailable(availability.reason)
        return EngineChoice(engine, availability.device, f"{engine.name} was requested; {availability.reason}")

    candidates = sorted((e for e in engines if fmt in e.formats), key=lambda e: -e.priority)
    if not candidates:
        raise EngineUnavailable(f"No engine for {fmt} models is configured.")
    first_refusal = None
    for engine in candidates:
        availability = engine.availability(hardware)
        if availability.ok:
            return EngineChoice(engine, availability.device, f"{fmt} model → {availability.reason}")
        first_refusal = first_refusal or availability.reason
    raise EngineUnavailable(f"Cannot run {fmt} model {model.short_id}: {first_refusal}.")
