"""Debian's `docker-registry` (CNCF distribution 2.8) on a free loopback port, for tests and benchmarks.

The suite talks to a real registry rather than a mock, so that the pull/push code meets the exact
behaviour of the software Docker Hub runs (Range requests, digest headers, upload sessions, Basic
auth). There is no systemd here, so the registry is started as a child process with a config file
written for it, and it must never outlive the test session.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT = 20.0


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The port is released before it is returned, so another process could take it first; callers that
    start a server on it (LocalRegistry) retry with a new port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _htpasswd_line(user: str, password: str) -> str:
    """One bcrypt htpasswd entry: the registry accepts only bcrypt hashes.

    Apache's `htpasswd -B` is preferred (it is what the docs use); Python's `bcrypt` is the fallback.
    """
    if shutil.which("htpasswd"):
        result = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True)
        return result.stdout.strip()
    try:
        import bcrypt
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("an htpasswd registry needs `htpasswd` (apache2-utils) or the `bcrypt` package") from exc
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}"


class LocalRegistry:
    """A real OCI registry storing its blobs under `workdir` (a new temp dir if not given).

    With `htpasswd=(user, password)` it sits behind HTTP Basic auth, to test credentials. It runs in
    its own process group (so a stray signal to the test runner's group does not reach it, and stop()
    can kill the whole group); stop() — called by the context manager and the fixtures — ends it, and an
    atexit hook does the same as a backstop if a test run is interrupted.
    """

    def __init__(self, workdir: Path | None = None, *, htpasswd: tuple[str, str] | None = None) -> None:
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="registry-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = self.workdir / "storage"
        self.htpasswd = htpasswd
        self.log_path = self.workdir / "registry.log"
        self.port = find_free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        # The readiness probe must not go through an HTTP(S)_PROXY from the environment.
        self._http = requests.Session()
        self._http.trust_env = False

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of a model reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL (plain HTTP: clients must treat this registry as insecure)."""
        return f"http://{self.host}"

    @property
    def running(self) -> bool:
        """Whether the registry process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes, so tests can corrupt or inspect what it serves."""
        hexpart = digest.removeprefix("sha256:")
        return self.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"

    def _write_config(self) -> Path:
        """The registry's YAML config; every key here was needed or removes noise.

        `health.storagedriver.enabled: false` stops a periodic storage probe; `uploadpurging` off keeps
        a background goroutine from touching upload sessions that resume tests leave open; the
        `http.secret` silences the warning about a random secret (and keeps upload state tokens valid).
        """
        auth = ""
        if self.htpasswd:
            user, password = self.htpasswd
            htfile = self.workdir / "htpasswd"
            htfile.write_text(_htpasswd_line(user, password) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test-registry\n    path: {htfile}\n"
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root}\n  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {self.host}\n  secret: test-only-secret\n"
            "health:\n  storagedriver:\n    enabled: false\n" + auth
        )
        return config

    def start(self) -> LocalRegistry:
        """Start the registry and wait until `GET /v2/` answers (200, or 401 behind auth).

        A port taken between find_free_port() and the registry's bind is retried with a new port.
        """
        if self.running:
            return self
        for _attempt in range(3):
            if self._start_once():
                return self
            self.port = find_free_port()
        raise RuntimeError(f"docker-registry could not bind a port:\n{self._log_tail()}")

    def _start_once(self) -> bool:
        """One start attempt; False only when the port was taken, an exception for anything else."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                atexit.unregister(self.stop)
                if "address already in use" in self._log_tail(since=log_offset):
                    return False
                raise RuntimeError(f"docker-registry exited ({code}):\n{self._log_tail()}")
            try:
                if self._http.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer within {START_TIMEOUT:.0f} s:\n{self._log_tail()}")

    def stop(self) -> None:
        """Terminate the registry's process group, killing it if it does not exit within 5 s."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        else:
            proc.wait()

    def _log_tail(self, lines: int = 20, since: int = 0) -> str:
        """The last lines of the registry's log, for error messages."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
