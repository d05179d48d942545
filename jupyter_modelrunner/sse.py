"""Server-sent events as the engines send them (OpenAI's streaming format): the one reader of the package.

The relay passes complete events on as bytes (`split_complete`), the dialect translators read the JSON objects of
those events (`sse_data`), and clients of an engine stream (benchmarks, tests, the scheduler's probes) iterate the
objects of a live stream (`sse_events`). All three cut the stream at the same place: a blank line.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

DONE = b"[DONE]"


def split_complete(pending: bytes) -> tuple[bytes, bytes]:
    """`(complete events, the rest)`: the events that end in a blank line, and the start of the next one."""
    cut = pending.rfind(b"\n\n")
    if cut < 0:
        return b"", pending
    return pending[: cut + 2], pending[cut + 2 :]


def sse_data(events: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of complete server-sent events (their `data:` lines), without the closing `[DONE]`."""
    for event in events.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data and data != DONE:
                with contextlib.suppress(ValueError):
                    yield json.loads(data)


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a live event stream as they complete; it ends at `data: [DONE]` (or the stream's end)."""
    pending = b""
    async for chunk in chunks:
        events, pending = split_complete((pending + chunk).replace(b"\r\n", b"\n"))
        if not events:
            continue
        if b"data: " + DONE in events or b"data:" + DONE in events:
            head = events.split(b"data: " + DONE, 1)[0].split(b"data:" + DONE, 1)[0]
            for data in sse_data(head):
                yield data
            return
        for data in sse_data(events):
            yield data


def named_events(events: list[dict[str, Any]]) -> bytes:
    """Server-sent events as Anthropic's Messages and OpenAI's Responses streams send them: the event's name is its
    data's `type`."""
    return b"".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events)
