"""What `fsck` finds and `--repair` does, as data: the kinds of problem, one `Problem` each, and the report.

Shared by the check (`fsck.py`), which makes them, and the repair (`repair.py`), which acts on them and says how
it went; the service and the front ends show them (`to_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_MISSING = "manifest-missing"
MANIFEST_CORRUPT = "manifest-corrupt"
BLOB_MISSING = "blob-missing"
BLOB_CORRUPT = "blob-corrupt"
BUNDLE_MISSING = "bundle-missing"
BUNDLE_LINK = "bundle-link"
BUNDLE_UNPACKED = "bundle-unpacked"
PARTIAL_ORPHANED = "partial-orphaned"

#: Problems that make a model unusable: `--repair` drops it from the index.
UNUSABLE = frozenset({MANIFEST_MISSING, MANIFEST_CORRUPT, BLOB_MISSING, BLOB_CORRUPT})
BUNDLE = frozenset({BUNDLE_MISSING, BUNDLE_LINK, BUNDLE_UNPACKED})


@dataclass
class Problem:
    """One thing wrong, as a user reads it: `subject` (the model, or `store`), what is wrong, what `--repair`
    does; after a repair, `outcome` says what it did or why it could not."""

    kind: str
    subject: str
    detail: str
    repair: str
    model_id: str | None = None
    tags: tuple[str, ...] = ()
    digest: str | None = None
    path: str | None = None
    repaired: bool = False
    outcome: str | None = None
    #: (device, inode, size, mtime) of a corrupt blob as it was hashed: the repair deletes that file and no other.
    identity: tuple[int, int, int, int] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.subject, "model_id": self.model_id, "tags": list(self.tags),
                "digest": self.digest, "path": self.path, "problem": self.detail, "repair": self.repair,
                "repaired": self.repaired, "outcome": self.outcome}


@dataclass
class FsckReport:
    """What `check` found (and `repair` did). `clean` is what the exit status says."""

    models: int = 0
    blobs: int = 0
    checked_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: Models whose missing blobs a pull is downloading right now: left to that pull.
    pulling: list[str] = field(default_factory=list)
    repair_ran: bool = False
    #: `{"id", "tags"}` of each model `repair` dropped from the index.
    removed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    @property
    def clean(self) -> bool:
        return not self.remaining

    def unusable_models(self) -> list[str]:
        """Ids of the models `repair` will drop (the service unloads their engines first)."""
        return list(dict.fromkeys(p.model_id for p in self.problems if p.kind in UNUSABLE and p.model_id))

    def to_json(self) -> dict[str, Any]:
        return {"clean": self.clean, "models": self.models, "blobs": self.blobs, "checked_bytes": self.checked_bytes,
                "problems": [p.to_json() for p in self.problems], "remaining": len(self.remaining),
                "pulling": list(self.pulling), "repair_ran": self.repair_ran, "removed": list(self.removed)}


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime) of `path`: whether it is the very file that was hashed; None when gone."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
