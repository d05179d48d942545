"""The exceptions of the core library, each carrying the sentence a user should read.

Front ends (CLI, magics, HTTP handlers) map these to exit codes, one-line messages and HTTP status
codes in one place each; nothing below them formats errors for display.
"""

from __future__ import annotations


class ModelRunnerError(Exception):
    """Base of every error the library raises on purpose; `str(err)` is the user-facing message."""

    #: HTTP status the API layer answers with; subclasses refine it.
    http_status = 500


class InvalidReference(ModelRunnerError, ValueError):
    """A model reference that cannot be parsed (bad characters, empty name, malformed digest)."""

    http_status = 400


class ModelNotFound(ModelRunnerError, LookupError):
    """The model (or tag) exists neither in the local store nor, when asked, in the registry."""

    http_status = 404


class RegistryError(ModelRunnerError):
    """The registry answered, but not with what we need (unexpected status, bad manifest)."""

    http_status = 502


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached at all (refused, DNS, TLS, timeout)."""

    http_status = 503


class AuthenticationFailed(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we sent."""

    http_status = 401


class UnsupportedArtifact(ModelRunnerError):
    """The artifact is not a model we know how to store and run (config or layer media type)."""

    http_status = 422


class ArtifactTooLarge(UnsupportedArtifact):
    """A manifest or config larger than any real model's; refused before it is parsed."""


class UnsafePath(UnsupportedArtifact):
    """A file path inside an artifact that would escape the store (absolute, `..`, link, device)."""


class DigestMismatch(ModelRunnerError):
    """Downloaded bytes whose sha256 differs from the digest the manifest promised."""

    http_status = 502


class StoreError(ModelRunnerError):
    """The local store cannot complete an operation (conflicting tags, corrupt index)."""

    http_status = 409


class InsufficientStorage(StoreError):
    """The disk under the store is full; the partial download is kept for resuming."""

    http_status = 507


class InstallError(ModelRunnerError):
    """An engine could not be installed (`install-runner`): a missing tool, a failed download or build.
    The message names the fix, and for a failed build where its full log is kept."""


class KeyNotFound(ModelRunnerError, LookupError):
    """`key revoke` of a name no key has."""

    http_status = 404


class EngineRefused(ModelRunnerError):
    """The engine answered a request with an error (a prompt longer than the context, a malformed tool): its own
    status and message, and its body (`content`) for the OpenAI routes, which pass an engine's error on as it is."""

    def __init__(self, status: int, message: str, content: bytes = b"") -> None:
        super().__init__(message)
        self.http_status = status
        self.content = content


class Overloaded(ModelRunnerError):
    """More requests wait for a model than its queue bound allows: try again after `retry_after` seconds."""

    http_status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TarLayerTooLarge(ArtifactTooLarge):
    """A tar layer that would unpack to far more than its own size (a gzip or sparse-file bomb); refused before the
    entry that crosses the cap is written."""


class UntrustedStore(ModelRunnerError):
    """A store folder or lease file that someone other than this user could have written: its record of where the
    owner listens (and with which token) cannot be believed. The message names the path and the fix."""

    http_status = 403
