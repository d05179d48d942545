"""Where engines come from: the `jupyter_modelrunner.engines` entry-point group.

An engine is one package that registers its `Engine` subclass under that group (as jupyter-server-proxy finds its
server processes), so another distribution can add SGLang or MLX without a change here:

    [project.entry-points."jupyter_modelrunner.engines"]
    sglang = "modelrunner_sglang:SGLang"

This package registers its own two the same way (pyproject.toml); they are also known directly, so a checkout run
without being installed still has them.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from .base import Engine
from .llamacpp import LlamaServer
from .vllm import Vllm

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "jupyter_modelrunner.engines"
_BUILT_IN: tuple[type[Engine], ...] = (LlamaServer, Vllm)


def engine_classes() -> dict[str, type[Engine]]:
    """Every engine class by name: this package's, then those other distributions register. One that fails to
    import, or is not an `Engine`, is skipped with a warning: a broken plug-in must not take the runner down."""
    found: dict[str, type[Engine]] = {cls.name: cls for cls in _BUILT_IN}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except Exception as exc:
            log.warning("engine %r (%s) cannot be loaded: %s", entry.name, entry.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Engine)):
            log.warning("engine %r (%s) is not a jupyter_modelrunner Engine; skipped", entry.name, entry.value)
            continue
        found.setdefault(cls.name, cls)
    return found


def default_engines(parent: Any = None) -> list[Engine]:
    """One configured instance of every engine (`parent`: the application whose config they read)."""
    return [cls(parent=parent) for cls in engine_classes().values()]


def find_engine(engines: list[Engine], name: str) -> Engine | None:
    """The engine `name` spells (its name or an alias, any case), among `engines`."""
    wanted = name.strip().lower()
    return next((engine for engine in engines
                 if wanted == engine.name.lower() or wanted in engine.aliases), None)
