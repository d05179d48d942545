"""An OpenAPI 3.1 description of every route, at `{base_url}modelrunner/openapi.json` (`/openapi.json` on `serve`).

The paths come from the route table itself (`routes()`): a group of literal alternatives
(`(?P<endpoint>chat/completions|completions|embeddings)`) becomes one path per alternative, any other group a path
parameter. What the table cannot say — a summary, the body, the answers — is written here, once per operation,
keyed by method and path; the OpenAI routes' three mounts (`v1/`, `engines/v1/`, `engines/{engine}/v1/`) share
theirs. tests/api/test_openapi.py keeps the two in step (an operation without a description, or a description
without a route, fails it) and runs schemathesis against both mounts with this description.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from .._version import __version__
from ..hub_catalog import MAX_QUERY_CHARS, MAX_SEARCH_LIMIT
from .base import SCOPE_INFERENCE, ModelRunnerHandler
from .schemas import (
    ANTHROPIC_ERROR,
    BATCH,
    BATCH_OBJECT,
    CHAT,
    COMPLETION,
    CONFIGURE,
    COUNT_TOKENS,
    EMBEDDING,
    FILE,
    FILE_UPLOAD,
    FSCK,
    GC,
    HF_CACHE,
    HF_SEARCH,
    LOAD,
    MESSAGES,
    MODEL,
    NAME,
    OLLAMA_CHAT,
    OLLAMA_COPY,
    OLLAMA_EMBED,
    OLLAMA_ERROR,
    OLLAMA_GENERATE,
    OLLAMA_NAME,
    OLLAMA_PULL,
    OPENAI_ERROR,
    PACKAGE,
    PULL,
    RERANK,
    RESPONSE,
    SCORE,
    TARGET,
    UNLOAD,
)

METHODS = ("get", "post", "put", "patch", "delete")
_GROUP = re.compile(r"\(\?P<(\w+)>([^)]*)\)")
_LITERALS = re.compile(r"[\w/]+(\|[\w/]+)*")


PROGRESS = {"description": "Newline-delimited JSON events `{type: progress|success|warning|error, message, "
            "total, layer}` as the work goes (FORMAT §4); the last is `success` or `error`.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, tag: str, *, body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None,
        query: tuple[tuple[str, dict[str, Any], bool], ...] = (), stream: str | None = None) -> dict[str, Any]:
    """One operation: `query` is (name, schema, required); `stream` names what a streamed answer is."""
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {"200": ok or _json({})}}
    if stream:
        operation["responses"]["200"] = {"description": f"JSON, or with `stream: true` {stream}",
                                         "content": {"application/json": {"schema": {"type": "object"}},
                                                     "text/event-stream": {"schema": {"type": "string"}},
                                                     "application/x-ndjson": {"schema": {"type": "string"}}}}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if query:
        operation["parameters"] = [{"name": n, "in": "query", "required": r, "schema": s} for n, s, r in query]
    return operation


DMR, OPENAI, OLLAMA, RUNNER = "Docker Model Runner", "OpenAI-compatible", "Ollama-compatible", "Runner"
ANTHROPIC = "Anthropic-compatible"
HUGGING_FACE = "Hugging Face"
#: (method, path with `engines/` mounts folded to `v1/...`) → its operation. Path parameters are `{name}`.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "models"): _op("Every model in the store", DMR, ok=_json({"type": "array", "items": MODEL})),
    ("post", "models/create"): _op("Pull a model from its registry", DMR, body=PULL, ok=PROGRESS),
    ("post", "models/package"): _op("Package local GGUF or safetensors files as a model", DMR, body=PACKAGE),
    ("post", "models/load"): {**_op("Import a model archive (`Content-Type: application/x-tar`, DMR's `load`), or "
                                    "with a JSON body start a model's engine now (preload)", DMR, body=LOAD,
                                    query=(("tag", {"type": "string"}, False),)),
                              "requestBody": {"required": True, "content": {
                                  "application/json": {"schema": LOAD},
                                  "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}},
    ("get", "models/{name}/export"): {**_op("The model as a tar archive (DMR's, plus an OCI layout naming it)", DMR),
                                      "responses": {"200": {"description": "the archive", "content": {
                                          "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}}},
    ("delete", "models/purge"): _op("Remove every model (engines first)", RUNNER),
    ("post", "models/gc"): _op("Delete blobs no model uses and abandoned partial downloads", RUNNER, body=GC),
    ("post", "models/fsck"): _op("Check the store (and with `repair`, drop what cannot be used)", RUNNER,
                                 body=FSCK,
                                 stream="newline-delimited progress ending with the report"),
    ("post", "models/{name}/tag"): _op("Give a model another name", DMR, body=TARGET, query=(
        ("repo", {"type": "string"}, False), ("tag", {"type": "string"}, False))),
    ("post", "models/{name}/push"): _op("Push a model to its registry (or `target`)", DMR, body=TARGET,
                                        ok=PROGRESS),
    ("get", "models/{name}"): _op("One model: manifest, config, and the engine that runs it here", DMR,
                                  ok=_json(MODEL)),
    ("delete", "models/{name}"): _op("Remove a tag (with `force`, the model)", DMR, query=(
        ("force", {"type": "boolean"}, False),)),
    ("get", "engines/status"): _op("Which engines can run here, and why or why not", DMR),
    ("get", "engines/ps"): _op("The loaded models and the vLLM standby", DMR,
                               ok=_json({"type": "array", "items": {"type": "object"}})),
    ("get", "engines/df"): _op("Disk used by the store", DMR),
    ("post", "engines/unload"): _op("Stop models' engines", DMR, body=UNLOAD),
    ("get", "engines/_configure"): _op("A model's settings", DMR, query=(("model", NAME, True),)),
    ("post", "engines/_configure"): _op("Set a model's context size, runtime flags, keep_alive", DMR, body=CONFIGURE),
    ("post", "engines/_handover"): {
        "summary": "Ask an embedded runner to hand its store over to a server starting on it (others: 409)",
        "tags": [RUNNER], "responses": {
            "202": _json({"type": "object", "properties": {"handing_over": {"type": "boolean"},
                                                            "in_progress": {"type": "integer"}}},
                         "The embedded runner stops once its work in progress is done, releasing the store"),
            "409": _json({"type": "object"}, "Not an embedded runner (or it does not own its store): nothing stops")}},
    ("get", "engines/logs"): _op("An engine's output", RUNNER, query=(
        ("model", NAME, True), ("lines", {"type": "integer", "minimum": 1, "maximum": 10000}, False),
        ("follow", {"type": "boolean", "const": False}, False)), ok={
        "description": "Text; with `follow=true` it goes on as the engine prints (until the client leaves)",
        "content": {"text/plain": {"schema": {"type": "string"}}}}),
    ("post", "v1/chat/completions"): _op("Chat (OpenAI)", OPENAI, body=CHAT,
                                         stream="server-sent chunks ending with `data: [DONE]`"),
    ("post", "v1/completions"): _op("Complete a prompt (OpenAI)", OPENAI, body=COMPLETION,
                                    stream="server-sent chunks ending with `data: [DONE]`"),
    ("post", "v1/embeddings"): _op("Embed text (OpenAI)", OPENAI, body=EMBEDDING),
    ("get", "v1/models"): _op("The models, as OpenAI lists them", OPENAI),
    ("post", "api/chat"): _op("Chat (Ollama)", OLLAMA, body=OLLAMA_CHAT, stream="NDJSON chunks"),
    ("post", "api/generate"): _op("Complete a prompt (Ollama)", OLLAMA, body=OLLAMA_GENERATE,
                                  stream="NDJSON chunks"),
    ("post", "api/embed"): _op("Embed text (Ollama)", OLLAMA, body=OLLAMA_EMBED),
    ("get", "api/tags"): _op("The models, as Ollama lists them", OLLAMA),
    ("get", "api/ps"): _op("The loaded models (Ollama)", OLLAMA),
    ("get", "api/version"): _op("Ollama's version route", OLLAMA),
    ("post", "api/show"): _op("A model's details (Ollama)", OLLAMA, body=OLLAMA_NAME),
    ("delete", "api/delete"): _op("Remove a model (Ollama)", OLLAMA, body=OLLAMA_NAME),
    ("post", "api/pull"): _op("Pull a model (Ollama)", OLLAMA, body=OLLAMA_PULL,
        stream="NDJSON progress"),
    ("get", "v1/models/{model_id}"): _op("One model, as OpenAI describes it", OPENAI),
    ("post", "v1/messages"): _op("Anthropic's Messages API, translated to chat", ANTHROPIC, body=MESSAGES,
                                 stream="Anthropic's server-sent events (message_start ... message_stop)"),
    ("post", "v1/messages/count_tokens"): _op("Tokens a Messages request's prompt takes", ANTHROPIC,
                                              body=COUNT_TOKENS),
    ("post", "v1/responses"): _op("OpenAI's Responses API: create (translated to chat)", OPENAI, body=RESPONSE,
                                  stream="Responses events (response.created ... response.completed)"),
    ("post", "v1/responses/input_tokens"): _op("Tokens a Responses request's input takes", OPENAI, body=RESPONSE),
    ("get", "v1/responses/{response_id}"): _op("A stored response", OPENAI),
    ("delete", "v1/responses/{response_id}"): _op("Forget a stored response", OPENAI),
    ("get", "v1/responses/{response_id}/input_items"): _op("A stored response's input items", OPENAI, query=(
        ("order", {"type": "string", "enum": ["asc", "desc"]}, False),)),
    ("post", "v1/rerank"): _op("Documents ordered by relevance to a query (reranker models)", OPENAI, body=RERANK),
    ("post", "v1/score"): _op("Scores of text pairs, in the request's order (reranker models)", OPENAI, body=SCORE),
    ("post", "api/embeddings"): _op("Embed one text (Ollama's older route)", OLLAMA, body=OLLAMA_EMBED),
    ("post", "api/copy"): _op("Another name for a model (Ollama)", OLLAMA, body=OLLAMA_COPY),
    ("post", "api/push"): _op("Push a model (Ollama)", OLLAMA, body=OLLAMA_PULL, stream="NDJSON progress"),
    ("get", "metrics"): _op("Prometheus metrics: ours and the engines'", RUNNER, ok={
        "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}),
    ("get", "openapi.json"): _op("This description", RUNNER),
    ("get", "huggingface/cache"): _op("The models in the Hugging Face cache an engine here runs, as `pull` names them",
                                      HUGGING_FACE, ok=_json(HF_CACHE)),
    ("get", "huggingface/search"): _op("The Hub's GGUF and safetensors models matching a query, most downloaded "
                                       "first", HUGGING_FACE, ok=_json(HF_SEARCH), query=(
        ("q", {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}, True),
        ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_LIMIT}, False),
        ("format", {"type": "string", "enum": ["gguf", "safetensors"]}, False))),
    ("get", "v1/files"): _op("The caller's files (Batch API)", OPENAI, ok=_json({"type": "object"}), query=(
        ("purpose", {"type": "string"}, False), ("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, False),
        ("after", {"type": "string"}, False), ("order", {"type": "string", "enum": ["asc", "desc"]}, False))),
    ("post", "v1/files"): {**_op("Upload a batch input file (JSONL, purpose `batch`)", OPENAI, ok=_json(FILE)),
                           "requestBody": {"required": True, "content": {"multipart/form-data": {
                               "schema": FILE_UPLOAD}}}},
    ("get", "v1/files/{file_id}"): _op("One of the caller's files", OPENAI, ok=_json(FILE)),
    ("delete", "v1/files/{file_id}"): _op("Delete one of the caller's files", OPENAI),
    ("get", "v1/files/{file_id}/content"): {**_op("A file's bytes (a batch's output: one JSON line per answer)",
                                                  OPENAI), "responses": {"200": {
        "description": "the file", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}}},
    ("get", "v1/batches"): _op("The caller's batches, newest first", OPENAI, ok=_json({"type": "object"}), query=(
        ("limit", {"type": "integer", "minimum": 1, "maximum": 100}, False), ("after", {"type": "string"}, False))),
    ("post", "v1/batches"): _op("Run the requests of an uploaded file as a batch (interactive requests first)",
                                OPENAI, body=BATCH, ok=_json(BATCH_OBJECT)),
    ("get", "v1/batches/{batch_id}"): _op("One of the caller's batches", OPENAI, ok=_json(BATCH_OBJECT)),
    ("post", "v1/batches/{batch_id}/cancel"): _op("Cancel a batch: requests in flight stop, the answers so far are "
                                                  "kept", OPENAI, ok=_json(BATCH_OBJECT)),
}
_MOUNT = re.compile(r"^(engines/(\{engine\}/)?(?=v1/)|anthropic/(?=v1/)|(engines/)?(?=responses))")


def canonical(path: str) -> str:
    """The key of a path's description: the routes under `engines/[{engine}/]`, DMR's `anthropic/` and its bare
    `responses` share those of `v1/`."""
    path = _MOUNT.sub("", path)
    return "v1/" + path if path.startswith("responses") else path


def expand(pattern: str) -> list[tuple[str, dict[str, str]]]:
    """A route pattern as OpenAPI paths: one per literal alternative, other groups as `{name}` parameters (with
    the regular expression they must match)."""
    paths: list[tuple[str, dict[str, str]]] = [(pattern.strip("/"), {})]
    while any(_GROUP.search(p) for p, _ in paths):
        expanded = []
        for path, params in paths:
            group = _GROUP.search(path)
            if group is None:
                expanded.append((path, params))
                continue
            head, tail = path[: group.start()], path[group.end():]
            if _LITERALS.fullmatch(group.group(2)):
                expanded += [(head + value + tail, params) for value in group.group(2).split("|")]
            else:
                expanded.append((head + "{" + group.group(1) + "}" + tail, {**params, group.group(1): group.group(2)}))
        paths = expanded
    return [(re.sub(r"\\(.)", r"\1", path), params) for path, params in paths]  # `openapi\.json` → `openapi.json`


#: Where the server keeps its route table (api.routes("")) for the description to read: this module describes a
#: table it is given, and so imports no other route module (the table includes this one's).
ROUTES_SETTING = "modelrunner_routes"


def operations(table: tuple[tuple[str, Any], ...]) -> list[tuple[str, str, type, dict[str, str]]]:
    """(method, path, handler, path parameters) for every method every route's handler implements, in `table`
    (patterns without a prefix: `api.routes("")`)."""
    found = []
    for pattern, handler in table:
        for path, params in expand(pattern):
            for method in METHODS:
                if getattr(handler, method) is not getattr(web.RequestHandler, method):
                    found.append((method, path, handler, params))
    return found


@cache
def describe(table: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The document of the routes in `table`, without `servers` (the handler adds where it is mounted). Raises
    KeyError for a route with no description: the test that keeps this true fails first."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler, params in operations(table):
        operation = json.loads(json.dumps(OPERATIONS[(method, canonical(path))]))  # each path its own copy
        operation["operationId"] = f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}"
        if params:
            operation.setdefault("parameters", [])[:0] = [
                {"name": name, "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1, **({"pattern": f"^{regex}$"} if regex != "[^?#]+?"
                                                                  else {})}}
                for name, regex in params.items()]
        family = ("ollama" if path.startswith("api/") else
                  "anthropic" if canonical(path).startswith("v1/messages") else "openai")
        operation["responses"].update({
            "4XX": {"description": "A refusal, with the message a user should read",
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{family}_error"}}}},
            "5XX": {"description": "An engine or registry failed; the message says which and why",
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{family}_error"}}}},
        })
        if getattr(handler, "api_scope", None) == SCOPE_INFERENCE:
            operation["x-inference-key"] = True
        paths.setdefault("/" + path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "jupyter-modelrunner", "version": __version__,
                 "description": "Docker Model Runner's API, OpenAI- and Ollama-compatible routes, served by a Jupyter "
                                "server. Every route needs the Jupyter token (`Authorization: token T` or `Bearer T`);"
                                " routes marked `x-inference-key` also take an inference key (`Bearer KEY`)."},
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization",
                                          "description": "`token <Jupyter token>`"},
                                "bearer": {"type": "http", "scheme": "bearer",
                                           "description": "The Jupyter token, or an inference key"}},
            "schemas": {"openai_error": OPENAI_ERROR, "ollama_error": OLLAMA_ERROR,
                        "anthropic_error": ANTHROPIC_ERROR},
        },
        "security": [{"token": []}, {"bearer": []}],
        "paths": paths,
    }


class OpenAPIHandler(ModelRunnerHandler):
    """`GET openapi.json`: the description, with this mount as its server (answered here, never relayed: the
    routes are the same everywhere, the mount is this server's)."""

    api_scope = SCOPE_INFERENCE
    relayed = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        document = dict(describe(self.settings[ROUTES_SETTING]))
        document["servers"] = [{"url": self.request.path.removesuffix("openapi.json")}]  # where it was asked
        self.send_json(document)


default_handlers = [(r"openapi\.json", OpenAPIHandler)]
