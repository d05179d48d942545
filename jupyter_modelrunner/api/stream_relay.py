"""One relay for the engines' streamed answers, shared by every dialect's routes.

Engines stream OpenAI server-sent events. The OpenAI route passes them on (the model renamed to the name
the client used); the Ollama route turns them into Ollama's NDJSON lines. Everything else is the same, and
lives here:

- The answer runs in a task of its own. A client that leaves before the engine streams (a model still
  loading) cancels it: nothing is open to the engine yet.
- Once the engine streams, a client that leaves (tornado's `on_connection_close`) is noticed at the
  engine's next chunk, and the relay returns, so the handler leaves the engine request's `async with`
  normally: that closes the engine connection, which stops the generation. Cancelling the task instead
  would interrupt a read from the engine's socket, which can leave that connection open, and the engine
  busy with it: it cannot even stop until the runner's grace period runs out and it is killed.
- Complete events are written and flushed as they arrive, so a token reaches the client when the engine
  makes it.
- An engine failure mid-stream (the status line is already sent) becomes the API's own error shape, the
  stream's last event, through the route's callback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Callable, Coroutine
from typing import Any, Protocol

from tornado.iostream import StreamClosedError

from ..errors import ModelRunnerError
from ..inference import Inference
from ..sse import named_events, split_complete, sse_data
from .base import error_status

SSE = "text/event-stream; charset=utf-8"


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
                events, pending = split_complete(pending + chunk)
                if events and (data := translate(events)):
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


class EventTranslator(Protocol):
    """A dialect's stream translator (Anthropic's `MessageStream`, OpenAI Responses' `ResponseStream`): the events
    to send first, for each engine chunk, at the end, and when the engine fails mid-stream."""

    def start(self) -> list[dict[str, Any]]: ...

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]: ...

    def fail(self, status: int, message: str) -> list[dict[str, Any]]: ...


class TranslatedStreamMixin(StreamRelayMixin):
    """For dialects whose stream is a translation of the engine's into named events."""

    async def relay_translated(self: Any, inference: Inference, translator: EventTranslator) -> None:
        """Stream the engine's answer as `translator`'s events: its opening events at once (the client sees the
        answer start while the prompt is evaluated), then each engine chunk's, then its closing ones. An engine
        error before the stream is raised (`EngineRefused`); after it, the translator's failure events end it."""

        def translate(events: bytes) -> bytes:
            try:
                return named_events([out for chunk in sse_data(inference.adapt(events))
                                     for out in translator.feed(chunk)])
            except ValueError as exc:  # the engine's error event, or tool calls that cannot be placed
                raise ModelRunnerError(str(exc)) from exc

        def failed(status: int, message: str) -> bytes:
            inference.failed_midstream(message)
            return named_events(translator.fail(status, message))

        async with inference.stream() as upstream:
            self.start_event_stream(SSE)
            self.write(named_events(translator.start()))
            await self.flush()
            await self.relay(upstream, translate, end=lambda: named_events(translator.finish()), on_error=failed,
                             content_type=SSE)
