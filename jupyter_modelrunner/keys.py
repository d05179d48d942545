"""Scoped inference keys: what to hand an app that should only ask models questions.

The Jupyter token opens everything a notebook server does (kernels, files, model management). An inference key,
sent as `Authorization: Bearer KEY` like every OpenAI, Anthropic or Ollama client sends its key, opens only the
routes that answer with a model (the API's handlers say which: `api_scope`). Keys come from three places:

- `jupyter modelrunner key create NAME`: kept in the user's Jupyter config folder (`modelrunner/keys.json`, user
  only), as SHA-256 digests with a name: the key itself is shown once and stored nowhere. A key is 32 random
  bytes, so a plain digest is as strong as a slow password hash would be, and checking one costs microseconds.
- `c.ModelRunner.api_keys` and `$MODEL_RUNNER_API_KEY` (comma-separated), and `serve --api-key`: held in memory,
  also as digests.

The file is read again whenever it changes (one `stat` per check), so `key revoke` takes effect at once, without
restarting the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import KeyNotFound, ModelRunnerError
from .paths import config_dir

#: Keys start with this, so that a leaked one is recognisable (secret scanners, logs).
KEY_PREFIX = "mrk-"
ENV_API_KEY = "MODEL_RUNNER_API_KEY"
log = logging.getLogger(__name__)


def default_keys_path() -> Path:
    return config_dir() / "keys.json"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    name: str
    digest: str
    created: float
    hint: str  # the first characters, to tell keys apart in `key list`

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.digest, "created": self.created, "hint": self.hint}


class KeyRing:
    """The keys a server accepts: those in the keys file (re-read when it changes) and fixed ones."""

    def __init__(self, path: Path | None = None, fixed: Iterable[str] = ()) -> None:
        self.path = path or default_keys_path()
        self._fixed = {digest(k.strip()): f"key {i + 1} from the configuration"
                       for i, k in enumerate(fixed) if k.strip()}
        self._stamp: tuple[int, int] | None = None
        self._records: dict[str, KeyRecord] = {}

    # -- checking (every request with a Bearer credential the Jupyter token did not match) --------------------

    def match(self, key: str) -> str | None:
        """The name of the key `key` is, or None (unknown, or revoked)."""
        if not key:
            return None
        wanted = digest(key)
        if wanted in self._fixed:
            return self._fixed[wanted]
        record = self._current().get(wanted)
        return record.name if record else None

    def _current(self) -> dict[str, KeyRecord]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._records = None, {}
            return self._records
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                self._records = {r.digest: r for r in self._read()}
            except ModelRunnerError as exc:  # a damaged file accepts no key from it (the others still work)
                log.warning("%s", exc)
                self._records = {}
            self._stamp = stamp
        return self._records

    # -- managing (`jupyter modelrunner key ...`) ---------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        return sorted(self._read(), key=lambda r: r.created)

    def create(self, name: str) -> str:
        """Make a key named `name`, store its digest, and return the key (the only time it is seen)."""
        name = name.strip()
        if not name or len(name) > 64 or any(c.isspace() for c in name):
            raise ModelRunnerError("A key's name is 1-64 characters without spaces, e.g. `notebook-app`.")
        records = self._read()
        if any(r.name == name for r in records):
            raise ModelRunnerError(f"There is already a key named {name!r}; revoke it first or choose another name.")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        records.append(KeyRecord(name, digest(key), time.time(), key[: len(KEY_PREFIX) + 4]))
        self._write(records)
        return key

    def revoke(self, name: str) -> None:
        records = self._read()
        kept = [r for r in records if r.name != name]
        if len(kept) == len(records):
            known = ", ".join(r.name for r in records) or "none"
            raise KeyNotFound(f"No key named {name!r} (keys: {known}).")
        self._write(kept)

    def _read(self) -> list[KeyRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ModelRunnerError(f"Cannot read the keys file {self.path}: {exc}") from exc
        return [KeyRecord(k["name"], k["sha256"], float(k.get("created", 0)), k.get("hint", ""))
                for k in data.get("keys", []) if isinstance(k, dict) and k.get("name") and k.get("sha256")]

    def _write(self, records: list[KeyRecord]) -> None:
        """Atomically, user-only: a reader never sees half a file, and nobody else reads the digests."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"keys": [r.to_json() for r in records]}, out, indent=1)
            Path(tmp).chmod(0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def keys_from_env() -> list[str]:
    return [k for k in os.environ.get(ENV_API_KEY, "").split(",") if k.strip()]
