"""Anthropic's Messages API: `POST …/v1/messages` (streamed or whole) and `POST …/v1/messages/count_tokens`.

Mounted where Docker Model Runner serves it (`anthropic/v1/messages`), and beside the OpenAI routes
(`v1/messages`, `engines[/{engine}]/v1/messages`), so `anthropic.Anthropic(base_url=<runner URL>, api_key=<token>)`
works with the runner's URL as it is, or with `…/anthropic`. Requests are translated to the engine's OpenAI chat
completions by `anthropic_translate` (pure, tested on its own), then take the one inference path (`service.infer`);
these handlers only move bytes, stream through the shared relay, and answer errors in Anthropic's shape (also as a
stream's last `error` event).
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..inference import InferenceRequest
from . import anthropic_translate as translate
from .base import SCOPE_INFERENCE, ModelRunnerHandler
from .openai import ENGINE_SEGMENT
from .stream_relay import TranslatedStreamMixin


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

    def inference_request(self, route: str, engine: str | None, *, count_only: bool = False) -> InferenceRequest:
        """The request body translated to an OpenAI chat request, for the one inference path."""
        try:
            chat = translate.messages_request_to_openai(self.json_body(), count_only=count_only)
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from exc
        return InferenceRequest(chat["model"], "chat/completions", chat, route=route, engine=engine,
                                caller=self.caller, wants_matched_stop=bool(chat.get("stop")))


class AnthropicMessagesHandler(TranslatedStreamMixin, AnthropicHandler):
    """`POST …/v1/messages`."""

    @web.authenticated
    @authorized
    async def post(self, engine: str | None = None) -> None:
        request = self.inference_request("anthropic/messages", engine)
        exc = await self.run_answer(self._answer(request))
        if exc is not None:
            raise exc

    async def _answer(self, request: InferenceRequest) -> None:
        async with self.service.infer(request) as inference:
            self.name_the_engine(inference)
            if request.stream:
                await self.relay_translated(inference, translate.MessageStream(request.model))
                return
            reply = await inference.answer()
            try:
                self.send_json(translate.message_from_openai(request.model, reply.json()))
            except ValueError as exc:  # a tool call whose arguments are not a JSON object
                raise web.HTTPError(502, str(exc)) from exc


class AnthropicCountTokensHandler(AnthropicHandler):
    """`POST …/v1/messages/count_tokens`: the prompt rendered with the model's chat template and tokenized by the
    engine (which loads the model if needed), as `{"input_tokens": N}`."""

    @web.authenticated
    @authorized
    async def post(self, engine: str | None = None) -> None:
        request = self.inference_request("anthropic/count_tokens", engine, count_only=True)
        async with self.service.infer(request) as inference:
            count = await inference.count_prompt_tokens()
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
