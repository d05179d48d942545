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
