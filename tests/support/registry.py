"""Debian's `docker-registry` (CNCF distribution 2.8) on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

REGISTRY_BINARY = "docker-registry"


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRegistry:
    """A real OCI registry with its storage in `workdir` (a temp dir if not given), optionally behind
    HTTP Basic auth. Stopped by `stop()`, the context manager, or at interpreter exit as a backstop."""

    def __init__(self, workdir: Path | None = None, *, htpasswd: tuple[str, str] | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="registry-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = self.workdir / "storage"
        self.port = find_free_port()
        self.htpasswd = htpasswd
        self.log_path = self.workdir / "registry.log"
        self._proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def blob_data_path(self, digest: str) -> Path:
        hexpart = digest.removeprefix("sha256:")
        return self.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"

    def _write_config(self) -> Path:
        auth = ""
        if self.htpasswd:
            user, password = self.htpasswd
            htfile = self.workdir / "htpasswd"
            line = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True,
                                  text=True).stdout.strip()
            htfile.write_text(line + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test-registry\n    path: {htfile}\n"
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root}\n  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {self.host}\n  secret: test-only-secret\n"
            "health:\n  storagedriver:\n    enabled: false\n"
            + auth
        )
        return config

    def start(self) -> LocalRegistry:
        config = self._write_config()
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=log,
                                      start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited ({self._proc.returncode}):\n{self._log_tail()}")
            try:
                if requests.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer within 20 s:\n{self._log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
