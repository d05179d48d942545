"""`pull hf.co/org/repo[:tag]`: list the revision, choose the files, take them from the Hugging Face cache (or
download them there with `huggingface_hub`), verify their sha256, link them into the store and package them as a
Docker-format artifact, so the result is a model like any other (ls, inspect, tag, push, engines).

Linking, not copying: a cache blob becomes the store's blob by a hard link (same inode) when both are on one
filesystem, by one copy otherwise. The HF cache keeps working as before; deleting either side frees nothing until
the other is gone too. The config records where the model came from (`source`), which `inspect` shows.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ...errors import DigestMismatch, InsufficientStorage
from ...reference import HubReference, Reference, parse_reference
from ..package import package_gguf, package_safetensors
from ..progress import ProgressCallback, ProgressEvent, ProgressTracker
from ..result import PullResult
from ..sink import BlobStore
from .hub import Hub
from .selection import DEFAULT_TAGS, RepoFile, Selection, choose, hf_model_name, is_quantization

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 4 * 1024 * 1024
MAX_PARALLEL_FILES = 4


def pull_hub(hub_ref: HubReference, store: BlobStore, *, on_progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None, token: str | None = None) -> Any:
    """Pull `hub_ref` into `store` with progress events like an OCI pull's; returns a `PullResult`."""
    cancel = cancel or threading.Event()
    hub = Hub(token)
    tag = hub_ref.tag
    revision = tag if tag and tag not in DEFAULT_TAGS and not is_quantization(tag) else "main"
    if on_progress:
        on_progress(ProgressEvent("progress", f"Listing {hub_ref.repo_id} at {revision} on {hub.endpoint}"))
    commit, files, from_cache = hub.list_files(hub_ref.repo_id, revision)
    selection = choose(files, hub_ref.repo_id, None if revision != "main" else tag)
    total = sum(f.size for f in selection.files)
    tracker = ProgressTracker(on_progress, total)
    if from_cache:
        tracker.emit(ProgressEvent("progress", f"Using the Hugging Face cache ({hub.cache_dir}): {commit[:12]}",
                                   total=total))
    reference = parse_reference(hf_model_name(hub_ref.repo_id, tag))
    with store.adding(), _staging(store) as staging:
        fetched = _fetch_all(hub, hub_ref.repo_id, commit, selection, tracker, cancel)
        hub.remember_revision(hub_ref.repo_id, revision, commit)
        downloaded = sum(n for _, n in fetched.values())
        digests = _link_all(store, selection, fetched, staging)
        model = _package(_LinkingStore(store, digests), selection, staging, reference,
                         {"type": "huggingface", "endpoint": hub.endpoint, "repo": hub_ref.repo_id,
                          "revision": revision, "commit": commit,
                          "files": [{"path": f.path, "digest": digests[staging / f.path][0],
                                     "size": digests[staging / f.path][1]} for f in selection.files]})
    if selection.quantization and reference.tag != selection.quantization:
        # `hf.co/org/repo` (latest) also answers to the quantization it chose: ls shows what it is.
        model = store.add_model(parse_reference(hf_model_name(hub_ref.repo_id, selection.quantization)),
                                store.manifest_path(model.id).read_bytes())  # type: ignore[attr-defined]
    total = sum(size for _, size in digests.values())  # a hub may list no sizes (olah's git mirrors)
    tracker.emit(ProgressEvent("success", f"Model {reference.familiar} pulled from {hub.page(hub_ref.repo_id)} "
                               f"({commit[:12]})", total=total, pulled=total))
    return PullResult(reference, model.id, downloaded, total - downloaded, model)


