"""Reading an engine's streamed answer off its socket (engine_stream.py): HTTP/1.1 chunked framing split anywhere,
and answers cut short. The real engines are exercised by every streamed chat in tests/api/."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jupyter_modelrunner.engine_stream import ChunkedDecoder, EngineProtocolError, open_stream

EVENTS = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]
WIRE = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS) + b"0\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 16, len(WIRE)])
def test_chunked_bodies_decode_however_the_socket_splits_them(step):
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(WIRE[i:i + step]) for i in range(0, len(WIRE), step))
    assert out == b"".join(EVENTS) and decoder.done


def test_several_chunks_in_one_read_come_out_together():
    """Under load an engine's events pile up in the socket; they are relayed in one write, not one each."""
    assert ChunkedDecoder().feed(WIRE) == b"".join(EVENTS)


@pytest.mark.parametrize("wire", [b"zz\r\nabc\r\n", b"3\r\nabcXY", b"1" * 2000])
def test_broken_framing_is_an_error(wire):
    with pytest.raises(EngineProtocolError):
        ChunkedDecoder().feed(wire)


async def _serve_once(path: Path, answer: bytes, requests: list[bytes]) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length")))
        requests.append(head + await reader.readexactly(length))
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, str(path))


def test_a_request_and_its_streamed_answer_over_a_unix_socket(tmp_path):
    """A real socket server answering as llama-server does: the request carries the JSON body and the key, the
    answer's status, headers and events come back; a stream cut short raises instead of ending quietly."""
    requests: list[bytes] = []

    async def main(answer: bytes) -> tuple[int, str, bytes]:
        server = await _serve_once(tmp_path / "engine.sock", answer, requests)
        try:
            async with open_stream(socket=tmp_path / "engine.sock", port=None, method="POST",
                                   path="/v1/chat/completions", json_body={"model": "m", "stream": True},
                                   headers={"Authorization": "Bearer k"}) as (response, body):
                data = b"".join([chunk async for chunk in body])
                return response.status_code, response.headers["content-type"], data
        finally:
            server.close()
            (tmp_path / "engine.sock").unlink(missing_ok=True)

    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, content_type, data = asyncio.run(main(head + WIRE))
    assert (status, content_type, data) == (200, "text/event-stream", b"".join(EVENTS))
    assert requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Authorization: Bearer k\r\n" in requests[0] and requests[0].endswith(b'{"model":"m","stream":true}')

    error = b'{"error": {"message": "no"}}'
    status, _, data = asyncio.run(main(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: %d\r\n\r\n%s" % (len(error), error)))
    assert (status, data) == (400, error)

    with pytest.raises(EngineProtocolError, match="before the end"):
        asyncio.run(main(head + WIRE[:20]))
