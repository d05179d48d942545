"""The streaming multipart reader: a form split anywhere across reads gives the same parts, and a malformed one is
refused with a sentence saying what is wrong."""

from __future__ import annotations

import io

import pytest

from jupyter_modelrunner.api.multipart import boundary_of, read_parts
from jupyter_modelrunner.errors import MalformedRequest

BOUNDARY = b"----form-7d3a"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += b"--" + BOUNDARY + f"\r\nContent-Disposition: {disposition}\r\n".encode()
        body += (b"Content-Type: application/octet-stream\r\n" if filename else b"") + b"\r\n" + data + b"\r\n"
    return body + b"--" + BOUNDARY + b"--\r\n"


class Trickle(io.RawIOBase):
    """A body that arrives `step` bytes at a time, whatever the reader asks for."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = data, step

    def read(self, n: int = -1) -> bytes:
        out, self.data = self.data[:self.step], self.data[self.step:]
        return out


def parts_of(body: bytes, step: int) -> dict[str, tuple[str | None, bytes]]:
    found: dict[str, tuple[str | None, bytearray]] = {}

    def sink_for(name: str, filename: str | None):
        found[name] = (filename, bytearray())
        return found[name][1].extend

    read_parts(Trickle(body, step), BOUNDARY, sink_for)
    return {name: (filename, bytes(data)) for name, (filename, data) in found.items()}


@pytest.mark.parametrize("step", [1, 7, 64, 1 << 20])
def test_a_form_split_anywhere_gives_the_same_parts(step):
    content = b'{"custom_id": "a"}\r\n--not-the-boundary\r\n' * 50 + b"\r\n--" + BOUNDARY[:-1]
    body = form(("purpose", None, b"batch"), ("file", "in.jsonl", content))
    assert parts_of(body, step) == {"purpose": (None, b"batch"), "file": ("in.jsonl", content)}


def test_the_boundary_is_read_from_the_content_type():
    assert boundary_of('multipart/form-data; boundary="abc"') == b"abc"
    assert boundary_of("Multipart/Form-Data;boundary=x-y") == b"x-y"
    assert boundary_of("application/json") is None
    assert boundary_of("multipart/form-data") is None
    assert boundary_of("multipart/form-data; boundary=" + "b" * 71) is None


@pytest.mark.parametrize(("body", "words"), [
    (b"", "ends before its closing boundary"),
    (b"x" * 40_000, "not multipart/form-data"),
    (form(("file", "a", b"data"))[:-20], "ends before its closing boundary"),
    (b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + BOUNDARY + b"--", "no Content-Disposition"),
])
def test_a_malformed_form_is_refused_saying_why(body, words):
    with pytest.raises(MalformedRequest, match=words):
        parts_of(body, 1000)
