"""A runner: one engine process serving one model in one mode, and the transport requests take to it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..engine_stream import EngineResponse, open_stream
from ..engines.base import Launch, LoadPlan
from ..engines.select import EngineChoice
from ..store import Model
from ..store.names import familiar_name
from .errors import EngineFailed
from .logs import LOG_LINES, reason_line
from .priority import SlotShare


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
    """What one process serves: two tags of one model share it, another mode or engine gets its own."""

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
    started_monotonic: float = field(default_factory=time.monotonic)
    #: GPU memory its plan takes while awake (0 on the CPU).
    vram: int = 0
    #: Why it must restart once its requests are done (its settings changed since it started), or None.
    restart_reason: str | None = None
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
    idle_timer: asyncio.TimerHandle | None = None
    sleep_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task] = field(default_factory=list)
    #: Its slots, shared between interactive requests and work on data (priority.py).
    share: SlotShare = field(default_factory=lambda: SlotShare(1))
    _reason_cache: tuple[tuple[Any, ...], str | None] | None = field(default=None, repr=False)

    @property
    def vram_held(self) -> int:
        """GPU memory it holds now: none while asleep."""
        return 0 if self.state in (RunnerState.SLEEPING, RunnerState.STOPPED) else self.vram

    @property
    def memory_held(self) -> int:
        """RAM it holds now: its process, and the weights it offloaded while asleep."""
        return self.memory + (self.model.size if self.state == RunnerState.SLEEPING else 0)

    @property
    def name(self) -> str:
        """The model's first tag as `ls` shows it (what `to_json` gives, without building the rest of it: every
        request's metrics label asks, on the event loop)."""
        return familiar_name(self.model.tags[0], self.model.default_registry) if self.model.tags \
            else self.model.short_id

    @property
    def implementation(self) -> str:
        """The program serving the model (`llama-server`, `llama-cpp-python`, `vllm`), as its engine launched it."""
        return self.launch.implementation or self.key.engine

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
            **self.share.status(),
        }

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self.log)[-lines:])

    def failure(self, what: str, note: str = "") -> EngineFailed:
        """The error for an engine that exited: its own one-line reason first (when its output has one), then how
        it ended, `note`, and its last log lines."""
        code = self.exit_code if self.exit_code is not None else self.process.returncode
        how = f"exit code {code}" if code is not None and code >= 0 else f"killed by signal {-(code or 0)}"
        tail = self.log_tail(15) or "(no output)"
        reason = self._reason()
        first = f"{reason}\n" if reason else ""
        note = f" {note}." if note else ""
        return EngineFailed(f"{first}{self.key.engine} {what} for {self.name} ({how}).{note} Last lines of its "
                            f"log:\n{tail}")

    def _reason(self) -> str | None:
        """`reason_line` of the log, worked out once per state of the log: every request in flight when an engine
        dies asks for it, and each scan is a regular expression over up to LOG_LINES lines on the event loop."""
        key = (len(self.log), self.log[-1] if self.log else None, self.exit_code)
        if self._reason_cache is None or self._reason_cache[0] != key:
            self._reason_cache = (key, reason_line(self.log))
        return self._reason_cache[1]

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request to the engine; an engine that dies meanwhile becomes an `EngineFailed`.

        A JSON body (every inference and token count) goes the streams' way (engine_stream.py) and is read whole:
        httpx's connection set-up and parser cost several times as much of the event loop per request, which under
        load is what the notebook server's own requests wait behind. Anything else (a GET of metrics) uses httpx."""
        assert self.client is not None
        if set(kwargs) == {"json"}:
            async with self.stream(method, path, json=kwargs["json"]) as answer:
                content = b"".join([chunk async for chunk in answer])
            headers = [(name, value) for name, value in answer.headers.multi_items()
                       if name.lower() not in ("transfer-encoding", "content-length")]  # the body is whole now
            # With its request, as httpx's own responses have it (raise_for_status needs it).
            request = httpx.Request(method, self.client.base_url.join(path))
            return httpx.Response(answer.status_code, headers=headers, content=content, request=request)
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


def client_for(launch: Launch) -> httpx.AsyncClient:
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
