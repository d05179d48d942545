"""The Files API's files, kept in the store: `<store>/files/<id>` holds the bytes, `<store>/files/<id>.json` what
OpenAI's file object says of them (and who owns them).

A file is written whole before anything names it: an upload goes to a temporary file in the same folder, counted
against its cap as it comes, and is renamed into place only once complete; its record is written (atomically) last,
so a file without a record is no file at all and a crash leaves nothing half-made behind a name. Ids are checked
against their one shape before any path is built from them: whatever a client sends as an id (`../`, an absolute
path, a thousand characters) names nothing, and no path outside the folder is ever opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import FileNotFound, FileTooLarge
from ..inference import Caller
from ..sizes import format_bytes

#: What a client may upload a file for; output files are the runner's own (`batch_output`).
PURPOSE_BATCH = "batch"
PURPOSE_BATCH_OUTPUT = "batch_output"
#: OpenAI's cap on a batch input file.
DEFAULT_MAX_FILE_BYTES = 200 * 1024**2
_FILE_ID = re.compile(r"file-[0-9a-f]{24}")
#: The longest file name kept (a client's upload name is only shown back).
MAX_FILENAME_CHARS = 255
#: A partial upload older than this belongs to no upload in progress (a runner killed while receiving it).
ABANDONED_SECONDS = 3600


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def visible(owner: str, caller: Caller) -> bool:
    """Whether `caller` may see what `owner` made: its own, or anything for a manager (the Jupyter token)."""
    return caller.may_manage or owner == caller.name


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """`data` as `path`, whole or not at all: written beside it, then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


@dataclass
class FileRecord:
    """One stored file, as OpenAI's file object describes it, and its owner (the caller that made it)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    owner: str

    def to_json(self) -> dict[str, Any]:
        """OpenAI's file object (`status` is always `processed`: a file is complete once it has a record)."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None,
                "expires_at": None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        return cls(id=str(data["id"]), bytes=int(data["bytes"]), created_at=int(data["created_at"]),
                   filename=str(data["filename"]), purpose=str(data["purpose"]), owner=str(data["owner"]))


class Upload:
    """A file being received: `write` its bytes as they come (FileTooLarge past the cap, and then nothing is kept),
    then `commit` it under a new id, or `discard` it. Blocking: used from a worker thread."""

    def __init__(self, files: FileStore, limit: int) -> None:
        self._files = files
        self.limit = limit
        self.size = 0
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=files.root)
        self._path = Path(name)
        self._handle = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.discard()
            raise FileTooLarge(f"The file is larger than the {format_bytes(self.limit)} this server accepts for a "
                               "batch (c.ModelRunner.max_batch_file_bytes); split it into several batches.")
        self._handle.write(data)

    def commit(self, filename: str, purpose: str, owner: str) -> FileRecord:
        self._handle.close()
        record = FileRecord(new_file_id(), self.size, int(time.time()), _clean_filename(filename), purpose, owner)
        os.replace(self._path, self._files.data_path(record.id))
        write_json_atomically(self._files.record_path(record.id), asdict(record))
        return record

    def discard(self) -> None:
        self._handle.close()
        with contextlib.suppress(OSError):
            self._path.unlink()


class FileStore:
    """The files of the Files API under `root` (`<store>/files`). Blocking: call from a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def data_path(self, file_id: str) -> Path:
        return self.root / _checked(file_id)

    def record_path(self, file_id: str) -> Path:
        return self.root / f"{_checked(file_id)}.json"

    def upload(self, limit: int = DEFAULT_MAX_FILE_BYTES) -> Upload:
        return Upload(self, limit)

    def add_bytes(self, data: bytes, *, filename: str, purpose: str, owner: str,
                  limit: int = DEFAULT_MAX_FILE_BYTES) -> FileRecord:
        """A file made from `data` at once (tests, small files)."""
        upload = self.upload(limit)
        upload.write(data)
        return upload.commit(filename, purpose, owner)

    def adopt(self, source: Path, file_id: str, *, filename: str, purpose: str, owner: str) -> FileRecord:
        """`source` (a batch's output) as the file `file_id`, linked rather than copied where the disk allows.
        Idempotent: a batch finalized again after a crash finds its file made."""
        existing = self._read(file_id)
        if existing is not None:
            return existing
        target = self.data_path(file_id)
        tmp = self.root / f".adopt-{file_id}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        record = FileRecord(file_id, target.stat().st_size, int(time.time()), filename, purpose, owner)
        write_json_atomically(self.record_path(file_id), asdict(record))
        return record

    def get(self, file_id: str, caller: Caller) -> FileRecord:
        """The file `file_id` if `caller` may see it; FileNotFound otherwise, whatever the id holds."""
        record = self._read(file_id) if _FILE_ID.fullmatch(file_id) else None
        if record is None or not visible(record.owner, caller):
            raise FileNotFound(f"No such file: {file_id[:80]!r}.")
        return record

    def list(self, caller: Caller, *, purpose: str | None = None) -> list[FileRecord]:
        """The files `caller` may see, newest first."""
        records = []
        for path in self.root.glob("file-*.json"):
            record = self._read(path.name.removesuffix(".json"))
            if record is not None and visible(record.owner, caller) and purpose in (None, record.purpose):
                records.append(record)
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    def delete(self, file_id: str, caller: Caller) -> None:
        """Forget the file: its record first (it no longer exists), then its bytes."""
        record = self.get(file_id, caller)
        self.record_path(record.id).unlink(missing_ok=True)
        self.data_path(record.id).unlink(missing_ok=True)

    def remove_abandoned(self, min_age: float = ABANDONED_SECONDS) -> int:
        """Delete what a killed runner left of uploads and adoptions (not those of a live one: they are younger
        than `min_age`); how many."""
        removed = 0
        cutoff = time.time() - min_age
        for path in [*self.root.glob(".upload-*"), *self.root.glob(".adopt-*")]:
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def _read(self, file_id: str) -> FileRecord | None:
        if not _FILE_ID.fullmatch(file_id):
            return None
        try:
            return FileRecord.from_json(json.loads(self.record_path(file_id).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _checked(file_id: str) -> str:
    """`file_id` if it has a file id's shape (the only names paths are built from); FileNotFound otherwise."""
    if not _FILE_ID.fullmatch(file_id):
        raise FileNotFound(f"No such file: {file_id[:80]!r}.")
    return file_id


def _clean_filename(filename: str) -> str:
    """The name a client gave its upload, as shown back: its last path segment, printable, bounded."""
    name = re.split(r"[/\\]", filename)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:MAX_FILENAME_CHARS] or "upload.jsonl"
