"""Anthropic's Messages API: `POST …/v1/messages` (streamed or whole) and `POST …/v1/messages/count_tokens`.

Mounted where Docker Model Runner serves it (`anthropic/v1/messages`), and beside the OpenAI routes
(`v1/messages`, `engines[/{engine}]/v1/messages`), so `anthropic.Anthropic(base_url=<runner URL>, api_key=<token>)`
works with the runner's URL as it is, or with `…/anthropic`. Requests are translated to the engine's OpenAI chat
completions by `anthropic_translate` (pure, tested on its own); these handlers only move bytes, stream through the
shared relay, and answer errors in Anthropic's shape (also as a stream's last `error` event).
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..engines.base import MODE_COMPLETION
from ..errors import ModelRunnerError
from . import anthropic_translate as translate
from .base import SCOPE_INFERENCE, ModelRunnerHandler
from .openai import ENGINE_MODEL_NAME, ENGINE_SEGMENT
from .prompt_tokens import count_prompt_tokens
from .relay import StreamRelayMixin, engine_message, sse_data

SSE = "text/event-stream; charset=utf-8"


class AnthropicHandler(ModelRunnerHandler):
    """Anthropic's error shape, and its API key header read as the runner's token."""

    api_scope = SCOPE_INFERENCE

    async def prepare(self) -> None:  # type: ignore[override]
        """The `anthropic` SDK sends its key as `x-api-key`, where Jupyter does not look: it is read as the token it
        is (`Authorization: Bearer`), then authenticated like any token. An `Authorization` header wins."""
        key = self.request.headers.get("x-api-key")
        if key and "Authorization" not in self.request.headers:
            self.request.headers["Authorization"] = f"Bearer {key}"
        await super().prepare()

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return translate.error_body(status, message)

    def chat_request(self, *, count_only: bool = False) -> dict[str, Any]:
        try:
            return translate.messages_request_to_openai(self.json_body(), count_only=count_only)
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from exc


class AnthropicMessagesHandler(StreamRelayMixin, AnthropicHandler):
    """`POST …/v1/messages`."""

    @web.authenticated
    @authorized
    async def post(self, engine: str | None = None) -> None:
        request = self.chat_request()
        exc = await self.run_answer(self._answer(engine, request["model"], request))
        if exc is not None:
            self.service.metrics.errors.labels("anthropic/messages").inc()
            raise exc

    async def _answer(self, engine: str | None, model: str, request: dict[str, Any]) -> None:
        request = {**request, "model": ENGINE_MODEL_NAME}
        async with self.service.scheduler.use(model, mode=MODE_COMPLETION, engine=engine) as runner:
            self.service.metrics.requests.labels("anthropic/messages", runner.name).inc()
            request = runner.choice.engine.adapt_request("chat/completions", request, runner.plan)
            if request.get("stop") and runner.implementation == "llama-server":
                request["verbose"] = True  # its only way of saying which stop sequence matched (see translate)
            self.name_the_engine(runner)
            if not request.get("stream"):
                response = await runner.request("POST", "/v1/chat/completions", json=request)
                if response.status_code != 200:
                    raise web.HTTPError(response.status_code, engine_message(response.content))
                try:
                    self.send_json(translate.message_from_openai(model, response.json()))
                except ValueError as exc:  # a tool call whose arguments are not a JSON object
                    raise web.HTTPError(502, str(exc)) from exc
                return
            async with runner.stream("POST", "/v1/chat/completions", json=request) as upstream:
                if upstream.status_code != 200:
                    raise web.HTTPError(upstream.status_code,
                                        engine_message(b"".join([chunk async for chunk in upstream])))
                self.set_header("Content-Type", SSE)
                self.set_header("Cache-Control", "no-cache")
                self.set_header("X-Accel-Buffering", "no")
                stream = translate.MessageStream(model)
                self.write(translate.sse(stream.start()))
                await self.flush()  # the client sees the message start while the prompt is evaluated
                await self.relay(upstream, lambda events: _events(stream, events),
                                 end=lambda: translate.sse(stream.finish()),
                                 on_error=lambda status, message: self._stream_error(model, status, message),
                                 content_type=SSE)

    def _stream_error(self, model: str, status: int, message: str) -> bytes:
        """A failure after the stream started, as Anthropic's `error` event (the SDK raises it as an APIError)."""
        self.service.metrics.errors.labels("stream").inc()
        self.log.warning("engine failed mid-stream for %s: %s", model, message.splitlines()[0])
        return translate.sse([translate.error_body(status, message)])


def _events(stream: translate.MessageStream, events: bytes) -> bytes:
    try:
        return translate.sse([event for chunk in sse_data(events) for event in stream.feed(chunk)])
    except ValueError as exc:  # the engine's error event, or tool calls that cannot be placed
        raise ModelRunnerError(str(exc)) from exc


class AnthropicCountTokensHandler(AnthropicHandler):
    """`POST …/v1/messages/count_tokens`: the prompt rendered with the model's chat template and tokenized by the
    engine (which loads the model if needed), as `{"input_tokens": N}`."""

    @web.authenticated
    @authorized
    async def post(self, engine: str | None = None) -> None:
        request = self.chat_request(count_only=True)
        async with self.service.scheduler.use(request["model"], mode=MODE_COMPLETION, engine=engine) as runner:
            self.service.metrics.requests.labels("anthropic/count_tokens", runner.name).inc()
            request = runner.choice.engine.adapt_request("chat/completions", {**request, "model": ENGINE_MODEL_NAME},
                                                              runner.plan)
            count = await count_prompt_tokens(runner, request)
        self.finish(json.dumps({"input_tokens": count}))


_ENGINE = ENGINE_SEGMENT

default_handlers = [
    (r"anthropic/v1/messages", AnthropicMessagesHandler),  # Docker Model Runner's prefix
    (r"anthropic/v1/messages/count_tokens", AnthropicCountTokensHandler),
    (r"v1/messages", AnthropicMessagesHandler),
    (r"v1/messages/count_tokens", AnthropicCountTokensHandler),
    (r"engines/v1/messages", AnthropicMessagesHandler),
    (r"engines/v1/messages/count_tokens", AnthropicCountTokensHandler),
    (rf"engines/{_ENGINE}/v1/messages", AnthropicMessagesHandler),
    (rf"engines/{_ENGINE}/v1/messages/count_tokens", AnthropicCountTokensHandler),
]
