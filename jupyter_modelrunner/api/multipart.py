"""A `multipart/form-data` body read as it streams in (what `openai`'s `client.files.create` sends), part by part.

Tornado parses a form only once the whole body is in memory; a batch file may be 200 MiB. This reader takes any
object with a blocking `read(n)` (uploads.BodyPipe) and hands each part's bytes to a sink as they come, holding
a delimiter's length of look-ahead, never a part. Free of tornado so it can be tested alone; malformed input raises
MalformedRequest (400) saying what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from ..errors import MalformedRequest

#: Bytes read from the body at a time.
CHUNK_BYTES = 256 * 1024
#: The most a part's headers, and the preamble before the first part, may take.
MAX_HEADER_BYTES = 16 * 1024
_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class Reader(Protocol):
    def read(self, n: int = -1) -> bytes: ...


#: Given a part's name and file name (None for a plain field), the function its bytes are handed to.
SinkFor = Callable[[str, str | None], Callable[[bytes], None]]


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data; boundary=…` content type (None for any other type)."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    found = dict((k.lower(), v.strip().strip('"')) for k, v in _PARAM.findall(";" + params))
    boundary = found.get("boundary", "")
    if not 1 <= len(boundary) <= 70:  # RFC 2046's limit
        return None
    return boundary.encode("latin-1", errors="replace")


def read_parts(reader: Reader, boundary: bytes, sink_for: SinkFor) -> None:
    """Read the form from `reader` to its closing delimiter, handing each part's bytes to `sink_for(name,
    filename)`'s function as they come."""
    delimiter = b"\r\n--" + boundary
    buffer = b"\r\n"  # the first delimiter may open the body: give it the line break the others follow

    def more() -> None:
        nonlocal buffer
        data = reader.read(CHUNK_BYTES)
        if not data:
            raise MalformedRequest("The form ends before its closing boundary: send the whole multipart body.")
        buffer += data

    while (start := buffer.find(delimiter)) < 0:
        if len(buffer) > MAX_HEADER_BYTES:
            raise MalformedRequest("The body is not multipart/form-data with the boundary its Content-Type names.")
        more()
    buffer = buffer[start + len(delimiter):]
    while True:
        while len(buffer) < 2:
            more()
        if buffer.startswith(b"--"):
            return  # the closing delimiter; what follows is an epilogue, ignored
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise MalformedRequest("A part of the form has no end to its headers.")
            more()
            end = buffer.find(b"\r\n\r\n")
        name, filename = _disposition(buffer[:end])
        buffer = buffer[end + 4:]
        sink = sink_for(name, filename)
        keep = len(delimiter) - 1
        while (stop := buffer.find(delimiter)) < 0:
            if len(buffer) > keep:
                sink(buffer[:-keep])
                buffer = buffer[-keep:]
            more()
        sink(buffer[:stop])
        buffer = buffer[stop + len(delimiter):]


def _disposition(raw: bytes) -> tuple[str, str | None]:
    """A part's field name and file name, from its Content-Disposition header."""
    for line in raw.decode("utf-8", errors="replace").split("\r\n"):
        header, _, value = line.partition(":")
        if header.strip().lower() != "content-disposition":
            continue
        params = {k.lower(): v.strip() for k, v in _PARAM.findall(";" + value.partition(";")[2])}
        unquoted = {k: v[1:-1].replace('\\"', '"') if v.startswith('"') and v.endswith('"') and len(v) > 1 else v
                    for k, v in params.items()}
        if "name" in unquoted:
            return unquoted["name"], unquoted.get("filename")
    raise MalformedRequest("A part of the form has no Content-Disposition with a field name.")
