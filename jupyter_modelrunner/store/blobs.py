"""Blobs and locks: the store's folders, its content-addressed files, and the locks that let several processes
share them.

Blobs are written once, under their digest, read-only; a download writes `<hex>.incomplete` under the blob's lock
(so a partial file whose lock nobody holds belongs to no download in progress). Every pull and package holds the
store's `adding` lock shared while it counts on blobs being present; `fsck --repair` takes it exclusively before it
deletes any.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..distribution.artifact import digest_hex, sha256_digest
from ..errors import InsufficientStorage
from ..paths import default_store_path

#: Under `locks/`: shared by pulls and packages in progress, exclusive for `fsck --repair` (see `Blobs.adding`).
ADDING_LOCK = "adding.lock"
COPY_CHUNK_BYTES = 4 * 1024 * 1024


class Blobs:
    """The store's folder at `root` (default: `$MODEL_RUNNER_STORE` or under Jupyter's data dir): where each thing
    lives, the blobs themselves and the locks around them. The other layers of `Store` build on this one."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_store_path()
        # Not group- or world-writable whatever the umask: the lease refuses a store others could write (lease.py).
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for sub in ("blobs/sha256", "manifests/sha256", "bundles/sha256", "locks", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._index_lock_path = self.root / "locks" / "index.lock"
        self._adding_lock_path = self.root / "locks" / ADDING_LOCK

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # -- where things are ---------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def incomplete_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / f"{digest_hex(digest)}.incomplete"

    def manifest_path(self, model_id: str) -> Path:
        return self.root / "manifests" / "sha256" / digest_hex(model_id)

    def bundle_path(self, model_id: str) -> Path:
        return self.root / "bundles" / "sha256" / digest_hex(model_id) / "model"

    # -- locks --------------------------------------------------------------------------------------------------

    def blob_lock(self, digest: str) -> FileLock:
        """Held while a process downloads or writes one blob; others wait, then find it present."""
        return FileLock(self.root / "locks" / f"{digest_hex(digest)}.lock")

    @contextlib.contextmanager
    def adding(self) -> Iterator[None]:
        """Held, shared, by every pull and package from its first look at which blobs are present until its model
        is in the index; any number of them at once, in any process.

        A writer decides early that a blob is there and needs no download, and relies on that when it adds its
        model. `fsck --repair` deletes blobs and drops models only while it holds this lock exclusively
        (`adding_excluded`), so it never pulls a blob from under a writer that counted on it.
        """
        with flock(self._adding_lock_path, shared=True):
            yield

    @contextlib.contextmanager
    def adding_excluded(self, wait: float) -> Iterator[bool]:
        """Exclusive `adding`: yields True once no pull or package is in progress (waiting up to `wait` seconds
        for those running to end), or False, holding nothing, when they do not end in time. Writers that start
        meanwhile wait for the block to end, so keep it short."""
        with flock(self._adding_lock_path, shared=False, wait=wait) as held:
            yield held

    # -- blobs --------------------------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def commit_blob(self, digest: str, incomplete: Path) -> Path:
        """Move a verified download into place, read-only so engines cannot change what we hashed."""
        target = self.blob_path(digest)
        incomplete.chmod(0o444)
        os.replace(incomplete, target)
        return target

    def add_blob_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not self.has_blob(digest):
            with self._temp_file() as (tmp, handle):
                handle.write(data)
                handle.close()
                self.commit_blob(digest, tmp)
        return digest

    def add_blob_from_file(self, source: Path) -> tuple[str, int]:
        """Copy `source` into the store, hashing as it is copied; returns `(digest, size)`."""
        hasher, size = hashlib.sha256(), 0
        with self._temp_file() as (tmp, handle), Path(source).open("rb") as src:
            try:
                while chunk := src.read(COPY_CHUNK_BYTES):
                    handle.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                handle.close()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorage(f"The disk under the model store is full while adding {source}.") from exc
                raise
            digest = "sha256:" + hasher.hexdigest()
            with self.blob_lock(digest):
                if not self.has_blob(digest):
                    self.commit_blob(digest, tmp)
        return digest, size

    @contextlib.contextmanager
    def _temp_file(self) -> Iterator[tuple[Path, Any]]:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="blob-")
        path = Path(name)
        handle = os.fdopen(fd, "wb")
        try:
            yield path, handle
        finally:
            handle.close()
            path.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free


@contextlib.contextmanager
def flock(path: Path, *, shared: bool, wait: float | None = None) -> Iterator[bool]:
    """`flock` on `path`, shared or exclusive, on a descriptor of its own: yields whether it is held.

    `flock` (not `fcntl`'s record locks) because its locks belong to the open file, so two threads of one process
    exclude each other just as two processes do; the kernel drops them when the process dies. `wait` None
    blocks; otherwise it is how many seconds to keep trying.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if wait is None:
            fcntl.flock(fd, mode)
            held = True
        else:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        held = False
                        break
                    time.sleep(0.05)
        yield held
    finally:
        os.close(fd)  # closing the descriptor releases the lock
