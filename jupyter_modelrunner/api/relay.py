"""One relay for the engines' streamed answers, shared by the OpenAI and Ollama routes.

Engines stream OpenAI server-sent events. The OpenAI route passes them on (the model renamed to the name
the client used); the Ollama route turns them into Ollama's NDJSON lines. Everything else is the same, and
lives here:

- The answer runs in a task of its own. A client that leaves before the engine streams (a model still
  loading) cancels it: nothing is open to the engine yet.
- Once the engine streams, a client that leaves (tornado's `on_connection_close`) is noticed at the
  engine's next chunk, and the relay returns, so the handler leaves the engine request's `async with`
  normally: that closes the engine connection, which stops the generation. Cancelling the task instead
  would interrupt a read from the engine's socket, which can leave that connection open, and the engine
  busy with it: it cannot even stop until the scheduler's grace period runs out and it is killed.
- Complete events are written and flushed as they arrive, so a token reaches the client when the engine
  makes it.
- An engine failure mid-stream (the status line is already sent) becomes the API's own error shape, the
  stream's last event, through the route's callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, Callable, Coroutine, Iterator
from typing import Any

from tornado.iostream import StreamClosedError

from ..errors import ModelRunnerError
from .base import error_status


class StreamRelayMixin:
    """For handlers whose answer may be an engine's stream: `run_answer` runs it, `relay` streams it."""

    _work: asyncio.Task[None] | None = None
    _client_gone = False
    _streaming = False

    async def run_answer(self, answer: Coroutine[Any, Any, None]) -> BaseException | None:
        """Run `answer` in a task that a client leaving before the stream cancels; returns what it raised."""
        self._work = asyncio.get_running_loop().create_task(answer)
        await asyncio.wait({self._work})
        if self._work.cancelled():
            return None
        return self._work.exception()

    def on_connection_close(self: Any) -> None:
        self._client_gone = True
        if self._work is not None and not self._work.done() and not self._streaming:
            self._work.cancel()  # still waiting for the engine (a load): nothing open to it to leave behind
        super().on_connection_close()  # type: ignore[misc]

    async def relay(self: Any, chunks: AsyncIterable[bytes], translate: Callable[[bytes], bytes], *,
                    on_error: Callable[[int, str], bytes], content_type: str,
                    end: Callable[[], bytes] | None = None) -> None:
        """Write `translate(events)` for the complete SSE events of each chunk, and flush; at the end of the
        engine's stream, `end()`. A `ModelRunnerError` (the engine failed, or `translate` or `end` refused
        what it sent) ends the stream with `on_error(status, message)`. Returns when the client has left,
        without reading on from the engine."""
        pending = b""
        self._streaming = True
        try:
            async for chunk in chunks:
                if self._client_gone:
                    return  # leaving the engine request's block closes it, which stops the generation
                pending += chunk
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                events, pending = pending[: cut + 2], pending[cut + 2 :]
                if data := translate(events):
                    self.write(data)
                    await self.flush()
            if pending:
                self.write(translate(pending))
            if end is not None:
                self.write(end())
        except StreamClosedError:
            return  # the client is gone; leaving the block closes the engine request
        except ModelRunnerError as exc:
            self.write(on_error(*error_status(exc, 502)))
        with contextlib.suppress(StreamClosedError):
            self.finish(set_content_type=content_type)


def sse_data(events: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of complete server-sent events (their `data:` lines), without the closing `[DONE]`."""
    for event in events.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data and data != b"[DONE]":
                with contextlib.suppress(ValueError):
                    yield json.loads(data)


def engine_message(content: bytes) -> str:
    """The message of an engine's error body (OpenAI's `{"error": {"message"}}`, a bare `{"error": "..."}`, or
    text), for an error in the route's own shape."""
    with contextlib.suppress(ValueError, AttributeError):
        data = json.loads(content)
        error = data.get("error", data)
        return str(error.get("message", error) if isinstance(error, dict) else error)
    return content.decode("utf-8", "replace")[:500]
