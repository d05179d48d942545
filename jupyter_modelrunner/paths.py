"""Default locations, in one place.

The store lives under Jupyter's data directory by default so that the server, its kernels and the CLI
agree without configuration. Jupyter's data and runtime directories are `jupyter_core`'s answers (the same
as `jupyter --data-dir` and `jupyter --runtime-dir`, including `JUPYTER_PLATFORM_DIRS`), so a runtime file
that Jupyter's server writes is where the client looks for it. `jupyter_core.paths` is imported on first
use: it brings `platformdirs` and `tempfile`, which `import jupyter_modelrunner` (and `%load_ext`) need not pay
for. Installed engines live next to the store; what can be rebuilt or downloaded again (sources, compiled
builds) lives in the user's cache directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_STORE = "MODEL_RUNNER_STORE"


def jupyter_data_dir() -> Path:
    """Jupyter's per-user data directory: `jupyter --data-dir`."""
    from jupyter_core.paths import jupyter_data_dir as data_dir

    return Path(data_dir())


def default_store_path() -> Path:
    """`$MODEL_RUNNER_STORE`, else `<jupyter data dir>/modelrunner/store`."""
    if os.environ.get(ENV_STORE):
        return Path(os.environ[ENV_STORE]).expanduser()
    return jupyter_data_dir() / "modelrunner" / "store"


def answer_cache_file(store: Path | None = None) -> Path:
    """The answer cache of `map` and `embed` (answer_cache.py): `<store>/cache/answers.sqlite`, in the user's store
    (by default `default_store_path()`) because it is theirs, like the models it holds answers of."""
    return (store if store is not None else default_store_path()) / "cache" / "answers.sqlite"


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


def config_dir() -> Path:
    """Our folder in Jupyter's per-user config directory (`jupyter --config-dir`): inference keys live here."""
    from jupyter_core.paths import jupyter_config_dir

    return Path(jupyter_config_dir()) / "modelrunner"


def jupyter_runtime_dir() -> Path:
    """Jupyter's runtime directory (`jupyter --runtime-dir`): where servers leave their connection files."""
    from jupyter_core.paths import jupyter_runtime_dir as runtime_dir

    return Path(runtime_dir())
