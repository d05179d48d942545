"""Streamed answers from an engine, read straight off its socket.

Every token of every streamed chat crosses this path, on the notebook server's event loop. httpx costs several
layers of Python per server-sent event (its stream, httpcore's connection, h11's parser); under 16 concurrent
streams of a tiny model on two cores that was most of the server's CPU and held the endpoint to 0.72-0.77x the
engine's own throughput. Engines are local servers we start ourselves (llama-server, vLLM's uvicorn), answering
one HTTP/1.1 response per connection, so reading the response here is small: a status line, headers, then a
chunked or length-delimited body. The reader takes whatever the socket has (into one 64 KiB buffer) and yields
the body bytes of every complete chunk in it at once: under load several events go out in one write, not one each.

Non-streamed requests keep httpx (scheduler.Runner.request): they are one read each and need its conveniences.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

#: The most the reader takes from the socket at once.
READ_SIZE = 64 * 1024
#: The most a status line and headers may take (engines send a few hundred bytes).
MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT = 10.0


class EngineProtocolError(ConnectionError):
    """The engine's answer broke HTTP/1.1 framing, or the connection ended inside it."""


@dataclass
class EngineResponse:
    """A streamed response's status and headers (httpx's `Headers`: case-insensitive, as callers read them)."""

    status_code: int
    headers: httpx.Headers


class _EngineConnection(asyncio.BufferedProtocol):
    """The engine's side of one request, read into one buffer of our own (asyncio's `StreamReader` allocates a
    256 KiB `recv` buffer per read and wakes its reader through two more layers: per token of every stream, that
    was a large part of what the relay cost). Reading pauses while more than `HIGH_WATER` bytes wait unread."""

    HIGH_WATER = 4 * READ_SIZE

    def __init__(self) -> None:
        self._into = bytearray(READ_SIZE)
        self._view = memoryview(self._into)
        self._unread = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._lost: BaseException | None = None
        self._paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._unread += self._view[:nbytes]
        if len(self._unread) > self.HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._ended = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._lost = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """Whatever has arrived (waiting for something); b"" at the end of the connection."""
        while not self._unread:
            if self._ended:
                if self._lost is not None:
                    raise EngineProtocolError(f"the connection to the engine broke: {self._lost}")
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._unread)
        self._unread.clear()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        """Put back what was read past the response's head."""
        self._unread[:0] = data


@contextlib.asynccontextmanager
async def open_stream(*, socket: Path | None, port: int | None, method: str, path: str, json_body: Any,
                      headers: dict[str, str]) -> AsyncIterator[tuple[EngineResponse, AsyncIterator[bytes]]]:
    """Send one request and yield (status and headers, the body's bytes as they arrive). Leaving the block closes
    the connection, which is how an engine learns that its client went away and stops generating."""
    loop = asyncio.get_running_loop()
    if socket is not None:
        connecting = loop.create_unix_connection(_EngineConnection, str(socket))
    else:
        connecting = loop.create_connection(_EngineConnection, "127.0.0.1", port)
    try:
        transport, connection = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
    except TimeoutError as exc:
        raise EngineProtocolError(f"no connection within {CONNECT_TIMEOUT:g} s") from exc
    try:
        body = json.dumps(json_body, separators=(",", ":")).encode()
        head = [f"{method} {path} HTTP/1.1", "Host: engine", "Accept: text/event-stream, application/json",
                "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close",
                *(f"{name}: {value}" for name, value in headers.items())]
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        response, framing = await _read_head(connection)
        yield response, _body(connection, framing)
    finally:
        transport.close()


async def _read_head(connection: _EngineConnection) -> tuple[EngineResponse, tuple[str, int | None]]:
    received = b""
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > MAX_HEAD:
            raise EngineProtocolError("the engine's response headers are too large")
        data = await connection.read()
        if not data:
            raise EngineProtocolError("the engine closed the connection before answering")
        received += data
    connection.unread(received[end + 4:])
    lines = received[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise EngineProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    fields = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    headers = httpx.Headers(fields)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        framing: tuple[str, int | None] = ("chunked", None)
    elif headers.get("content-length", "").isdigit():
        framing = ("length", int(headers["content-length"]))
    else:
        framing = ("close", None)
    return EngineResponse(int(parts[1]), headers), framing


async def _body(connection: _EngineConnection, framing: tuple[str, int | None]) -> AsyncIterator[bytes]:
    kind, length = framing
    if kind == "length":
        remaining = length or 0
        while remaining > 0:
            data = await connection.read()
            if not data:
                raise EngineProtocolError("the engine closed the connection before the end of its answer")
            data = data[:remaining]
            remaining -= len(data)
            yield data
        return
    if kind == "close":
        while data := await connection.read():
            yield data
        return
    decoder = ChunkedDecoder()
    while not decoder.done:
        data = await connection.read()
        if not data:
            raise EngineProtocolError("the engine closed the connection before the end of its answer")
        if payload := decoder.feed(data):
            yield payload


class ChunkedDecoder:
    """HTTP/1.1 chunked transfer coding, fed whatever the socket gave: returns the payload of every chunk complete
    so far, joined. Pure, so the framing is tested on its own (split anywhere, several chunks in one read)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need: int | None = None  # bytes of payload (+ CRLF) the current chunk still needs; None: a size line
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while not self.done:
            if self._need is None:
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > 1024:
                        raise EngineProtocolError("a chunk size line is too long")
                    break
                size_text = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise EngineProtocolError(f"bad chunk size {size_text[:20]!r}") from None
                del self._buffer[: end + 2]
                if size == 0:
                    self.done = True  # trailers, if any, are not read: the connection closes after this answer
                    break
                self._need = size
            if len(self._buffer) < self._need + 2:
                break
            if self._buffer[self._need : self._need + 2] != b"\r\n":
                raise EngineProtocolError("a chunk does not end where its size says")
            out += self._buffer[: self._need]
            del self._buffer[: self._need + 2]
            self._need = None
        return bytes(out)
