"""Server-sent events as the engines send them (OpenAI's streaming format): the one reader of the package.

The relay passes complete events on as bytes (`split_complete`), the dialect translators read the JSON objects of
those events (`sse_data`), and clients of an engine stream (benchmarks, tests, the scheduler's probes) iterate the
objects of a live stream (`sse_events`). All three cut the stream at the same place: a blank line. The engines
rename their own fields in an answer, whole or streamed, with `rewrite_objects`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
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


def rewrite_objects(data: bytes, rewrite: Callable[[dict[str, Any]], bool]) -> bytes:
    """An engine's answer (a whole JSON body, or complete server-sent events) with `rewrite` applied to each of its
    JSON objects; `rewrite` changes the object in place and says whether it did. Objects it leaves alone keep their
    bytes, so a caller that checks for its field's bytes first costs the relay nothing on the other events."""
    if data.lstrip()[:1] == b"{":
        try:
            whole = json.loads(data)
        except ValueError:
            return data
        return _dumps(whole) if isinstance(whole, dict) and rewrite(whole) else data
    lines = data.split(b"\n")
    changed = False
    for index, line in enumerate(lines):
        payload = line[5:].strip() if line.startswith(b"data:") else b""
        if not payload.startswith(b"{"):
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        if isinstance(event, dict) and rewrite(event):
            lines[index] = b"data: " + _dumps(event) + (b"\r" if line.endswith(b"\r") else b"")
            changed = True
    return b"\n".join(lines) if changed else data


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


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
