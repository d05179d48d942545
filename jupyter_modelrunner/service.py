"""The model runner as one object: the store, the scheduler and the jobs on them, for an HTTP front end.

The HTTP layer (`api/`) stays a translation of requests into calls on this class, and this class
stays free of any web framework, like jupyterlab-git's core. Everything that reads or writes the
disk (index, manifests, hashing a download) runs in a worker thread, because the event loop here is
the notebook server's and must keep answering while a 5 GB pull verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ._version import __version__
from .batches import BatchExecutor
from .errors import ModelRunnerError, PolicyRefused, UnsupportedArtifact
from .images import (
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES_PER_REQUEST,
)
from .inference import OWNER, Caller, Inference, InferenceRequest, admitted_body, allowed_lifetime, infer
from .lease import Owner, StoreLease
from .scheduling import Runner, Scheduler
from .store import Model, Store
from .transfers import DEFAULT_MAX_CONCURRENT_PULLS, PROGRESS_BACKLOG, Transfers, TransferWatcher

log = logging.getLogger(__name__)

#: The listener kind (see `subscribe`) of a change to the store's models: data `{change, model_id, model_name}`.
STORE_CHANGED = "store"


class Metrics:
    """Our own counters and gauges, in a registry of this service's own (a process may hold several services).

    `GET metrics` renders them with the engines' metrics; Jupyter's `/metrics` shows them too (see api/metrics.py).
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # by outcome: success / error / cancelled
        self.pulls = Counter("modelrunner_pulls_total", "Model pulls by outcome.", ["outcome"], registry=registry)
        self.pushes = Counter("modelrunner_pushes_total", "Model pushes by outcome.", ["outcome"], registry=registry)
        #: Counted once the model is resolved, under its familiar name: a mistyped name makes no series.
        self.requests = Counter("modelrunner_requests_total", "Inference requests by endpoint and model.",
                                ["endpoint", "model"], registry=registry)
        self.errors = Counter("modelrunner_request_errors_total", "Inference requests that failed, by endpoint.",
                              ["endpoint"], registry=registry)
        self.engine_events = Counter("modelrunner_engine_events_total",
                                     "Engine lifecycle events (loading, ready, unloaded, crashed).",
                                     ["event", "engine"], registry=registry)
        self.started = Gauge("modelrunner_start_time_seconds", "When the runner started (Unix time).",
                             registry=registry)
        self.started.set(time.time())
        self.scrape_duration = Gauge("modelrunner_scrape_duration_seconds",
                                     "Time the last `GET metrics` spent collecting the engines' metrics.",
                                     registry=registry)




