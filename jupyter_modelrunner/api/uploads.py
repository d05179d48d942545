"""A request body handed, as it arrives, to blocking code reading it as a file in a worker thread.

Tornado delivers a streamed body chunk by chunk on the event loop (`stream_request_body`); a tar reader wants a file
it can `read`. `BodyPipe` joins them with a small bounded queue: when the reader falls behind, `feed` waits, and
tornado reads no more from the socket meanwhile, so an upload of any size holds a few chunks in memory, never the
body. Free of tornado so it can be tested alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from typing import Any

from ..errors import ModelRunnerError

#: How many chunks (tornado's are up to 64 KiB) may wait for the reader.
PIPE_CHUNKS = 64
_END = object()


class BodyPipe:
    """The async side `feed`s chunks then `close`s (or `abort`s with an exception); the worker side `read`s, and
    says when it stops reading (`reader_done`), after which what is fed is dropped (the rest of a refused body)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(PIPE_CHUNKS)
        self._pending = b""
        self._done = False
        self.reader_gone = False

    async def feed(self, chunk: bytes) -> None:
        await self._put(bytes(chunk))

    async def close(self) -> None:
        """The body is complete: the reader sees the end of the file after what was fed."""
        await self._put(_END)

    def abort(self, exc: BaseException) -> None:
        """Make the reader's next `read` raise `exc` (the upload was refused or its client went away): the chunks
        still queued no longer matter, so they make room for it rather than block the event loop."""
        while True:
            try:
                self._queue.put_nowait(exc)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()

    def reader_done(self) -> None:
        """Called by the reader's thread when it returns or fails: nothing it would read is kept any more."""
        self.reader_gone = True

    async def _put(self, item: Any) -> None:
        while not self.reader_gone:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                with contextlib.suppress(queue.Full):
                    await asyncio.to_thread(self._queue.put, item, timeout=0.25)
                    return

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left with -1), blocking until some arrive; b"" at the end."""
        if n < 0:
            parts = []
            while part := self.read(1 << 20):
                parts.append(part)
            return b"".join(parts)
        while not self._pending:
            if self._done:
                return b""
            item = self._queue.get()
            if item is _END:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._pending = item
        out, self._pending = self._pending[:n], self._pending[n:]
        return out


class PipedBodyMixin:
    """For a handler (with `stream_request_body`) whose body a worker thread reads as it arrives: the import of a
    model archive, a Batch API file. `start_reader` starts the reader on a `BodyPipe`; chunks are fed to it as they
    come (`admit_chunk` may drop them, past a cap), `finish_reading` ends the body and waits for the reader's result;
    a client that leaves, or an answer sent before the body ended (a refusal), stops the reader — nothing it wrote
    is kept. The reader always says when it stops, so the rest of a refused body is dropped, never waited on."""

    _pipe: BodyPipe | None = None
    _reader: asyncio.Future[Any] | None = None
    _dropping_body: bool
    #: What the body is, in the reader's error when the client leaves (`archive`, `file`).
    piped_what = "upload"

    def start_reader(self, read: Any) -> None:
        """Run `read(pipe)` in a worker thread on the body as it comes."""
        pipe = self._pipe = BodyPipe()

        def work() -> Any:
            try:
                return read(pipe)
            finally:
                pipe.reader_done()

        self._reader = asyncio.ensure_future(asyncio.to_thread(work))

    @property
    def reading(self) -> bool:
        return self._pipe is not None and self._reader is not None and not self._reader.done()

    def admit_chunk(self, chunk: bytes) -> bool:
        """Whether to feed `chunk` to the reader (a subclass counts it against its cap, and aborts the pipe)."""
        return True

    async def data_received(self, chunk: bytes) -> None:
        if self._pipe is None:
            super().data_received(chunk)  # type: ignore[misc]
            return
        if self._dropping_body or not self.admit_chunk(chunk):
            return
        await self._pipe.feed(chunk)

    async def finish_reading(self) -> Any:
        """The whole body was received: end it for the reader and return what the reader returns (or raise)."""
        assert self._pipe is not None and self._reader is not None
        if not self._dropping_body:
            await self._pipe.close()
        return await self._reader

    def on_connection_close(self) -> None:
        if self.reading:
            assert self._pipe is not None
            self._pipe.abort(ModelRunnerError(f"The upload ended before the {self.piped_what} did (the client went "
                                              "away); nothing of it was kept."))
        super().on_connection_close()  # type: ignore[misc]

    def on_finish(self) -> None:
        if self.reading:  # answered before the body ended (a refusal): stop the reader
            assert self._pipe is not None
            self._pipe.abort(ModelRunnerError(f"The {self.piped_what} was refused."))
        super().on_finish()  # type: ignore[misc]
