"""OpenAI's Responses API: `POST …/responses` (streamed or whole), `GET`/`DELETE …/responses/{id}`,
`GET …/responses/{id}/input_items` and `POST …/responses/input_tokens`.

Mounted where Docker Model Runner serves it (`responses`, `v1/responses`, `engines/responses`) and beside the other
OpenAI routes (`engines[/{engine}]/v1/responses`), so `openai.OpenAI(base_url=…/engines/v1).responses` works.
Requests are translated to the engine's chat completions by `responses_translate` (pure, tested on its own); stored
responses (`store`, on by default) live in a bounded in-memory store on the service, which `previous_response_id`
continues from.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..engines.base import MODE_COMPLETION
from ..errors import ModelRunnerError
from ..service import ModelRunnerService
from . import responses_translate as translate
from .base import SCOPE_INFERENCE, ModelRunnerHandler
from .openai import ENGINE_MODEL_NAME, ENGINE_SEGMENT
from .prompt_tokens import count_prompt_tokens
from .relay import StreamRelayMixin, engine_message, sse_data

SSE = "text/event-stream; charset=utf-8"


def response_store(service: ModelRunnerService) -> translate.ResponseStore:
    """The service's stored responses, made on first use. Kept on the service, like the forwarding client, so
    every route of one runner sees one store (a server that forwards to the store's owner keeps none)."""
    store = getattr(service, "_responses", None)
    if store is None:
        store = translate.ResponseStore()
        service._responses = store  # type: ignore[attr-defined]
    return store


class ResponsesHandler(ModelRunnerHandler):
    """What the Responses routes share: the inference scope and the store."""

    api_scope = SCOPE_INFERENCE

    @property
    def store(self) -> translate.ResponseStore:
        return response_store(self.service)

    def stored(self, response_id: str) -> translate.StoredResponse:
        entry = self.store.get(response_id)
        if entry is None:
            raise web.HTTPError(404, f"Response with id {response_id!r} not found.")
        return entry

    def translated(self) -> tuple[dict[str, Any], translate.Translated]:
        body = self.json_body()
        history: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous:
            entry = self.store.get(str(previous))
            if entry is None:
                raise web.HTTPError(400, f"Previous response with id {previous!r} not found (responses are kept in "
                                         f"memory, the last {self.store.limit}, and only with store=true).")
            history = entry.conversation
        try:
            return body, translate.request_to_openai(body, history)
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from exc


class ResponseCreateHandler(StreamRelayMixin, ResponsesHandler):
    """`POST …/responses`."""

    @web.authenticated
    @authorized
    async def post(self, engine: str | None = None) -> None:
        body, request = self.translated()
        exc = await self.run_answer(self._answer(engine, body, request))
        if exc is not None:
            self.service.metrics.errors.labels("responses").inc()
            raise exc

    async def _answer(self, engine: str | None, body: dict[str, Any], request: translate.Translated) -> None:
        model = request.chat["model"]
        chat = {**request.chat, "model": ENGINE_MODEL_NAME}
        base = translate.new_response(body)
        async with self.service.scheduler.use(model, mode=MODE_COMPLETION, engine=engine) as runner:
            self.service.metrics.requests.labels("responses", runner.name).inc()
            chat = runner.choice.engine.adapt_request("chat/completions", chat, runner.plan)
            self.name_the_engine(runner)
            if not chat.get("stream"):
                upstream = await runner.request("POST", "/v1/chat/completions", json=chat)
                if upstream.status_code != 200:
                    raise web.HTTPError(upstream.status_code, engine_message(upstream.content))
                response = translate.response_from_openai(base, upstream.json())
                self._keep(response, request)
                self.send_json(response)
                return
            async with runner.stream("POST", "/v1/chat/completions", json=chat) as engine_stream:
                if engine_stream.status_code != 200:
                    raise web.HTTPError(engine_stream.status_code,
                                        engine_message(b"".join([chunk async for chunk in engine_stream])))
                self.set_header("Content-Type", SSE)
                self.set_header("Cache-Control", "no-cache")
                self.set_header("X-Accel-Buffering", "no")
                stream = translate.ResponseStream(base)
                self.write(translate.sse(stream.start()))
                await self.flush()
                await self.relay(engine_stream, lambda events: _events(stream, events),
                                 end=lambda: translate.sse(stream.finish()),
                                 on_error=lambda _status, message: self._stream_error(stream, model, message),
                                 content_type=SSE)
                if stream.finished:  # not when the client left, nor when the engine failed
                    self._keep(stream.response, request)

    def _keep(self, response: dict[str, Any], request: translate.Translated) -> None:
        if response["store"]:
            conversation = [*request.conversation, translate.assistant_message(response)]
            self.store.put(translate.StoredResponse(response, conversation, request.input_items))

    def _stream_error(self, stream: translate.ResponseStream, model: str, message: str) -> bytes:
        self.service.metrics.errors.labels("stream").inc()
        self.log.warning("engine failed mid-stream for %s: %s", model, message.splitlines()[0])
        return translate.sse(stream.fail(message))


def _events(stream: translate.ResponseStream, events: bytes) -> bytes:
    try:
        return translate.sse([event for chunk in sse_data(events) for event in stream.feed(chunk)])
    except ValueError as exc:  # the engine's error event, or tool calls that cannot be placed
        raise ModelRunnerError(str(exc)) from exc


class ResponseHandler(ResponsesHandler):
    """`GET …/responses/{id}` and `DELETE …/responses/{id}`: stored responses (one store per runner, whichever
    engine route the client's base URL names)."""

    @web.authenticated
    @authorized
    async def get(self, response_id: str, engine: str | None = None) -> None:
        self.send_json(self.stored(response_id).response)

    @web.authenticated
    @authorized
    async def delete(self, response_id: str, engine: str | None = None) -> None:
        if not self.store.delete(response_id):
            raise web.HTTPError(404, f"Response with id {response_id!r} not found.")
        self.send_json(translate.deleted(response_id))


class ResponseInputItemsHandler(ResponsesHandler):
    """`GET …/responses/{id}/input_items[?order=asc|desc]`: what a stored response was asked."""

    @web.authenticated
    @authorized
    async def get(self, response_id: str, engine: str | None = None) -> None:
        order = self.get_argument("order", "desc")
        if order not in ("asc", "desc"):
            raise web.HTTPError(400, "order is \"asc\" or \"desc\".")
        self.send_json(translate.input_items_page(self.stored(response_id).input_items, order=order))


class ResponseInputTokensHandler(ResponsesHandler):
    """`POST …/responses/input_tokens`: the tokens the request's input (instructions, conversation, tools) takes,
    counted by the engine with the model's template."""

    @web.authenticated
    @authorized
    async def post(self, engine: str | None = None) -> None:
        _body, request = self.translated()
        async with self.service.scheduler.use(request.chat["model"], mode=MODE_COMPLETION, engine=engine) as runner:
            self.service.metrics.requests.labels("responses/input_tokens", runner.name).inc()
            chat = runner.choice.engine.adapt_request("chat/completions", {**request.chat, "model": ENGINE_MODEL_NAME},
                                                           runner.plan)
            count = await count_prompt_tokens(runner, chat)
        self.send_json(translate.input_tokens(count))


_ENGINE = ENGINE_SEGMENT
_ID = r"(?P<response_id>[^/]+)"
#: DMR's three mounts, and ours beside the other OpenAI routes.
_PREFIXES = ("responses", "v1/responses", "engines/responses", "engines/v1/responses",
             f"engines/{_ENGINE}/v1/responses")

default_handlers = [
    *[(prefix, ResponseCreateHandler) for prefix in _PREFIXES],
    # before `{id}`: a name no response has
    *[(f"{prefix}/input_tokens", ResponseInputTokensHandler) for prefix in _PREFIXES],
    *[(f"{prefix}/{_ID}/input_items", ResponseInputItemsHandler) for prefix in _PREFIXES],
    *[(f"{prefix}/{_ID}", ResponseHandler) for prefix in _PREFIXES],
]
