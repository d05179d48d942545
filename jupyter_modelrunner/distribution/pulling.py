"""Pull a model: resolve, verify, download missing blobs in parallel with resume, then hand to the store.

Downloads stream into `<hex>.incomplete` under a per-blob file lock (so two processes pulling the same
model share the work instead of corrupting it), are hashed while written, resumed with `Range` after an
interruption, and renamed into place only once the sha256 matches the manifest. The caller's `cancel` is
checked after every read of a body, so a cancelled pull stops within one read and keeps its partial files.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import queue
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import requests
import urllib3.exceptions

from .. import mediatypes as mt
from ..errors import DigestMismatch, InsufficientStorage, ModelRunnerError, PullCancelled, RegistryUnavailable
from ..reference import HUGGING_FACE, HubReference, Reference, parse_hub_reference, parse_reference
from ..sizes import format_bytes
from .artifact import Layer, Manifest, parse_config, parse_manifest, sha256_digest
from .huggingface.pulling import pull_hub
from .progress import ProgressCallback, ProgressEvent, ProgressTracker
from .registry import RegistryClient
from .result import PullResult
from .sink import BlobStore

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 4 * 1024 * 1024
RESUME_ATTEMPTS = 3
KNOWN_LAYER_TYPES = frozenset(
    {mt.GGUF, mt.SAFETENSORS, mt.VLLM_CONFIG_TAR, mt.DIR_TAR, mt.MODEL_FILE, mt.MMPROJ, mt.MMPROJ_SPEC,
     mt.LICENSE, mt.CHAT_TEMPLATE, *mt.CNCF_RAW, *mt.CNCF_TARS}
)
_TRANSPORT_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, RegistryUnavailable)


_CANCELLED = "The pull was cancelled; run it again to resume."


def pull(
    reference: Reference | str,
    store: BlobStore,
    *,
    on_progress: ProgressCallback | None = None,
    registry: str | None = None,
    max_workers: int = 4,
    cancel: threading.Event | None = None,
    hf_token: str | None = None,
) -> PullResult:
    """Pull `reference` into `store` and return what was done; raises a `ModelRunnerError` subclass.

    Setting `cancel` (from any thread) makes the pull raise `PullCancelled` within one read of the body being
    downloaded; what arrived stays in `*.incomplete` and the next pull resumes from there. A Hugging Face name
    (`hf.co/org/repo[:tag]`) is pulled from the Hub (distribution/huggingface), with `hf_token` when the caller
    has one (else the runner's own `HF_TOKEN`).
    """
    hub_ref = parse_hub_reference(reference) if isinstance(reference, str) else (
        HubReference(reference.repository, reference.tag) if reference.registry == HUGGING_FACE else None)
    if hub_ref is not None:
        return pull_hub(hub_ref, store, on_progress=on_progress, cancel=cancel, token=hf_token)
    ref = reference if isinstance(reference, Reference) else parse_reference(reference, registry=registry)
    client = RegistryClient(ref)
    raw, advertised = client.fetch_manifest()
    actual = sha256_digest(raw)
    expected = ref.digest or advertised
    if expected and expected != actual:
        raise DigestMismatch(
            f"The manifest of {ref.familiar} is corrupt: the registry promised {expected} but sent bytes "
            f"hashing to {actual}."
        )
    manifest = parse_manifest(raw)
    for layer in manifest.layers:
        if layer.media_type not in KNOWN_LAYER_TYPES and on_progress:
            on_progress(ProgressEvent("warning", f"Ignoring a layer of unknown type {layer.media_type}."))

    # From the first look at which blobs are present until the model is indexed, so `fsck --repair` cannot delete
    # a blob this pull counts on (see Store.adding).
    with store.adding():
        missing = [blob for blob in _unique(manifest.blobs) if not store.has_blob(blob.digest)]
        _check_space(ref, store, missing)
        tracker = ProgressTracker(on_progress, manifest.total_size)
        present = [blob for blob in _unique(manifest.blobs) if blob not in missing]
        for blob in present:
            tracker.start_layer(blob.digest, blob.size, blob.size)
        reused = sum(blob.size for blob in present)
        if present and missing:
            tracker.emit(ProgressEvent("progress", f"{len(present)} of {len(present) + len(missing)} blobs already "
                                       "present", total=tracker.total, pulled=reused))

        cancel = cancel or threading.Event()
        downloaded = _download_all(client, store, manifest, missing, tracker, cancel, max_workers)
        # Reading the config proves it is a model config we can parse before the model becomes visible.
        parse_config(store.blob_path(manifest.config.digest).read_bytes())
        try:
            model = store.add_model(ref, raw)
        except ModelRunnerError:
            store.discard_unreferenced([blob.digest for blob in missing])
            raise
    tracker.emit(ProgressEvent("success", f"Model {ref.familiar} pulled successfully ({manifest.digest[:19]})",
                               total=tracker.total, pulled=tracker.total))
    return PullResult(ref, manifest.digest, downloaded, reused, model)


def _unique(blobs: tuple[Layer, ...]) -> list[Layer]:
    seen: dict[str, Layer] = {}
    for blob in blobs:
        seen.setdefault(blob.digest, blob)
    return list(seen.values())


def _check_space(ref: Reference, store: BlobStore, missing: list[Layer]) -> None:
    needed = 0
    for blob in missing:
        part = store.incomplete_path(blob.digest)
        have = part.stat().st_size if part.exists() else 0
        needed += max(0, blob.size - have)
    free = store.free_bytes()
    if needed > free:
        raise InsufficientStorage(
            f"Not enough disk space to pull {ref.familiar}: it needs {format_bytes(needed)} more but only "
            f"{format_bytes(free)} is free in the model store. Remove unused models (`rm`) or set "
            f"MODEL_RUNNER_STORE to a larger disk, then pull again; finished layers are kept."
        )


def _download_all(
    client: RegistryClient, store: BlobStore, manifest: Manifest, missing: list[Layer],
    tracker: ProgressTracker, cancel: threading.Event, max_workers: int,
) -> int:
    if not missing:
        return 0
    counter = _Counter()
    # Set when one blob fails: the others stop at their next READ_CHUNK_BYTES step, not at their next read as
    # for the user's `cancel`, so a small sibling layer still finishes (and leaves no partial file behind).
    stop = threading.Event()
    workers = max(1, min(max_workers, len(missing)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelrunner-pull") as pool:
        futures = [pool.submit(_download_blob, client, store, blob, tracker, cancel, stop, counter)
                   for blob in missing]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()  # the other downloads stop at their next step and keep their partial files
            wait(futures)
            raise failed[0].exception()  # type: ignore[misc]
    return counter.value


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def _download_blob(
    client: RegistryClient, store: BlobStore, blob: Layer, tracker: ProgressTracker,
    cancel: threading.Event, stop: threading.Event, counter: _Counter,
) -> None:
    short = blob.digest[7:19]
    with store.blob_lock(blob.digest):
        if store.has_blob(blob.digest):  # another process finished it while we waited for the lock
            tracker.start_layer(blob.digest, blob.size, blob.size)
            tracker.set_layer(blob.digest, blob.size)
            return
        part = store.incomplete_path(blob.digest)
        attempt = 0
        while True:
            if cancel.is_set() or stop.is_set():
                raise PullCancelled(_CANCELLED)
            hasher, offset = _resume_state(part, blob.size)
            tracker.start_layer(blob.digest, blob.size)
            tracker.set_layer(blob.digest, offset)
            try:
                offset, hasher = _stream_into(client, blob, part, hasher, offset, tracker, cancel, stop, counter)
            except _TRANSPORT_ERRORS as exc:
                attempt += 1
                have = part.stat().st_size if part.exists() else 0
                if attempt > RESUME_ATTEMPTS:
                    raise RegistryUnavailable(
                        f"Downloading layer {short} from {client.reference.registry} kept failing after "
                        f"{format_bytes(have)} of {format_bytes(blob.size)} ({_describe(exc)}). The partial "
                        f"download is kept: run the pull again to resume."
                    ) from exc
                log.info("layer %s interrupted at %d bytes (%s); resuming", short, have, exc)
                cancel.wait(0.25 * 2**attempt)  # a cancel ends the wait (and the loop)
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorage(
                        f"The disk under the model store filled up while downloading layer {short}. The "
                        f"partial download is kept: free some space and pull again to resume."
                    ) from exc
                raise
            if offset < blob.size:
                attempt += 1  # the server closed the body early: treat as an interruption
                if attempt > RESUME_ATTEMPTS:
                    raise RegistryUnavailable(
                        f"Registry {client.reference.registry} keeps ending layer {short} early "
                        f"({format_bytes(offset)} of {format_bytes(blob.size)}); run the pull again to resume."
                    )
                continue
            break
        actual = "sha256:" + hasher.hexdigest()
        if actual != blob.digest or offset != blob.size:
            part.unlink(missing_ok=True)
            raise DigestMismatch(
                f"Layer {short} of {client.reference.familiar} is corrupt: expected {blob.digest} "
                f"({blob.size:,} bytes) but the registry sent {offset:,} bytes hashing to {actual}. Nothing "
                f"was added to the store; the registry's copy is damaged (ask its publisher to push it again)."
            )
        store.commit_blob(blob.digest, part)


def _resume_state(part: Path, size: int) -> tuple[Any, int]:
    """Hash what an earlier attempt left in `part`, so the download continues where it stopped."""
    hasher = hashlib.sha256()
    if not part.exists():
        return hasher, 0
    have = part.stat().st_size
    if have > size:
        part.unlink()
        return hasher, 0
    with part.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher, have


def _stream_into(
    client: RegistryClient, blob: Layer, part: Path, hasher: Any, offset: int,
    tracker: ProgressTracker, cancel: threading.Event, stop: threading.Event, counter: _Counter,
) -> tuple[int, Any]:
    """Append the rest of the blob to `part`; returns the new size and the running hash."""
    if offset == blob.size and blob.size > 0:
        return offset, hasher
    with client.open_blob(blob.digest, offset) as (response, start):
        if start != offset:  # the server ignored Range: start over
            hasher, offset = hashlib.sha256(), 0
            tracker.set_layer(blob.digest, 0)
        with part.open("ab" if offset else "wb") as handle:
            # read1 hands over whatever has arrived, so bytes received before a dropped connection are
            # kept (a plain read(n) discards a partly filled chunk when the connection breaks). Each piece
            # is written as it comes: what arrived before a cancel, a cut or a killed process is on disk.
            raw = response.raw
            read = getattr(raw, "read1", raw.read)
            # Hashing runs beside the download (hashlib releases the GIL): sequentially it would cost a
            # third of the throughput.
            background = _BackgroundHasher(hasher)
            unreported = 0  # progress goes out per READ_CHUNK_BYTES, not per read
            try:
                while chunk := read(READ_CHUNK_BYTES):
                    if offset + len(chunk) > blob.size:
                        raise DigestMismatch(
                            f"Layer {blob.digest[7:19]} is larger than the {blob.size:,} bytes its manifest "
                            "declares."
                        )
                    handle.write(chunk)
                    background.update(chunk)
                    offset += len(chunk)
                    counter.add(len(chunk))
                    unreported += len(chunk)
                    if unreported >= READ_CHUNK_BYTES:
                        tracker.advance(blob.digest, unreported)
                        unreported = 0
                        if stop.is_set():
                            raise PullCancelled(_CANCELLED)
                    if cancel.is_set():
                        raise PullCancelled(_CANCELLED)
            finally:
                if unreported:
                    tracker.advance(blob.digest, unreported)
                hasher = background.result()
    return offset, hasher


class _BackgroundHasher:
    """Feeds a hash object from its own thread; `result()` waits for every queued chunk."""

    def __init__(self, hasher: Any) -> None:
        self._hasher = hasher
        self._queue: queue.Queue[bytes | bytearray | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="modelrunner-sha256", daemon=True)
        self._thread.start()

    def update(self, data: bytes | bytearray) -> None:
        self._queue.put(data)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hasher.update(data)

    def result(self) -> Any:
        self._queue.put(None)
        self._thread.join()
        return self._hasher


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "IncompleteRead" in text or "Connection broken" in text:
        return "the connection was cut"
    return text[:160]
