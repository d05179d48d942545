"""`fsck`: does the store hold what its index promises, and `--repair` for what it does not.

`check` reads, and never blocks a pull:

- each indexed model's manifest is present and hashes to the model's id;
- each blob its manifest names (config and layers) is present, of the size the manifest says, and hashes to its
  digest. Blobs are streamed 4 MiB at a time, each once however many models share it, with progress events as a
  pull sends them, since a store may hold hundreds of gigabytes;
- each file of its bundle is a hard link to its blob (an identical copy, made where links are impossible, also
  passes), and each file unpacked from a tar layer is there with its size;
- each `<hex>.incomplete` belongs to a download in progress. Downloads hold the blob's lock while they write
  (pulling.py), so one whose lock nobody holds is left over from a pull that was interrupted.

What a concurrent pull is doing is never reported: a missing blob whose lock is held is being downloaded, and an
`.incomplete` whose lock is held is being written.

`fsck(repair=True)` hands what it found to `repair.repair_store`; `findings` holds the kinds of problem and the
report both share.

No Jupyter here: the runner's service calls this in a worker thread, a script may call it directly.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import Timeout

from .. import mediatypes as mt
from ..distribution.artifact import Layer, Manifest, parse_manifest, sha256_digest
from ..distribution.progress import ProgressEvent, ProgressTracker
from ..errors import CheckCancelled, ModelRunnerError
from ..sizes import format_bytes
from .blobs import COPY_CHUNK_BYTES
from .bundles import bundle_plan
from .findings import (
    BLOB_CORRUPT,
    BLOB_MISSING,
    BUNDLE_LINK,
    BUNDLE_MISSING,
    BUNDLE_UNPACKED,
    MANIFEST_CORRUPT,
    MANIFEST_MISSING,
    PARTIAL_ORPHANED,
    FsckReport,
    Problem,
    file_identity,
)
from .models import Store
from .names import SHORT_ID_LENGTH, familiar_name
from .repair import REPAIR_WAIT_SECONDS, repair_store
from .tar_layers import unpacked_intact

__all__ = ["CheckCancelled", "FsckReport", "Problem", "check", "fsck", "repair_store"]

_DROP = "removes the model from the index (pull it again)"
_DROP_CORRUPT = "removes the model from the index and deletes the corrupt blob (pull it again)"
_PARTIAL_NAME = re.compile(r"[0-9a-f]{64}\.incomplete")


def fsck(store: Store, *, repair: bool = False, on_progress: Callable[[ProgressEvent], None] | None = None,
         cancel: threading.Event | None = None, wait: float = REPAIR_WAIT_SECONDS) -> FsckReport:
    """`check`, then `repair` when asked and something is wrong."""
    report = check(store, on_progress=on_progress, cancel=cancel)
    if repair and report.problems:
        report = repair_store(store, report, wait=wait)
    return report


# -- check ----------------------------------------------------------------------------------------------------


@dataclass
class _Verdict:
    state: str  # "ok", "missing", "corrupt", "downloading"
    detail: str = ""
    hashed: int = 0
    identity: tuple[int, int, int, int] | None = None


def check(store: Store, *, on_progress: Callable[[ProgressEvent], None] | None = None,
          cancel: threading.Event | None = None) -> FsckReport:
    """Compare the store with its index and return every problem found; changes nothing.

    `on_progress` gets pull-shaped progress events (`mode` "fsck") while blobs are hashed; setting `cancel` stops
    the check at the next 4 MiB with `CheckCancelled`.
    """
    entries = store.index_entries()
    report = FsckReport(models=len(entries))
    usable: list[tuple[dict[str, Any], Manifest]] = []
    for entry in entries:
        manifest, problem = _check_manifest(store, entry)
        if problem is not None:
            report.problems.append(problem)
        elif manifest is not None:
            usable.append((entry, manifest))

    blobs: dict[str, Layer] = {}
    for _, manifest in usable:
        for blob in manifest.blobs:
            blobs.setdefault(blob.digest, blob)
    tracker = ProgressTracker(on_progress, sum(blob.size for blob in blobs.values()), mode="fsck")
    verdicts = {digest: _check_blob(store, blob, tracker, cancel) for digest, blob in blobs.items()}
    report.blobs = len(blobs)
    report.checked_bytes = sum(v.hashed for v in verdicts.values())

    for entry, manifest in usable:
        subject, tags = _names(store, entry)
        downloading = broken = False
        for blob in _unique(manifest.blobs):
            verdict = verdicts[blob.digest]
            if verdict.state == "downloading":
                downloading = True
            elif verdict.state != "ok":
                broken = True
                what = "config" if blob is manifest.config else f"layer {_short(blob.digest)}{_file_of(manifest, blob)}"
                report.problems.append(Problem(
                    BLOB_MISSING if verdict.state == "missing" else BLOB_CORRUPT, subject, f"{what} {verdict.detail}",
                    _DROP_CORRUPT if verdict.state == "corrupt" else _DROP,
                    model_id=entry["id"], tags=tags, digest=blob.digest, identity=verdict.identity))
        if downloading:
            report.pulling.append(subject)
        elif not broken:
            report.problems += _check_bundle(store, entry["id"], manifest, subject, tags)

    # A model removed (`rm`) while its blobs were hashed loses them on the way: that is no problem of the store.
    still = {entry["id"] for entry in store.index_entries()}
    report.problems = [p for p in report.problems if p.model_id is None or p.model_id in still]
    report.problems += _orphaned_partials(store, entries)
    return report


def _check_manifest(store: Store, entry: dict[str, Any]) -> tuple[Manifest | None, Problem | None]:
    subject, tags = _names(store, entry)
    path = store.manifest_path(entry["id"])
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, Problem(MANIFEST_MISSING, subject, f"its manifest ({_short(entry['id'])}) is missing", _DROP,
                             model_id=entry["id"], tags=tags, digest=entry["id"])
    except OSError as exc:
        return None, Problem(MANIFEST_CORRUPT, subject, f"its manifest cannot be read ({exc.strerror})", _DROP,
                             model_id=entry["id"], tags=tags, digest=entry["id"])
    actual = sha256_digest(raw)
    if actual != entry["id"]:
        return None, Problem(MANIFEST_CORRUPT, subject, f"its manifest is corrupt (it hashes to {_short(actual)}, "
                             f"not {_short(entry['id'])})", _DROP, model_id=entry["id"], tags=tags,
                             digest=entry["id"])
    try:
        return parse_manifest(raw), None
    except ModelRunnerError as exc:  # the right bytes, but not a manifest we can use (stored by a newer version?)
        return None, Problem(MANIFEST_CORRUPT, subject, f"its manifest cannot be used ({exc})", _DROP,
                             model_id=entry["id"], tags=tags, digest=entry["id"])


def _check_blob(store: Store, blob: Layer, tracker: ProgressTracker, cancel: threading.Event | None) -> _Verdict:
    """Hash one blob, streamed. A missing blob is judged under its lock: held means a pull is downloading it."""
    path = store.blob_path(blob.digest)
    tracker.start_layer(blob.digest, blob.size)
    if not path.is_file() and not path.is_dir():
        lock = store.blob_lock(blob.digest)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            tracker.advance(blob.digest, blob.size)  # its pull checks it; the bar still ends at 100 %
            return _Verdict("downloading")
        try:
            present = path.exists()
        finally:
            lock.release()
        if not present:
            tracker.advance(blob.digest, blob.size)  # the bar covers what there was to check
            return _Verdict("missing", f"({format_bytes(blob.size)}) is missing")
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            if info.st_size != blob.size:
                tracker.advance(blob.digest, blob.size)
                return _Verdict("corrupt", f"is corrupt ({info.st_size:,} bytes, not the {blob.size:,} of its "
                                "manifest)", identity=identity)
            hasher, hashed = hashlib.sha256(), 0
            while chunk := handle.read(COPY_CHUNK_BYTES):
                if cancel is not None and cancel.is_set():
                    raise CheckCancelled("The check was stopped; nothing was changed.")
                hasher.update(chunk)
                hashed += len(chunk)
                tracker.advance(blob.digest, len(chunk))
    except FileNotFoundError:  # deleted between the look and the open (`rm` of its last model)
        return _Verdict("missing", f"({format_bytes(blob.size)}) is missing")
    except OSError as exc:  # a folder in its place, unreadable, an I/O error: unusable all the same
        tracker.advance(blob.digest, blob.size)
        return _Verdict("corrupt", f"cannot be read ({exc.strerror or exc})", identity=file_identity(path))
    actual = "sha256:" + hasher.hexdigest()
    if actual != blob.digest:
        return _Verdict("corrupt", f"is corrupt (its bytes hash to {_short(actual)})", hashed, identity)
    return _Verdict("ok", hashed=hashed, identity=identity)


def _check_bundle(store: Store, model_id: str, manifest: Manifest, subject: str,
                  tags: tuple[str, ...]) -> list[Problem]:
    """The bundle of a model whose blobs are all good: what an engine opens must be those very blobs."""
    folder = store.bundle_path(model_id)
    shown = folder.relative_to(store.root).as_posix()
    if not folder.is_dir():
        return [Problem(BUNDLE_MISSING, subject, f"its folder {shown} is missing", "rebuilds it from the blobs",
                        model_id=model_id, tags=tags)]
    problems: list[Problem] = []
    for layer, relative in bundle_plan(manifest):
        if layer.media_type in mt.TAR_LAYERS:
            if not unpacked_intact(store.blob_path(layer.digest), folder / relative if relative else folder):
                problems.append(Problem(BUNDLE_UNPACKED, subject, f"files unpacked from layer {_short(layer.digest)} "
                                        f"into {shown} are missing or changed", "rebuilds the folder from the blobs",
                                        model_id=model_id, tags=tags, digest=layer.digest))
            continue
        wrong = _link_state(folder / relative, store.blob_path(layer.digest), layer.digest)
        if wrong:
            problems.append(Problem(BUNDLE_LINK, subject, f"{relative} in its folder {wrong}",
                                    "links it to its blob again", model_id=model_id, tags=tags,
                                    digest=layer.digest, path=relative))
    return problems


def _link_state(dest: Path, blob: Path, digest: str) -> str | None:
    """None when `dest` is the blob (same inode) or an identical copy; else what is wrong with it."""
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        return "is missing"
    if not stat.S_ISREG(info.st_mode):
        return "is not a file (a link or folder in its place)"
    blob_info = blob.stat()
    if (info.st_dev, info.st_ino) == (blob_info.st_dev, blob_info.st_ino):
        return None
    if info.st_size == blob_info.st_size and _file_digest(dest) == digest:
        return None  # a copy, where the filesystem refused a hard link (see Store._link)
    return f"is not its blob {_short(digest)} (another file)"


def _orphaned_partials(store: Store, entries: list[dict[str, Any]]) -> list[Problem]:
    """`<hex>.incomplete` files whose blob lock nobody holds: no download is writing or resuming them."""
    owners = {digest: entry for entry in entries for digest in entry.get("files", [])}
    problems = []
    for path in sorted((store.root / "blobs" / "sha256").iterdir()):
        if not _PARTIAL_NAME.fullmatch(path.name):
            continue
        digest = "sha256:" + path.name.removesuffix(".incomplete")
        lock = store.blob_lock(digest)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # a pull is downloading into it
        try:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue  # its download finished meanwhile
        finally:
            lock.release()
        owner = owners.get(digest)
        subject, tags = _names(store, owner) if owner else ("store", ())
        name = f"{path.name[:SHORT_ID_LENGTH]}….incomplete"
        problems.append(Problem(PARTIAL_ORPHANED, subject,
                                f"partial download {name} ({format_bytes(size)}) belongs to no pull in progress",
                                "deletes it (a later pull downloads that layer from the start)",
                                model_id=owner["id"] if owner else None, tags=tags, digest=digest))
    return problems


# -- helpers --------------------------------------------------------------------------------------------------


def _names(store: Store, entry: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The model as users name it (its first tag, or its short id) and all its tags, in their familiar form."""
    tags = tuple(familiar_name(tag, store.registry) for tag in entry.get("tags", []))
    return (tags[0] if tags else _short(entry["id"])), tags


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:SHORT_ID_LENGTH]


def _unique(blobs: tuple[Layer, ...]) -> list[Layer]:
    seen: dict[str, Layer] = {}
    for blob in blobs:
        seen.setdefault(blob.digest, blob)
    return list(seen.values())


def _file_of(manifest: Manifest, blob: Layer) -> str:
    """` (model.gguf)`: the file the layer becomes in the bundle, so the user knows which part is hurt."""
    for layer, relative in bundle_plan(manifest):
        if layer.digest == blob.digest and relative:
            return f" ({relative})"
    return ""


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(COPY_CHUNK_BYTES):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()
