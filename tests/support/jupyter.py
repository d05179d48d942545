"""A real Jupyter server (or `jupyter modelrunner serve`) in a subprocess, for tests that use real clients.

The `openai` and `ollama` SDKs are synchronous and talk HTTP; running the server in its own process keeps
its event loop apart from the test's, exactly as in a user's JupyterLab.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .registry import find_free_port

START_TIMEOUT = 60.0


class ServerProcess:
    """`argv` started with a fresh token on a free port; `url` is where the model runner's routes live."""

    def __init__(self, argv: list[str], *, prefix: str, env: dict[str, str], log_path: Path, port: int,
                 token: str) -> None:
        self.argv, self.prefix, self.env, self.log_path = argv, prefix, env, log_path
        self.port, self.token = port, token
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def jupyter_server(cls, workdir: Path, env: dict[str, str], *extra: str) -> ServerProcess:
        port, token = find_free_port(), "test-token-" + os.urandom(6).hex()
        argv = [sys.executable, "-m", "jupyter_server", f"--port={port}", "--port-retries=0", "--no-browser",
                f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir}", "--allow-root", *extra]
        return cls(argv, prefix="modelrunner/", env=env, log_path=workdir / "server.log", port=port, token=token)

    @classmethod
    def jupyter_lab(cls, workdir: Path, env: dict[str, str], *extra: str) -> ServerProcess:
        """JupyterLab (the frontend plus the server extension), for browser tests; no update or news checks."""
        port, token = find_free_port(), "test-token-" + os.urandom(6).hex()
        argv = [sys.executable, "-m", "jupyterlab", f"--port={port}", "--port-retries=0", "--no-browser",
                f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir}", "--allow-root",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", *extra]
        return cls(argv, prefix="modelrunner/", env=env, log_path=workdir / "lab.log", port=port, token=token)

    @classmethod
    def standalone(cls, workdir: Path, env: dict[str, str], *extra: str) -> ServerProcess:
        port, token = find_free_port(), "test-token-" + os.urandom(6).hex()
        argv = [sys.executable, "-m", "jupyter_modelrunner", "serve", f"--port={port}", f"--token={token}",
                "--allow-root", *extra]
        return cls(argv, prefix="", env=env, log_path=workdir / "serve.log", port=port, token=token)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def url(self) -> str:
        return self.origin + self.prefix

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, trust_env=False, timeout=120, **options)

    def start(self) -> ServerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "engines/status", headers=self.headers, timeout=2,
                             trust_env=False).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM (what Ctrl-C or a JupyterHub culler sends) and wait; SIGKILL the group if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
