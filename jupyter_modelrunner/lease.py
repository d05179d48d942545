"""One owner of a store's engines: a lease under the store, and the record of how to reach its holder.

Several processes may use one store (JupyterLab's server, a `serve`, a kernel's embedded runner, the CLI), but only
one may run its engines, or one model is loaded twice under two memory budgets that know nothing of each other.
The owner holds an exclusive `flock` on `<store>/runner/lease.lock` for as long as it lives (the kernel drops it when
the process dies, even by SIGKILL, so a crashed owner's lease is free at once), and publishes where it listens in
`<store>/runner/owner.json` with its token in a user-only file beside it. Everyone else reads the record and talks
to the owner; a record whose lock nobody holds is stale and ignored.

The record says which URL to send the token to, so it is believed only when nobody but this user could have written
it: the store and its `runner/` folder are not writable by group or others (else UntrustedStore, naming the
`chmod go-w` that fixes it), the record and token are regular files of this user's that others may not write (the
token: not even read), and the token's path is always `runner/owner.token`, never one the record names. Files here
are written under a random temporary name created with O_EXCL|O_NOFOLLOW, then renamed into place, so a link
planted at a name this code is about to write is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._version import __version__
from .errors import UntrustedStore
from .keys import RELAY_KEY_FILES, write_relay_keys

LEASE_DIR = "runner"
LOCK_FILE = "lease.lock"
RECORD_FILE = "owner.json"
TOKEN_FILE = "owner.token"
#: Larger than any record or token this module writes: a bigger file is not one of ours.
MAX_RECORD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Owner:
    """Where the store's owner listens, how to authenticate to it, and what it is."""

    url: str
    token: str
    pid: int
    kind: str  # "jupyter server", "serve", "embedded"
    started: float
    #: The owner's jupyter-modelrunner version ("" for a runner older than the field): clients compare it with theirs.
    version: str = ""

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
        """Take the lease if nobody holds it (never blocks); True when this process now owns the store.

        Raises UntrustedStore (and takes nothing) for a store others could write: see `check_store_folders`."""
        if self._fd is not None:
            return True
        check_store_folders(self.folder.parent)
        self.folder.parent.mkdir(parents=True, exist_ok=True, mode=0o755)  # not group-writable under umask 002
        self.folder.mkdir(exist_ok=True, mode=0o700)
        check_store_folders(self.folder.parent)
        lock = self.folder / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UntrustedStore(f"The store's lease file {lock} is a symbolic link, which this user's runner "
                                     "never makes: it is not trusted. Remove it and start again.") from exc
            raise
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
        write_atomically(self.folder / TOKEN_FILE, token, mode=0o600)
        write_relay_keys(self.folder, token)  # what servers relaying to this one send instead of the token
        record = {"url": url, "pid": os.getpid(), "kind": kind, "started": time.time(), "version": __version__}
        write_atomically(self.folder / RECORD_FILE, json.dumps(record), mode=0o600)

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

    Cheap (two small reads and a non-blocking lock attempt), so clients call it on every lookup. Raises
    UntrustedStore when the store, its record or its token could have been written by someone else (see the
    module's docstring): a client must not send a token where such a record says.
    """
    folder = Path(store_root) / LEASE_DIR
    check_store_folders(Path(store_root))
    text = _read_trusted(folder / RECORD_FILE, secret=False)
    token = (_read_trusted(folder / TOKEN_FILE, secret=True) if with_token else "") if text is not None else None
    if text is None or token is None:
        return None
    try:
        record = json.loads(text)
        owner = Owner(url=str(record["url"]), token=token.strip(), pid=int(record["pid"]),
                      kind=str(record.get("kind", "")), started=float(record.get("started", 0)),
                      version=str(record.get("version", "")))
    except (ValueError, KeyError, TypeError):
        return None
    if owner.url and not _is_http_url(owner.url):
        return None  # "" is an owner on a Unix socket; anything else must be an HTTP address
    return owner if lease_is_held(store_root) else None


def check_store_folders(store_root: Path) -> None:
    """Refuse a store (or its `runner/` folder) that someone else could write: they could swap the lease record.

    The store itself may be a symbolic link (to a larger disk); `runner/` is made by this module and must be a real
    folder. Folders owned by root are trusted as this user's own (root could rewrite them anyway).
    """
    for path, follow in ((store_root, True), (store_root / LEASE_DIR, False)):
        try:
            info = path.stat(follow_symlinks=follow)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):
            raise UntrustedStore(f"{path} should be a folder of the model store, but is not: it is not trusted. "
                                 "Remove it and start again.")
        if info.st_uid not in (os.geteuid(), 0):
            raise UntrustedStore(f"The store folder {path} belongs to uid {info.st_uid}, not to you (uid "
                                 f"{os.geteuid()}): it is not trusted. Use a store of your own (--store or "
                                 "MODEL_RUNNER_STORE).")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UntrustedStore(f"The store folder {path} is writable by other users (mode "
                                 f"{stat.S_IMODE(info.st_mode):03o}), so anyone could redirect this user's runner "
                                 f"and its token: refused. Run `chmod go-w {path}` and try again.")


def _read_trusted(path: Path, *, secret: bool) -> str | None:
    """The text of a lease file this user wrote (None when absent); UntrustedStore if others could have.

    Opened without following a link (and without waiting on a FIFO), then checked on the open descriptor, so the
    file checked is the file read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedStore(f"{path} is a symbolic link, which this user's runner never makes: it is not "
                                 "trusted. Remove it.") from exc
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        others = 0o077 if secret else 0o022
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "is not a regular file"
        elif info.st_uid != os.geteuid():
            problem = f"belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})"
        elif info.st_mode & others:
            problem = f"is {'open to' if secret else 'writable by'} other users (mode {stat.S_IMODE(info.st_mode):03o})"
        elif info.st_size > MAX_RECORD_BYTES:
            problem = f"is {info.st_size} bytes, larger than any record of a runner"
        if problem:
            raise UntrustedStore(f"The store's lease file {path} {problem}: it is not trusted. Remove it if no "
                                 "runner of yours is using the store, and start the runner again.")
        return handle.read(MAX_RECORD_BYTES).decode("utf-8", errors="replace")


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def lease_is_held(store_root: Path | str) -> bool:
    """Whether some process holds the store's lease (this one included)."""
    path = Path(store_root) / LEASE_DIR / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
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


def write_atomically(path: Path, data: str | bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one rename (a reader never sees half of it), with permissions `mode`.

    The temporary file gets a random name and is created with O_EXCL|O_NOFOLLOW: whatever someone planted beside
    `path` (a link to a file they want overwritten, a guess of the next name) is never opened. The rename replaces
    a link at `path` itself, never the file it points to.
    """
    raw = data.encode() if isinstance(data, str) else data
    for _ in range(16):
        partial = path.with_name(f".{path.name}.{_random_suffix()}.tmp")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        break
    else:
        raise UntrustedStore(f"Cannot write {path}: every temporary name tried beside it already exists, so "
                             "someone is planting files there. Check who can write that folder.")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # whatever the umask
            out.write(raw)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _random_suffix() -> str:
    return secrets.token_hex(8)


def owner_json(owner: Owner) -> dict[str, Any]:
    """What `engines/status` says of the owner (never the token)."""
    return {"url": owner.url, "pid": owner.pid, "kind": owner.kind, "started": owner.started,
            "version": owner.version}
