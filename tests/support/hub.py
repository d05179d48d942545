"""A real Hugging Face-compatible hub on loopback: olah, in offline mode, serving git repositories the suite builds.

olah (PyPI `olah`) answers the Hub API the real `huggingface_hub` client speaks (`model_info` with a revision,
`list_repo_tree`, `resolve/…` downloads) from local git repositories under its `mirrors-path`; a repository's
branch must be `main`. It lives in a virtual environment of its own under the test cache (installing it into the
project's environment would downgrade psutil), created on first use with pip, and runs as a subprocess in its own
process group that `stop()` ends.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests

from .registry import find_free_port
from .waiting import wait_for

OLAH_REQUIREMENT = "olah==0.5.4"


def olah_cli(cache_dir: Path) -> Path:
    """`olah-cli` from its own venv under `cache_dir`, installed there once (a lock keeps parallel runs apart)."""
    venv = cache_dir / "olah-venv"
    cli = venv / "bin" / "olah-cli"
    if cli.exists():
        return cli
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "olah-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cli.exists():
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", OLAH_REQUIREMENT], check=True)
    return cli


def git_repo(folder: Path, files: dict[str, Path | bytes], *, branch: str = "main") -> Path:
    """A git repository at `folder` whose `branch` holds `files` (repo path → a file to copy, or bytes), committed
    as plain git blobs (olah's local mirrors serve those; no LFS)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, env=env)

    git("init", "-q", "-b", branch)
    for name, content in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
    git("add", "-A")
    git("commit", "-q", "-m", "model")
    return folder


class OlahHub:
    """olah on a free 127.0.0.1 port, offline, serving `<workdir>/mirrors/models/ORG/REPO` git repositories.

    `endpoint` is what `HF_ENDPOINT` is set to. `stop()` ends it (to prove a pull needs no hub); `start()` again
    serves the same repositories on the same port.
    """

    def __init__(self, workdir: Path, cache_dir: Path) -> None:
        self.workdir = workdir
        self.mirrors = workdir / "mirrors"
        (self.mirrors / "models").mkdir(parents=True, exist_ok=True)
        self.cli = olah_cli(cache_dir)
        self.port = find_free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "olah.log"

    def add_repo(self, repo_id: str, files: dict[str, Path | bytes]) -> Path:
        return git_repo(self.mirrors / "models" / repo_id, files)

    def start(self) -> OlahHub:
        netloc = f"127.0.0.1:{self.port}"
        config = self.workdir / "olah.toml"
        config.write_text(
            f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nmirror-scheme = "http"\nmirror-netloc = "{netloc}"\n'
            f'mirror-lfs-netloc = "{netloc}"\nrepos-path = "{self.workdir / "repos"}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n\n[accessibility]\noffline = true\n')
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(self.cli), "-c", str(config)], cwd=self.workdir, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"olah exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{self.endpoint}/api/models/x/y/revision/main", timeout=2).status_code > 0
            return False

        wait_for(answers, timeout=60)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def __enter__(self) -> OlahHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
