"""Engine processes: started so they die with their owner, and stopped the one way (terminate, wait, kill).

Engines run in their own process group (a session of their own), so a stop reaches whatever they forked; on Linux
a tiny launcher sets the parent-death signal first, so not even a SIGKILLed owner leaves an engine behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from .runner import Runner, RunnerState

log = logging.getLogger(__name__)

#: The longest parent folder for engine sockets that leaves room below it (see runtime_folder).
MAX_RUNTIME_PARENT = 30
#: How long an engine has to exit after SIGTERM before its process group is killed.
STOP_GRACE_SECONDS = 10.0

# Run by `python -I -S -c` before the engine: ask Linux to SIGTERM this process when its parent dies (even by
# SIGKILL), give up if the parent is already gone, then become the engine (the setting survives exec).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` started through the launcher that ties it to this process (Linux; elsewhere unchanged)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]


async def spawn(argv: Sequence[str], env: Mapping[str, str] | None, *, stdin_pipe: bool = False
                ) -> asyncio.subprocess.Process:
    """Start an engine (or a standby interpreter) in a session of its own, tied to this process, with its output
    on one pipe. No preexec_fn: forking with a Python callback is unsafe in a threaded server."""
    return await asyncio.create_subprocess_exec(
        *dying_with_parent(argv), env=env,
        stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        limit=1024 * 1024,
    )


def signal_group(pid: int, sig: int) -> None:
    """Signal a process group that may be gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def terminate(pid: int, exited: Callable[[], Awaitable[object]], grace: float = STOP_GRACE_SECONDS) -> None:
    """THE stop of an engine's process group: SIGTERM, wait up to `grace` seconds for `exited()` (the process's
    own wait, or the watcher's event once it has reaped it), SIGKILL if it hangs; then SIGKILL the group again for
    stragglers the engine forked that outlive it."""
    signal_group(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(exited(), grace)
    except TimeoutError:
        signal_group(pid, signal.SIGKILL)
        await exited()
    signal_group(pid, signal.SIGKILL)


async def watch(runner: Runner, on_exit: Callable[[Runner, bool], None]) -> None:
    """Wait for a runner's engine to exit, however that happens, and clean up after it: kill what it left behind,
    close its client, remove its folder, tell `on_exit` (with whether nobody asked it to stop: a crash), and only
    then set `runner.exited`, which requests and `stop` wait for."""
    runner.exit_code = await runner.process.wait()
    crashed = runner.state not in (RunnerState.STOPPING, RunnerState.STOPPED)
    if crashed:
        log.warning("%s for %s exited unexpectedly (%s)", runner.key.engine, runner.name, runner.exit_code)
        signal_group(runner.process.pid, signal.SIGKILL)
    runner.state = RunnerState.STOPPED
    on_exit(runner, crashed)
    if runner.client is not None:
        await runner.client.aclose()
    shutil.rmtree(runner.workdir, ignore_errors=True)
    runner.exited.set()


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory (Linux /proc), or None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def runtime_folder(parent: Path | None = None) -> Path:
    """A new user-only folder for engine sockets. Its path must stay short: a Unix socket's path has at most 107
    bytes, and vLLM puts sockets named by a UUID in its temporary folder below it (about 75 bytes more)."""
    candidates = [os.environ.get("XDG_RUNTIME_DIR") or "", tempfile.gettempdir(), "/tmp"]
    base = parent or Path(next(c for c in candidates if c and len(c) <= MAX_RUNTIME_PARENT))
    folder = Path(tempfile.mkdtemp(prefix="modelrunner-", dir=base))
    folder.chmod(0o700)
    return folder
