"""Engine output: kept in memory for `ps`, crash reports and followers, written to `<store>/logs/` by a thread, and
read back for the reason an engine gives when it refuses to start."""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Lines of an engine's output kept in memory.
LOG_LINES = 2000

# A Python exception line (vLLM: `ValueError: …`, `pydantic_core._pydantic_core.ValidationError: …`), possibly behind
# vLLM's process prefix `(EngineCore_DP0 pid=12)`; llama.cpp's `error: invalid argument: …`,
# `error while handling argument "--threads": …`, `llama_model_load: error loading model: …`.
_EXCEPTION = re.compile(r"(?:^|\s)((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception): \S.*)$")
_ERROR = re.compile(r"\berror\b", re.IGNORECASE)


def reason_line(lines: Iterable[str]) -> str | None:
    """The line of an engine's output that says why it stopped, or None. The first exception line wins (in a
    chained traceback and in vLLM's multi-process start, the root cause comes first and the wrappers after it),
    then the first line that says `error`."""
    lines = list(lines)
    for line in lines:
        if match := _EXCEPTION.search(line):
            return match.group(1).strip()
    return next((line.strip() for line in lines if _ERROR.search(line) and not line.startswith("---")), None)


class LogWriter:
    """Appends engine output to log files from a thread of its own (started on first use): the event loop hands
    lines over and moves on. Files rotate once at 8 MiB (`.log.1`)."""

    ROTATE_BYTES = 8 * 1024**2

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Path, str | None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def open(self, path: Path, header: str) -> None:
        self._put(path, None)
        self._put(path, header)

    def write(self, path: Path, line: str) -> None:
        self._put(path, line)

    def _put(self, path: Path, line: str | None) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="modelrunner-engine-logs", daemon=True)
            self._thread.start()
        self._queue.put((path, line))

    def _run(self) -> None:
        handles: dict[Path, Any] = {}
        while True:
            path, line = self._queue.get()
            try:
                if line is None:  # a new run: rotate a big file, reopen
                    if path in handles:
                        handles.pop(path).close()
                    path.parent.mkdir(exist_ok=True)
                    if path.exists() and path.stat().st_size > self.ROTATE_BYTES:
                        path.replace(path.with_suffix(".log.1"))
                    continue
                handle = handles.get(path)
                if handle is None:
                    handle = handles[path] = path.open("a", encoding="utf-8", errors="replace")
                handle.write(line + "\n")
                if self._queue.empty():
                    for open_handle in handles.values():
                        open_handle.flush()
            except OSError:
                log.debug("could not write engine log %s", path, exc_info=True)


class EngineLogs:
    """The engines' logs of one store: pumped from each process, followed live, read back from disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writer = LogWriter()
        self._followers: dict[str, set[asyncio.Queue[str]]] = {}

    def file_for(self, engine: str, short_id: str) -> Path:
        return self.folder / f"{engine.replace('.', '')}-{short_id}.log"

    async def pump(self, stream: asyncio.StreamReader, lines: deque[str], *, engine: str, model_id: str,
                   short_id: str, argv: Sequence[str]) -> None:
        """Keep a process's output: the last lines in `lines` and all of it in the model's log file (written by the
        log thread, so a slow disk never stalls the event loop), handed to every follower of the model."""
        path = self.file_for(engine, short_id)
        header = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}"
        lines.append(header)  # `logs` of a loaded model starts with how its engine was started
        self._writer.open(path, header)
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the buffer: keep going
                continue
            if not raw:
                break
            text = raw.decode("utf-8", "replace").rstrip()
            lines.append(text)
            self._writer.write(path, text)
            for inbox in self._followers.get(model_id, ()):
                inbox.put_nowait(text)

    async def follow(self, model_id: str, heartbeat: float = 1.0) -> AsyncIterator[str | None]:
        """Every line the model's engines print from now on, across restarts; `None` every `heartbeat` seconds of
        silence, so a caller can notice its client has gone."""
        inbox: asyncio.Queue[str] = asyncio.Queue()
        self._followers.setdefault(model_id, set()).add(inbox)
        try:
            while True:
                try:
                    yield await asyncio.wait_for(inbox.get(), heartbeat)
                except TimeoutError:
                    yield None
        finally:
            self._followers.get(model_id, set()).discard(inbox)

    def newest(self, short_id: str, lines: int = 200) -> str:
        """The last `lines` of the model's newest engine log file (disk only, safe in a worker thread)."""
        files = sorted(self.folder.glob(f"*-{short_id}.log"), key=lambda p: p.stat().st_mtime)
        if not files:
            return ""
        return "\n".join(files[-1].read_text(errors="replace").splitlines()[-lines:])
