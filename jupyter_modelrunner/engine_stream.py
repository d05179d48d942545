"""Streamed answers from an engine, read straight off its socket.

Every token of every streamed chat crosses this path, on the notebook server's event loop. httpx costs several
layers of Python per server-sent event (its stream, httpcore's connection, h11's parser); under 16 concurrent
streams of a tiny model on two cores that was most of the server's CPU and held the endpoint to 0.72-0.77x the
engine's own throughput. Engines are local servers we start ourselves (llama-server, vLLM's uvicorn), answering
one HTTP/1.1 response per connection, so reading the response here is small: a status line, headers, then a
chunked or length-delimited body. The reader takes whatever the socket has (up to 64 KiB at a time) and yields
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


@contextlib.asynccontextmanager
async def open_stream(*, socket: Path | None, port: int | None, method: str, path: str, json_body: Any,
                      headers: dict[str, str]) -> AsyncIterator[tuple[EngineResponse, AsyncIterator[bytes]]]:
    """Send one request and yield (status and headers, the body's bytes as they arrive). Leaving the block closes
    the connection, which is how an engine learns that its client went away and stops generating."""
    if socket is not None:
        connecting = asyncio.open_unix_connection(str(socket), limit=MAX_HEAD)
    else:
        connecting = asyncio.open_connection("127.0.0.1", port, limit=MAX_HEAD)
    try:
        reader, writer = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
    except TimeoutError as exc:
        raise EngineProtocolError(f"no connection within {CONNECT_TIMEOUT:g} s") from exc
    try:
        body = json.dumps(json_body, separators=(",", ":")).encode()
        head = [f"{method} {path} HTTP/1.1", "Host: engine", "Accept: text/event-stream, application/json",
                "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close",
                *(f"{name}: {value}" for name, value in headers.items())]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        response, framing = await _read_head(reader)
        yield response, _body(reader, framing)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[EngineResponse, tuple[str, int | None]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise EngineProtocolError("the engine closed the connection before answering") from exc
    except asyncio.LimitOverrunError as exc:
        raise EngineProtocolError("the engine's response headers are too large") from exc
    lines = raw.decode("latin-1").split("\r\n")
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


async def _body(reader: asyncio.StreamReader, framing: tuple[str, int | None]) -> AsyncIterator[bytes]:
    kind, length = framing
    if kind == "length":
        remaining = length or 0
        while remaining > 0:
            data = await reader.read(min(READ_SIZE, remaining))
            if not data:
                raise EngineProtocolError("the engine closed the connection before the end of its answer")
            remaining -= len(data)
            yield data
        return
    if kind == "close":
        while data := await reader.read(READ_SIZE):
            yield data
        return
    decoder = ChunkedDecoder()
    while not decoder.done:
        data = await reader.read(READ_SIZE)
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
