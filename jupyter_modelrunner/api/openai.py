"""The OpenAI-compatible endpoint: `engines[/{engine}]/v1/...`, and `v1/...` as its alias.

The request needs no translation: it goes through the one inference path (`service.infer`) to the engine that
runs the requested model. Requests name models the way users do
(`ai/smollm2`, `smollm2`, an id); the engine knows its model as `model`, and answers are rewritten to
say the name the client asked for. Streams are passed on event by event with a flush after each, so
the first token reaches the notebook as soon as the engine produces it; a client that goes away
closes the engine request (which stops the generation) and frees the runner (see `relay`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import EngineRefused, InvalidReference
from ..inference import ENDPOINT_MODES, Inference, InferenceRequest
from ..reference import parse_reference
from ..store import Model
from . import schemas
from .base import SCOPE_INFERENCE, ModelRunnerHandler, openai_error
from .stream_relay import SSE, StreamRelayMixin

ENDPOINTS = ("chat/completions", "completions", "embeddings")
_ENGINE_MODEL_FIELDS = (b'"model":"model"', b'"model": "model"')
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "date",
               "server"}


def rename_model(data: bytes, name: str) -> bytes:
    """Replace the engine's `"model":"model"` by the name the client used (bytes in, bytes out: no re-encoding).
    A plain replace, not a regex: it runs on every streamed event, and the engines write the field compactly
    (every engine here does), or with one space."""
    replacement = b'"model":' + json.dumps(name).encode()
    for field in _ENGINE_MODEL_FIELDS:
        if field in data:
            data = data.replace(field, replacement)
    return data


def engine_error(content: bytes) -> bytes:
    """An engine's OpenAI error, with the top-level `message` every error of ours has (Jupyter clients read it)."""
    try:
        body = json.loads(content)
    except ValueError:
        return content
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" not in body:
        body["message"] = str(body["error"].get("message", ""))
        return json.dumps(body).encode()
    return content


class OpenAIProxyHandler(StreamRelayMixin, ModelRunnerHandler):
    """`POST .../v1/chat/completions`, `.../v1/completions`, `.../v1/embeddings`."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def post(self, endpoint: str, engine: str | None = None) -> None:
        if self.request.headers.get("X-Preload-Only", "").lower() == "true":  # DMR's preload: load, answer nothing
            model = self.json_body().get("model")
            if not isinstance(model, str) or not model:
                raise web.HTTPError(400, "Name the model to preload: {\"model\": \"ai/smollm2\"}.")
            self.send_json(await self.service.load(model, engine=engine, mode=ENDPOINT_MODES[endpoint],
                                                   caller=self.caller))
            return
        body = self.json_body(_BODIES[endpoint])
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise web.HTTPError(400, "Name the model in the request body, e.g. {\"model\": \"ai/smollm2\", ...}.")
        request = InferenceRequest(model, endpoint, body, route=endpoint, engine=engine, caller=self.caller,
                                   background=self.background_work)
        exc = await self.run_answer(self._proxy(request))
        if isinstance(exc, EngineRefused) and exc.content and not self._headers_written:
            # The engine's own error body, as OpenAI clients read it (its type and fields kept).
            self.set_status(exc.http_status)
            self.finish(engine_error(exc.content), set_content_type="application/json")
        elif exc is not None:
            raise exc

    async def _proxy(self, request: InferenceRequest) -> None:
        model = request.model
        async with self.service.infer(request) as inference:
            self.name_the_engine(inference)
            if not request.stream:
                reply = await inference.answer()
                self.set_status(reply.status_code)
                self._copy_headers(reply.headers)
                self.finish(rename_model(reply.content, model),
                            set_content_type=reply.headers.get("content-type", "application/json"))
                return
            async with inference.stream() as upstream:
                self.start_event_stream(SSE)
                await self.relay(upstream, lambda events: rename_model(inference.adapt(events), model),
                                 on_error=lambda status, message: self._stream_error(inference, status, message),
                                 content_type=SSE)

    @staticmethod
    def _stream_error(inference: Inference, status: int, message: str) -> bytes:
        """An engine failure mid-stream, as the SSE event OpenAI clients raise as an `APIError`."""
        inference.failed_midstream(message)
        return b"data: " + json.dumps(openai_error(status, message)).encode() + b"\n\n"

    def _copy_headers(self, headers: Any) -> None:
        for name, value in headers.items():
            if name.lower() not in _HOP_BY_HOP and name.lower().startswith(("x-", "openai-")):
                self.set_header(name, value)


def model_object(tag: str, model: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's model object for one tag of a stored model (its JSON as `GET models` gives it)."""
    return {"id": tag, "object": "model", "created": model["created"],
            "owned_by": tag.split("/")[0] if "/" in tag else "library",
            "model_id": model["id"], "format": model["config"].get("format")}


