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

Relay keys are what a server that does not own the store (a second JupyterLab, a `serve`) sends the owner in place of
the owner's Jupyter token, which must never leave the owner: that token opens the owner's files and kernels, and a
relayed request is only ever meant to reach model runner routes. The owner derives one key per scope from its token
(an HMAC, so a key tells nothing of the token) and leaves them beside its lease record, user-only; it recognises them
by deriving them again, so they live in no key file and die with the token. A caller with an inference key is relayed
with the inference relay key, and the owner refuses it management exactly as it would refuse the caller's own key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import KeyNotFound, ModelRunnerError
from .paths import config_dir

#: Keys start with this, so that a leaked one is recognisable (secret scanners, logs).
KEY_PREFIX = "mrk-"
ENV_API_KEY = "MODEL_RUNNER_API_KEY"
log = logging.getLogger(__name__)

#: What a credential may reach: SCOPE_INFERENCE only routes that answer with a model (the API handlers' `api_scope`);
#: SCOPE_MANAGE every model runner route (still none of Jupyter's own).
SCOPE_INFERENCE = "inference"
SCOPE_MANAGE = "manage"
#: Relay keys start with this (see the module's docstring); files holding them, beside the lease record, per scope.
RELAY_KEY_PREFIX = "mrr-"
RELAY_KEY_FILES = {SCOPE_INFERENCE: "relay-inference.key", SCOPE_MANAGE: "relay-manage.key"}
#: The server's own credentials, as the environment may hold them (Jupyter's, JupyterHub's, ours): nothing the server
#: starts (an engine, and any code a model's template or tool runs in it) may inherit them.
CREDENTIAL_VARIABLES = ("JUPYTER_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_API_TOKEN", "MODEL_RUNNER_TOKEN", ENV_API_KEY)


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


def relay_key(secret: str, scope: str) -> str:
    """The relay key of `scope` for an owner whose Jupyter token is `secret` (see the module's docstring)."""
    mac = hmac.new(secret.encode(), f"jupyter-modelrunner relay key, scope {scope}".encode(), hashlib.sha256)
    return f"{RELAY_KEY_PREFIX}{scope}-{mac.hexdigest()}"


def relay_scope(secret: str, credential: str) -> str | None:
    """The scope `credential` opens as a relay key of the owner whose token is `secret`; None if it is not one.
    An owner without a token has no relay keys (a key derived from nothing could be derived by anyone)."""
    if not secret or not credential.startswith(RELAY_KEY_PREFIX):
        return None
    for scope in RELAY_KEY_FILES:
        if hmac.compare_digest(credential.encode(), relay_key(secret, scope).encode()):
            return scope
    return None


def write_relay_keys(folder: Path, secret: str) -> None:
    """Leave the relay keys for `secret` in `folder` (the lease's), user-only and atomically; empty files when the
    owner has no token (relayed requests then carry no credential, as the owner asks none)."""
    for scope, name in RELAY_KEY_FILES.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=folder)  # 0600, a new file: never through a link
        try:
            with os.fdopen(fd, "w") as out:
                out.write(relay_key(secret, scope) if secret else "")
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_relay_key(folder: Path, scope: str) -> str | None:
    """The relay key of `scope` the owner left in `folder`: "" when it asks no credential, None when it left none."""
    try:
        return (folder / RELAY_KEY_FILES[scope]).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def without_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the server's credentials (CREDENTIAL_VARIABLES, and all of JupyterHub's settings): the
    environment to hand a process the server starts but does not trust with its identity."""
    return {k: v for k, v in environ.items() if k not in CREDENTIAL_VARIABLES and not k.startswith("JUPYTERHUB_")}


def keys_from_env() -> list[str]:
    return [k for k in os.environ.get(ENV_API_KEY, "").split(",") if k.strip()]
