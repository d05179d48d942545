"""Moving model artifacts between OCI registries and the local store (pull, push, package).

Nothing here knows where the store lives or how engines run; it speaks the registry protocol and
Docker's model artifact format, and writes through the `BlobStore` protocol.
"""

from .package import package_gguf, package_safetensors
from .progress import ProgressEvent
from .pull import PullCancelled, PullResult, pull
from .push import PushResult, push

__all__ = [
    "ProgressEvent",
    "PullCancelled",
    "PullResult",
    "PushResult",
    "package_gguf",
    "package_safetensors",
    "pull",
    "push",
]
