"""jupyter-modelrunner: Docker Model Runner's workflow inside Jupyter.

Importing the package is cheap: the store, distribution, engines and the server extension load on
first use. From a notebook, `OpenAI(base_url=jupyter_modelrunner.base_url(), api_key=jupyter_modelrunner.api_key())`
talks to the models the notebook server runs.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .client import api_key, base_url, host

__all__ = ["__version__", "api_key", "base_url", "host"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """How jupyter_server finds the extension (enabled by jupyter-config/server-config/jupyter_modelrunner.json)."""
    from .serverext import ModelRunner

    return [{"module": "jupyter_modelrunner.serverext", "app": ModelRunner}]
