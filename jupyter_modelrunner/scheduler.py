"""Runners: engine processes started on demand, shared, kept warm, evicted, and cleaned up.

One process per (engine, model digest, mode): two tags of one model share it. The first request for a
model loads it while concurrent requests wait for that one load; idle runners unload after their
keep_alive; a new model that would not fit the memory budget first evicts idle runners, least
recently used first, and is refused with the numbers when it cannot fit at all. A crashed engine is
noticed the moment it exits: in-flight requests fail with its last log lines, the next request starts
it again. Engines run in their own process group and die with their owner (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .engine_stream import EngineResponse, open_stream
from .engines import hardware as hw
from .engines.base import (
    CONTEXT_CONFIGURED,
    MODE_COMPLETION,
    MODE_RERANK,
    MODES,
    Engine,
    Launch,
    LoadPlan,
    ModelFacts,
    RunConfig,
    StandbySpec,
    UnsuitableModel,
)
from .engines.select import EngineChoice, default_engines, select_engine
from .errors import ModelRunnerError, Overloaded
from .runner_config import InvalidSetting, RunConfigFile, parse_keep_alive
from .sizes import format_bytes
from .store import Model, Store

log = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0
LOG_LINES = 2000
HEALTH_POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 10.0


class NotEnoughMemory(ModelRunnerError):
    http_status = 507


class EngineFailed(ModelRunnerError):
    """The engine process could not start, or stopped while serving; carries its last log lines."""

    http_status = 502


#: The longest parent folder for engine sockets that leaves room below it (see Scheduler.runtime_dir).
MAX_RUNTIME_PARENT = 30
#: How long the runner is idle before it prepares a replacement standby (which takes a CPU while it imports).
STANDBY_QUIET_SECONDS = 3.0


class RunnerState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    #: Idle on a GPU with its weights offloaded to RAM (vLLM's sleep mode): the process stays, the GPU is free.
    SLEEPING = "sleeping"
    WAKING = "waking"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RunnerKey:
    engine: str
    model_id: str
    mode: str


@dataclass
class Runner:
    """One engine process serving one model; what `ps` shows and what requests are sent through."""

    key: RunnerKey
    model: Model
    choice: EngineChoice
    launch: Launch
    workdir: Path
    process: asyncio.subprocess.Process
    memory: int
    #: Seconds an idle runner stays loaded after a request that named no keep_alive of its own (-1: never unload).
    keep_alive: float
    plan: LoadPlan | None = None
    #: When the runner unloads if nothing uses it (Unix time); each request's lease can only push it later.
    expires_at: float | None = None
    #: A request asked to keep it loaded for good (Ollama's negative keep_alive): only an unload stops it.
    pinned: bool = False
    #: How its start went: from a standby or a new process, imports done ahead, seconds until ready.
    phases: dict[str, Any] = field(default_factory=dict)
    _started_monotonic: float = 0.0
    #: GPU memory its plan takes while awake (0 on the CPU).
    vram: int = 0
    #: Why it must restart once its requests are done (its settings changed since it started), or None.
    restart_reason: str | None = None
    _sleep_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def vram_held(self) -> int:
        """GPU memory it holds now: none while asleep."""
        return 0 if self.state in (RunnerState.SLEEPING, RunnerState.STOPPED) else self.vram

    @property
    def memory_held(self) -> int:
        """RAM it holds now: its process, and the weights it offloaded while asleep."""
        return self.memory + (self.model.size if self.state == RunnerState.SLEEPING else 0)
    #: The context one request may use, as the started engine reports it (the plan's until it has said).
    context_size: int | None = None
    state: RunnerState = RunnerState.LOADING
    in_use: int = 0
    started: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    exit_code: int | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    client: httpx.AsyncClient | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set while no request uses the runner (a restart for another context waits for it).
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    _idle_timer: asyncio.TimerHandle | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.model.to_json()["tags"][0] if self.model.tags else self.model.short_id

    def status(self) -> dict[str, Any]:
        """DMR's `ps` entry plus what we add: device, memory, the reason for the engine."""
        return {
            "backend_name": self.key.engine,
            "model_name": self.name,
            "model_id": self.key.model_id,
            "mode": self.key.mode,
            "device": self.choice.device,
            "reason": self.choice.reason,
            "state": self.state.value,
            "loading": self.state == RunnerState.LOADING,
            "in_use": self.in_use > 0,
            "requests": self.in_use,
            "last_used": int(self.last_used),
            "keep_alive": self.keep_alive,
            "expires_at": None if self.pinned or self.in_use else self.expires_at,
            "memory": self.memory_held,
            "vram": self.vram_held,
            "pid": self.process.pid,
            "context_size": self.context_size,
            "context_source": self.plan.context_source if self.plan else None,
            "slots": self.plan.slots if self.plan else None,
            "think": self.plan.think if self.plan else None,
            "reasoning_budget": self.plan.reasoning_budget if self.plan else None,
            "implementation": self.implementation,
            "load": self.phases,
        }

    @property
    def implementation(self) -> str:
        """The program serving the model (`llama-server`, `llama-cpp-python`, `vllm`), as its engine launched it."""
        return self.launch.implementation or self.key.engine

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self.log)[-lines:])

    def failure(self, what: str) -> EngineFailed:
        code = self.exit_code if self.exit_code is not None else self.process.returncode
        how = f"exit code {code}" if code is not None and code >= 0 else f"killed by signal {-(code or 0)}"
        tail = self.log_tail(15) or "(no output)"
        return EngineFailed(f"{self.key.engine} {what} for {self.name} ({how}). Last lines of its log:\n{tail}")

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request to the engine; an engine that dies meanwhile becomes an `EngineFailed`."""
        assert self.client is not None
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise await self._crash_or(exc) from exc

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, *, json: Any) -> AsyncIterator[EngineStream]:
        """Stream a response body chunk by chunk as the engine produces it (read straight off the socket: see
        engine_stream.py for why not httpx).

        Leaving the block closes the engine connection, which is how an abandoned request (the client
        went away) stops the engine's generation.
        """
        assert self.client is not None
        launch = self.launch
        try:
            async with open_stream(socket=launch.socket, port=launch.port, method=method, path=path,
                                   json_body=json, headers=launch.headers) as (response, body):
                yield EngineStream(response, self._chunks(body))
        except OSError as exc:  # refused, reset, or an answer cut short (EngineProtocolError)
            raise await self._crash_or(exc) from exc

    async def _chunks(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        except OSError as exc:
            raise await self._crash_or(exc) from exc

    async def _crash_or(self, exc: Exception) -> Exception:
        # A broken connection usually means the process is gone; give it a moment to be reaped.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), 1.0)
        if self.exited.is_set():
            return self.failure("stopped while answering")
        return EngineFailed(f"Lost the connection to {self.key.engine} for {self.name}: {exc}")


@dataclass
class EngineStream:
    """An engine's streamed response: iterate it for the body's chunks; status and headers as sent."""

    response: EngineResponse
    chunks: AsyncIterator[bytes]

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks


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
    _reader: asyncio.Task | None = None

    def status(self) -> dict[str, Any]:
        """A `ps` entry of its own (mode and state `standby`), with the memory it really holds."""
        return {"backend_name": self.engine.name, "model_name": "(standby)", "model_id": "", "mode": "standby",
                "device": "", "reason": f"a {self.engine.name} interpreter with its imports done, for the next load",
                "state": "standby" if self.ready.is_set() else "loading", "loading": not self.ready.is_set(),
                "in_use": False, "requests": 0, "last_used": int(self.started), "keep_alive": -1,
                "expires_at": None, "memory": _resident_bytes(self.process.pid) or self.spec.memory,
                "pid": self.process.pid, "context_size": None, "context_source": None, "slots": None,
                "implementation": self.engine.name, "import_seconds": self.import_seconds}


class Scheduler:
    """Owns the engine processes for one store. Create one per server (or CLI run), in its event loop."""

    def __init__(
        self,
        store: Store,
        *,
        engines: Sequence[Engine] | None = None,
        hardware: hw.Hardware | None = None,
        memory_budget: int | None = None,
        vram_budget: int | None = None,
        keep_alive: float = DEFAULT_KEEP_ALIVE,
        runtime_dir: Path | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        standby: bool = False,
        max_waiting: int | None = None,
    ) -> None:
        self.store = store
        self.engines = list(engines or default_engines())
        self.hardware = hardware or hw.probe()
        self.memory_budget = memory_budget or int(self.hardware.memory_total * 0.8)
        #: GPU memory the engines may use together (a budget of its own): 90 % of the GPUs' memory by default.
        self.vram_budget = vram_budget or int(sum(gpu.memory_total for gpu in self.hardware.gpus) * 0.9)
        self.keep_alive = keep_alive
        self.settings = RunConfigFile(store.root)
        self.runners: dict[RunnerKey, Runner] = {}
        self._loads: dict[RunnerKey, asyncio.Task[Runner]] = {}
        #: Requests per (model, mode) between `use` and its end, and how many may wait beyond what runs (None: any).
        self._inside: dict[tuple[str, str], int] = {}
        self.max_waiting = max_waiting
        self._admission = asyncio.Lock()
        self._on_event = on_event or (lambda kind, data: None)
        self._runtime_parent = runtime_dir
        self._runtime: Path | None = None
        self._tasks: set[asyncio.Task] = set()
        self._log_writer = LogWriter()
        #: Keep an engine interpreter with its imports done for the next load (vLLM: see prepare_standby).
        self.standby_enabled = standby
        self._standby: Standby | None = None
        self._standby_lock = asyncio.Lock()
        self._last_busy = time.monotonic()
        self._log_followers: dict[str, set[asyncio.Queue[str]]] = {}
        self.stats = {"loads": 0, "load_failures": 0, "evictions": 0, "crashes": 0}

    # -- choosing ------------------------------------------------------------------------------------

    def choose(self, name: str, engine: str | None = None) -> tuple[Model, EngineChoice]:
        """The model `name` resolves to and the engine that would run it, with the reason."""
        model = self.store.resolve(name)
        return model, select_engine(model, self.hardware, self.engines, forced=engine)

    # -- using ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, name: str, *, mode: str = MODE_COMPLETION, engine: str | None = None,
                  context_size: int | None = None, keep_alive: float | None = None) -> AsyncIterator[Runner]:
        """Hold a ready runner for `name` for the duration of one request, loading it if needed.

        `context_size` is a request's own wish (Ollama's `options.num_ctx`): it starts the engine with that
        context unless the model has a configured one, and restarts a loaded engine with another context once
        its requests in flight are done, as Ollama does. `keep_alive` (seconds; negative: for good) is how long this
        request wants the model kept after it: it can only make the runner stay longer, never shorten what another
        client's request asked for.
        """
        if mode not in MODES:
            raise ModelRunnerError(f"Unknown mode {mode!r}; expected one of {', '.join(MODES)}.")
        # Resolving reads the index, manifest and config, and an engine's availability check looks at
        # installed packages: off the event loop, which may be the notebook server's.
        model = await asyncio.to_thread(self.store.resolve, name)
        queue_key = (model.id, mode)
        self._check_queue(model, mode)
        self._inside[queue_key] = self._inside.get(queue_key, 0) + 1
        try:
            async with self._use(model, name, mode, engine, context_size, keep_alive) as runner:
                yield runner
        finally:
            self._inside[queue_key] -= 1
            if not self._inside[queue_key]:
                del self._inside[queue_key]

    def _check_queue(self, model: Model, mode: str) -> None:
        """Refuse (503, Retry-After) a request when more than `max_waiting` already wait for this model: answers
        that would come minutes late are worse than a prompt "try again", and a flood must not grow without end."""
        if self.max_waiting is None:
            return
        inside = self._inside.get((model.id, mode), 0)
        runner = self._ready_runner(model.id, mode, None)
        capacity = runner.choice.engine.capacity(runner.plan) if runner and runner.plan else 0
        waiting = inside - capacity
        if waiting >= self.max_waiting:
            retry = 1 + waiting // max(1, capacity) if runner else 5
            label = model.to_json()["tags"][0] if model.tags else model.short_id
            raise Overloaded(f"{label} has {waiting} requests waiting already (at most {self.max_waiting}: "
                             f"c.ModelRunner.max_waiting_requests). Try again in {retry} s.", retry_after=retry)

    @contextlib.asynccontextmanager
    async def _use(self, model: Model, name: str, mode: str, engine: str | None, context_size: int | None,
                   keep_alive: float | None) -> AsyncIterator[Runner]:
        asleep = self._runner_of(model.id, mode, engine, (RunnerState.SLEEPING, RunnerState.WAKING))
        if asleep is not None:
            await self._wake(asleep)  # requests that arrive while it wakes wait for it here, they do not fail
        runner = self._ready_runner(model.id, mode, engine)
        while runner is not None and (self._wants_other_context(runner, context_size) or runner.restart_reason):
            await runner.idle.wait()
            await self._stop(runner, runner.restart_reason or f"restarting with a context of {context_size} tokens")
            runner = self._ready_runner(model.id, mode, engine)
        if runner is None:  # the engine and model checks (~3 ms) only when something has to start
            await asyncio.to_thread(_check_mode, model, name, mode)
            choice = await asyncio.to_thread(select_engine, model, self.hardware, self.engines, forced=engine)
            runner = await self._ensure(model, choice, mode, context_size)
        runner.in_use += 1
        runner.idle.clear()
        if runner._idle_timer:
            runner._idle_timer.cancel()
            runner._idle_timer = None
        try:
            yield runner
        finally:
            runner.in_use -= 1
            runner.last_used = time.time()
            self._last_busy = time.monotonic()
            wanted = runner.keep_alive if keep_alive is None else keep_alive
            if wanted < 0:
                runner.pinned = True
            else:
                runner.expires_at = max(runner.expires_at or 0.0, runner.last_used + wanted)
            if runner.in_use == 0:
                runner.idle.set()
                if runner.state == RunnerState.READY:
                    self._schedule_idle(runner)

    @staticmethod
    def _wants_other_context(runner: Runner, context_size: int | None) -> bool:
        plan = runner.plan
        return bool(context_size and plan and plan.context_source != CONTEXT_CONFIGURED
                    and plan.context_size != context_size)

    def _ready_runner(self, model_id: str, mode: str, engine: str | None) -> Runner | None:
        return self._runner_of(model_id, mode, engine, (RunnerState.READY,))

    def _runner_of(self, model_id: str, mode: str, engine: str | None,
                   states: tuple[RunnerState, ...]) -> Runner | None:
        for runner in self.runners.values():
            if (runner.key.model_id == model_id and runner.key.mode == mode and runner.state in states
                    and engine in (None, runner.key.engine)):
                return runner
        return None

    async def load(self, name: str, *, mode: str = MODE_COMPLETION, engine: str | None = None,
                   context_size: int | None = None, keep_alive: float | None = None) -> Runner:
        """Load without a request (preload, `run -d`): the runner then idles out after its keep_alive."""
        async with self.use(name, mode=mode, engine=engine, context_size=context_size,
                            keep_alive=keep_alive) as runner:
            return runner

    async def _ensure(self, model: Model, choice: EngineChoice, mode: str, context_size: int | None = None) -> Runner:
        key = RunnerKey(choice.engine.name, model.id, mode)
        runner = self.runners.get(key)
        if runner is not None and runner.state == RunnerState.READY:
            return runner
        task = self._loads.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key, model, choice, context_size))
            self._loads[key] = task
            task.add_done_callback(lambda _t, k=key: self._loads.pop(k, None))
        # shield: one caller giving up (a closed browser tab) must not cancel the load others wait for.
        return await asyncio.shield(task)

    async def _load(self, key: RunnerKey, model: Model, choice: EngineChoice, context_size: int | None) -> Runner:
        engine = choice.engine
        config = self.settings.get(model.id)
        plan = engine.plan(model, config, budget=self.memory_budget, request_context=context_size, mode=key.mode,
                           hardware=self.hardware, vram_budget=self.vram_budget)
        memory = plan.memory
        async with self._admission:
            await self._make_room(plan.memory, model, engine, vram=plan.vram)
            workdir = Path(tempfile.mkdtemp(prefix=f"{engine.name.replace('.', '')}-", dir=self.runtime_dir))
            launch = engine.launch(model, workdir=workdir, config=config, hardware=self.hardware, mode=key.mode,
                                   cache_dir=self._cache_dir(engine), plan=plan)
            self._on_event("loading", {"model": model.short_id, "engine": engine.name, "reason": choice.reason})
            standby = await self._take_standby(engine)
            started = time.monotonic()
            if standby is not None:
                log.info("handing %s for %s to the standby (pid %d): %s", engine.name, model.short_id,
                         standby.process.pid, " ".join(launch.argv))
                process = standby.process
                assert process.stdin is not None
                process.stdin.write((json.dumps(engine.handover(launch, standby.spec)) + "\n").encode())
                await process.stdin.drain()
                process.stdin.close()
            else:
                log.info("starting %s for %s: %s", engine.name, model.short_id, " ".join(launch.argv))
                # No preexec_fn: forking with a Python callback is unsafe in a threaded server. The engine gets its
                # own session from the C side, and its parent-death signal from a tiny launcher that then execs it.
                process = await asyncio.create_subprocess_exec(
                    *_dying_with_parent(launch.argv), env=launch.env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    limit=1024 * 1024,
                )
            keep_alive = config.keep_alive if config.keep_alive is not None else self.keep_alive
            runner = Runner(key, model, choice, launch, workdir, process, memory, keep_alive, plan=plan,
                            context_size=plan.context_size, vram=plan.vram)
            runner.phases = {"started_from": "standby" if standby else "new process",
                             "imports_done_ahead_seconds": standby.import_seconds if standby else None}
            runner._started_monotonic = started
            if standby is not None:
                runner.log.extend(standby.output)
            runner.idle.set()
            runner.client = _client_for(launch, engine)
            self.runners[key] = runner
        loop = asyncio.get_running_loop()
        runner._tasks = [loop.create_task(self._pump_log(runner)), loop.create_task(self._watch(runner))]
        try:
            await self._wait_ready(runner, engine.load_timeout)
        except BaseException:
            self.stats["load_failures"] += 1
            await self._stop(runner, "failed to start")
            raise
        runner.context_size = await engine.reported_context(runner.client) or plan.context_size
        runner.phases["ready_seconds"] = round(time.monotonic() - runner._started_monotonic, 3)
        runner.state = RunnerState.READY
        self.stats["loads"] += 1
        self._on_event("ready", runner.status())
        if self.standby_enabled and engine.standby(self.hardware, self._cache_dir(engine)) is not None:
            self._background(self._replace_standby_when_quiet())  # the next load gets one too
        return runner

    async def _wait_ready(self, runner: Runner, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        next_report = started + 1.0
        assert runner.client is not None
        while time.monotonic() < deadline:
            if time.monotonic() >= next_report:  # vLLM takes half a minute or more: say it is still coming
                next_report += 1.0
                self._on_event("loading", {"model": runner.model.short_id, "engine": runner.key.engine,
                                           "elapsed": round(time.monotonic() - started, 1),
                                           "log": runner.log[-1] if runner.log else ""})
            if runner.exited.is_set():
                raise runner.failure("could not start")
            try:
                response = await runner.client.get(runner.launch.health_path, timeout=2.0)
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.exited.wait(), HEALTH_POLL_SECONDS)
        raise EngineFailed(
            f"{runner.key.engine} did not become ready for {runner.name} within {timeout:.0f} s. "
            f"Last lines of its log:\n{runner.log_tail(15)}"
        )

    # -- standby --------------------------------------------------------------------------------------

    def _cache_dir(self, engine: Engine) -> Path:
        return self.store.root / "cache" / engine.name.replace(".", "")

    async def prepare_standby(self) -> Standby | None:
        """Start an engine interpreter with its imports done, for the next load, if an engine has one and memory
        allows (the budget with what runs now, and what the machine has free). It never touches a device."""
        if not self.standby_enabled:
            return None
        async with self._standby_lock:
            if self._standby is not None and self._standby.process.returncode is None:
                return self._standby
            for engine in self.engines:
                spec = await asyncio.to_thread(engine.standby, self.hardware, self._cache_dir(engine))
                if spec is None:
                    continue
                used = sum(r.memory for r in self.runners.values() if r.state != RunnerState.STOPPED)
                if used + spec.memory > self.memory_budget or hw.memory_available() < 2 * spec.memory:
                    log.info("no %s standby: %s would not fit the memory budget", engine.name,
                             format_bytes(spec.memory))
                    return None
                process = await asyncio.create_subprocess_exec(
                    *_dying_with_parent(spec.argv), env=spec.env, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    limit=1024 * 1024,
                )
                standby = Standby(engine, spec, process)
                standby._reader = asyncio.get_running_loop().create_task(self._read_standby(standby))
                self._standby = standby
                log.info("started a %s standby (pid %d)", engine.name, process.pid)
                return standby
        return None

    async def _replace_standby_when_quiet(self) -> None:
        """Prepare the next standby once no request or load has run for STANDBY_QUIET_SECONDS: its imports take a
        whole CPU for seconds, which would otherwise come out of the first answers of the model just loaded."""
        while self.standby_enabled and self._standby is None:
            busy = bool(self._loads) or any(r.in_use for r in self.runners.values())
            if busy:
                self._last_busy = time.monotonic()
            elif time.monotonic() - self._last_busy >= STANDBY_QUIET_SECONDS:
                await self.prepare_standby()
                return
            await asyncio.sleep(0.25)

    async def _read_standby(self, standby: Standby) -> None:
        """Wait for the standby's `ready` line, keeping what it printed before (it goes to its runner's log)."""
        stream = standby.process.stdout
        assert stream is not None
        while not standby.ready.is_set():
            line = await stream.readline()
            if not line:  # it died before being used
                if self._standby is standby:
                    self._standby = None
                standby.ready.set()
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text.startswith("{") and '"standby": "ready"' in text:
                standby.import_seconds = json.loads(text).get("import_seconds")
                standby.ready.set()
            else:
                standby.output.append(text)

    async def _take_standby(self, engine: Engine) -> Standby | None:
        """The standby for `engine`, once it is ready (a starting one is still sooner than a new process)."""
        standby = self._standby
        if standby is None or standby.engine is not engine or standby.process.returncode is not None:
            return None
        self._standby = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(standby.ready.wait(), engine.load_timeout)
        if standby.process.returncode is not None or standby.import_seconds is None:
            await self._stop_standby(standby)
            return None
        return standby

    async def _stop_standby(self, standby: Standby | None = None) -> None:
        standby = standby or self._standby
        if standby is None:
            return
        if self._standby is standby:
            self._standby = None
        _signal_group(standby.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(standby.process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            _signal_group(standby.process.pid, signal.SIGKILL)
            await standby.process.wait()
        if standby._reader is not None:
            standby._reader.cancel()

    # -- memory ---------------------------------------------------------------------------------------

    async def _make_room(self, needed: int, model: Model, engine: Engine, *, vram: int = 0,
                         keep: Runner | None = None) -> None:
        """Evict idle runners (LRU first) until `needed` bytes of RAM and `vram` of GPU memory fit their budgets;
        refuse with the numbers when they cannot. `keep` is the runner being made room for (a waking one)."""
        label = model.to_json()["tags"][0] if model.tags else model.short_id
        if needed > self.memory_budget:
            raise NotEnoughMemory(
                f"{label} needs about {format_bytes(needed)} with {engine.name} (weights, KV cache and runtime), "
                f"more than the memory budget of {format_bytes(self.memory_budget)}. Use a smaller context size "
                f"(`configure {label} --context-size N`), a smaller quantization, or raise the budget."
            )
        if vram > self.vram_budget:
            gpus = ", ".join(f"{g.name} ({format_bytes(g.memory_total)})" for g in self.hardware.gpus) or "no GPU"
            raise NotEnoughMemory(
                f"{label} needs about {format_bytes(vram)} of GPU memory with {engine.name} (weights, KV caches and "
                f"the engine's runtime), more than the GPU budget of {format_bytes(self.vram_budget)} ({gpus}). Use a "
                f"smaller context size (`configure {label} --context-size N`) or a smaller quantization."
            )
        while True:
            live = [r for r in self.runners.values() if r.state != RunnerState.STOPPED and r is not keep]
            used = sum(r.memory_held for r in live) + (self._standby.spec.memory if self._standby else 0)
            used_vram = sum(r.vram_held for r in live)
            free_now = hw.memory_available() + used  # memory our own runners hold comes back when they stop
            ram_short = used + needed > min(self.memory_budget, free_now)
            vram_short = used_vram + vram > self.vram_budget
            if not ram_short and not vram_short:
                return
            if ram_short and self._standby is not None:  # cheaper to start again than a model
                await self._stop_standby()
                continue
            idle = sorted((r for r in live if r.in_use == 0 and r.state in (RunnerState.READY, RunnerState.SLEEPING)
                           and (ram_short or r.vram_held)), key=lambda r: r.last_used)
            if not idle:
                if vram_short:
                    busy = ", ".join(f"{r.name} ({format_bytes(r.vram_held)})" for r in live if r.vram_held)
                    raise NotEnoughMemory(
                        f"Not enough GPU memory to load {label} (needs about {format_bytes(vram)}; GPU budget "
                        f"{format_bytes(self.vram_budget)}, {format_bytes(self.vram_budget - used_vram)} free). In "
                        f"use: {busy}. Try again when they finish, or unload them.")
                busy = ", ".join(f"{r.name} ({format_bytes(r.memory_held)})" for r in live) or "other programs"
                raise NotEnoughMemory(
                    f"Not enough memory to load {label} (needs about {format_bytes(needed)}; budget "
                    f"{format_bytes(self.memory_budget)}, {format_bytes(max(0, free_now - used))} available). "
                    f"In use: {busy}. Try again when they finish, or unload them."
                )
            victim = idle[0]
            self.stats["evictions"] += 1
            log.info("evicting %s to make room for %s", victim.name, label)
            await self._stop(victim, f"evicted to make room for {label}")

    # -- sleep ----------------------------------------------------------------------------------------

    async def _sleep(self, runner: Runner) -> None:
        """Give an idle runner's GPU memory back but keep its process (its weights go to RAM): faster to wake."""
        async with runner._sleep_lock:
            if runner.state != RunnerState.READY or runner.in_use:
                return
            # Sleeping from here on: a request that comes now waits for this lock in _wake, then wakes it.
            runner.state = RunnerState.SLEEPING
            try:
                await runner.choice.engine.sleep(runner.client)
            except Exception as exc:  # an engine that cannot sleep after all: stop it as keep_alive says
                log.warning("%s for %s could not sleep (%s); stopping it", runner.key.engine, runner.name, exc)
                await self._stop(runner, "idle (keep_alive), could not sleep")
                return
            self._on_event("sleeping", {"model": runner.model.short_id, "engine": runner.key.engine,
                                        "why": "idle (keep_alive)"})

    async def _wake(self, runner: Runner) -> None:
        """Bring a sleeping runner back, once its GPU memory fits again; concurrent callers wait for one wake."""
        async with runner._sleep_lock:
            if runner.state not in (RunnerState.SLEEPING, RunnerState.WAKING):
                return
            async with self._admission:
                await self._make_room(0, runner.model, runner.choice.engine, vram=runner.vram, keep=runner)
                runner.state = RunnerState.WAKING
            self._on_event("waking", {"model": runner.model.short_id, "engine": runner.key.engine})
            started = time.monotonic()
            try:
                await runner.choice.engine.wake(runner.client)
            except Exception as exc:
                await self._stop(runner, f"could not wake ({exc})")
                raise EngineFailed(f"{runner.key.engine} could not wake {runner.name} ({exc}); it was stopped, "
                                   "the next request starts it again.") from exc
            runner.phases["woke_seconds"] = round(time.monotonic() - started, 3)
            runner.state = RunnerState.READY
            self._on_event("ready", runner.status())

    # -- idle, unload, shutdown -----------------------------------------------------------------------

    def _schedule_idle(self, runner: Runner) -> None:
        if runner._idle_timer:
            runner._idle_timer.cancel()
            runner._idle_timer = None
        if runner.pinned or runner.expires_at is None:
            return
        delay = runner.expires_at - time.time()
        if delay <= 0:
            self._background(self._expire(runner))
            return
        loop = asyncio.get_running_loop()
        runner._idle_timer = loop.call_later(delay, lambda: self._background(self._expire(runner)))

    def _background(self, coro: Any) -> None:
        """Run `coro` detached, keeping a reference so it is not garbage-collected mid-flight."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, runner: Runner) -> None:
        if runner.in_use == 0 and runner.state == RunnerState.READY and not runner.pinned:
            if runner.vram and runner.choice.engine.can_sleep(self.hardware) and self._ram_for(runner.model.size):
                await self._sleep(runner)  # a GPU engine sleeps instead (its weights go to RAM): waking is fast
                return
            idle = max(0.0, time.time() - runner.last_used)
            await self._stop(runner, f"idle for {idle:.0f} s (keep_alive)")

    def _ram_for(self, size: int) -> bool:
        """Whether `size` more bytes of RAM fit the budget and the machine now (a sleeping engine's weights)."""
        used = sum(r.memory_held for r in self.runners.values() if r.state != RunnerState.STOPPED)
        return used + size <= self.memory_budget and size < hw.memory_available()

    async def unload(self, names: Sequence[str] = (), *, all: bool = False, engine: str | None = None) -> list[str]:
        """Stop the runners of `names` (any tag, digest or id), or every runner; returns what stopped."""
        targets: list[Runner] = []
        if all:
            targets = list(self.runners.values())
        else:
            ids = {self.store.resolve(name).id for name in names}
            targets = [r for r in self.runners.values() if r.key.model_id in ids]
        if engine:
            targets = [r for r in targets if r.key.engine == engine]
        await asyncio.gather(*(self._stop(r, "unloaded") for r in targets))
        return [r.name for r in targets]

    async def shutdown(self) -> None:
        self.standby_enabled = False
        await self._stop_standby()
        for task in list(self._loads.values()):
            task.cancel()
        await asyncio.gather(*(self._stop(r, "shutting down") for r in list(self.runners.values())),
                             return_exceptions=True)
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    async def _stop(self, runner: Runner, why: str) -> None:
        if runner.state in (RunnerState.STOPPING, RunnerState.STOPPED):
            await runner.exited.wait()
            return
        runner.state = RunnerState.STOPPING
        if runner._idle_timer:
            runner._idle_timer.cancel()
        log.info("stopping %s for %s: %s", runner.key.engine, runner.name, why)
        _signal_group(runner.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(runner.exited.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            _signal_group(runner.process.pid, signal.SIGKILL)
            await runner.exited.wait()
        _signal_group(runner.process.pid, signal.SIGKILL)  # stragglers the engine forked
        self._on_event("unloaded", {"model": runner.model.short_id, "engine": runner.key.engine, "why": why})

    async def _watch(self, runner: Runner) -> None:
        runner.exit_code = await runner.process.wait()
        crashed = runner.state not in (RunnerState.STOPPING, RunnerState.STOPPED)
        if crashed:
            self.stats["crashes"] += 1
            log.warning("%s for %s exited unexpectedly (%s)", runner.key.engine, runner.name, runner.exit_code)
            _signal_group(runner.process.pid, signal.SIGKILL)
        runner.state = RunnerState.STOPPED
        if self.runners.get(runner.key) is runner:
            del self.runners[runner.key]
        if runner.client is not None:
            await runner.client.aclose()
        shutil.rmtree(runner.workdir, ignore_errors=True)
        runner.exited.set()
        if crashed:
            self._on_event("crashed", {"model": runner.model.short_id, "engine": runner.key.engine,
                                       "exit_code": runner.exit_code})

    async def _pump_log(self, runner: Runner) -> None:
        """Keep the engine's output: the last lines in memory (ps, crash reports, followers) and all of it in
        `<store>/logs/`, written by the log thread so a slow disk never stalls the event loop."""
        stream = runner.process.stdout
        assert stream is not None
        log_file = self.store.root / "logs" / f"{runner.key.engine.replace('.', '')}-{runner.model.short_id}.log"
        header = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(runner.launch.argv)}"
        runner.log.append(header)  # `logs` of a loaded model starts with how its engine was started
        self._log_writer.open(log_file, header)
        followers = self._log_followers
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the buffer: keep going
                continue
            if not line:
                break
            text = line.decode("utf-8", "replace").rstrip()
            runner.log.append(text)
            self._log_writer.write(log_file, text)
            for inbox in followers.get(runner.key.model_id, ()):
                inbox.put_nowait(text)

    async def follow_logs(self, model_id: str, heartbeat: float = 1.0) -> AsyncIterator[str | None]:
        """Every line the model's engines print from now on, across restarts; `None` every `heartbeat` seconds of
        silence, so a caller can notice its client has gone."""
        inbox: asyncio.Queue[str] = asyncio.Queue()
        self._log_followers.setdefault(model_id, set()).add(inbox)
        try:
            while True:
                try:
                    yield await asyncio.wait_for(inbox.get(), heartbeat)
                except TimeoutError:
                    yield None
        finally:
            self._log_followers.get(model_id, set()).discard(inbox)

    # -- status and settings --------------------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        """The runners, oldest first, and the standby interpreter when there is one (mode `standby`)."""
        entries = [r.status() for r in sorted(self.runners.values(), key=lambda r: r.started)]
        if self._standby is not None:
            entries.append(self._standby.status())
        return entries

    def logs(self, name: str, lines: int = 200) -> str:
        """The runner's recent output, or the last run's log file when it is not loaded (on the event loop)."""
        model = self.store.resolve(name)
        live = self.live_runner(model.id)
        return live.log_tail(lines) if live else self.logged(model, lines)

    def live_runner(self, model_id: str) -> Runner | None:
        return next((r for r in list(self.runners.values()) if r.key.model_id == model_id), None)

    def logged(self, model: Model, lines: int = 200) -> str:
        """The last `lines` of the model's newest engine log file (disk only, safe in a worker thread)."""
        files = sorted((self.store.root / "logs").glob(f"*-{model.short_id}.log"), key=lambda p: p.stat().st_mtime)
        if not files:
            return ""
        return "\n".join(files[-1].read_text(errors="replace").splitlines()[-lines:])

    def configure(self, name: str, *, context_size: int | None = None, keep_alive: str | float | None = None,
                  runtime_flags: Sequence[str] | None = None, engine: str | None = None, think: bool | None = None,
                  reasoning_budget: int | None = None) -> RunConfig:
        """Persist settings for a model and apply its keep_alive to a loaded runner (call on the event loop, or
        with no loop at all; from a worker thread use `save_settings` there and `apply_settings` on the loop)."""
        model_id, config = self.save_settings(name, context_size=context_size, keep_alive=keep_alive,
                                              runtime_flags=runtime_flags, engine=engine, think=think,
                                              reasoning_budget=reasoning_budget)
        if keep_alive is not None or think is not None or reasoning_budget is not None:
            self.apply_settings(model_id, config)
        return config

    def save_settings(self, name: str, *, context_size: int | None = None, keep_alive: str | float | None = None,
                      runtime_flags: Sequence[str] | None = None, engine: str | None = None, think: bool | None = None,
                      reasoning_budget: int | None = None) -> tuple[str, RunConfig]:
        """Check and persist a model's settings (disk only, safe in a worker thread); flags are checked against the
        allowlist of the engine that runs it, and a start with them is planned, so what would fail fails now.

        `think` and `reasoning_budget` are the model's thinking defaults (engine flags like llama-server's
        `--reasoning-budget` mean the same and are read into them; these win). They apply from the next load."""
        model, choice = self.choose(name, engine)
        if context_size is not None and context_size <= 0:
            raise ModelRunnerError("The context size must be a positive number of tokens.")
        if reasoning_budget is not None and (isinstance(reasoning_budget, bool) or not isinstance(reasoning_budget, int)
                                             or reasoning_budget < -1):
            raise InvalidSetting("The reasoning budget is a number of tokens: 0 for no thinking, -1 for no limit.")
        flags = choice.engine.check_flags(runtime_flags) if runtime_flags is not None else None
        if flags is not None or context_size is not None:
            current = self.settings.get(model.id)
            choice.engine.plan(model, RunConfig(context_size or current.context_size,
                                                current.runtime_flags if flags is None else flags),
                               budget=self.memory_budget)
        seconds = parse_keep_alive(keep_alive) if keep_alive is not None else None
        return model.id, self.settings.update(model.id, context_size=context_size, keep_alive=seconds,
                                              runtime_flags=flags, think=think, reasoning_budget=reasoning_budget)

    def apply_settings(self, model_id: str, config: RunConfig) -> None:
        """A changed keep_alive takes effect on the model's loaded runners at once (on the event loop); changed
        thinking settings, which an engine reads when it starts, restart a chat runner once its requests are done
        (its next request waits for that)."""
        for runner in list(self.runners.values()):
            if runner.key.model_id != model_id or runner.key.mode != MODE_COMPLETION or runner.plan is None:
                continue
            plan = runner.plan
            if ((config.think is not None and config.think != plan.think)
                    or (config.reasoning_budget is not None and config.reasoning_budget != plan.reasoning_budget)):
                runner.restart_reason = "restarting with new thinking settings"
        if config.keep_alive is None:
            return
        for runner in list(self.runners.values()):
            if runner.key.model_id != model_id:
                continue
            runner.keep_alive = config.keep_alive
            runner.pinned = config.keep_alive < 0
            runner.expires_at = None if runner.pinned else runner.last_used + config.keep_alive
            if runner.in_use == 0 and runner.state == RunnerState.READY:
                with contextlib.suppress(RuntimeError):  # no running loop: nothing is scheduled yet anyway
                    self._schedule_idle(runner)

    def settings_of(self, name: str) -> dict[str, Any]:
        """A model's saved settings as `GET engines/_configure` shows them (disk only)."""
        model = self.store.resolve(name)
        config = self.settings.get(model.id)
        return {"model": name, "model_id": model.id, "context_size": config.context_size,
                "runtime_flags": list(config.runtime_flags), "keep_alive": config.keep_alive,
                "think": config.think, "reasoning_budget": config.reasoning_budget,
                "default_keep_alive": self.keep_alive}

    def status(self) -> dict[str, Any]:
        """Engines on this machine: installed or not, the device, and why."""
        engines = []
        for engine in self.engines:
            availability = engine.availability(self.hardware)
            engines.append({"engine": engine.name, "available": availability.ok, "device": availability.device,
                            "version": availability.version, "reason": availability.reason,
                            "formats": sorted(engine.formats), "location": availability.location,
                            "implementation": availability.implementation})
        return {"hardware": self.hardware.describe(), "memory_budget": self.memory_budget,
                "vram_budget": self.vram_budget, "engines": engines}

    @property
    def runtime_dir(self) -> Path:
        """A user-only folder for engine sockets. Its path must stay short: a Unix socket's path has at most 107
        bytes, and vLLM puts sockets named by a UUID in its temporary folder below it (about 75 bytes more)."""
        if self._runtime is None:
            candidates = [os.environ.get("XDG_RUNTIME_DIR") or "", tempfile.gettempdir(), "/tmp"]
            base = self._runtime_parent or Path(next(c for c in candidates if c and len(c) <= MAX_RUNTIME_PARENT))
            self._runtime = Path(tempfile.mkdtemp(prefix="modelrunner-", dir=base))
            self._runtime.chmod(0o700)
        return self._runtime

    def kill_all_now(self) -> None:
        """Synchronous last resort (atexit, signal handlers): SIGKILL every engine process group."""
        for runner in list(self.runners.values()):
            _signal_group(runner.process.pid, signal.SIGKILL)


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


def _check_mode(model: Model, name: str, mode: str) -> None:
    """Refuse a use the model was not made for, before an engine starts for it: reranking needs a reranker (a
    classification head), and a reranker cannot chat."""
    reranker = ModelFacts.of(model).reranker
    if mode == MODE_RERANK and not reranker:
        raise UnsuitableModel(
            f"{name} is not a reranker: rerank and score need a model with a classification head (a cross-encoder "
            "such as bge-reranker, a *ForSequenceClassification model; in GGUF, rank pooling or classifier labels). "
            "Use embeddings to compare texts with other models.")
    if mode == MODE_COMPLETION and reranker:
        raise UnsuitableModel(f"{name} is a reranker: it scores documents against a query (POST v1/rerank or "
                           "v1/score) and cannot chat or complete text.")


def _client_for(launch: Launch, engine: Engine) -> httpx.AsyncClient:
    """The engine's HTTP client: a new connection for each request. Engines close idle connections on their own
    schedule (llama-server after 5 s), and a request sent on one the engine is closing that moment fails with
    "disconnected without a response"; a Unix socket connects in microseconds, so nothing is kept alive."""
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    transport = httpx.AsyncHTTPTransport(uds=str(launch.socket), limits=no_keepalive) if launch.socket \
        else httpx.AsyncHTTPTransport(limits=no_keepalive)
    return httpx.AsyncClient(
        base_url=launch.base_url, transport=transport, headers=launch.headers,
        timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
    )


def _resident_bytes(pid: int) -> int | None:
    """A process's resident memory (Linux /proc), or None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# Run by `python -I -S -c` before the engine: ask Linux to SIGTERM this process when its parent dies (even by
# SIGKILL), give up if the parent is already gone, then become the engine (the setting survives exec).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _dying_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` started through the launcher that ties it to this process (Linux; elsewhere unchanged)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]
