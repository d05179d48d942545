"""One owner of a store's engines: a lease under the store, and the record of how to reach its holder.

Several processes may use one store (JupyterLab's server, a `serve`, a kernel's embedded runner, the CLI), but only
one may run its engines, or one model is loaded twice under two memory budgets that know nothing of each other.
The owner holds an exclusive `flock` on `<store>/runner/lease.lock` for as long as it lives (the kernel drops it when
the process dies, even by SIGKILL, so a crashed owner's lease is free at once), and publishes where it listens in
`<store>/runner/owner.json` with its token in a user-only file beside it. Everyone else reads the record and talks
to the owner; a record whose lock nobody holds is stale and ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .keys import RELAY_KEY_FILES, write_relay_keys

LEASE_DIR = "runner"
LOCK_FILE = "lease.lock"
RECORD_FILE = "owner.json"
TOKEN_FILE = "owner.token"


@dataclass(frozen=True)
class Owner:
    """Where the store's owner listens, how to authenticate to it, and what it is."""

    url: str
    token: str
    pid: int
    kind: str  # "jupyter server", "serve", "embedded"
    started: float

    def describe(self) -> str:
        return f"the {self.kind} (pid {self.pid}) at {self.url}"


class StoreLease:
    """The lease of one store. `acquire()` once at start; the lease lasts until `release()` or the process ends."""

    def __init__(self, store_root: Path | str) -> None:
        self.folder = Path(store_root) / LEASE_DIR
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (never blocks); True when this process now owns the store."""
        if self._fd is not None:
            return True
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.set_inheritable(fd, False)  # engines and other children must not keep the store's lease alive
        self._fd = fd
        self._discard_record()  # a crashed owner's record: not ours to keep
        return True

    def publish(self, url: str, token: str, *, kind: str) -> None:
        """Say where this owner listens (only the holder may): the token in a 0600 file, the record beside it."""
        if self._fd is None:
            raise RuntimeError("publish() without holding the lease")
        _write_private(self.folder / TOKEN_FILE, token)
        write_relay_keys(self.folder, token)  # what servers relaying to this one send instead of the token
        record = {"url": url, "token_file": str(self.folder / TOKEN_FILE), "pid": os.getpid(), "kind": kind,
                  "started": time.time()}
        _write_private(self.folder / RECORD_FILE, json.dumps(record))

    def release(self) -> None:
        if self._fd is None:
            return
        self._discard_record()
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

    def owner(self) -> Owner | None:
        """The live owner's record (None when no process holds the lease, or it has not said where it listens),
        without its token: a server that does not own the store relays with a relay key (keys.py), never the
        owner's token, so it does not even read it."""
        return read_owner(self.folder.parent, with_token=False)

    def _discard_record(self) -> None:
        for name in (RECORD_FILE, TOKEN_FILE, *RELAY_KEY_FILES.values()):
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()


def read_owner(store_root: Path | str, *, with_token: bool = True) -> Owner | None:
    """The owner of the store at `store_root`, if a live process holds its lease and has published its address
    (its token left empty unless `with_token`).

    Cheap (two small reads and a non-blocking lock attempt), so clients call it on every lookup.
    """
    folder = Path(store_root) / LEASE_DIR
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
        token = Path(record["token_file"]).read_text().strip() if with_token else ""
        owner = Owner(url=str(record["url"]), token=token, pid=int(record["pid"]), kind=str(record.get("kind", "")),
                      started=float(record.get("started", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return owner if lease_is_held(store_root) else None


def lease_is_held(store_root: Path | str) -> bool:
    """Whether some process holds the store's lease (this one included)."""
    path = Path(store_root) / LEASE_DIR / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # someone holds it
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a user-only file, atomically (a reader never sees half of it)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.replace(path)


def owner_json(owner: Owner) -> dict[str, Any]:
    """What `engines/status` says of the owner (never the token)."""
    return {"url": owner.url, "pid": owner.pid, "kind": owner.kind, "started": owner.started}
