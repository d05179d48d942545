"""Ollama-compatible routes (`api/tags`, `api/chat`, `api/generate`, …) on the same inference path and store.

Tools built for Ollama (its Python client, Open WebUI, LangChain's ChatOllama) then work against the
notebook server. The reshaping of bodies lives in `ollama_translate` (pure, tested on its own); these
handlers only move bytes: Ollama streams newline-delimited JSON, one object per token, and reports
errors as `{"error": "..."}` — also as the last line of a stream that has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import ModelRunnerError
from ..inference import InferenceRequest
from ..sse import sse_data
from . import ollama_translate as translate
from . import schemas
from .base import SCOPE_INFERENCE, ModelRunnerHandler
from .models import ProgressStreamMixin
from .stream_relay import StreamRelayMixin

NDJSON = "application/x-ndjson"
#: What `GET api/version` answers: clients check it against the Ollama features they need.
OLLAMA_API_VERSION = "0.6.0"


class OllamaHandler(ModelRunnerHandler):
    """Ollama's error shape, and a body parser that turns translation errors into 400s."""

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return translate.error_body(message)

    def ollama_body(self, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.json_body(schema)
        if "model" not in body and isinstance(body.get("name"), str):  # older clients send `name`
            body["model"] = body["name"]
        return body

    async def write_line(self, obj: dict[str, Any]) -> None:
        self.write(json.dumps(obj) + "\n")
        await self.flush()


class OllamaInferenceHandler(StreamRelayMixin, OllamaHandler):
    """`POST api/chat` and `POST api/generate`."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def post(self, kind: str) -> None:
        body = self.ollama_body(schemas.OLLAMA_CHAT if kind == "chat" else schemas.OLLAMA_GENERATE)
        started = time.monotonic()
        try:
            if kind == "chat":
                path, request = translate.CHAT_PATH, translate.chat_request_to_openai(body)
            else:
                path, request = translate.generate_request_to_openai(body)
            keep_alive = translate.keep_alive_seconds(body.get("keep_alive"))
            context_size = translate.context_size(body)
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from exc
        model = request["model"]
        if (kind == "generate" and not body.get("prompt") and not body.get("raw")) or (
            kind == "chat" and not request["messages"]
        ):
            await self._load_or_unload(kind, model, keep_alive, context_size)  # Ollama's idiom: (un)load
            return
        # Ollama's per-request keep_alive: how long the model stays loaded after *this* request (the runner's
        # lease: it can keep a model longer, never unload it under another client).
        inference = InferenceRequest(model, path.removeprefix("/v1/"), request, route=f"ollama/{kind}",
                                     caller=self.caller, context_size=context_size, keep_alive=keep_alive)
        exc = await self.run_answer(self._answer(kind, inference, started))
        if exc is not None:
            raise exc

    async def _load_or_unload(self, kind: str, model: str, keep_alive: float | None, context_size: int | None) -> None:
        if keep_alive == 0:
            await self.service.unload([model], caller=self.caller)
            reason = "unload"
        else:
            await self.service.load(model, context_size=context_size, keep_alive=keep_alive, caller=self.caller)
            reason = "load"
        final = translate.chat_response_to_ollama(model, {"choices": [{"finish_reason": reason}]}, time.monotonic(),
                                                  kind)  # type: ignore[arg-type]
        final["done_reason"] = reason
        self.send_json(final)

    async def _answer(self, kind: str, request: InferenceRequest, started: float) -> None:
        model, shape = request.model, "chat" if kind == "chat" else "generate"
        async with self.service.infer(request) as inference:
            self.name_the_engine(inference)
            if not request.stream:
                reply = await inference.answer()
                self.send_json(translate.chat_response_to_ollama(model, reply.json(), started, shape))
                return
            async with inference.stream() as upstream:
                self.set_header("Content-Type", NDJSON)
                converter = translate.OllamaStream(model, shape, started)

                def failed(_status: int, message: str) -> bytes:
                    inference.failed_midstream(message)
                    return _ndjson([translate.error_body(message)])

                await self.relay(upstream, lambda events: _ollama_lines(converter, inference.adapt(events)),
                                 end=lambda: _ollama_final_line(converter), on_error=failed, content_type=NDJSON)


class OllamaEmbedHandler(OllamaHandler):
    """`POST api/embed {"model", "input": str | [str]}` → `{"model", "embeddings": [[...]]}`."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.ollama_body(schemas.OLLAMA_EMBED)
        model, texts = body.get("model"), body.get("input", body.get("prompt"))
        if not isinstance(model, str) or texts is None:
            raise web.HTTPError(400, "model and input are required")
        inputs = [texts] if isinstance(texts, str) else texts
        started = time.monotonic()
        vectors, data = await self.embed(model, inputs, body)
        self.send_json({"model": model, "embeddings": vectors,
                        "total_duration": int((time.monotonic() - started) * 1e9),
                        "prompt_eval_count": (data.get("usage") or {}).get("prompt_tokens", 0)})

    async def embed(self, model: str, inputs: list[Any], body: dict[str, Any]) -> tuple[list[list[float]], dict]:
        """The vectors of `inputs` in their order, and the engine's whole answer (for its usage)."""
        try:
            context_size = translate.context_size(body)
            keep_alive = translate.keep_alive_seconds(body.get("keep_alive"))
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from exc
        request = InferenceRequest(model, "embeddings", {"model": model, "input": inputs}, route="ollama/embed",
                                   caller=self.caller, context_size=context_size, keep_alive=keep_alive)
        async with self.service.infer(request) as inference:
            self.name_the_engine(inference)
            data = (await inference.answer()).json()
        return [item["embedding"] for item in sorted(data.get("data", []), key=lambda d: d.get("index", 0))], data


class OllamaEmbeddingsHandler(OllamaEmbedHandler):
    """`POST api/embeddings {"model", "prompt"}` → `{"embedding": [...]}`: Ollama's older, one-text route, which
    its clients still call (`ollama.embeddings`, LangChain's `OllamaEmbeddings` before 0.3)."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.ollama_body()
        model, prompt = body.get("model"), body.get("prompt")
        if not isinstance(model, str) or not model:
            raise web.HTTPError(400, "model is required")
        if prompt is not None and not isinstance(prompt, str):
            raise web.HTTPError(400, "prompt must be a string")
        if not prompt:  # as Ollama answers it: nothing to embed
            self.send_json({"embedding": []})
            return
        vectors, _data = await self.embed(model, [prompt], body)
        self.send_json({"embedding": vectors[0] if vectors else []})


class OllamaTagsHandler(OllamaHandler):
    """`GET api/tags`: the store, one entry per tag."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        models = await self.service.models()
        self.send_json({"models": [translate.tags_entry(tag, m) for m in models for tag in m["tags"]]})


class OllamaPsHandler(OllamaHandler):
    """`GET api/ps`: the loaded models."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        models = {m["id"]: m for m in await self.service.models()}
        entries = []
        for status in self.service.ps():
            if status.get("mode") == "standby":
                continue  # not a model: Ollama clients would not know what to make of it
            model = models.get(status["model_id"], {"id": status["model_id"], "tags": [status["model_name"]]})
            entries.append(translate.ps_entry(status["model_name"], model, status))
        self.send_json({"models": entries})


class OllamaVersionHandler(OllamaHandler):
    """`GET api/version`."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send_json({"version": OLLAMA_API_VERSION, "modelrunner": self.service.version})


class OllamaShowHandler(OllamaHandler):
    """`POST api/show {"model"}`: details, template and GGUF metadata."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def post(self) -> None:
        name = self.ollama_body(schemas.OLLAMA_NAME).get("model")
        if not isinstance(name, str) or not name:
            raise web.HTTPError(400, "model is required")
        model = await asyncio.to_thread(self.service.store.resolve, name)
        template_file = Path(model.bundle) / "template.jinja"
        template = await asyncio.to_thread(_read_text, template_file)
        if template is None:  # no template layer: the one the GGUF carries (the config keeps its metadata)
            gguf = (model.config.raw.get("config") or {}).get("gguf") or {}
            template = gguf.get("tokenizer.chat_template") if isinstance(gguf, dict) else None
        self.send_json(translate.show_response(model.to_json(), template, model.config.raw))


class OllamaDeleteHandler(OllamaHandler):
    """`DELETE api/delete {"model"}`."""

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        name = self.ollama_body(schemas.OLLAMA_NAME).get("model")
        if not isinstance(name, str) or not name:
            raise web.HTTPError(400, "model is required")
        await self.service.remove(name)
        self.finish()


class OllamaCopyHandler(OllamaHandler):
    """`POST api/copy {"source", "destination"}`: another name for a stored model (our tag); 200 with no body, as
    Ollama answers."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(schemas.OLLAMA_COPY)
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not source or not isinstance(destination, str) or not destination:
            raise web.HTTPError(400, "source and destination are required")
        await self.service.tag(source, destination)
        self.finish()


class OllamaTransferHandler(ProgressStreamMixin, OllamaHandler):
    """A pull or push reported in Ollama's progress shape: one status line per event while `stream` (the default
    for pull), or only the final `{"status": "success"}`. A client that leaves cancels the transfer at once, as
    on `models/create`."""

    async def transfer(self, events: AsyncIterator[dict[str, Any]], verb: str, stream: bool) -> None:
        last: dict[str, Any] = {}
        try:
            async for event in events:
                last = event
                if event["type"] == "error" or self.transfer_cancel.is_set():
                    break
                if stream:
                    self.set_header("Content-Type", NDJSON)
                    await self.write_line(_ollama_progress(event, verb))
        except StreamClosedError:
            return
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if last.get("type") == "error":
            if not stream or not self._headers_written:
                raise web.HTTPError(int(last.get("status") or 500), last["message"])
            with contextlib.suppress(StreamClosedError):
                await self.write_line(translate.error_body(last["message"]))
        elif not stream:
            self.send_json({"status": "success"})
            return
        with contextlib.suppress(StreamClosedError):
            self.finish(set_content_type=NDJSON)

    def model_name(self, body: dict[str, Any]) -> str:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise web.HTTPError(400, "model is required")
        return name


class OllamaPullHandler(OllamaTransferHandler):
    """`POST api/pull {"model", "stream"}`: our pull (streamed unless `"stream": false`)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.ollama_body(schemas.OLLAMA_PULL)
        name = self.model_name(body)
        await self.transfer(self.service.pull(name, cancel=self.transfer_cancel), "pulling",
                            stream=body.get("stream") is not False)


class OllamaPushHandler(OllamaTransferHandler):
    """`POST api/push {"model", "stream"}`: our push to the model's own registry and tag. The `ollama` client asks
    for no stream unless told; `insecure` is ours to decide (loopback and `MODEL_RUNNER_INSECURE_REGISTRIES`)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.ollama_body(schemas.OLLAMA_PULL)
        name = self.model_name(body)
        await self.transfer(self.service.push(name, cancel=self.transfer_cancel), "pushing",
                            stream=body.get("stream") is not False)


def _ndjson(objects: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(obj) + "\n" for obj in objects).encode()


def _ollama_lines(converter: translate.OllamaStream, events: bytes) -> bytes:
    """Ollama's lines for an engine's complete SSE events; an error event from the engine ends the stream."""
    objects = []
    for chunk in sse_data(events):
        if "error" in chunk:
            error = chunk["error"]
            raise ModelRunnerError(str(error.get("message", error) if isinstance(error, dict) else error))
        objects.extend(converter.feed(chunk))
    return _ndjson(objects)


def _ollama_final_line(converter: translate.OllamaStream) -> bytes:
    try:
        return _ndjson([converter.finish()])
    except ValueError as exc:  # a tool call whose arguments are not a JSON object
        raise ModelRunnerError(str(exc)) from exc


def _ollama_progress(event: dict[str, Any], verb: str) -> dict[str, Any]:
    """A transfer event as Ollama reports it: `pulling 1a2b3c4d5e6f` (or `pushing …`) with the layer's numbers."""
    if event["type"] == "success":
        return {"status": "success"}
    layer = event.get("layer")
    if event["type"] == "progress" and layer:
        return {"status": f"{verb} {layer['id'].removeprefix('sha256:')[:12]}", "digest": layer["id"],
                "total": layer["size"], "completed": layer["current"]}
    return {"status": event.get("message", "")}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


default_handlers = [
    (r"api/(?P<kind>chat|generate)", OllamaInferenceHandler),
    (r"api/embed", OllamaEmbedHandler),
    (r"api/embeddings", OllamaEmbeddingsHandler),
    (r"api/tags", OllamaTagsHandler),
    (r"api/ps", OllamaPsHandler),
    (r"api/version", OllamaVersionHandler),
    (r"api/show", OllamaShowHandler),
    (r"api/delete", OllamaDeleteHandler),
    (r"api/pull", OllamaPullHandler),
    (r"api/push", OllamaPushHandler),
    (r"api/copy", OllamaCopyHandler),
]
