"""The Hugging Face Hub as the runner speaks to it: `huggingface_hub` itself (its endpoint, token, offline mode,
proxies, cache layout and resumable downloads), wrapped so that every failure becomes one of our typed errors with
the sentence a user should read, and so the Hub's cache answers when the network does not.

`huggingface_hub` reads its settings from the environment once, at import; the runner may be embedded in a process
whose environment changes (the tests, a kernel), so the endpoint, cache folder, offline switch and token are read
here at each pull and passed explicitly.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import (
    AuthenticationFailed,
    ModelNotFound,
    PullCancelled,
    RegistryError,
    RegistryUnavailable,
    UnsafePath,
)
from ..artifact import safe_relative_path
from .selection import RepoFile
from .settings import hub_cache_dir, hub_endpoint, hub_offline, hub_token

log = logging.getLogger(__name__)

#: A 429 on the listing is retried this many times, waiting 1, 2, 4… seconds (or what `Retry-After` says, capped).
RATE_LIMIT_RETRIES = 4
MAX_RATE_LIMIT_WAIT = 30.0
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Hub:
    """One pull's view of the Hub: who we are (token), where (endpoint), and the cache to read and fill."""

    def __init__(self, token: str | None = None) -> None:
        self.endpoint = hub_endpoint()
        self.cache_dir = hub_cache_dir()
        self.offline = hub_offline()
        self.token = hub_token(token)

    def page(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"

    def list_files(self, repo_id: str, revision: str) -> tuple[str, list[RepoFile], bool]:
        """`(commit, files, from_cache)` of `revision`: asked of the Hub, or read from the cache when offline or
        when the Hub cannot be reached and the cache knows the revision."""
        if not self.offline:
            try:
                return (*self._list_online(repo_id, revision), False)
            except RegistryUnavailable:
                cached = self._list_cached(repo_id, revision)
                if cached is None:
                    raise
                log.info("%s unreachable: pulling %s@%s from the Hugging Face cache", self.endpoint, repo_id, revision)
                return (*cached, True)
        cached = self._list_cached(repo_id, revision)
        if cached is None:
            raise RegistryUnavailable(
                f"HF_HUB_OFFLINE is set and the Hugging Face cache ({self.cache_dir}) does not hold {repo_id} at "
                f"{revision}. Unset HF_HUB_OFFLINE to download it, or fill the cache first (`hf download {repo_id}`).")
        return (*cached, True)

    def _list_online(self, repo_id: str, revision: str) -> tuple[str, list[RepoFile]]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                info = api.model_info(repo_id, revision=revision, files_metadata=True)
                break
            except Exception as exc:
                wait = self._rate_limit_wait(exc, attempt)
                if wait is None:
                    raise self.translate(exc, repo_id, revision) from exc
                log.info("%s rate-limited the listing of %s; retrying in %.0f s", self.endpoint, repo_id, wait)
                time.sleep(wait)
        files = []
        for sibling in info.siblings or []:
            sha256 = getattr(sibling.lfs, "sha256", None) if sibling.lfs is not None else None
            size = sibling.lfs.size if sibling.lfs is not None else sibling.size
            files.append(RepoFile(_checked(sibling.rfilename, repo_id), int(size or 0),
                                  sha256 if sha256 and _SHA256.match(sha256) else None))
        return str(info.sha or revision), files

    def _rate_limit_wait(self, exc: Exception, attempt: int) -> float | None:
        if _status(exc) != 429 or attempt >= RATE_LIMIT_RETRIES:
            return None
        response = getattr(exc, "response", None)
        header = response.headers.get("Retry-After") if response is not None else None
        try:
            wait = float(header) if header is not None else 2.0 ** attempt
        except ValueError:
            wait = 2.0 ** attempt
        return min(max(wait, 0.0), MAX_RATE_LIMIT_WAIT)

    def _repo_folder(self, repo_id: str) -> Path:
        return self.cache_dir / f"models--{repo_id.replace('/', '--')}"

    def remember_revision(self, repo_id: str, revision: str, commit: str) -> None:
        """Record in the cache which commit `revision` (a branch or tag) is, as `huggingface_hub` does when it
        downloads by branch: files fetched by commit leave no such record, and an offline pull needs it."""
        if revision == commit or not _COMMIT.match(commit):
            return
        ref = self._repo_folder(repo_id) / "refs" / safe_relative_path(revision, what="revision")
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.exists() or ref.read_text().strip() != commit:
            ref.write_text(commit)

    def _list_cached(self, repo_id: str, revision: str) -> tuple[str, list[RepoFile]] | None:
        """The revision's files as the cache holds them (a snapshot folder of links to blobs), or None."""
        folder = self._repo_folder(repo_id)
        commit = revision if _COMMIT.match(revision) else None
        if commit is None:
            try:
                commit = (folder / "refs" / safe_relative_path(revision, what="revision")).read_text().strip()
            except (OSError, ValueError, UnsafePath):
                return None
        if not _COMMIT.match(commit or ""):
            return None
        snapshot = folder / "snapshots" / commit
        if not snapshot.is_dir():
            return None
        blobs = (folder / "blobs").resolve()
        files = []
        for path in sorted(snapshot.rglob("*")):
            relative = path.relative_to(snapshot).as_posix()
            target = path.resolve()
            if not target.is_file() or not target.is_relative_to(blobs):
                continue  # only the cache's own links to its own blobs count
            name = target.name
            files.append(RepoFile(_checked(relative, repo_id), target.stat().st_size,
                                  name if _SHA256.match(name) else None))
        return commit, files

    def download(self, repo_id: str, file: RepoFile, commit: str, on_bytes: Callable[[int], None],
                 cancel: threading.Event) -> Path:
        """The file of `commit` in the cache, downloaded (resuming a partial download) when the cache lacks it.
        Returns the snapshot path (a link to the cache's blob)."""
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(repo_id, file.path, revision=commit, cache_dir=self.cache_dir,
                                   endpoint=self.endpoint, token=self.token or False,
                                   local_files_only=self.offline, tqdm_class=_progress_class(on_bytes, cancel))
        except PullCancelled:
            raise
        except Exception as exc:
            if cancel.is_set():
                raise PullCancelled("The pull was cancelled; run it again to resume.") from exc
            raise self.translate(exc, repo_id, commit, file.path) from exc
        result = Path(path)
        if not result.resolve().is_relative_to(self.cache_dir.resolve()):
            raise UnsafePath(f"Refusing {file.path!r} of {repo_id}: it was written outside the Hugging Face cache.")
        return result

    def translate(self, exc: Exception, repo_id: str, revision: str, filename: str | None = None) -> Exception:
        """A `huggingface_hub` or network failure as our error, with what to do about it. Never includes the token."""
        from huggingface_hub import errors as hf

        what = f"{repo_id}{f' ({filename})' if filename else ''}"
        status = _status(exc)
        if isinstance(exc, hf.RevisionNotFoundError):
            return ModelNotFound(f"{repo_id} has no revision {revision!r} (a branch, tag or commit) on "
                                 f"{self.endpoint}.")
        if isinstance(exc, hf.GatedRepoError) or status in (401, 403) or isinstance(exc, hf.RepositoryNotFoundError):
            why = "is gated or private" if status in (401, 403) or isinstance(exc, hf.GatedRepoError) \
                else "was not found, or is private"
            token = "the HF_TOKEN you gave was refused" if self.token else "no HF_TOKEN was set"
            return AuthenticationFailed(
                f"Hugging Face repo {what} {why} ({token}). Set HF_TOKEN to a token that can read it (in the "
                f"runner's environment, or in your own: the client sends it with the pull), and accept its terms "
                f"at {self.page(repo_id)} if it is gated.")
        if isinstance(exc, hf.EntryNotFoundError) or status == 404:
            return ModelNotFound(f"{what} was not found at revision {revision} on {self.endpoint}.")
        if status == 429:
            return RegistryUnavailable(
                f"{self.endpoint} kept answering 429 (rate limited) for {what} after {RATE_LIMIT_RETRIES} retries. "
                "Wait a few minutes and pull again (finished files are kept), or set HF_TOKEN: signed-in users get "
                "higher limits.")
        if isinstance(exc, hf.OfflineModeIsEnabled | hf.LocalEntryNotFoundError):
            return RegistryUnavailable(
                f"{what} is not in the Hugging Face cache ({self.cache_dir}) and the Hub cannot be used "
                f"({'HF_HUB_OFFLINE is set' if self.offline else f'{self.endpoint} does not answer'}).")
        if status is not None:
            return RegistryError(f"{self.endpoint} answered {status} for {what}.")
        if isinstance(exc, OSError | ConnectionError) or "httpx" in type(exc).__module__:
            return RegistryUnavailable(
                f"Cannot reach the Hugging Face Hub at {self.endpoint} for {what} ({type(exc).__name__}). Check the "
                "network (or HF_ENDPOINT); a partial download is kept and the next pull resumes it.")
        return RegistryError(f"Pulling {what} from {self.endpoint} failed: {type(exc).__name__}.")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _checked(path: str, repo_id: str) -> str:
    return safe_relative_path(path, what=f"file name of {repo_id}")


def _progress_class(on_bytes: Callable[[int], None], cancel: threading.Event) -> type:
    """A tqdm class for `hf_hub_download` that reports each chunk to our progress tracker, and stops the download
    (keeping its `.incomplete` file for the next pull) when the pull is cancelled."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Progress(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # no terminal bar inside the runner
            super().__init__(*args, **kwargs)
            if kwargs.get("initial"):  # a resumed download: what the last attempt left counts as done
                on_bytes(int(kwargs["initial"]))

        def update(self, n: float | None = 1) -> bool | None:
            if cancel.is_set():
                raise PullCancelled("The pull was cancelled; run it again to resume.")
            if n:
                on_bytes(int(n))
            return super().update(n)

    return _Progress