def _fetch_all(hub: Hub, repo_id: str, commit: str, selection: Selection, tracker: ProgressTracker,
               cancel: threading.Event) -> dict[str, tuple[Path, int]]:
    """Each selected file in the HF cache: path → (its snapshot path, bytes downloaded for it)."""

    def fetch(file: RepoFile) -> tuple[Path, int]:
        layer = f"sha256:{file.sha256}" if file.sha256 else file.path
        tracker.start_layer(layer, file.size)
        counted = [0]

        def on_bytes(n: int) -> None:
            counted[0] += n
            tracker.advance(layer, n)

        path = hub.download(repo_id, file, commit, on_bytes, cancel)
        if counted[0] < file.size:
            tracker.set_layer(layer, file.size)  # found in the cache (or resumed): all of it is here now
        return path, counted[0]

    files = list(selection.files)
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_FILES, len(files)),
                            thread_name_prefix="modelrunner-hf") as pool:
        futures = {f.path: pool.submit(fetch, f) for f in files}
        try:
            return {path: future.result() for path, future in futures.items()}
        except BaseException:
            cancel.set()  # the others stop at their next chunk and keep their partial files
            raise


def _link_all(store: BlobStore, selection: Selection, fetched: dict[str, tuple[Path, int]],
              staging: Path) -> dict[Path, tuple[str, int]]:
    """Verify each cache file and lay it out under `staging` at its repo path, linked to the cache's blob (copied
    when the store is on another filesystem). Returns staging path → (digest, size)."""
    digests: dict[Path, tuple[str, int]] = {}
    for file in selection.files:
        blob = fetched[file.path][0].resolve()
        digest, size = _sha256(blob)
        if file.sha256 and digest != f"sha256:{file.sha256}":
            raise DigestMismatch(
                f"{file.path} in the Hugging Face cache ({blob}) hashes to {digest}, but the Hub says sha256:"
                f"{file.sha256}. Delete it from the cache (`hf cache delete`) and pull again.")
        target = staging / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(blob, target)
        digests[target] = (digest, size)
    return digests


def _sha256(path: Path) -> tuple[str, int]:
    hasher, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
            size += len(chunk)
    return f"sha256:{hasher.hexdigest()}", size


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        try:
            shutil.copyfile(source, target)
        except OSError as copy_exc:
            if copy_exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(f"The disk under the model store is full while copying {source} from the "
                                          "Hugging Face cache (it is on another filesystem, so it cannot be linked).",
                                          ) from copy_exc
            raise


class _LinkingStore:
    """The store as packaging sees it, except that a file already verified and laid out in staging becomes its blob
    by a hard link (no second hash, no copy): `add_blob_from_file` of such a file links it under its digest."""

    def __init__(self, store: BlobStore, known: dict[Path, tuple[str, int]]) -> None:
        self._store = store
        self._known = known

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def add_blob_from_file(self, source: Path) -> tuple[str, int]:
        known = self._known.get(Path(source))
        if known is None:
            return self._store.add_blob_from_file(source)
        digest, size = known
        with self._store.blob_lock(digest):
            if not self._store.has_blob(digest):
                part = self._store.incomplete_path(digest)
                part.unlink(missing_ok=True)
                _link_or_copy(Path(source), part)
                self._store.commit_blob(digest, part)
        return digest, size


def _package(store: Any, selection: Selection, staging: Path, reference: Reference, source: dict[str, Any]) -> Any:
    if selection.format == "gguf":
        return package_gguf(store, [staging / f.path for f in selection.weights], reference,
                            mmproj=staging / selection.mmproj.path if selection.mmproj else None, source=source)
    # The chat template, tokenizer and generation config are files of the folder vLLM opens, as in the repo.
    return package_safetensors(store, staging, reference, source=source)


class _staging:  # noqa: N801 - used as a context manager, like tempfile.TemporaryDirectory
    """A folder under the store's `tmp/` (same filesystem as its blobs, so links work), removed afterwards."""

    def __init__(self, store: BlobStore) -> None:
        self.root = Path(store.root) / "tmp"  # type: ignore[attr-defined]

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(dir=self.root, prefix="hf-"))
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

