"""jupyter-modelrunner: Docker Model Runner's workflow inside Jupyter.

Importing the package is cheap: the store, distribution, engines, widgets and the server extension load
on first use. From a notebook:

- `%load_ext jupyter_modelrunner`, then `%model pull ai/smollm2` and `%%chat ai/smollm2`;
- `OpenAI(base_url=jupyter_modelrunner.base_url(), api_key=jupyter_modelrunner.api_key())`;
- `jupyter_modelrunner.picker()` for a model picker widget, `jupyter_modelrunner.runner()` for the client;
- `jupyter_modelrunner.map(model, inputs, prompt=…, schema=…)` and `embed(model, inputs)` for work on data
  (mapping.py: many requests at once, cached, with progress).
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .client import api_key, base_url, connect, host, runner

# `map` is not in __all__: a star import must not shadow the builtin.
__all__ = ["MapRowFailed", "RowError", "__version__", "api_key", "base_url", "connect", "embed", "host", "picker",
           "runner"]
#: Loaded on first use (mapping.py brings sqlite3 and the cache): `import jupyter_modelrunner` stays cheap.
_MAPPING = ("map", "embed", "RowError", "MapRowFailed")


def __getattr__(name: str) -> Any:
    if name in _MAPPING:
        from . import mapping

        return getattr(mapping, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def picker(client: Any = None) -> Any:
    """A widget listing the local models, with a pull box, the engine that runs the chosen one, load/unload."""
    from .widgets import picker as make_picker

    return make_picker(client)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_modelrunner`: the `%model` and `%%chat` magics."""
    from .magics import load_ipython_extension as load

    load(ipython)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """How jupyter_server finds the extension (enabled by jupyter-config/server-config/jupyter_modelrunner.json)."""
    from .serverext import ModelRunner

    return [{"module": "jupyter_modelrunner.serverext", "app": ModelRunner}]