class OpenAIModelsHandler(ModelRunnerHandler):
    """`GET .../v1/models`: every tag in the store, as OpenAI's model list (filtered by engine if named)."""

    api_scope = SCOPE_INFERENCE

    def engine_formats(self, engine: str | None) -> set[str] | None:
        """The formats the named engine runs (None: no engine named, every format); 404 for an unknown engine."""
        if engine is None:
            return None
        known = self.service.engine_formats()
        if engine not in known:
            raise web.HTTPError(404, f"Unknown engine {engine!r}; engines: {', '.join(sorted(known))}.")
        return known[engine]

    @web.authenticated
    @authorized
    async def get(self, engine: str | None = None) -> None:
        formats = self.engine_formats(engine)
        data = []
        for model in await self.service.models():
            if formats is not None and model["config"].get("format") not in formats:
                continue
            data.extend(model_object(tag, model) for tag in model["tags"])
        self.send_json({"object": "list", "data": data})


class OpenAIModelHandler(OpenAIModelsHandler):
    """`GET .../v1/models/{id}`: one model as OpenAI's model object, under the tag the name stands for (the id the
    list gives it); ids hold slashes and colons (`ai/smollm2:latest`), sent as they are or percent-encoded."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def get(self, model_id: str, engine: str | None = None) -> None:  # type: ignore[override]
        formats = self.engine_formats(engine)
        model = await asyncio.to_thread(self.service.store.resolve, model_id)
        described = model.to_json()
        if formats is not None and described["config"].get("format") not in formats:
            raise web.HTTPError(404, f"Model {model_id!r} is a {described['config'].get('format')} model, which "
                                     f"{engine} does not run.")
        self.send_json(model_object(_tag_named(model, described["tags"], model_id, self.service.store.registry),
                                    described))


def _tag_named(model: Model, familiar: list[str], name: str, registry: str | None) -> str:
    """The model's tag (in the list's familiar form) that `name` stands for; the first one for an id or digest."""
    try:
        wanted = parse_reference(name, registry=registry)
    except InvalidReference:
        wanted = None
    if wanted is not None:
        for full, shown in zip(model.tags, familiar, strict=False):
            other = parse_reference(full)
            if full == wanted.full or (other.repository, other.tag) == (wanted.repository, wanted.tag):
                return shown
    return familiar[0] if familiar else name


_BODIES = {"chat/completions": schemas.CHAT, "completions": schemas.COMPLETION, "embeddings": schemas.EMBEDDING}
#: `engines/{engine}/`: any segment, so that an unknown engine is answered (404) with the known ones.
ENGINE_SEGMENT = r"(?P<engine>[^/]+)"
_ENGINE = ENGINE_SEGMENT
_ENDPOINT = r"(?P<endpoint>chat/completions|completions|embeddings)"

default_handlers = [
    (rf"engines/v1/{_ENDPOINT}", OpenAIProxyHandler),
    (rf"engines/{_ENGINE}/v1/{_ENDPOINT}", OpenAIProxyHandler),
    (rf"v1/{_ENDPOINT}", OpenAIProxyHandler),
    (r"engines/v1/models", OpenAIModelsHandler),
    (rf"engines/{_ENGINE}/v1/models", OpenAIModelsHandler),
    (r"v1/models", OpenAIModelsHandler),
    (r"engines/v1/models/(?P<model_id>.+)", OpenAIModelHandler),
    (rf"engines/{_ENGINE}/v1/models/(?P<model_id>.+)", OpenAIModelHandler),
    (r"v1/models/(?P<model_id>.+)", OpenAIModelHandler),
]
