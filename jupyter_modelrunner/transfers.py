"""Pulls and pushes as the runner runs them: in worker threads, their progress streamed to the HTTP client that
asked, at most a few pulls downloading at once, and every transfer told to the watchers (the event bus, the
sidebar) as its client reads it.

The distribution code (`distribution/`) does the work and reports progress from its thread; this module turns that
into an async stream the handlers relay, with backpressure that drops only progress (never the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from .errors import ModelRunnerError
from .store import Model, Store

log = logging.getLogger(__name__)

#: How many progress events may wait for a slow HTTP client before older ones are dropped.
PROGRESS_BACKLOG = 256
DEFAULT_MAX_CONCURRENT_PULLS = 3
#: `watcher(mode, name)` → the callback for that transfer's events (see `Transfers.watch`).
TransferWatcher = Callable[[str, str], Callable[[dict[str, Any] | None], None]]


class Transfers:
    """The runner's pulls and pushes. `describe` turns a pulled model into what the client gets (with its engine)."""

    def __init__(self, store: Store, registry: str | None, metrics: Any, describe: Callable[[Model], dict[str, Any]],
                 max_concurrent_pulls: int = DEFAULT_MAX_CONCURRENT_PULLS) -> None:
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.describe = describe
        #: Pulls that download at once; more wait their turn (each is a thread and a registry connection per layer).
        self.max_concurrent_pulls = max(1, max_concurrent_pulls)
        self.pulls_running = 0
        self.watchers: list[TransferWatcher] = []
        self._slots: asyncio.Semaphore | None = None

    def watch(self, watcher: TransferWatcher) -> Callable[[], None]:
        """For each pull or push as it starts, `watcher(mode, name)` returns a callback that then gets the transfer's
        events as its client reads them, and `None` once it is over (after `success`/`error`, or when the client went
        away, which cancels it). Called on the event loop. Returns the function that stops watching."""
        self.watchers.append(watcher)
        return lambda: self.watchers.remove(watcher) if watcher in self.watchers else None

    def _tell_watchers(self, mode: str, name: str) -> Callable[[dict[str, Any] | None], None]:
        callbacks = []
        for watcher in list(self.watchers):
            try:
                callbacks.append(watcher(mode, name))
            except Exception:  # a broken watcher must not break the transfer
                log.exception("transfer watcher failed")

        def tell(event: dict[str, Any] | None) -> None:
            for callback in callbacks:
                try:
                    callback(event)
                except Exception:
                    log.exception("transfer watcher failed")

        return tell

    async def run(self, mode: str, name: str, target: str | None = None, *,
                  cancel: threading.Event | None = None, hf_token: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Pull (`name` a reference) or push (`name` a stored model, to `target` or its own tag) in a worker thread,
        yielding progress events and ending with `success` or `error`. Setting `cancel`, or closing the iterator,
        stops it at the next read; what was downloaded is kept for the next pull to resume. `hf_token` goes with a
        Hugging Face pull only (never logged)."""
        from .distribution import pull, push
        from .sizes import format_bytes

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        cancel = threading.Event() if cancel is None else cancel
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
                    result = pull(name, self.store, on_progress=on_progress, registry=self.registry, cancel=cancel,
                                  hf_token=hf_token)
                    model = self.describe(result.model)  # with its engine: the client needs no second request
                    how = (f"downloaded {format_bytes(result.downloaded_bytes)}" if result.downloaded_bytes
                           else "already up to date")
                    emit({"type": "success", "mode": mode, "model": model,
                          "message": f"Pulled {result.reference.relative_to(self.registry)} ({result.model.short_id}), "
                                     f"{how}"})
                else:
                    result = push(self.store, name, target=target, on_progress=on_progress, registry=self.registry)
                    emit({"type": "success", "mode": mode, "digest": result.digest,
                          "message": f"Pushed {result.reference.relative_to(self.registry)}: uploaded "
                                     f"{format_bytes(result.uploaded_bytes)}, "
                                     f"{format_bytes(result.skipped_bytes)} already there"})
                counter.labels("success").inc()
            except ModelRunnerError as exc:
                counter.labels("cancelled" if cancel.is_set() else "error").inc()
                emit({"type": "error", "mode": mode, "message": str(exc), "status": exc.http_status})
            except _Cancelled:
                counter.labels("cancelled").inc()
            except OSError as exc:
                counter.labels("error").inc()
                emit({"type": "error", "mode": mode, "status": 500,
                      "message": f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"})
            except Exception as exc:  # the stream must always end with an event, whatever happened
                counter.labels("error").inc()
                log.exception("%s of %s failed", mode, name)
                emit({"type": "error", "mode": mode, "status": 500, "message": f"{mode} failed: {exc!r}"})
            finally:
                emit(None)

        watchers = self._tell_watchers(mode, name)
        slots = None
        if mode == "pull":
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.max_concurrent_pulls)
            slots = self._slots
            if slots.locked():
                yield {"type": "progress", "mode": mode, "total": 0, "message":
                       f"Waiting: {self.pulls_running} other pulls are downloading (at most "
                       f"{self.max_concurrent_pulls} at once, c.ModelRunner.max_concurrent_pulls)"}
            await slots.acquire()
            self.pulls_running += 1
        thread = threading.Thread(target=work, name=f"modelrunner-{mode}", daemon=True)
        thread.start()
        try:
            while (event := await queue.get()) is not None:
                watchers(event)
                yield event
        finally:
            if slots is not None:
                self.pulls_running -= 1
                slots.release()
            cancel.set()  # no one is listening any more: stop at the next read, keep the partial files
            try:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(thread.join)
            finally:
                watchers(None)  # even when the wait is cancelled: watchers always hear the end



class _Cancelled(Exception):
    """Raised inside the worker's progress callback to stop a push whose listener went away."""
