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


class HandingOver(ModelRunnerError):
    """This (embedded) runner is handing its store over to a server that started on it: it finishes the work in
    flight and takes no new work, so nothing new runs on a runner about to unload. The client retries once at the
    new owner (`discovery.after_handover`); `retry_after` is a hint for clients that cannot look for it."""

    http_status = 503
    #: The response header that tells this 503 from an overloaded runner's.
    header = "X-Model-Runner-Handing-Over"

    def __init__(self, retry_after: int = 2) -> None:
        super().__init__("This model runner is handing the store over to a newer one (the server that just started "
                         "on it) and takes no new work; retry, and the new owner answers.")
        self.retry_after = retry_after


class TarLayerTooLarge(ArtifactTooLarge):
    """A tar layer that would unpack to far more than its own size (a gzip or sparse-file bomb); refused before the
    entry that crosses the cap is written."""


class UntrustedStore(ModelRunnerError):
    """A store folder or lease file that someone other than this user could have written: its record of where the
    owner listens (and with which token) cannot be believed. The message names the path and the fix."""

    http_status = 403


class EngineUnavailable(ModelRunnerError):
    """No installed engine can run this model here; the message names the fix."""

    http_status = 501


class UnknownEngine(EngineUnavailable):
    """An engine name (a URL's `engines/{engine}/`, `--engine`) that is none of ours."""

    http_status = 404


class EngineFlagRefused(ModelRunnerError):
    """A runtime flag outside the engine's allowlist."""

    http_status = 400


class UnsuitableModel(ModelRunnerError):
    """A request the model was not made for: reranking with a model that has no classification head to score
    with, or chatting with a reranker."""

    http_status = 400


class ImageRejected(ModelRunnerError):
    """An image in a request that cannot be used: not fetchable, too large, not an image, or a model that cannot
    see. The client's error (400), with the sentence it should read."""

    http_status = 400


class MalformedRequest(ModelRunnerError):
    """A translated request an engine would choke on (a malformed tool): the client's error, said before it loads."""

    http_status = 400


class MediaRefused(ModelRunnerError):
    """A content part this runner will not hand an engine (audio or video by URL, a part type it does not know)."""

    http_status = 400


class CapabilityMissing(ModelRunnerError):
    """A request the model cannot honour as asked (a required tool call from a template that cannot call tools):
    refused before anything loads, rather than answered in a way that silently breaks the API's contract."""

    http_status = 400


class PolicyRefused(ModelRunnerError):
    """Something only a manager may do, asked for with an inference key (unloading a model for everyone)."""

    http_status = 403


class PackagingRefused(ModelRunnerError, PermissionError):
    """A path to package lies outside the folders this server packages from (links resolved), or packaging over
    HTTP is off here."""

    http_status = 403


class RunnerUnreachable(ModelRunnerError):
    """No model runner answered; the message lists every place that was tried."""

    http_status = 503


class CheckCancelled(ModelRunnerError):
    """The caller stopped the check (its client went away); nothing was changed."""

    http_status = 499


class PullCancelled(ModelRunnerError):
    """The caller cancelled the pull; partial downloads are kept for the next attempt."""

    http_status = 499


class ArchiveTooLarge(ArtifactTooLarge):
    """An imported model archive larger than the import cap (`ModelRunner.max_import_bytes`); nothing of it is kept."""

    http_status = 413


class ArchiveDigestMismatch(DigestMismatch):
    """A blob of an imported archive whose bytes do not hash to the name it came under: the archive is corrupt or
    forged, the client's fault rather than a registry's."""

    http_status = 422


class FileNotFound(ModelRunnerError, LookupError):
    """A file of the Files API that does not exist, or that belongs to another caller (the same answer, so an id
    tells nobody else anything)."""

    http_status = 404


class BatchNotFound(ModelRunnerError, LookupError):
    """A batch that does not exist, or that belongs to another caller (the same answer, as for files)."""

    http_status = 404


class FileTooLarge(ModelRunnerError):
    """An upload to the Files API larger than `c.ModelRunner.max_batch_file_bytes`; nothing of it is kept."""

    http_status = 413


class BatchConflict(ModelRunnerError):
    """What a batch's state does not allow (cancelling one that has ended)."""

    http_status = 409
