"""Engine lifecycle and pull summaries on the Jupyter server's event bus (`jupyter_events`).

The scheduler reports what its engines do through the service's listeners, and a pull reports every chunk
to whoever reads its stream. `attach` puts both on the server's `EventLogger` under one schema
(`event_schemas/engine/v1.yaml`), so any subscriber of `/api/events/subscribe` (the JupyterLab sidebar,
a kernel, a monitoring hook) learns of changes as they happen instead of polling `engines/ps`.

What a subscriber can rely on: `loading` when an engine starts and then at most once a second while it
loads, `ready`, `unloaded` or `crashed` once each; for a pull, `started`, at most one `progress` a second,
then exactly one of `succeeded`, `failed` or `cancelled` when its stream ends. Nothing here runs unless a
server attached it, and the service works the same without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .service import STORE_CHANGED
from .store import SHORT_ID_LENGTH

if TYPE_CHECKING:
    from jupyter_events import EventLogger

    from .service import ModelRunnerService

SCHEMA_ID = "https://events.jupyter.org/jupyter_modelrunner/engine/v1"
SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "engine" / "v1.yaml"
ENGINE_ACTIONS = ("loading", "ready", "unloaded", "crashed", "sleeping", "waking")
#: A running pull is summarized at most this often (its chunks arrive many times a second).
PULL_SUMMARY_SECONDS = 1.0
#: The status of a pull's `error` event when it was cancelled (distribution.pulling.PullCancelled).
CANCELLED_STATUS = 499

#: Fields of the scheduler's event data that go on the bus unchanged, when present.
_ENGINE_FIELDS = ("model_id", "mode", "reason", "elapsed", "log", "device", "context_size", "context_source",
                  "slots", "memory", "keep_alive", "expires_at", "implementation", "why", "exit_code")
#: Of those, the ones whose null says something (unknown, or not set) and is kept.
_NULLABLE = ("context_size", "context_source", "slots", "expires_at", "exit_code")

Emit = Callable[[dict[str, Any]], None]


def register_schema(event_logger: EventLogger) -> None:
    """Register the schema once per logger (a second extension load, or a test's second attach, is fine)."""
    if SCHEMA_ID not in event_logger.schemas:
        event_logger.register_event_schema(SCHEMA_PATH)


def short_id(model_id: str) -> str:
    return model_id.removeprefix("sha256:")[:SHORT_ID_LENGTH]


def engine_event(kind: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """The bus's form of one scheduler event (`on_event(kind, data)`), or None for a kind it does not carry.

    The scheduler names the model by its short id and the engine `engine` in most events, but `ready` carries a
    runner's `ps` entry (`model_id`, `model_name`, `backend_name`); both become `model` and `engine` here.
    """
    if kind not in ENGINE_ACTIONS:
        return None
    model = data.get("model") or short_id(str(data.get("model_id") or ""))
    event: dict[str, Any] = {"action": kind, "model": str(model),
                             "engine": str(data.get("engine") or data.get("backend_name") or "")}
    if data.get("model_name"):
        event["model_name"] = str(data["model_name"])
    for key in _ENGINE_FIELDS:
        if key in data and (data[key] is not None or key in _NULLABLE):
            event[key] = data[key]
    if kind == "crashed":
        event.setdefault("exit_code", None)
    return event


class PullSummary:
    """One pull's stream of progress events (a few per MiB) folded into the bus's summaries.

    `started` when it begins, `progress` at most once every `interval` seconds, and exactly one end when the
    stream closes: `succeeded` or `failed` as its last outcome says (the distribution layer reports `success`,
    then the service its own with the model), or `cancelled` when it closed without one (the client went away).
    Call it with each event as the pull's reader gets it, then with None.
    """

    def __init__(self, model: str, emit: Emit, *, interval: float = PULL_SUMMARY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self._emit, self._interval, self._clock = emit, interval, clock
        self._fraction: float | None = None
        self._outcome: tuple[str, dict[str, Any]] | None = None
        self._last = clock()
        self._ended = False
        self._send("started")

    def __call__(self, event: dict[str, Any] | None) -> None:
        if self._ended:
            return
        if event is None:
            self._ended = True
            state, extra = self._outcome or (
                "cancelled", {"message": "Cancelled: its client went away. The downloaded parts are kept."})
            self._send(state, **extra)
            return
        kind = event.get("type")
        if kind == "progress":
            total, done = event.get("total"), event.get("pulled")
            if isinstance(total, int | float) and total > 0 and isinstance(done, int | float):
                self._fraction = min(1.0, max(0.0, done / total))
            if self._outcome is None and self._clock() - self._last >= self._interval:
                self._send("progress")
        elif kind == "success":
            self._fraction = 1.0
            extra = self._outcome[1] if self._outcome and self._outcome[0] == "succeeded" else {}
            extra = {**extra, "message": str(event.get("message") or "")}
            model = event.get("model") or {}
            if model.get("id"):
                extra["model_id"] = str(model["id"])
            if model.get("tags"):
                extra["model_name"] = str(model["tags"][0])
            self._outcome = ("succeeded", extra)
        elif kind == "error":  # status 499: cancelled (the client went away, or asked to stop)
            self._outcome = ("cancelled" if event.get("status") == CANCELLED_STATUS else "failed",
                             {"message": str(event.get("message") or "")})

    def _send(self, state: str, **extra: Any) -> None:
        self._last = self._clock()
        self._emit({"action": "pull", "model": self.model, "state": state, "fraction": self._fraction, **extra})


def attach(service: ModelRunnerService, event_logger: EventLogger) -> Callable[[], None]:
    """Emit the service's engine events and pull summaries on `event_logger` (the server's); returns `detach`.

    Registers the schema if needed. Runs on the server's event loop, where the service reports (jupyter_events
    schedules its listeners as tasks of that loop).
    """
    register_schema(event_logger)
    #: (engine, short id) → what the bus says about a runner the scheduler no longer lists (unloaded, crashed).
    known: dict[tuple[str, str], dict[str, str]] = {}

    def emit(data: dict[str, Any]) -> None:
        event_logger.emit(schema_id=SCHEMA_ID, data=data)

    def on_engine_event(kind: str, data: dict[str, Any]) -> None:
        if kind == STORE_CHANGED:
            emit({"action": "models", "model": data["model_name"] or data["model_id"], "change": data["change"],
                  **({"model_id": data["model_id"]} if data["model_id"] else {})})
            return
        event = engine_event(kind, data)
        if event is None:
            return
        key = (event["engine"], event["model"])
        names = _runner_names(service, *key) or known.get(key, {})
        if kind in ("unloaded", "crashed"):
            known.pop(key, None)
        elif names:
            known[key] = names
        emit({**names, **event})

    def on_transfer(mode: str, name: str) -> Callable[[dict[str, Any] | None], None]:
        if mode != "pull":
            return lambda event: None
        return PullSummary(name, emit)

    unsubscribe = service.subscribe(on_engine_event)
    unwatch = service.watch_transfers(on_transfer)

    def detach() -> None:
        unsubscribe()
        unwatch()

    return detach


def _runner_names(service: ModelRunnerService, engine: str, model: str) -> dict[str, str]:
    """`model_id`, `model_name` and `mode` of the scheduler's runner for (engine, short id), if it lists one."""
    for runner in list(service.scheduler.runners.values()):
        if runner.key.engine == engine and short_id(runner.key.model_id) == model:
            return {"model_id": runner.key.model_id, "model_name": runner.name, "mode": runner.key.mode}
    return {}
