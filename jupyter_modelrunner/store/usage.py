"""Disk use and garbage: what the store's files add up to (`df`), and deleting what no model uses (`gc`)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field

from filelock import FileLock, Timeout

from ..distribution.artifact import digest_hex
from .index import TagIndex, referenced


@dataclass(frozen=True)
class DiskUsage:
    """Bytes under `blobs/`, split so the parts add up to `total`."""

    models: int = 0
    orphans: int = 0
    incomplete: int = 0
    manifests: int = 0
    total: int = 0
    model_count: int = 0
    detail: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, int]:
        return {"models": self.models, "orphans": self.orphans, "incomplete": self.incomplete,
                "manifests": self.manifests, "total": self.total, "model_count": self.model_count}


class DiskAccounting(TagIndex):
    """`df` and `gc` over the store's folders, judged against the index."""

    def df(self) -> DiskUsage:
        entries = self._read_index()
        used = referenced(entries)
        models = orphans = incomplete = 0
        for path in (self.root / "blobs" / "sha256").iterdir():
            size = path.stat().st_size
            if path.name.endswith(".incomplete"):
                incomplete += size
            elif f"sha256:{path.name}" in used:
                models += size
            else:
                orphans += size
        manifests = sum(p.stat().st_size for p in (self.root / "manifests" / "sha256").iterdir())
        return DiskUsage(models, orphans, incomplete, manifests, models + orphans + incomplete + manifests,
                         len(entries))

    def gc(self, *, min_age_seconds: float = 3600.0) -> DiskUsage:
        """Delete blobs no model references and abandoned `.incomplete` files; returns what was freed.

        Files younger than `min_age_seconds` are kept: a pull in another process commits its blobs before
        it adds the model to the index, and its partial downloads must survive until it resumes.
        """
        now = time.time()
        orphans = incomplete = 0
        with self.index_lock():
            entries = self._read_index()
            used = referenced(entries)
            for path in list((self.root / "blobs" / "sha256").iterdir()):
                stat = path.stat()
                if now - stat.st_mtime < min_age_seconds:
                    continue
                name = path.name.removesuffix(".incomplete")
                if path.name.endswith(".incomplete"):
                    lock = FileLock(self.root / "locks" / f"{name}.lock")  # the blob's lock, whatever the name
                    try:
                        with lock.acquire(timeout=0):
                            path.unlink(missing_ok=True)
                            incomplete += stat.st_size
                    except Timeout:
                        continue  # a download is in progress
                elif f"sha256:{name}" not in used:
                    path.unlink(missing_ok=True)
                    orphans += stat.st_size
            live = {digest_hex(e["id"]) for e in entries}
            for path in list((self.root / "bundles" / "sha256").iterdir()):
                if path.name.split(".", 1)[0] not in live and now - path.stat().st_mtime >= min_age_seconds:
                    shutil.rmtree(path, ignore_errors=True)
            for path in list((self.root / "manifests" / "sha256").iterdir()):
                if path.name not in live and now - path.stat().st_mtime >= min_age_seconds:
                    path.unlink(missing_ok=True)
        return DiskUsage(orphans=orphans, incomplete=incomplete, total=orphans + incomplete)

    def discard_unreferenced(self, digests: list[str]) -> None:
        """Delete blobs of a failed pull that no model uses, so a refused artifact leaves nothing behind."""
        with self.index_lock():
            used = referenced(self._read_index())
            for digest in digests:
                if digest not in used:
                    self.blob_path(digest).unlink(missing_ok=True)