class ModelRunnerService:
    """Owns one store and one scheduler for the lifetime of a server (or a test)."""

    def __init__(self, store: Store, scheduler: Scheduler, *, registry: str | None = None,
                 max_concurrent_pulls: int = DEFAULT_MAX_CONCURRENT_PULLS,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 image_fetch_timeout: float = DEFAULT_FETCH_TIMEOUT, allow_private_image_urls: bool = False) -> None:
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        #: Limits on the images of chat requests (see images.py): bytes per image, seconds per download, and whether
        #: image URLs may point at loopback and private addresses.
        self.max_image_bytes = max_image_bytes
        self.image_fetch_timeout = image_fetch_timeout
        self.allow_private_image_urls = allow_private_image_urls
        #: Images one request may carry, and image bytes being downloaded at once across requests (None: 4 images'
        #: worth); set from c.ModelRunner.max_images_per_request and max_image_bytes_in_flight.
        self.max_images_per_request = DEFAULT_MAX_IMAGES_PER_REQUEST
        self.max_image_bytes_in_flight: int | None = None
        self.metrics = Metrics()
        self.version = __version__
        #: The store's lease (see lease.py) once claimed; while another process owns the store, `remote_owner` says
        #: where it is and the HTTP layer forwards every request there instead of running engines here.
        self.lease = StoreLease(store.root)
        self.remote_owner: Owner | None = None
        #: Work in progress (requests, pulls, streams), so idle shutdown and cullers never stop the runner mid-way.
        self.active: dict[int, str] = {}
        self.last_activity = time.time()
        #: Set when a server that started on this store asked this (embedded) runner for it (`engines/_handover`):
        #: the extension stops the runner, releasing the lease, as soon as no work is in progress.
        self.handing_over = False
        self._activity_ids = itertools.count()
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        #: Pulls and pushes in worker threads, at most `max_concurrent_pulls` pulls downloading at once.
        self.transfers = Transfers(store, registry, self.metrics, self._describe, max_concurrent_pulls)
        #: The Batch API's files and batches (in the store), run by the store's owner: `resume_batches` once it holds
        #: the store, and stopped where they are by `shutdown`.
        self.batches = BatchExecutor(self, store.root)

    @classmethod
    def create(cls, store: Store, *, registry: str | None = None,
               max_concurrent_pulls: int = DEFAULT_MAX_CONCURRENT_PULLS,
               max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
               image_fetch_timeout: float = DEFAULT_FETCH_TIMEOUT, allow_private_image_urls: bool = False,
               **scheduler_options: Any) -> ModelRunnerService:
        """A service whose scheduler reports engine events (loading, crashes) to the service's listeners."""
        holder: list[ModelRunnerService] = []
        scheduler = Scheduler(store, on_event=lambda kind, data: holder[0]._engine_event(kind, data),
                              **scheduler_options)
        service = cls(store, scheduler, registry=registry, max_concurrent_pulls=max_concurrent_pulls,
                      max_image_bytes=max_image_bytes, image_fetch_timeout=image_fetch_timeout,
                      allow_private_image_urls=allow_private_image_urls)
        holder.append(service)
        return service

    # -- ownership and activity ---------------------------------------------------------------------------

    @property
    def owns_store(self) -> bool:
        return self.lease.held

    def claim_store(self) -> bool:
        """Take the store's lease if it is free: True when this service now runs the store's engines. Otherwise
        `remote_owner` names the process that does (None while it has not yet said where it listens)."""
        if self.lease.acquire():
            self.remote_owner = None
            return True
        self.remote_owner = self.lease.owner()
        return False

    def begin_activity(self, what: str) -> int:
        """Count `what` as work in progress until `end_activity(key)` with the key returned."""
        key = next(self._activity_ids)
        self.active[key] = what
        self.last_activity = time.time()
        return key

    def end_activity(self, key: int) -> None:
        if self.active.pop(key, None) is not None:
            self.last_activity = time.time()

    @contextlib.contextmanager
    def activity(self, what: str) -> Iterator[None]:
        """Count `what` as work in progress for as long as the block runs."""
        key = self.begin_activity(what)
        try:
            yield
        finally:
            self.end_activity(key)

    def subscribe(self, listener: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        """Call `listener(kind, data)` on every engine event and store change (`STORE_CHANGED`); returns the function
        that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def watch_transfers(self, watcher: TransferWatcher) -> Callable[[], None]:
        """For each pull or push as it starts, `watcher(mode, name)` returns a callback that then gets the transfer's
        events as its client reads them, and `None` once it is over (see transfers.py). Returns the function that
        stops watching."""
        return self.transfers.watch(watcher)

    def _store_changed(self, change: str, model: dict[str, Any]) -> None:
        """Tell listeners (the event bus, so every sidebar) that a model was added, tagged, untagged or removed here:
        by any client, the CLI or a kernel too, so nobody's list waits for a poll. Pulls say so in their summary."""
        data = {"change": change, "model_id": str(model.get("id") or ""),
                "model_name": str((model.get("tags") or [""])[0])}
        for listener in list(self._listeners):
            try:
                listener(STORE_CHANGED, data)
            except Exception:
                log.exception("store event listener failed")

    def _engine_event(self, kind: str, data: dict[str, Any]) -> None:
        engine = str(data.get("engine") or data.get("backend_name") or "")
        if kind != "loading" or "elapsed" not in data:  # not the once-a-second "still loading" ticks
            self.metrics.engine_events.labels(kind, engine).inc()
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
        """One model in full (`inspect`): the listing's fields, every config key (the GGUF's metadata included)
        and the manifest."""

        def work() -> dict[str, Any]:
            model = self.store.resolve(name)
            doc = self._describe(model)
            raw = model.config.raw.get("config") or {}
            doc["config"] = {**doc["config"], **{k: v for k, v in raw.items() if k not in doc["config"]}}
            doc["manifest"] = json.loads(model.manifest.raw)
            return doc

        return await asyncio.to_thread(work)

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

    #: Folders `package` may read from (package_roots.py), set by the server extension after construction;
    #: None: anywhere this process can read (a Jupyter server's token holder may read files anyway).
    package_roots: list[Path] | None = None

    async def package(self, target: str, *, gguf: list[str] | None = None, safetensors_dir: str | None = None,
                      license_files: list[str] | None = None, chat_template: str | None = None,
                      context_size: int | None = None, mmproj: str | None = None,
                      from_model: str | None = None) -> dict[str, Any]:
        """Make a model from files on this machine (`jupyter modelrunner package`, for clients such as a kernel), or a
        variant of a stored one (`from_model`: DMR's `--from`).

        `mmproj` is a GGUF vision model's multimodal projector; safetensors models carry their vision tower in their
        weights, so it is refused with them. With `package_roots` set, every path must lie inside one of them once
        its links are resolved (403 otherwise), and the resolved path is the one read."""
        from .distribution import package_gguf, package_safetensors, repackage
        from .package_roots import confine_files
        from .reference import parse_reference

        def work() -> Model:
            nonlocal gguf, safetensors_dir, license_files, chat_template, mmproj
            if self.package_roots is not None:  # before anything is read: a refusal adds nothing to the store
                confined = confine_files(self.package_roots, gguf=gguf, safetensors_dir=safetensors_dir,
                                         license_files=license_files, chat_template=chat_template, mmproj=mmproj)
                gguf, safetensors_dir, license_files = (confined["gguf"], confined["safetensors_dir"],
                                                        confined["license_files"])
                chat_template, mmproj = confined["chat_template"], confined["mmproj"]
            ref = parse_reference(target, registry=self.registry)
            options: dict[str, Any] = {"license_files": [Path(p) for p in license_files or []],
                                       "chat_template": Path(chat_template) if chat_template else None,
                                       "context_size": context_size}
            if from_model:
                return repackage(self.store, from_model, ref, **options)
            if gguf:
                return package_gguf(self.store, [Path(p) for p in gguf], ref, mmproj=Path(mmproj) if mmproj else None,
                                    **options)
            if mmproj:
                raise UnsupportedArtifact("A multimodal projector (--mmproj) goes with GGUF weights, for llama.cpp; a "
                                          "safetensors vision model carries its vision tower in its own weights.")
            if safetensors_dir:
                return package_safetensors(self.store, Path(safetensors_dir), ref, **options)
            raise ModelRunnerError("Give the weights: a GGUF file or a folder of safetensors.")

        described = self._describe(await asyncio.to_thread(work))
        self._store_changed("added", described)
        return described

    def added(self, model: Model) -> dict[str, Any]:
        """A model a route put in the store itself (an imported archive): described as `models` lists it, and
        announced to every sidebar."""
        described = self._describe(model)
        self._store_changed("added", described)
        return described

    async def remove(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Remove a model or one of its tags; a loaded model's engine is stopped first when the model goes."""
        model = await asyncio.to_thread(self.store.resolve, name)
        if any(r.key.model_id == model.id for r in self.scheduler.runners.values()) and (
            force or len(model.tags) <= 1
        ):
            await self.scheduler.unload([model.id])
        result = await asyncio.to_thread(self.store.remove, name, force=force)
        self._store_changed("removed" if result.deleted else "untagged", model.to_json())
        return {"untagged": list(result.untagged), "deleted": result.deleted, "freed_bytes": result.freed_bytes}

    async def tag(self, source: str, target: str) -> dict[str, Any]:
        tagged = (await asyncio.to_thread(self.store.tag, source, target)).to_json()
        self._store_changed("tagged", tagged)
        return tagged

    async def df(self) -> dict[str, Any]:
        usage = await asyncio.to_thread(self.store.df)
        return {**usage.to_json(), "store": str(self.store.root)}

    def pull(self, reference: str, *, cancel: threading.Event | None = None,
             hf_token: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Pull in a worker thread, yielding FORMAT §4 progress events and ending with `success` or `error`.

        Setting `cancel` (the HTTP client went away) stops the download within one read and ends the events
        with an `error` of status 499; closing the iterator early sets it too. What was downloaded is kept
        and the next pull resumes it. `hf_token` is the caller's Hugging Face token, for an `hf.co/…` pull.
        """
        return self.transfers.run("pull", reference, cancel=cancel, hf_token=hf_token)

    def push(self, name: str, target: str | None = None, *,
             cancel: threading.Event | None = None) -> AsyncIterator[dict[str, Any]]:
        """Push a stored model (to its own tag, or `target`), yielding progress events like `pull`."""
        return self.transfers.run("push", name, target, cancel=cancel)

    # -- requests -------------------------------------------------------------------------------------

    def infer(self, request: InferenceRequest) -> contextlib.AbstractAsyncContextManager[Inference]:
        """THE path from a translated request to an engine; every dialect's route takes it (`inference.infer`)."""
        return infer(self, request)

    async def admitted_body(self, request: InferenceRequest) -> dict[str, Any]:
        """The request's body once its media are guarded and the model can do what it asks (`inference`)."""
        return await admitted_body(self, request)

    async def load(self, name: str, *, engine: str | None = None, mode: str = "completion",
                   context_size: int | None = None, keep_alive: float | None = None,
                   caller: Caller = OWNER) -> dict[str, Any]:
        """Start a model's engine now (Docker's preload, Ollama's empty chat) and say how it runs; the runner then
        idles out as usual. An inference key's context and keep_alive go through the same policy as its requests."""
        wish = InferenceRequest(name, "chat/completions", engine=engine, caller=caller, context_size=context_size,
                                keep_alive=keep_alive)
        context_size, keep_alive = allowed_lifetime(self, wish)
        started = time.monotonic()
        runner = await self.scheduler.load(name, engine=engine, mode=mode, context_size=context_size,
                                           keep_alive=keep_alive)
        return {**runner.status(), "load_seconds": round(time.monotonic() - started, 3)}

    async def unload(self, names: list[str] | tuple[str, ...] = (), *, all: bool = False, engine: str | None = None,
                     caller: Caller = OWNER) -> list[str]:
        """Stop models' engines now (their requests in flight end first). Management: not for an inference key,
        which would stop a model under everyone else's requests."""
        if not caller.may_manage:
            raise PolicyRefused(f"The inference key {caller.name!r} may not unload models (keep_alive 0 unloads a "
                                "model for every user); ask with the Jupyter token.")
        return await self.scheduler.unload(names, all=all, engine=engine)

    def runners(self) -> list[Runner]:
        """The engine processes now (a snapshot: `metrics` reads them while loads come and go)."""
        return list(self.scheduler.runners.values())

    @property
    def memory_budget(self) -> int:
        """Bytes of memory the engines may use together."""
        return self.scheduler.memory_budget

    def engine_formats(self) -> dict[str, set[str]]:
        """The engines this runner knows, each with the model formats it runs (`engines/{engine}/v1/models`)."""
        return {engine.name: set(engine.formats) for engine in self.scheduler.engines}

    def ps(self) -> list[dict[str, Any]]:
        """The running models (`ps`), as the scheduler sees them now."""
        return self.scheduler.ps()

    # -- engines --------------------------------------------------------------------------------------

    async def configure(self, name: str, **settings: Any) -> dict[str, Any]:
        """Check and save a model's settings (on disk, in a thread), then apply them to its loaded runner."""
        model_id, config = await asyncio.to_thread(lambda: self.scheduler.save_settings(name, **settings))
        self.scheduler.apply_settings(model_id, config)
        return {"model": name, "model_id": model_id, "context_size": config.context_size,
                "runtime_flags": list(config.runtime_flags), "keep_alive": config.keep_alive,
                "think": config.think, "reasoning_budget": config.reasoning_budget}

    async def settings(self, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.scheduler.settings_of, name)

    async def status(self) -> dict[str, Any]:
        from .lease import owner_json

        status = await asyncio.to_thread(self.scheduler.status)
        owner = self.remote_owner
        return {**status, "version": self.version, "pid": os.getpid(), "store": str(self.store.root),
                "default_registry": self.registry, "keep_alive": self.scheduler.keep_alive,
                "owner": "this runner" if self.owns_store else owner_json(owner) if owner else None}

    async def logs(self, name: str, lines: int = 200) -> str:
        model = await asyncio.to_thread(self.store.resolve, name)
        live = self.scheduler.live_runner(model.id)
        return live.log_tail(lines) if live else await asyncio.to_thread(self.scheduler.logged, model, lines)

    async def follow_logs(self, name: str) -> AsyncIterator[str | None]:
        """New lines of the model's engine output as they come (None: a second without any)."""
        model = await asyncio.to_thread(self.store.resolve, name)
        async for line in self.scheduler.follow_logs(model.id):
            yield line

    async def purge(self) -> dict[str, Any]:
        """Docker's `model purge`: every model goes (their engines stop first), and what nothing uses any more."""
        await self.scheduler.unload(all=True)
        deleted, freed = [], 0
        for model in await asyncio.to_thread(self.store.models):
            result = await asyncio.to_thread(self.store.remove, model.id, force=True)
            deleted.append(result.deleted)
            freed += result.freed_bytes
            self._store_changed("removed", model.to_json())
        return {"deleted": deleted, "freed_bytes": freed}

    async def gc(self, min_age: float = 3600.0) -> dict[str, Any]:
        return (await asyncio.to_thread(self.store.gc, min_age_seconds=min_age)).to_json()

    async def fsck(self, *, repair: bool = False, on_progress: Callable[[dict[str, Any]], None] | None = None,
                   cancel: threading.Event | None = None) -> dict[str, Any]:
        """Check the store against its index (store/fsck.py), and with `repair` fix what it found; the report as JSON.

        Hashing runs in a worker thread: a store may hold hundreds of gigabytes and the loop must keep answering.
        `on_progress` gets pull-shaped events (from that thread). The engines of models the repair will drop are
        stopped first, as `remove` stops them. A `cancel` set during the check stops it with nothing changed.
        """
        from .store.fsck import check, repair_store

        def progress(event: Any) -> None:
            if on_progress is not None:
                on_progress(event.to_json())

        report = await asyncio.to_thread(check, self.store, on_progress=progress, cancel=cancel)
        if repair and report.problems and not (cancel is not None and cancel.is_set()):
            doomed = set(report.unusable_models())
            loaded = list(dict.fromkeys(r.key.model_id for r in self.scheduler.runners.values()
                                        if r.key.model_id in doomed))
            if loaded:
                await self.scheduler.unload(loaded)
            report = await asyncio.to_thread(repair_store, self.store, report)
            for model_id in doomed:
                self._store_changed("removed", {"id": model_id, "tags": []})
        return report.to_json()

    async def fsck_events(self, *, repair: bool = False,
                          cancel: threading.Event | None = None) -> AsyncIterator[dict[str, Any]]:
        """`fsck` as a pull's NDJSON events: `progress` while blobs are hashed, then `success` carrying the report
        (`report`), or `error`. Closing the iterator early stops the check."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        cancel = threading.Event() if cancel is None else cancel

        def on_progress(event: dict[str, Any]) -> None:
            if queue.qsize() <= PROGRESS_BACKLOG:  # lossy under backpressure: the next event has newer numbers
                loop.call_soon_threadsafe(queue.put_nowait, event)

        task = asyncio.ensure_future(self.fsck(repair=repair, on_progress=on_progress, cancel=cancel))
        # After the progress the worker thread queued: both reach the loop through call_soon_threadsafe, in order.
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            try:
                report = task.result()
            except Exception as exc:  # the stream must always end with an event, whatever happened
                status = exc.http_status if isinstance(exc, ModelRunnerError) else 500
                if status == 500 and not isinstance(exc, ModelRunnerError | OSError):
                    log.exception("fsck failed")
                yield {"type": "error", "mode": "fsck", "message": str(exc), "status": status}
                return
            left = report["remaining"]
            yield {"type": "success", "mode": "fsck", "report": report,
                   "message": "clean" if report["clean"] else f"{left} problem{'s' if left != 1 else ''} left"}
        finally:
            if not task.done():
                cancel.set()  # nobody listens any more: stop hashing at the next 4 MiB
                with contextlib.suppress(Exception):
                    await task

    async def resume_batches(self) -> list[str]:
        """Carry on the batches a previous runner on this store left unfinished (the store's owner only)."""
        return await self.batches.resume() if self.owns_store else []

    async def shutdown(self) -> None:
        await self.batches.stop()  # before the engines: their requests in flight are sent again on resume
        await self.scheduler.shutdown()
        self.lease.release()
