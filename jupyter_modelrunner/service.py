"""The model runner as one object: the store, the scheduler and the jobs on them, for an HTTP front end.

The HTTP layer (`api/`) stays a translation of requests into calls on this class, and this class
stays free of any web framework, like jupyterlab-git's core. Everything that reads or writes the
disk (index, manifests, hashing a download) runs in a worker thread, because the event loop here is
the notebook server's and must keep answering while a 5 GB pull verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ModelRunnerError
from .scheduler import Scheduler
from .store import Model, Store

log = logging.getLogger(__name__)

#: How many progress events may wait for a slow HTTP client before older ones are dropped.
PROGRESS_BACKLOG = 256


@dataclass
class Metrics:
    """Our own counters, exported at `GET metrics` next to the engines' metrics."""

    pulls: Counter[str] = field(default_factory=Counter)  # by outcome: success / error / cancelled
    pushes: Counter[str] = field(default_factory=Counter)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, model)
    errors: Counter[str] = field(default_factory=Counter)  # by endpoint
    engine_events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (event, engine)
    started: float = field(default_factory=time.time)


class ModelRunnerService:
    """Owns one store and one scheduler for the lifetime of a server (or a test)."""

    def __init__(self, store: Store, scheduler: Scheduler, *, registry: str | None = None) -> None:
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        self.metrics = Metrics()
        self.version = __version__
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []

    @classmethod
    def create(cls, store: Store, *, registry: str | None = None, **scheduler_options: Any) -> ModelRunnerService:
        """A service whose scheduler reports engine events (loading, crashes) to the service's listeners."""
        holder: list[ModelRunnerService] = []
        scheduler = Scheduler(store, on_event=lambda kind, data: holder[0]._engine_event(kind, data),
                              **scheduler_options)
        service = cls(store, scheduler, registry=registry)
        holder.append(service)
        return service

    def subscribe(self, listener: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        """Call `listener(kind, data)` on every engine event; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _engine_event(self, kind: str, data: dict[str, Any]) -> None:
        engine = str(data.get("engine") or data.get("backend_name") or "")
        if kind != "loading" or "elapsed" not in data:  # not the once-a-second "still loading" ticks
            self.metrics.engine_events[(kind, engine)] += 1
        for listener in list(self._listeners):
            try:
                listener(kind, data)
            except Exception:  # a broken listener must not break the engine's supervision
                log.exception("engine event listener failed")

    # -- models ---------------------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """Every stored model, each with the engine that would run it here (`engine`) or why none can."""
        return await asyncio.to_thread(lambda: [self._describe(m) for m in self.store.models()])

    async def model(self, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(lambda: self._describe(self.store.resolve(name)))

    def _describe(self, model: Model) -> dict[str, Any]:
        """DMR's model object plus `engine` ({engine, device, reason}) and `engine_error`: users see the choice."""
        from .engines.select import select_engine

        doc = model.to_json()
        try:
            doc["engine"] = select_engine(model, self.scheduler.hardware, self.scheduler.engines).to_json()
            doc["engine_error"] = None
        except ModelRunnerError as exc:
            doc["engine"], doc["engine_error"] = None, str(exc)
        return doc

    async def package(self, target: str, *, gguf: list[str] | None = None, safetensors_dir: str | None = None,
                      license_files: list[str] | None = None, chat_template: str | None = None,
                      context_size: int | None = None) -> dict[str, Any]:
        """Make a model from files on this machine (`jupyter modelrunner package`, for clients such as a kernel)."""
        from .distribution import package_gguf, package_safetensors
        from .reference import parse_reference

        def work() -> Model:
            ref = parse_reference(target, registry=self.registry)
            options: dict[str, Any] = {"license_files": [Path(p) for p in license_files or []],
                                       "chat_template": Path(chat_template) if chat_template else None,
                                       "context_size": context_size}
            if gguf:
                return package_gguf(self.store, [Path(p) for p in gguf], ref, **options)
            if safetensors_dir:
                return package_safetensors(self.store, Path(safetensors_dir), ref, **options)
            raise ModelRunnerError("Give the weights: a GGUF file or a folder of safetensors.")

        return self._describe(await asyncio.to_thread(work))

    async def remove(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Remove a model or one of its tags; a loaded model's engine is stopped first when the model goes."""
        model = await asyncio.to_thread(self.store.resolve, name)
        if any(r.key.model_id == model.id for r in self.scheduler.runners.values()) and (
            force or len(model.tags) <= 1
        ):
            await self.scheduler.unload([model.id])
        result = await asyncio.to_thread(self.store.remove, name, force=force)
        return {"untagged": list(result.untagged), "deleted": result.deleted, "freed_bytes": result.freed_bytes}

    async def tag(self, source: str, target: str) -> dict[str, Any]:
        return (await asyncio.to_thread(self.store.tag, source, target)).to_json()

    async def df(self) -> dict[str, Any]:
        usage = await asyncio.to_thread(self.store.df)
        return {**usage.to_json(), "store": str(self.store.root)}

    def pull(self, reference: str) -> AsyncIterator[dict[str, Any]]:
        """Pull in a worker thread, yielding FORMAT §4 progress events and ending with `success` or `error`.

        Closing the iterator early (the HTTP client went away) cancels the pull; what was downloaded is
        kept and the next pull resumes it.
        """
        return self._transfer("pull", reference)

    def push(self, name: str, target: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Push a stored model (to its own tag, or `target`), yielding progress events like `pull`."""
        return self._transfer("push", name, target)

    async def _transfer(self, mode: str, name: str, target: str | None = None) -> AsyncIterator[dict[str, Any]]:
        from .distribution import pull, push
        from .distribution.progress import format_bytes

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        cancel = threading.Event()
        counter = self.metrics.pulls if mode == "pull" else self.metrics.pushes

        def emit(event: dict[str, Any] | None) -> None:
            # Progress is lossy under backpressure (the next event has the newer numbers); the end is not.
            if event is not None and event.get("type") == "progress" and queue.qsize() > PROGRESS_BACKLOG:
                return
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def on_progress(event: Any) -> None:
            if cancel.is_set() and mode == "push":  # pull watches `cancel` itself; push stops here
                raise _Cancelled
            emit(event.to_json())

        def work() -> None:
            try:
                if mode == "pull":
                    result = pull(name, self.store, on_progress=on_progress, registry=self.registry, cancel=cancel)
                    model = result.model.to_json()
                    how = (f"downloaded {format_bytes(result.downloaded_bytes)}" if result.downloaded_bytes
                           else "already up to date")
                    emit({"type": "success", "mode": mode, "model": model,
                          "message": f"Pulled {result.reference.familiar} ({result.model.short_id}), {how}"})
                else:
                    result = push(self.store, name, target=target, on_progress=on_progress, registry=self.registry)
                    emit({"type": "success", "mode": mode, "digest": result.digest,
                          "message": f"Pushed {result.reference.familiar}: uploaded "
                                     f"{format_bytes(result.uploaded_bytes)}, "
                                     f"{format_bytes(result.skipped_bytes)} already there"})
                counter["success"] += 1
            except ModelRunnerError as exc:
                counter["cancelled" if cancel.is_set() else "error"] += 1
                emit({"type": "error", "mode": mode, "message": str(exc), "status": exc.http_status})
            except _Cancelled:
                counter["cancelled"] += 1
            except OSError as exc:
                counter["error"] += 1
                emit({"type": "error", "mode": mode, "status": 500,
                      "message": f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"})
            except Exception as exc:  # the stream must always end with an event, whatever happened
                counter["error"] += 1
                log.exception("%s of %s failed", mode, name)
                emit({"type": "error", "mode": mode, "status": 500, "message": f"{mode} failed: {exc!r}"})
            finally:
                emit(None)

        thread = threading.Thread(target=work, name=f"modelrunner-{mode}", daemon=True)
        thread.start()
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            cancel.set()  # no one is listening any more: stop at the next chunk, keep the partial files
            with contextlib.suppress(Exception):
                await asyncio.to_thread(thread.join)

    # -- engines --------------------------------------------------------------------------------------

    async def configure(self, name: str, **settings: Any) -> dict[str, Any]:
        from .runner_config import format_keep_alive

        config = await asyncio.to_thread(self.scheduler.configure, name, **settings)
        return {"model": name, "context_size": config.context_size, "runtime_flags": list(config.runtime_flags),
                "keep_alive": format_keep_alive(config.keep_alive) if config.keep_alive is not None else None}

    async def status(self) -> dict[str, Any]:
        return {**await asyncio.to_thread(self.scheduler.status), "version": self.version}

    async def logs(self, name: str, lines: int = 200) -> str:
        return await asyncio.to_thread(self.scheduler.logs, name, lines)

    async def shutdown(self) -> None:
        await self.scheduler.shutdown()


class _Cancelled(Exception):
    """Raised inside the worker's progress callback to stop a push whose listener went away."""
