"""A registry client on top of oras-py, with the pieces oras lacks for model-sized blobs.

oras gives us the session, Docker Hub's bearer-token dance and credential helpers. On top we add what a
model runner needs: errors a user can act on instead of oras's minutes of silent retries, `Range`
requests for resuming, exact manifest bytes (so digests round-trip), HTTP Basic registries, and streaming
chunked uploads that never hold a blob in memory.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import oras.auth
import oras.container
import oras.provider
import requests

from .. import mediatypes as mt
from ..errors import AuthenticationFailed, ModelNotFound, RegistryError, RegistryUnavailable
from ..reference import DOCKER_HUB, Reference
from .artifact import MAX_MANIFEST_BYTES

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024
_DOCKER_HUB_CONFIG_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


class RegistryClient(oras.provider.Registry):
    """One registry, one repository: the operations pull and push need, with typed errors.

    Thread-safe for concurrent blob downloads: each call builds its own headers, and the shared
    `requests.Session` is only used for connection pooling.
    """

    def __init__(self, reference: Reference) -> None:
        super().__init__(hostname=reference.api_host, insecure=reference.insecure, tls_verify=True)
        self.reference = reference
        self.container = oras.container.Container(reference.repository, registry=reference.api_host)
        self._basic_auth = _credentials_for(reference.registry)
        if self._basic_auth:
            # oras's token backend uses this to ask the token server for a scoped bearer token.
            self.auth._basic_auth = self._basic_auth
        self._basic_challenge = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # -- plumbing -------------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"{self.prefix}://{self.reference.api_host}/v2/{self.reference.repository}"

    def do_request(  # type: ignore[override]
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict | None = None,
        json: dict | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One HTTP exchange with authentication, failing fast with a typed error.

        Replaces oras's `do_request`, whose retry decorator sleeps for about two minutes before it
        admits that a registry is down. Body-less retries only: a streamed upload body is never resent.

        Credentials (Basic, or a bearer token) go only to the registry's own origin: a registry names
        where an upload goes (the session's `Location`), and a host it names is not trusted with the
        user's password or token, nor with answering a challenge for them.
        """
        headers = dict(headers or {})
        own = _origin(url) == _origin(self.base)
        if own:
            self._add_auth(headers)
        response = self._send(method, url, data, headers, json, stream)
        if response.status_code == 401 and not own:
            response.close()
            raise AuthenticationFailed(
                f"Registry {self.reference.registry} sent the transfer to another host, {_shown_origin(url)}, which "
                f"asks for credentials: the runner sends the credentials of {self.reference.registry} only to "
                f"{self.reference.registry} itself. Ask the registry's operator to serve uploads from its own host."
            )
        if response.status_code != 401 or (data is not None and hasattr(data, "read")):
            return response
        challenge = response.headers.get("Www-Authenticate", "")
        response.close()
        if challenge.lower().startswith("basic"):
            if not self._basic_auth:
                raise AuthenticationFailed(self._login_hint("requires a login"))
            self._basic_challenge = True
            headers["Authorization"] = f"Basic {self._basic_auth}"
        else:
            self.auth.token = None
            headers.pop("Authorization", None)
            headers, changed = self.auth.authenticate_request(response, headers)
            if not changed:
                raise AuthenticationFailed(self._login_hint("refused the anonymous request"))
        response = self._send(method, url, data, headers, json, stream)
        if response.status_code == 401:
            response.close()
            reason = "rejected the stored credentials" if self._basic_auth else "requires a login"
            raise AuthenticationFailed(self._login_hint(reason))
        return response

    def _add_auth(self, headers: dict) -> None:
        if "Authorization" in headers:
            return
        if self._basic_challenge and self._basic_auth:
            headers["Authorization"] = f"Basic {self._basic_auth}"
        elif getattr(self.auth, "token", None):
            headers["Authorization"] = f"Bearer {self.auth.token}"

    def _send(self, method: str, url: str, data: Any, headers: dict, json_body: Any, stream: bool) -> requests.Response:
        try:
            return self.session.request(
                method, url, data=data, json=json_body, headers=headers, stream=stream,
                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), verify=self._tls_verify, allow_redirects=True,
            )
        except requests.exceptions.SSLError as exc:
            raise RegistryUnavailable(
                f"TLS handshake with registry {self.reference.registry} failed ({_root_cause(exc)}). If it is a "
                f"plain-HTTP registry, add it to MODEL_RUNNER_INSECURE_REGISTRIES."
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise RegistryUnavailable(
                f"Cannot reach registry {self.reference.registry}: {_root_cause(exc)}. Check that it is running "
                f"and reachable (or set MODEL_RUNNER_DEFAULT_REGISTRY)."
            ) from exc
        except requests.exceptions.Timeout as exc:
            raise RegistryUnavailable(f"Registry {self.reference.registry} did not answer in time.") from exc

    def _login_hint(self, reason: str) -> str:
        return (
            f"Registry {self.reference.registry} {reason} for {self.reference.repository}. Log in with "
            f"`docker login {self.reference.registry}` (credentials are read from $DOCKER_CONFIG/config.json)."
        )

    def _raise_for(self, response: requests.Response, what: str) -> None:
        if response.status_code < 400:
            return
        detail = _registry_message(response)
        if response.status_code == 404:
            raise ModelNotFound(f"{what} was not found in registry {self.reference.registry}{detail}.")
        if response.status_code in (401, 403):
            raise AuthenticationFailed(self._login_hint(f"denied access ({response.status_code}{detail})"))
        raise RegistryError(f"Registry {self.reference.registry} answered {response.status_code} for {what}{detail}.")

    # -- manifests ------------------------------------------------------------------------------------

    def fetch_manifest(self, target: str | None = None) -> tuple[bytes, str | None]:
        """The manifest's exact bytes and the registry's `Docker-Content-Digest` for it."""
        target = target or self.reference.target
        accept = ", ".join((*mt.ACCEPTED_MANIFESTS, mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST))
        response = self.do_request(f"{self.base}/manifests/{target}", "GET", headers={"Accept": accept}, stream=True)
        with response:
            if response.status_code == 404:
                hint = f"`{self.reference.familiar}`"
                raise ModelNotFound(
                    f"Model {hint} was not found in registry {self.reference.registry} (no such repository "
                    f"or tag{_registry_message(response)}). Check the name and tag."
                )
            self._raise_for(response, f"The manifest of {self.reference.familiar}")
            body = _read_capped(response, MAX_MANIFEST_BYTES, "manifest")
            return body, response.headers.get("Docker-Content-Digest")

    def put_manifest(self, raw: bytes, media_type: str, target: str) -> None:
        response = self.do_request(
            f"{self.base}/manifests/{target}", "PUT", data=raw, headers={"Content-Type": media_type}
        )
        with response:
            self._raise_for(response, f"Uploading the manifest of {self.reference.familiar}")

    # -- blobs ----------------------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:  # type: ignore[override]
        response = self.do_request(f"{self.base}/blobs/{digest}", "HEAD")
        with response:
            if response.status_code == 404:
                return False
            self._raise_for(response, f"Blob {digest}")
            return True

    def fetch_small_blob(self, digest: str, limit: int) -> bytes:
        response = self.do_request(f"{self.base}/blobs/{digest}", "GET", stream=True)
        with response:
            self._raise_for(response, f"Blob {digest[:19]}")
            return _read_capped(response, limit, "config")

    @contextmanager
    def open_blob(self, digest: str, offset: int = 0) -> Iterator[tuple[requests.Response, int]]:
        """Stream a blob from `offset`; yields the response and the offset the server actually honoured.

        A server that ignores `Range` answers 200 with the whole blob: the caller then restarts at 0.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.do_request(f"{self.base}/blobs/{digest}", "GET", headers=headers, stream=True)
        try:
            if response.status_code == 416:
                raise RegistryError(f"Registry refused to resume blob {digest[:19]} at byte {offset}.")
            self._raise_for(response, f"Blob {digest[:19]}")
            start = offset if response.status_code == 206 else 0
            yield response, start
        finally:
            response.close()

    def upload_blob(self, path: Path, digest: str, size: int, on_bytes: Callable[[int], None] | None = None) -> None:
        """Upload a blob in `UPLOAD_CHUNK_BYTES` PATCH chunks streamed from disk, then close the session."""
        response = self.do_request(
            f"{self.base}/blobs/uploads/", "POST", headers={"Content-Length": "0"}
        )
        with response:
            self._raise_for(response, f"Starting the upload of {digest[:19]}")
            location = self._get_location(response, self.container)
        if not location:
            raise RegistryError(f"Registry {self.reference.registry} gave no upload location for {digest[:19]}.")
        with path.open("rb") as handle:
            offset = 0
            while offset < size or size == 0:
                length = min(UPLOAD_CHUNK_BYTES, size - offset)
                body = _FileWindow(handle, offset, length, on_bytes)
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(length),
                    "Content-Range": f"{offset}-{offset + length - 1}",
                }
                if length == 0:
                    break
                response = self.do_request(location, "PATCH", data=body, headers=headers)
                with response:
                    self._raise_for(response, f"Uploading {digest[:19]}")
                    location = self._get_location(response, self.container) or location
                offset += length
        separator = "&" if "?" in location else "?"
        response = self.do_request(f"{location}{separator}digest={digest}", "PUT", headers={"Content-Length": "0"})
        with response:
            self._raise_for(response, f"Finishing the upload of {digest[:19]}")


class _FileWindow:
    """A read-only view of `length` bytes of an open file, so requests streams it with a known length."""

    def __init__(self, handle: IO[bytes], offset: int, length: int, on_bytes: Callable[[int], None] | None) -> None:
        self._handle, self._offset, self._remaining, self._on_bytes = handle, offset, length, on_bytes
        self._length = length

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        size = self._remaining if size is None or size < 0 else min(size, self._remaining)
        self._handle.seek(self._offset)
        data = self._handle.read(size)
        self._offset += len(data)
        self._remaining -= len(data)
        if self._on_bytes and data:
            self._on_bytes(len(data))
        return data


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (the default port spelled out), the unit credentials are scoped to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: an origin nothing else equals
        return scheme, parts.netloc.lower(), -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _shown_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _read_capped(response: requests.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"Refusing a {what} of {int(declared):,} bytes (limit {limit:,}).")
    chunks, total = [], 0
    for chunk in response.iter_content(65536):
        total += len(chunk)
        if total > limit:
            raise RegistryError(f"Refusing a {what} larger than {limit:,} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _registry_message(response: requests.Response) -> str:
    """The registry's own error text (`{"errors": [{"message": …}]}`), as a suffix for our message."""
    try:
        if "json" not in response.headers.get("Content-Type", ""):
            return ""
        errors = json.loads(response.content or b"{}").get("errors") or []
        messages = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
    except (ValueError, AttributeError, requests.RequestException):
        return ""
    return f": {'; '.join(messages)}" if messages else ""


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc)
    if "Connection refused" in text or isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return text.split("] ", 1)[-1][:200]


