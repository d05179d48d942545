"""Runs batches: validate the input file, send each request through the one inference path as background work, write
each answer to the output (or error) file, and make those files Files API files when the batch ends.

Every request goes through `infer` as the batch's maker (an inference key's policy holds for its batch's requests)
and marked `background`, so it only takes engine slots interactive requests leave free (scheduling/priority.py).
A fixed set of workers takes the requests in turn — one until the first request has leased a runner, then as many
as that runner's background share admits plus one (waiting for the next free slot, so none stays idle): never a
task per line, and never more requests in flight than the engine may work on.

State lives in the store (records.py), so a runner that stops — cleanly or killed — leaves each batch where it was:
`resume` carries every unfinished one on, sending only the requests its output and error files do not answer yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from ..errors import BatchConflict, BatchNotFound, EngineRefused, MalformedRequest, ModelRunnerError, Overloaded
from ..inference import Caller, Inference, InferenceRequest
from .files import PURPOSE_BATCH, PURPOSE_BATCH_OUTPUT, FileStore, new_file_id, visible
from .records import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    UNFINISHED,
    VALIDATING,
    Batch,
    BatchStore,
    RowLog,
    new_batch_id,
)
from .validation import ENDPOINTS, MAX_LINES, Row, rows, validate

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)

COMPLETION_WINDOW = "24h"
#: OpenAI's limits on a batch's metadata.
MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512
#: Requests read from the input file at a time (in a worker thread).
READ_AHEAD = 32
#: How often, at most, a running batch's counts are written to its record (resuming recounts from the files).
SAVE_SECONDS = 1.0
DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT = 20, 100


class BatchHost(Protocol):
    """What the executor needs of the runner (`ModelRunnerService`)."""

    store: Store
    handing_over: bool

    def infer(self, request: InferenceRequest) -> contextlib.AbstractAsyncContextManager[Inference]: ...

    def activity(self, what: str) -> contextlib.AbstractContextManager[None]: ...


class _Rows:
    """The requests still to send, read from the input file a few at a time in a worker thread, handed to the
    workers one by one."""

    def __init__(self, handle: IO[bytes], endpoint: str, skip: set[str]) -> None:
        self._rows = iter(rows(handle, endpoint, skip))
        self._buffer: deque[Row] = deque()
        self._lock = asyncio.Lock()
        self._read_all = False

    @property
    def exhausted(self) -> bool:
        """Every request was handed out."""
        return self._read_all and not self._buffer

    async def next(self) -> Row | None:
        async with self._lock:
            if not self._buffer and not self._read_all:
                chunk = await asyncio.to_thread(lambda: list(itertools.islice(self._rows, READ_AHEAD)))
                self._buffer.extend(chunk)
                self._read_all = len(chunk) < READ_AHEAD
            return self._buffer.popleft() if self._buffer else None


@dataclass
class _Job:
    """A batch this runner is working on."""

    batch: Batch
    task: asyncio.Task[None] | None = None
    workers: set[asyncio.Task[None]] = field(default_factory=set)
    #: Workers wanted: 1 until a request has leased a runner, then its background share + 1.
    width: int = 1
    #: No more requests are taken (cancelled, or the runner stops or hands its store over).
    stopping: bool = False
    #: The batch is left as it is for the next runner to carry on (not finished here).
    suspended: bool = False
    rows: _Rows | None = None
    output: RowLog | None = None
    errors: RowLog | None = None
    saved_at: float = 0.0

    def close_logs(self) -> None:
        for row_log in (self.output, self.errors):
            if row_log is not None:
                row_log.close()
        self.output = self.errors = None


class BatchExecutor:
    """The batches and files of one store (`<store>/batches`, `<store>/files`), and the batches running here."""

    def __init__(self, host: BatchHost, root: Path, *, max_lines: int = MAX_LINES) -> None:
        self.host = host
        self.files = FileStore(root / "files")
        self.batches = BatchStore(root / "batches")
        self.max_lines = max_lines
        #: What is wrong with a request's body for its endpoint (None: nothing): the HTTP layer's schemas, set by
        #: the server so that a batch's lines are held to what the routes accept.
        self.body_problem: Callable[[str, dict[str, Any]], str | None] | None = None
        self._jobs: dict[str, _Job] = {}

    # -- the API --------------------------------------------------------------------------------------------

    async def create(self, caller: Caller, *, input_file_id: str, endpoint: str,
                     completion_window: str = COMPLETION_WINDOW, metadata: dict[str, str] | None = None
                     ) -> dict[str, Any]:
        """A new batch of the requests in `input_file_id` (one of the caller's files, uploaded for `batch`), started
        at once; answered in `validating`."""
        if endpoint not in ENDPOINTS:
            raise MalformedRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {str(endpoint)[:80]!r}.")
        if completion_window != COMPLETION_WINDOW:
            raise MalformedRequest(f"completion_window must be {COMPLETION_WINDOW!r} (the only window OpenAI offers; "
                                   "this runner keeps no deadline).")
        _check_metadata(metadata)
        source = await asyncio.to_thread(self.files.get, input_file_id, caller)
        if source.purpose != PURPOSE_BATCH:
            raise MalformedRequest(f"File {source.id} was made for {source.purpose!r}; a batch reads a file uploaded "
                                   "with purpose \"batch\".")
        batch = Batch(new_batch_id(), endpoint, source.id, caller.name, caller.scope, metadata=metadata,
                      reserved_output_file_id=new_file_id(), reserved_error_file_id=new_file_id())
        await asyncio.to_thread(self.batches.create, batch)
        self._start(batch)
        return batch.to_json()

    async def get(self, batch_id: str, caller: Caller) -> dict[str, Any]:
        return (await self._batch(batch_id, caller)).to_json()

    async def list(self, caller: Caller, *, limit: int = DEFAULT_LIST_LIMIT, after: str | None = None
                   ) -> dict[str, Any]:
        """The caller's batches (every batch, for a manager), newest first, as OpenAI's cursor page."""
        stored = await asyncio.to_thread(self.batches.all)
        batches = [self._live(b) for b in stored if visible(b.owner, caller)]
        return _page([b.to_json() for b in batches], limit, after)

    async def cancel(self, batch_id: str, caller: Caller) -> dict[str, Any]:
        """Stop sending the batch's requests, cancel those in flight, and end it `cancelled` with the answers so far
        in its output file. Answered in `cancelling` (or as it is, if it is cancelling already)."""
        batch = await self._batch(batch_id, caller)
        if batch.status in (CANCELLING, CANCELLED):
            return batch.to_json()
        if batch.status not in (VALIDATING, IN_PROGRESS):
            raise BatchConflict(f"Batch {batch.id} is {batch.status}; only a batch validating or in progress can be "
                                "cancelled.")
        batch.mark(CANCELLING)
        await asyncio.to_thread(self.batches.save, batch)
        job = self._jobs.get(batch.id)
        if job is None:
            self._start(batch)  # its job ends the cancellation
        else:
            job.stopping = True
            for worker in job.workers:
                worker.cancel()  # leaving `infer` closes the engine request: the generation stops
        return batch.to_json()

    async def files_list(self, caller: Caller, *, purpose: str | None = None, limit: int = 10_000,
                         after: str | None = None, order: str = "desc") -> dict[str, Any]:
        records = await asyncio.to_thread(self.files.list, caller, purpose=purpose)
        if order == "asc":
            records.reverse()
        return _page([r.to_json() for r in records], limit, after)

    async def file(self, file_id: str, caller: Caller) -> dict[str, Any]:
        return (await asyncio.to_thread(self.files.get, file_id, caller)).to_json()

    async def file_path(self, file_id: str, caller: Caller) -> Path:
        """Where the bytes of a file the caller may read are."""
        record = await asyncio.to_thread(self.files.get, file_id, caller)
        return self.files.data_path(record.id)

    async def delete_file(self, file_id: str, caller: Caller) -> dict[str, Any]:
        await asyncio.to_thread(self.files.delete, file_id, caller)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- lifetime -------------------------------------------------------------------------------------------

    async def resume(self) -> list[str]:
        """Carry on every unfinished batch in the store (when the runner starts, or takes the store over); their
        ids."""
        await asyncio.to_thread(self.files.remove_abandoned)
        stored = await asyncio.to_thread(self.batches.all)
        resumed = [b for b in stored if b.status in UNFINISHED and b.id not in self._jobs]
        for batch in reversed(resumed):  # the oldest first
            log.info("resuming batch %s (%s)", batch.id, batch.status)
            self._start(batch)
        return [b.id for b in resumed]

    async def stop(self) -> None:
        """Stop every batch where it is (the runner stops): the requests in flight are cancelled and will be sent
        again by the next runner, which resumes the batches."""
        jobs = list(self._jobs.values())
        for job in jobs:
            job.stopping = job.suspended = True
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(job.task for job in jobs if job.task is not None), return_exceptions=True)

    @property
    def running(self) -> list[str]:
        return list(self._jobs)

    # -- running a batch ------------------------------------------------------------------------------------

    async def _batch(self, batch_id: str, caller: Caller) -> Batch:
        job = self._jobs.get(batch_id)
        batch = job.batch if job is not None else await asyncio.to_thread(self.batches.load, batch_id)
        if not visible(batch.owner, caller):
            raise BatchNotFound(f"No such batch: {batch_id[:80]!r}.")
        return batch

    def _live(self, batch: Batch) -> Batch:
        job = self._jobs.get(batch.id)
        return job.batch if job is not None else batch

    def _start(self, batch: Batch) -> None:
        job = self._jobs[batch.id] = _Job(batch)
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"batch {batch.id}")

    async def _run(self, job: _Job) -> None:
        batch = job.batch
        with self.host.activity(f"batch {batch.id}"):
            try:
                if batch.status == VALIDATING:
                    await self._validate(job)
                if batch.status == IN_PROGRESS:
                    await self._dispatch(job)
                if job.suspended:
                    return
                if batch.status in (IN_PROGRESS, FINALIZING):
                    await self._finalize(job, COMPLETED)
                elif batch.status == CANCELLING:
                    await self._finalize(job, CANCELLED)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("batch %s failed", batch.id)
                batch.errors = {"object": "list", "data": [
                    {"code": "internal_error", "message": f"The runner failed while running the batch: {exc}",
                     "param": None, "line": None}]}
                batch.mark(FAILED)
            finally:
                job.close_logs()
                self._jobs.pop(batch.id, None)
                with contextlib.suppress(OSError):
                    self.batches.save(batch)

    async def _validate(self, job: _Job) -> None:
        batch = job.batch
        path = self.files.data_path(batch.input_file_id)

        def check() -> tuple[int, list[dict[str, Any]]]:
            try:
                with path.open("rb") as handle:
                    return validate(handle, batch.endpoint, max_lines=self.max_lines, body_problem=self.body_problem,
                                    model_problem=self._model_problem)
            except FileNotFoundError:
                return 0, [{"code": "file_not_found", "message": f"The input file {batch.input_file_id} was deleted "
                                                                 "before the batch ran.", "param": None, "line": None}]

        count, errors = await asyncio.to_thread(check)
        if batch.status != VALIDATING:  # cancelled meanwhile
            return
        batch.request_counts["total"] = count
        if errors:
            batch.errors = {"object": "list", "data": errors}
            batch.mark(FAILED)
        else:
            batch.mark(IN_PROGRESS)
        await asyncio.to_thread(self.batches.save, batch)

    def _model_problem(self, name: str) -> str | None:
        try:
            self.host.store.resolve(name)
        except ModelRunnerError as exc:
            return str(exc)
        return None

    async def _dispatch(self, job: _Job) -> None:
        batch = job.batch
        done, completed, failed = await asyncio.to_thread(self.batches.answered, batch.id)
        batch.request_counts.update(completed=completed, failed=failed)
        try:
            handle = await asyncio.to_thread(self.files.data_path(batch.input_file_id).open, "rb")
        except FileNotFoundError:
            raise ModelRunnerError(f"the input file {batch.input_file_id} was deleted before every request "
                                   "was sent") from None
        job.output = RowLog(self.batches.output_path(batch.id))
        job.errors = RowLog(self.batches.errors_path(batch.id))
        job.rows = _Rows(handle, batch.endpoint, done)
        try:
            self._grow(job, 1)
            while job.workers:
                finished, _ = await asyncio.wait(set(job.workers), return_when=asyncio.FIRST_COMPLETED)
                for worker in finished:
                    job.workers.discard(worker)
                    if not worker.cancelled() and worker.exception() is not None:
                        raise worker.exception()  # type: ignore[misc]
        finally:
            for worker in job.workers:
                worker.cancel()
            await asyncio.gather(*job.workers, return_exceptions=True)
            job.workers.clear()
            handle.close()

    def _grow(self, job: _Job, width: int) -> None:
        """Have `width` workers (never fewer than now)."""
        job.width = max(job.width, width)
        while len(job.workers) < job.width and not job.stopping and job.rows is not None and not job.rows.exhausted:
            job.workers.add(asyncio.get_running_loop().create_task(self._work(job)))

    async def _work(self, job: _Job) -> None:
        assert job.rows is not None
        while not job.stopping:
            if self.host.handing_over:  # the next owner carries the batch on; finish what is in flight
                job.stopping = job.suspended = True
                return
            row = await job.rows.next()
            if row is None:
                return
            await self._answer(job, row)

    async def _answer(self, job: _Job, row: Row) -> None:
        """Send one request and write its answer (or failure) to the batch's files."""
        batch = job.batch
        request = InferenceRequest(row.model, ENDPOINTS[batch.endpoint], row.body,
                                   route=f"batch/{ENDPOINTS[batch.endpoint]}", caller=batch.caller, background=True)
        request_id = "req_" + secrets.token_hex(12)
        while True:
            try:
                async with self.host.infer(request) as inference:
                    self._grow(job, inference.runner.share.background_limit + 1)
                    reply = await inference.answer()
                break
            except Overloaded as exc:  # the model's queue is full: a batch can wait its turn
                await asyncio.sleep(exc.retry_after)
            except EngineRefused as exc:
                self._failed(job, row, {"status_code": exc.http_status, "request_id": request_id,
                                        "body": _json_or_text(exc.content) if exc.content else _error_body(exc)})
                return
            except ModelRunnerError as exc:
                self._failed(job, row, {"status_code": exc.http_status, "request_id": request_id,
                                        "body": _error_body(exc)})
                return
            except Exception as exc:
                log.exception("batch %s: request %r failed", batch.id, row.custom_id)
                self._failed(job, row, None, {"code": "internal_error", "message": str(exc) or type(exc).__name__})
                return
        body = _json_or_text(reply.content)
        if isinstance(body, dict) and "model" in body:
            body["model"] = row.model  # the name the line asked for, not the engine's
        assert job.output is not None
        job.output.append({"id": "batch_req_" + secrets.token_hex(12), "custom_id": row.custom_id,
                           "response": {"status_code": reply.status_code, "request_id": request_id, "body": body},
                           "error": None})
        batch.request_counts["completed"] += 1
        self._save_now_and_then(job)

    def _failed(self, job: _Job, row: Row, response: dict[str, Any] | None,
                error: dict[str, Any] | None = None) -> None:
        assert job.errors is not None
        job.errors.append({"id": "batch_req_" + secrets.token_hex(12), "custom_id": row.custom_id,
                           "response": response, "error": error})
        job.batch.request_counts["failed"] += 1
        self._save_now_and_then(job)

    def _save_now_and_then(self, job: _Job) -> None:
        """Write the record's counts at most every SAVE_SECONDS (a few hundred bytes; resuming recounts anyway)."""
        now = time.monotonic()
        if now - job.saved_at >= SAVE_SECONDS:
            job.saved_at = now
            self.batches.save(job.batch)

    async def _finalize(self, job: _Job, outcome: str) -> None:
        """End the batch `outcome`, its output and error files made Files API files (when they hold any line)."""
        batch = job.batch
        if batch.status != FINALIZING and outcome == COMPLETED:
            batch.mark(FINALIZING)
            await asyncio.to_thread(self.batches.save, batch)
        job.close_logs()

        def make_files() -> tuple[str | None, str | None, int, int]:
            _, completed, failed = self.batches.answered(batch.id)
            made = []
            for path, file_id, suffix in ((self.batches.output_path(batch.id), batch.reserved_output_file_id,
                                           "output"), (self.batches.errors_path(batch.id),
                                                       batch.reserved_error_file_id, "errors")):
                if path.exists() and path.stat().st_size:
                    self.files.adopt(path, file_id, filename=f"{batch.id}_{suffix}.jsonl",
                                     purpose=PURPOSE_BATCH_OUTPUT, owner=batch.owner)
                    made.append(file_id)
                else:
                    made.append(None)
            return made[0], made[1], completed, failed

        batch.output_file_id, batch.error_file_id, completed, failed = await asyncio.to_thread(make_files)
        batch.request_counts.update(completed=completed, failed=failed)
        batch.mark(outcome)
        await asyncio.to_thread(self.batches.save, batch)
        log.info("batch %s %s: %d answered, %d failed", batch.id, outcome, completed, failed)


def _json_or_text(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode(errors="replace")


def _error_body(exc: ModelRunnerError) -> dict[str, Any]:
    """A failure of the runner's own (a model not in the store, a policy) as OpenAI's error body."""
    kind = "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in type(exc).__name__).lstrip("_")
    return {"error": {"message": str(exc), "type": kind, "code": exc.http_status}}


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_METADATA_KEY_CHARS
            and len(v) <= MAX_METADATA_VALUE_CHARS for k, v in metadata.items()):
        raise MalformedRequest(f"metadata is at most {MAX_METADATA_KEYS} string pairs, keys up to "
                               f"{MAX_METADATA_KEY_CHARS} characters and values up to {MAX_METADATA_VALUE_CHARS}.")


def _page(items: list[dict[str, Any]], limit: int, after: str | None) -> dict[str, Any]:
    """OpenAI's cursor page: up to `limit` items after the one whose id is `after`."""
    if after:
        ids: Iterator[str] = (item["id"] for item in items)
        position = next((index for index, item_id in enumerate(ids) if item_id == after), None)
        items = items[position + 1:] if position is not None else []
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
