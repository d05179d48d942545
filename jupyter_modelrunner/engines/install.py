"""Engines for users who only ran `pip install jupyter-modelrunner`: `jupyter modelrunner install-runner`.

The one entry point of the CLI: each engine package owns its installer (`Engine.install`, e.g. llama.cpp's build of
llama-server in `engines/llamacpp/install.py`, vLLM's environment in `engines/vllm/install.py`), and what they share
(the record in `<engines>/<engine>/installed.json`, the per-engine lock, logged subprocesses) is `installing.py`.
Only the record makes an engine installed: it is written last, after the files are complete and ran once.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import InstallError
from ..paths import engines_dir, user_cache_dir
from .installing import InstalledEngine, InstallProgress, Progress, _engine_lock, _record_path
from .installing import installed as _installed
from .registry import engine_classes


def engines() -> list[str]:
    """The names of the engines that can be installed here (every registered engine with an installer)."""
    return [name for name, cls in engine_classes().items() if cls.installable]


def engine_name(name: str) -> str:
    """The engine's name for any of its spellings (`llamacpp`, `llama-cpp`, `vLLM`); InstallError otherwise."""
    wanted = name.strip().lower()
    for canonical, cls in engine_classes().items():
        if (wanted == canonical.lower() or wanted in cls.aliases) and cls.installable:
            return canonical
    raise InstallError(f"Unknown engine {name!r}; install-runner installs {', '.join(engines())} (or all).")


def installed(engine: str) -> InstalledEngine | None:
    """What install-runner installed for `engine` (any spelling), or None."""
    return _installed(engine_name(engine))


def install(engine: str, *, gpu: str = "auto", force: bool = False, progress: Progress | None = None,
            **options: Any) -> InstalledEngine:
    """Install `engine` with its own installer; `options` are the engine's (`jobs` for a build, `extra_index_urls`
    for pip), ignored by engines that take none."""
    cls = engine_classes()[engine_name(engine)]
    return cls.install(gpu=gpu, force=force, progress=progress, **options)




def uninstall(engine: str, *, purge_cache: bool = False) -> list[Path]:
    """Remove an installed engine (record first, so nothing uses a half-deleted folder); with `purge_cache`, also
    its cached source and builds. Returns what was removed (empty when there was nothing)."""
    engine = engine_name(engine)
    removed: list[Path] = []
    with _engine_lock(engine, None):
        root = engines_dir() / engine
        _record_path(engine).unlink(missing_ok=True)
        if root.exists():
            shutil.rmtree(root)
            removed.append(root)
        cache = user_cache_dir() / engine
        if purge_cache and cache.exists():
            shutil.rmtree(cache)
            removed.append(cache)
    return removed


__all__ = ["InstallProgress", "InstalledEngine", "engine_name", "engines", "install", "installed", "uninstall"]
