"""The answer cache of `map` and `embed`: each answer a model gave, stored under what decided it.

A key is the sha256 of (the model's digest, the endpoint, the parameters that change an answer, the input), so a
re-run of a cell, or a run a kernel interrupt cut off, is answered from here without any engine request, whatever
happened to the runner meanwhile (a restart, another runner on the same store). The digest, not the name, is what
identifies a model: `ai/smollm2` pulled again as another version is another model, and its answers are its own.

One sqlite file in the user's store (`<store>/cache/answers.sqlite`, folder 0700, file 0600), in WAL mode: several
kernels and CLI commands read and write it at once. Names and inputs only ever reach it as SQL parameters, never as
paths. Only the standard library is used, so the CLI's `cache df` starts fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelRunnerError
from .paths import answer_cache_file

#: How long a writer waits for another process's write to finish (sqlite's busy timeout).
BUSY_TIMEOUT_SECONDS = 30.0
#: Request fields that do not change an answer: how it is delivered, and who asks.
UNKEYED_FIELDS = frozenset({"model", "stream", "stream_options", "user"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    model_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    value BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_model ON answers (model_id);
"""


def answer_key(model_id: str, endpoint: str, request: Mapping[str, Any]) -> str:
    """The cache key of one request: sha256 of the model's digest, the endpoint and the request body without the
    fields that do not change the answer (`UNKEYED_FIELDS`), as canonical JSON (sorted keys, no spaces), so the
    order a caller wrote its parameters in does not matter."""
    keyed = {name: value for name, value in request.items() if name not in UNKEYED_FIELDS}
    canonical = json.dumps([model_id, endpoint, keyed], sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_deterministic(params: Mapping[str, Any]) -> bool:
    """Whether the engine gives the same answer to the same request: greedy decoding (temperature 0) or a seed."""
    temperature = params.get("temperature")
    return params.get("seed") is not None or (temperature is not None and float(temperature) == 0.0)


def row_seed(request: Mapping[str, Any]) -> int:
    """The seed a sampled request gets when the caller chose none: derived from the request itself, so each row draws
    its own sample and a re-run asks for (and finds in the cache) that same sample."""
    canonical = json.dumps({k: v for k, v in request.items() if k not in UNKEYED_FIELDS}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class ModelUsage:
    """One model's share of the cache, as `cache df` shows it."""

    model: str
    model_id: str
    entries: int
    size: int


class AnswerCache:
    """The cache file of one store; each thread that uses it opens its own instance (sqlite connections are not
    shared between threads)."""

    def __init__(self, store_root: Path | str | None = None) -> None:
        self.path = answer_cache_file(Path(store_root) if store_root is not None else None)
        self._db = self._open(self.path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        folder = path.parent
        # The store's root as the store makes it (never group-writable: the lease refuses such a store), then ours.
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        folder.mkdir(mode=0o700, exist_ok=True)
        _check_private(folder, is_dir=True)
        # Created user-only before sqlite opens it (sqlite gives its -wal and -shm files the database's mode).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600))
        _check_private(path, is_dir=False)
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL keeps the file consistent; a power cut may lose the last
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ModelRunnerError(f"The answer cache {path} cannot be used ({exc}). Delete the file to start a new "
                                   "one (only cached answers are lost).") from exc
        return db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- answers ------------------------------------------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The cached values of those of `keys` that are here (decoded JSON), by key."""
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # sqlite's limit on parameters per statement
            chunk = unique[start : start + 500]
            rows = self._db.execute(f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                                    chunk)
            for key, value in rows:
                with contextlib.suppress(ValueError):  # a damaged entry is a miss: it is asked again and replaced
                    found[key] = json.loads(value)
        return found

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def put_many(self, model: str, model_id: str, endpoint: str, entries: Iterable[tuple[str, Any]]) -> None:
        """Store answers (key, JSON-able value) in one transaction."""
        now = time.time()
        rows = [(key, model, model_id, endpoint, json.dumps(value, separators=(",", ":")).encode(), now)
                for key, value in entries]
        if not rows:
            return
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO answers (key, model, model_id, endpoint, value, created) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", rows)

    def put(self, model: str, model_id: str, endpoint: str, key: str, value: Any) -> None:
        self.put_many(model, model_id, endpoint, [(key, value)])

    # -- df and clear -------------------------------------------------------------------------------------------

    def usage(self) -> list[ModelUsage]:
        """Entries and bytes of answers per model (by digest, under the name it was last asked by), largest first."""
        rows = self._db.execute(
            "SELECT model_id, COUNT(*), SUM(LENGTH(value) + LENGTH(key)), "
            "(SELECT model FROM answers AS latest WHERE latest.model_id = answers.model_id "
            " ORDER BY created DESC LIMIT 1) FROM answers GROUP BY model_id ORDER BY 3 DESC")
        return [ModelUsage(model or model_id, model_id, count, size or 0) for model_id, count, size, model in rows]

    def file_size(self) -> int:
        """Bytes the cache takes on disk (the database and its write-ahead log)."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += self.path.with_name(self.path.name + suffix).stat().st_size
        return total

    def clear(self, model: str | None = None) -> int:
        """Delete every answer, or those of `model` (a name as it was asked by, with or without `:latest`, or its
        digest or the digest's first 12 or more hex digits); how many were deleted."""
        with self._transaction():
            if model is None:
                deleted = self._db.execute("DELETE FROM answers").rowcount
            else:
                names = [model] if ":" in model.rsplit("/", 1)[-1] else [model, f"{model}:latest"]
                digest = model.removeprefix("sha256:").lower()
                by_digest = len(digest) >= 12 and all(c in "0123456789abcdef" for c in digest)
                deleted = self._db.execute(
                    f"DELETE FROM answers WHERE model IN ({','.join('?' * len(names))})"
                    + (" OR substr(model_id, 8, ?) = ?" if by_digest else ""),
                    [*names, *((len(digest), digest) if by_digest else ())]).rowcount
        if model is None or deleted:
            with contextlib.suppress(sqlite3.OperationalError):  # busy elsewhere: the space is reused anyway
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.execute("VACUUM")
        return deleted

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock at once, so two writers queue on the busy timeout instead of one
        # failing at commit with "database is locked".
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _check_private(path: Path, *, is_dir: bool) -> None:
    """The cache holds what the user asked and was answered: refuse a folder or file that is a link, or that someone
    else owns; make ours user-only (an existing folder made with a looser umask, say)."""
    info = path.lstat()
    kind_ok = stat.S_ISDIR(info.st_mode) if is_dir else stat.S_ISREG(info.st_mode)
    if not kind_ok or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise ModelRunnerError(f"The answer cache {path} is not a {'folder' if is_dir else 'file'} of yours; "
                               "refusing to use it. Remove it, and it is made again.")
    wanted = 0o700 if is_dir else 0o600
    if stat.S_IMODE(info.st_mode) & ~wanted:
        path.chmod(wanted)
