"""Default locations, in one place.

The store lives under Jupyter's data directory by default so that the server, its kernels and the CLI
agree without configuration. The directory is computed here rather than by importing `jupyter_core`,
because the core library must stay importable without Jupyter. Installed engines live next to the store;
what can be rebuilt or downloaded again (sources, compiled builds) lives in the user's cache directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_STORE = "MODEL_RUNNER_STORE"


def jupyter_data_dir() -> Path:
    """Jupyter's per-user data directory, by the same rules as `jupyter --data-dir`."""
    if os.environ.get("JUPYTER_DATA_DIR"):
        return Path(os.environ["JUPYTER_DATA_DIR"]).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Jupyter"
    if os.name == "nt":
        appdata = os.environ.get("APPDATA")
        return Path(appdata) / "jupyter" if appdata else home / ".jupyter" / "data"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else home / ".local" / "share") / "jupyter"


def default_store_path() -> Path:
    """`$MODEL_RUNNER_STORE`, else `<jupyter data dir>/modelrunner/store`."""
    if os.environ.get(ENV_STORE):
        return Path(os.environ[ENV_STORE]).expanduser()
    return jupyter_data_dir() / "modelrunner" / "store"


def engines_dir() -> Path:
    """Where `install-runner` puts engines (`<jupyter data dir>/modelrunner/engines`), one folder per engine."""
    return jupyter_data_dir() / "modelrunner" / "engines"


def user_cache_dir() -> Path:
    """The per-user cache (`$XDG_CACHE_HOME/jupyter-modelrunner`, `~/Library/Caches/…`, `%LOCALAPPDATA%\\…`):
    what is safe to delete because it can be made again (downloaded sources, compiled engines)."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "jupyter-modelrunner"
    if os.name == "nt":
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else home / "AppData" / "Local") / "jupyter-modelrunner"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else home / ".cache") / "jupyter-modelrunner"


def jupyter_runtime_dir() -> Path:
    """Jupyter's runtime directory (`jupyter --runtime-dir`): where servers leave their connection files."""
    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return Path(os.environ["JUPYTER_RUNTIME_DIR"]).expanduser()
    return jupyter_data_dir() / "runtime"


def standalone_server_file() -> Path:
    """Where `jupyter modelrunner serve` writes its URL and token (user-only), for clients on the machine."""
    return jupyter_runtime_dir() / "modelrunner-serve.json"


def embedded_server_file() -> Path:
    """Where the runner that kernels start for themselves (`serve --embedded`) leaves its URL, token and settings."""
    return jupyter_runtime_dir() / "modelrunner-embedded.json"
