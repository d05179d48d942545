"""Batches kept in the store: `<store>/batches/<id>/batch.json` (the batch, written atomically), `output.jsonl` and
`errors.jsonl` (one line per answered request, appended and flushed as each answer comes).

The two JSONL files are the truth about which requests are answered: a line is flushed to the kernel as soon as it
is written, so a runner killed with SIGKILL loses at most the line it was writing, which `answered` cuts off before
a batch resumes. The counts in `batch.json` are only a summary for readers; resuming recounts from the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import BatchNotFound
from ..inference import Caller
from .files import write_json_atomically

log = logging.getLogger(__name__)

VALIDATING, IN_PROGRESS, FINALIZING = "validating", "in_progress", "finalizing"
COMPLETED, FAILED, CANCELLING, CANCELLED, EXPIRED = "completed", "failed", "cancelling", "cancelled", "expired"
#: States in which a batch still has work to do: a runner that starts finds them and carries on.
UNFINISHED = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)
_BATCH_ID = re.compile(r"batch_[0-9a-f]{24}")
OUTPUT, ERRORS = "output.jsonl", "errors.jsonl"
_TAIL_BLOCK = 64 * 1024


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


@dataclass
class Batch:
    """One batch: OpenAI's batch object (`to_json`), and what the runner keeps besides — who made it (its requests
    run as that caller) and the ids its output and error files will have (chosen up front, so that a batch
    finalized twice, after a crash, makes each file once)."""

    id: str
    endpoint: str
    input_file_id: str
    owner: str
    owner_scope: str
    completion_window: str = "24h"
    status: str = VALIDATING
    created_at: int = field(default_factory=lambda: int(time.time()))
    metadata: dict[str, str] | None = None
    errors: dict[str, Any] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    reserved_output_file_id: str = ""
    reserved_error_file_id: str = ""

    @property
    def caller(self) -> Caller:
        """Who the batch's requests run as: its maker, with the maker's policy (an inference key's limits)."""
        return Caller(self.owner, self.owner_scope)

    def mark(self, status: str) -> None:
        """Move to `status`, stamping its time (`in_progress_at`, `completed_at`…)."""
        self.status = status
        stamp = f"{status}_at"
        if stamp in self.__dataclass_fields__:
            setattr(self, stamp, int(time.time()))

    def to_json(self) -> dict[str, Any]:
        """OpenAI's batch object. The runner keeps no deadline (a local batch never expires), so `expires_at` is
        null."""
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
                "input_file_id": self.input_file_id, "completion_window": self.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": self.created_at, "in_progress_at": self.in_progress_at, "expires_at": None,
                "finalizing_at": self.finalizing_at, "completed_at": self.completed_at,
                "failed_at": self.failed_at, "expired_at": None, "cancelling_at": self.cancelling_at,
                "cancelled_at": self.cancelled_at, "request_counts": dict(self.request_counts),
                "metadata": self.metadata}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Batch:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class RowLog:
    """An output or error file, appended one JSON line at a time, each flushed at once (see the module)."""

    def __init__(self, path: Path) -> None:
        self._handle: IO[bytes] = path.open("ab")

    def append(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
        self._handle.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._handle.fileno())
        self._handle.close()


class BatchStore:
    """The batches under `root` (`<store>/batches`). Blocking: call from a worker thread, except `save`, which
    writes a few hundred bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def folder(self, batch_id: str) -> Path:
        if not _BATCH_ID.fullmatch(batch_id):
            raise BatchNotFound(f"No such batch: {batch_id[:80]!r}.")
        return self.root / batch_id

    def create(self, batch: Batch) -> None:
        self.folder(batch.id).mkdir(mode=0o700)
        self.save(batch)

    def save(self, batch: Batch) -> None:
        write_json_atomically(self.folder(batch.id) / "batch.json", asdict(batch))

    def load(self, batch_id: str) -> Batch:
        try:
            return Batch.from_record(json.loads((self.folder(batch_id) / "batch.json").read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise BatchNotFound(f"No such batch: {batch_id[:80]!r}.") from exc

    def all(self) -> list[Batch]:
        """Every batch, newest first (one unreadable is skipped, and logged)."""
        batches = []
        for folder in self.root.glob("batch_*"):
            try:
                batches.append(self.load(folder.name))
            except BatchNotFound:
                log.warning("batch %s has no readable record; skipped", folder.name)
        return sorted(batches, key=lambda b: (b.created_at, b.id), reverse=True)

    def output_path(self, batch_id: str) -> Path:
        return self.folder(batch_id) / OUTPUT

    def errors_path(self, batch_id: str) -> Path:
        return self.folder(batch_id) / ERRORS

    def answered(self, batch_id: str) -> tuple[set[str], int, int]:
        """The custom_ids already answered (in the output or the error file), and how many lines each file holds,
        once a line cut off by a kill is removed from the end of either."""
        done: set[str] = set()
        counts = []
        for path in (self.output_path(batch_id), self.errors_path(batch_id)):
            cut_partial_line(path)
            lines = 0
            with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                for line in handle:
                    try:
                        done.add(str(json.loads(line)["custom_id"]))
                        lines += 1
                    except (ValueError, KeyError, TypeError):
                        log.warning("batch %s: an unreadable line in %s is ignored", batch_id, path.name)
            counts.append(lines)
        return done, counts[0], counts[1]


def cut_partial_line(path: Path) -> int:
    """Truncate `path` after its last newline (what a kill in the middle of a write leaves); the bytes cut."""
    try:
        handle = path.open("r+b")
    except FileNotFoundError:
        return 0
    with handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            handle.truncate(keep)
            log.warning("%s ended with a partial line (%d bytes, a write cut off): removed", path, size - keep)
        return size - keep
