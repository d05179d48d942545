"""The standby: an engine interpreter started ahead of time with its imports done (vLLM's take half a minute),
waiting for the next load of that engine to adopt it. It never touches a device, and gives way to any model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..distribution.progress import format_bytes
from ..engines import hardware as hw
from ..engines.base import Engine, StandbySpec
from .supervision import resident_bytes, spawn, terminate

log = logging.getLogger(__name__)

#: How long the runner is idle before it prepares a replacement standby (which takes a CPU while it imports).
STANDBY_QUIET_SECONDS = 3.0


@dataclass
class Standby:
    """An engine interpreter started ahead of time with its imports done, waiting for the next load to adopt it."""

    engine: Engine
    spec: StandbySpec
    process: asyncio.subprocess.Process
    started: float = field(default_factory=time.time)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    import_seconds: float | None = None
    output: list[str] = field(default_factory=list)
    reader: asyncio.Task | None = None

    def status(self) -> dict[str, Any]:
        """A `ps` entry of its own (mode and state `standby`), with the memory it really holds."""
        return {"backend_name": self.engine.name, "model_name": "(standby)", "model_id": "", "mode": "standby",
                "device": "", "reason": f"a {self.engine.name} interpreter with its imports done, for the next load",
                "state": "standby" if self.ready.is_set() else "loading", "loading": not self.ready.is_set(),
                "in_use": False, "requests": 0, "last_used": int(self.started), "keep_alive": -1,
                "expires_at": None, "memory": resident_bytes(self.process.pid) or self.spec.memory,
                "pid": self.process.pid, "context_size": None, "context_source": None, "slots": None,
                "implementation": self.engine.name, "import_seconds": self.import_seconds}


class StandbyKeeper:
    """Keeps at most one standby: starts it when memory allows, hands it to the next load of its engine, and
    replaces it once the machine is quiet again."""

    def __init__(self, engines: Sequence[Engine], hardware: hw.Hardware, cache_dir: Callable[[Engine], Path],
                 fits: Callable[[int], bool], *, enabled: bool) -> None:
        self.engines = engines
        self.hardware = hardware
        self._cache_dir = cache_dir
        #: Whether a standby of so many bytes may start now (budget.standby_fits with the runners' facts).
        self._fits = fits
        self.enabled = enabled
        self.current: Standby | None = None
        self._lock = asyncio.Lock()
        self._last_busy = time.monotonic()

    def touch(self) -> None:
        """A request just ended: the machine was busy now (see replace_when_quiet)."""
        self._last_busy = time.monotonic()

    @property
    def memory(self) -> int:
        """RAM the standby holds (its estimate), 0 without one."""
        return self.current.spec.memory if self.current else 0

    def offers(self, engine: Engine) -> bool:
        """Whether `engine` has a standby to keep (on this hardware)."""
        return self.enabled and engine.standby(self.hardware, self._cache_dir(engine)) is not None

    async def prepare(self) -> Standby | None:
        """Start an engine interpreter with its imports done, for the next load, if an engine has one and memory
        allows (the budget with what runs now, and what the machine has free)."""
        if not self.enabled:
            return None
        async with self._lock:
            if self.current is not None and self.current.process.returncode is None:
                return self.current
            for engine in self.engines:
                spec = await asyncio.to_thread(engine.standby, self.hardware, self._cache_dir(engine))
                if spec is None:
                    continue
                if not self._fits(spec.memory):
                    log.info("no %s standby: %s would not fit the memory budget", engine.name,
                             format_bytes(spec.memory))
                    return None
                process = await spawn(spec.argv, spec.env, stdin_pipe=True)
                standby = Standby(engine, spec, process)
                standby.reader = asyncio.get_running_loop().create_task(self._read(standby))
                self.current = standby
                log.info("started a %s standby (pid %d)", engine.name, process.pid)
                return standby
        return None

    async def replace_when_quiet(self, busy: Callable[[], bool]) -> None:
        """Prepare the next standby once nothing has been `busy` for STANDBY_QUIET_SECONDS: its imports take a
        whole CPU for seconds, which would otherwise come out of the first answers of the model just loaded."""
        while self.enabled and self.current is None:
            if busy():
                self.touch()
            elif time.monotonic() - self._last_busy >= STANDBY_QUIET_SECONDS:
                await self.prepare()
                return
            await asyncio.sleep(0.25)

    async def _read(self, standby: Standby) -> None:
        """Wait for the standby's `ready` line, keeping what it printed before (it goes to its runner's log)."""
        stream = standby.process.stdout
        assert stream is not None
        while not standby.ready.is_set():
            line = await stream.readline()
            if not line:  # it died before being used
                if self.current is standby:
                    self.current = None
                standby.ready.set()
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text.startswith("{") and '"standby": "ready"' in text:
                standby.import_seconds = json.loads(text).get("import_seconds")
                standby.ready.set()
            else:
                standby.output.append(text)

    async def take(self, engine: Engine) -> Standby | None:
        """The standby for `engine`, once it is ready (a starting one is still sooner than a new process)."""
        standby = self.current
        if standby is None or standby.engine is not engine or standby.process.returncode is not None:
            return None
        self.current = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(standby.ready.wait(), engine.load_timeout)
        if standby.process.returncode is not None or standby.import_seconds is None:
            await self.stop(standby)
            return None
        return standby

    @staticmethod
    async def hand_over(standby: Standby, instructions: dict[str, Any]) -> asyncio.subprocess.Process:
        """Tell the standby which model to become (one JSON line on its stdin); it is the engine from then on."""
        process = standby.process
        assert process.stdin is not None
        process.stdin.write((json.dumps(instructions) + "\n").encode())
        await process.stdin.drain()
        process.stdin.close()
        return process

    async def stop(self, standby: Standby | None = None) -> None:
        """Stop `standby` (by default the current one)."""
        standby = standby or self.current
        if standby is None:
            return
        if self.current is standby:
            self.current = None
        await terminate(standby.process.pid, standby.process.wait)
        if standby.reader is not None:
            standby.reader.cancel()
