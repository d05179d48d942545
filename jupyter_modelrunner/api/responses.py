"""OpenAI's Responses API: `POST …/responses` (streamed or whole), `GET`/`DELETE …/responses/{id}`,
`GET …/responses/{id}/input_items` and `POST …/responses/input_tokens`.

Mounted where Docker Model Runner serves it (`responses`, `v1/responses`, `engines/responses`) and beside the other
OpenAI routes (`engines[/{engine}]/v1/responses`), so `openai.OpenAI(base_url=…/engines/v1).responses` works.
Requests are translated to the engine's chat completions by `responses_translate` (pure, tested on its own), then take
the one inference path (`service.infer`); stored responses (`store`, on by default) live in a bounded in-memory store
on the service, each visible only to the key or user that created it, which `previous_response_id` continues from.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..inference import InferenceRequest
from ..service import ModelRunnerService
from . import responses_translate as translate
from .base import SCOPE_INFERENCE, ModelRunnerHandler
from .openai import ENGINE_SEGMENT
from .stream_relay import TranslatedStreamMixin


def response_store(service: ModelRunnerService) -> translate.ResponseStore:
    """The service's stored responses, made on first use. Kept on the service, like the forwarding client, so
    every route of one runner sees one store (a server that forwards to the store's owner keeps none)."""
    store = getattr(service, "_responses", None)
    if store is None:
        store = translate.ResponseStore()
        service._responses = store  # type: ignore[attr-defined]
    return store


class ResponsesHandler(ModelRunnerHandler):
    """What the Responses routes share: the inference scope and the store, where each caller sees only its own."""

    api_scope = SCOPE_INFERENCE

    @property
    def store(self) -> translate.ResponseStore:
        return response_store(self.service)

    def stored(self, response_id: str) -> translate.StoredResponse:
        entry = self.store.get(response_id, self.caller.name)
        if entry is None:
            raise web.HTTPError(404, f"Response with id {response_id!r} not found.")
        return entry

    def translated(self, route: str, engine: str | None) -> tuple[dict[str, Any], translate.Translated,
                                                                   InferenceRequest]:
        """The body, its translation (what storing the answer needs), and the chat request for the inference path."""
        body = self.json_body()
        history: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous:
            entry = self.store.get(str(previous), self.caller.name)
            if entry is None:
                raise web.HTTPError(400, f"Previous response with id {previous!r} not found (responses are kept in "
                                         f"memory, the last {self.store.limit}, only with store=true, and only for "
                                         "the key or user that created them).")
            history = entry.conversation
        try:
            request = translate.request_to_openai(body, history)
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from exc
        chat = request.chat
        return body, request, InferenceRequest(chat["model"], "chat/completions", chat, route=route, engine=engine,
                                               caller=self.caller)


class ResponseCreateHandler(TranslatedStreamMixin, ResponsesHandler):
    """`POST …/responses`."""

    @web.authenticated
    @authorized
    async def post(self, engine: str | None = None) -> None:
        body, translated, request = self.translated("responses", engine)
        exc = await self.run_answer(self._answer(body, translated, request))
        if exc is not None:
            raise exc

    async def _answer(self, body: dict[str, Any], translated: translate.Translated,
                      request: InferenceRequest) -> None:
        base = translate.new_response(body)
        async with self.service.infer(request) as inference:
            self.name_the_engine(inference)
            if request.stream:
                stream = translate.ResponseStream(base)
                await self.relay_translated(inference, stream)
                if stream.finished:  # not when the client left, nor when the engine failed
                    self._keep(stream.response, translated)
                return
            response = translate.response_from_openai(base, (await inference.answer()).json())
            self._keep(response, translated)
            self.send_json(response)

    def _keep(self, response: dict[str, Any], request: translate.Translated) -> None:
        if response["store"]:
            conversation = [*request.conversation, translate.assistant_message(response)]
            kept = self.store.put(translate.StoredResponse(response, conversation, request.input_items,
                                                           owner=self.caller.name))
            if not kept:
                self.log.warning("response %s not stored: larger than the store's %d bytes", response["id"],
                                 self.store.max_bytes)


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
        if not self.store.delete(response_id, self.caller.name):
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
        _body, _translated, request = self.translated("responses/input_tokens", engine)
        async with self.service.infer(request) as inference:
            count = await inference.count_prompt_tokens()
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
