"""Moving model artifacts between OCI registries and the local store (pull, push, package).

Nothing here knows where the store lives or how engines run; it speaks the registry protocol and
Docker's model artifact format, and writes through the `BlobStore` protocol.

The registry client pulls in oras, requests and jsonschema (about 2.5 s of imports), so the public
functions are loaded on first use: `ls`, `inspect` and the store stay instant.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..errors import PullCancelled
    from .package import package_gguf, package_safetensors, repackage
    from .progress import ProgressEvent
    from .pulling import PullResult, pull
    from .pushing import PushResult, push

_EXPORTS = {
    "ProgressEvent": "progress",
    "PullCancelled": "pulling",
    "PullResult": "pulling",
    "PushResult": "pushing",
    "package_gguf": "package",
    "package_safetensors": "package",
    "pull": "pulling",
    "push": "pushing",
    "repackage": "package",
}
__all__ = [
    "ProgressEvent", "PullCancelled", "PullResult", "PushResult", "package_gguf", "package_safetensors", "pull", "push",
    "repackage",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
