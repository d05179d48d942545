"""What reading an engine's streamed answer costs per event: the relay's reader against the readers it replaced.

Usage: .venv/bin/python benchmarks/engine_reader.py [--events 20000] [--rounds 3]

Every token of every streamed chat is one server-sent event read off an engine's socket on the notebook server's
event loop, so this cost is paid per token, by the process that also serves JupyterLab. A local server streams
`--events` chunked events, one per turn of the loop as an engine does; each reader reads them all, in turns, in one
process; the table shows the CPU time per event (the local server's share is the same in every row) and the ratio
to the asyncio `StreamReader` reader the relay used before (httpx, before that). Goal: <= 0.6x.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner.engine_stream import ChunkedDecoder, open_stream  # noqa: E402

EVENT = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"model","choices":'
         b'[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}\n\n')
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)


async def serve(path: str, events: int) -> asyncio.AbstractServer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        for _ in range(events):
            writer.write(CHUNK)
            await asyncio.sleep(0)  # one event per turn of the loop, as an engine streams its tokens
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(answer, path)


async def ours(path: str) -> AsyncIterator[bytes]:
    async with open_stream(socket=Path(path), port=None, method="POST", path="/v1/chat/completions",
                           json_body={"stream": True}, headers={}) as (_, body):
        async for chunk in body:
            yield chunk


async def stream_reader(path: str) -> AsyncIterator[bytes]:
    """The reader before: asyncio's StreamReader, 64 KiB reads, the same chunked decoder."""
    reader, writer = await asyncio.open_unix_connection(path, limit=64 * 1024)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: engine\r\nContent-Length: 2\r\n\r\n{}")
    await reader.readuntil(b"\r\n\r\n")
    decoder = ChunkedDecoder()
    try:
        while not decoder.done and (data := await reader.read(64 * 1024)):
            if payload := decoder.feed(data):
                yield payload
    finally:
        writer.close()


async def through_httpx(path: str) -> AsyncIterator[bytes]:
    """The reader before that: httpx's streamed response."""
    transport = httpx.AsyncHTTPTransport(uds=path)
    async with (httpx.AsyncClient(transport=transport, base_url="http://engine") as client,
                client.stream("POST", "/v1/chat/completions", json={"stream": True}) as response):
        async for chunk in response.aiter_raw():
            yield chunk


async def cost(read: Callable[[str], AsyncIterator[bytes]], path: str) -> tuple[float, int]:
    started = time.process_time()
    events = 0
    async for chunk in read(path):
        events += chunk.count(b"\n\n")
    return time.process_time() - started, events


async def measure(events: int, rounds: int) -> dict[str, float]:
    readers = {"httpx (before the raw reader)": through_httpx, "asyncio StreamReader (before)": stream_reader,
               "ours (engine_stream.open_stream)": ours}
    best = {label: float("inf") for label in readers}
    with tempfile.TemporaryDirectory(prefix="reader-", dir="/tmp") as folder:
        path = f"{folder}/engine.sock"
        server = await serve(path, events)
        try:
            for _ in range(rounds):
                for label, read in readers.items():
                    seconds, seen = await cost(read, path)
                    if seen != events:
                        raise RuntimeError(f"{label} read {seen} events of {events}")
                    best[label] = min(best[label], seconds / events * 1e6)
        finally:
            server.close()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best = asyncio.run(measure(args.events, args.rounds))
    baseline = best["asyncio StreamReader (before)"]
    print(f"\n{args.events} events, best of {args.rounds}{'CPU us/event':>22}{'x before':>10}")
    for label, micros in best.items():
        print(f"{label:<44}{micros:>12.1f}{micros / baseline:>10.2f}")
    print("goal: ours <= 0.60x (the local server's share of each row is the same)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
