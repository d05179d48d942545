"""OpenAI's Files and Batch APIs: `v1/files…` and `v1/batches…` (under `engines/v1/` too), as the `openai` SDK calls
them (`client.files.create(file=…, purpose="batch")`, `client.batches.create(…)`, `retrieve`, `files.content`).

Handlers only translate: the files and batches are kept and run by the core (`batches/`, `service.batches`).
An inference key may use these routes, on its own files and batches only: another caller's id answers 404, as if
it did not exist; the Jupyter token sees everything. An upload streams to the store as it arrives (`BodyPipe` and
a multipart reader in a worker thread), bounded by `c.ModelRunner.max_batch_file_bytes` instead of
`max_body_bytes`; an upload refused or cut off leaves nothing behind.

Files are the store's, so their routes answer from any process on it; batches run on the store's owner, where the
others relay them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..batches import DEFAULT_MAX_FILE_BYTES, PURPOSE_BATCH, FileRecord, FileStore
from ..batches.executor import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from ..errors import MalformedRequest
from ..sizes import format_bytes
from . import schemas
from .base import DRAIN_BYTES, SCOPE_INFERENCE, ModelRunnerHandler, _validator
from .multipart import boundary_of, read_parts
from .uploads import BodyPipe, PipedBodyMixin

#: Key of the largest batch file accepted (bytes) in the settings (`c.ModelRunner.max_batch_file_bytes`).
MAX_BATCH_FILE_SETTING = "modelrunner_max_batch_file_bytes"
#: What a multipart body may hold besides the file itself (delimiters, part headers, the `purpose` field).
FORM_OVERHEAD_BYTES = 64 * 1024
#: The largest plain field of the upload form (`purpose`).
MAX_FIELD_BYTES = 1024
#: How much of a file's content is read at a time when it is sent back.
CONTENT_CHUNK_BYTES = 1024 * 1024

_BODIES = {"chat/completions": schemas.CHAT, "completions": schemas.COMPLETION, "embeddings": schemas.EMBEDDING}


def body_problem(endpoint: str, body: dict[str, Any]) -> str | None:
    """What is wrong with a batch request's body for its endpoint, by the schema the route itself checks (None:
    nothing); the executor asks it of every line while it validates a batch."""
    problem = next(iter(_validator(_BODIES[endpoint]).iter_errors(body)), None)
    if problem is None:
        return None
    where = "/".join(str(p) for p in problem.absolute_path)
    return f"{problem.message}{f' (at body/{where})' if where else ''}."


def receive_upload(pipe: BodyPipe, boundary: bytes, files: FileStore, owner: str, limit: int) -> FileRecord:
    """Read an upload form from `pipe` (in a worker thread): the file part is written to the store as it comes,
    the `purpose` field must be `batch`. Refused (nothing kept) for any other purpose — before a byte of the file
    is written when the form sends the purpose first, as the `openai` SDK does — a missing file, or a file over
    `limit`."""
    fields: dict[str, bytearray] = {}
    upload = None
    filename = "upload.jsonl"

    def check_purpose() -> str:
        purpose = bytes(fields.get("purpose", b"")).decode("utf-8", errors="replace").strip()
        if purpose != PURPOSE_BATCH:
            shown = repr(purpose) if purpose else "none"
            raise MalformedRequest(f"This runner keeps files for the Batch API only: purpose must be \"batch\" (got "
                                   f"{shown}).")
        return purpose

    def sink_for(name: str, part_filename: str | None) -> Any:
        nonlocal upload, filename
        if name == "file":
            if upload is not None:
                raise MalformedRequest("The form holds more than one file; upload one file at a time.")
            if "purpose" in fields:
                check_purpose()
            upload = files.upload(limit)
            filename = part_filename or filename
            return upload.write
        value = fields.setdefault(name, bytearray())

        def field(data: bytes) -> None:
            if len(value) + len(data) > MAX_FIELD_BYTES:
                raise MalformedRequest(f"The form field {name[:40]!r} is longer than {MAX_FIELD_BYTES} bytes.")
            value.extend(data)

        return field

    try:
        read_parts(pipe, boundary, sink_for)
        purpose = check_purpose()
        if upload is None:
            raise MalformedRequest("The form has no `file` part: send the file as multipart/form-data with the "
                                   "fields `file` and `purpose`.")
        record = upload.commit(filename, purpose, owner)
        upload = None
        return record
    finally:
        if upload is not None:
            upload.discard()
        pipe.reader_done()


def _limit(handler: ModelRunnerHandler, name: str, default: int, maximum: int) -> int:
    raw = handler.get_argument(name, "") or str(default)
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise web.HTTPError(400, f"{name} must be a whole number from 1 to {maximum}.")
    return int(raw)


class BatchAPIHandler(ModelRunnerHandler):
    """Base of the Files and Batch routes: inference keys welcome, on their own files and batches."""

    api_scope = SCOPE_INFERENCE


class FilesHandler(PipedBodyMixin, BatchAPIHandler):
    """`GET v1/files` (the caller's files; `purpose`, `limit`, `after`, `order`), `POST v1/files` (upload a batch
    input file: multipart/form-data with `file` and `purpose=batch`)."""

    relayed = False  # the store's files: written and read from here, the upload streamed
    piped_what = "file"

    @property
    def cap(self) -> int:
        return int(self.settings.get(MAX_BATCH_FILE_SETTING) or DEFAULT_MAX_FILE_BYTES)

    def _limit_body(self) -> None:
        if self.request.method != "POST":
            super()._limit_body()
            return
        most = self.cap + FORM_OVERHEAD_BYTES
        length = self.request.headers.get("Content-Length", "")
        if not (length.isdigit() and int(length) > most):
            # A chunked body is counted as it comes (the file part, against the cap); tornado cuts one far past it.
            self.request.connection.set_max_body_size(most + DRAIN_BYTES)  # type: ignore[union-attr]
            return
        refusal = web.HTTPError(413, f"The upload is {format_bytes(int(length))}, more than the "
                                     f"{format_bytes(self.cap)} this server accepts for a batch file "
                                     "(c.ModelRunner.max_batch_file_bytes); split it into several batches.")
        if int(length) > DRAIN_BYTES:  # answered at once, the connection closed unread
            self.send_error(413, exc_info=(type(refusal), refusal, None))
            raise web.Finish()
        self.request.connection.set_max_body_size(int(length))  # type: ignore[union-attr]
        raise refusal

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self.request.method != "POST" or self._dropping_body or self._finished or self.current_user is None:
            return
        boundary = boundary_of(self.request.headers.get("Content-Type", ""))
        if boundary is None:  # refused before the body is read, like the base's refusals
            self._dropping_body = True

            async def refuse(*_args: Any, **_kwargs: Any) -> None:
                raise web.HTTPError(400, "Upload the file as multipart/form-data with the fields `file` and "
                                         "`purpose` (\"batch\"), as `client.files.create(file=…, purpose=\"batch\")` "
                                         "sends it.")

            self.post = refuse  # type: ignore[method-assign]
            return
        files, owner, cap = self.service.batches.files, self.caller.name, self.cap
        self.start_reader(lambda pipe: receive_upload(pipe, boundary, files, owner, cap))

    @web.authenticated
    @authorized
    async def get(self) -> None:
        order = self.get_argument("order", "desc")
        if order not in ("asc", "desc"):
            raise web.HTTPError(400, "order must be \"asc\" or \"desc\".")
        self.send_json(await self.service.batches.files_list(
            self.caller, purpose=self.get_argument("purpose", "") or None, limit=_limit(self, "limit", 10_000, 10_000),
            after=self.get_argument("after", "") or None, order=order))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        record = await self.finish_reading()
        self.send_json(record.to_json())


class FileHandler(BatchAPIHandler):
    """`GET v1/files/{file_id}`, `DELETE v1/files/{file_id}`."""

    relayed = False

    @web.authenticated
    @authorized
    async def get(self, file_id: str) -> None:
        self.send_json(await self.service.batches.file(file_id, self.caller))

    @web.authenticated
    @authorized
    async def delete(self, file_id: str) -> None:
        self.send_json(await self.service.batches.delete_file(file_id, self.caller))


class FileContentHandler(BatchAPIHandler):
    """`GET v1/files/{file_id}/content`: the file's bytes (a batch's output: one JSON line per answer)."""

    relayed = False

    @web.authenticated
    @authorized
    async def get(self, file_id: str) -> None:
        path = await self.service.batches.file_path(file_id, self.caller)
        handle = await asyncio.to_thread(path.open, "rb")
        self.set_header("Content-Type", "application/octet-stream")
        try:
            while chunk := await asyncio.to_thread(handle.read, CONTENT_CHUNK_BYTES):
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return
        finally:
            handle.close()
        with contextlib.suppress(StreamClosedError):
            self.finish()


class BatchesHandler(BatchAPIHandler):
    """`POST v1/batches` (create: `input_file_id`, `endpoint`, `completion_window`, `metadata`), `GET v1/batches`
    (the caller's batches, newest first; `limit`, `after`)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send_json(await self.service.batches.list(
            self.caller, limit=_limit(self, "limit", DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT),
            after=self.get_argument("after", "") or None))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(schemas.BATCH)
        self.send_json(await self.service.batches.create(
            self.caller, input_file_id=body["input_file_id"], endpoint=body["endpoint"],
            completion_window=body.get("completion_window", "24h"), metadata=body.get("metadata")))


class BatchHandler(BatchAPIHandler):
    """`GET v1/batches/{batch_id}`."""

    @web.authenticated
    @authorized
    async def get(self, batch_id: str) -> None:
        self.send_json(await self.service.batches.get(batch_id, self.caller))


class BatchCancelHandler(BatchAPIHandler):
    """`POST v1/batches/{batch_id}/cancel`."""

    @web.authenticated
    @authorized
    async def post(self, batch_id: str) -> None:
        self.send_json(await self.service.batches.cancel(batch_id, self.caller))


_ID = r"[^/]+"
default_handlers = [
    route
    for mount in ("v1", "engines/v1")
    for route in (
        (rf"{mount}/files", FilesHandler),
        (rf"{mount}/files/(?P<file_id>{_ID})/content", FileContentHandler),
        (rf"{mount}/files/(?P<file_id>{_ID})", FileHandler),
        (rf"{mount}/batches", BatchesHandler),
        (rf"{mount}/batches/(?P<batch_id>{_ID})/cancel", BatchCancelHandler),
        (rf"{mount}/batches/(?P<batch_id>{_ID})", BatchHandler),
    )
]