def _docker_configs() -> list[Path]:
    """Docker's credential files, honouring `DOCKER_CONFIG` (oras only looks at `~/.docker`)."""
    paths = []
    if os.environ.get("DOCKER_CONFIG"):
        paths.append(Path(os.environ["DOCKER_CONFIG"]) / "config.json")
    paths.append(Path.home() / ".docker" / "config.json")
    return [p for p in paths if p.is_file()]


def _credentials_for(registry: str) -> str | None:
    """Base64 `user:password` for `registry` from Docker's config or a credential helper, if any."""
    keys = list(_DOCKER_HUB_CONFIG_KEYS) if registry == DOCKER_HUB else []
    keys += [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"]
    if registry.startswith("127.0.0.1"):
        keys.append(registry.replace("127.0.0.1", "localhost", 1))
    elif registry.startswith("localhost"):
        keys.append(registry.replace("localhost", "127.0.0.1", 1))
    for config_path in _docker_configs():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError):
            log.warning("Ignoring unreadable Docker config %s", config_path)
            continue
        auths = config.get("auths") or {}
        for key in keys:
            entry = auths.get(key) or {}
            if entry.get("auth"):
                return entry["auth"]
            if entry.get("username") and entry.get("password"):
                return base64.b64encode(f"{entry['username']}:{entry['password']}".encode()).decode()
        helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
        if helper:
            # Reuse oras's credential-helper protocol implementation.
            backend = oras.auth.get_auth_backend("token")
            secret = backend._get_auth_from_creds_store(helper, keys[0])
            if secret:
                return secret
    return None
