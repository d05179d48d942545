"""The one path from a translated request to an engine: what every API dialect hands `ModelRunnerService.infer`.

A dialect (OpenAI, Ollama, Anthropic, Responses, rerank) translates its request into OpenAI's shape and describes it
with an `InferenceRequest`; `infer` then does everything between that and the engine — resolve the model, check what
it can do, guard and inline the media, apply the caller's policy, lease a runner, adapt the body for the engine, count
the request — and yields an `Inference`: the leased engine, with the adapted body, to answer or stream. The dialect
translates the answer back. Nothing else talks to an engine, so a check added here holds on every route.

This module is the core's side of that contract: no web framework, no engine names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .engines.base import ENGINE_MODEL_NAME, MODE_COMPLETION, MODE_EMBEDDING, MODE_RERANK, engine_message
from .errors import CapabilityMissing, EngineRefused, ImageRejected, MalformedRequest, MediaRefused
from .images import image_parts, inline_images
from .keys import SCOPE_MANAGE

if TYPE_CHECKING:
    from .scheduling import EngineStream, Runner, Scheduler

log = logging.getLogger(__name__)



#: The endpoints of the engines' OpenAI API that requests are sent to, and the runner mode each needs.
ENDPOINT_MODES = {"chat/completions": MODE_COMPLETION, "completions": MODE_COMPLETION, "embeddings": MODE_EMBEDDING,
                  "rerank": MODE_RERANK}

#: Content parts an engine gets as they are. Anything else is refused before it reaches an engine: `audio_url` and
#: `video_url` are URLs vLLM would fetch itself (from any address, with no size cap), and unknown parts are at best
#: ignored by one engine and a 500 from another.
_PLAIN_PARTS = frozenset({"text", "image_url", "input_audio"})


@dataclass(frozen=True)
class Caller:
    """Who asks, and so what a request may change besides its own answer: a manager (the Jupyter token, a user) may
    load, unload and pin models through a request's options; an inference key may only ask."""

    name: str
    scope: str = SCOPE_MANAGE

    @property
    def may_manage(self) -> bool:
        return self.scope == SCOPE_MANAGE


#: A request made by the runner's own user (the CLI, a kernel with the token, tests of the core).
OWNER = Caller("owner")


@dataclass
class InferenceRequest:
    """A request translated into OpenAI's shape, with what the dialect knows about it besides the body."""

    #: The model as the client named it (`ai/smollm2`, `smollm2`, an id).
    model: str
    #: The engine endpoint it goes to (a key of `ENDPOINT_MODES`).
    endpoint: str
    #: OpenAI's request body (for `rerank`, the translator's engine bodies are sent with `Inference.send`).
    body: dict[str, Any] = field(default_factory=dict)
    #: The route's name in metrics and logs (`chat/completions`, `anthropic/messages`, `ollama/chat`, …).
    route: str = ""
    #: An engine the client forced (`engines/{engine}/…`, `--engine`).
    engine: str | None = None
    caller: Caller = OWNER
    #: Ollama's per-request `options.num_ctx` and `keep_alive` (seconds; negative: keep for good).
    context_size: int | None = None
    keep_alive: float | None = None
    #: The dialect must know which stop sequence ended the answer (Anthropic's `stop_sequence`).
    wants_matched_stop: bool = False
    #: Work on data (`map`, a batch): it takes only the engine slots interactive requests leave free.
    background: bool = False

    @property
    def mode(self) -> str:
        return ENDPOINT_MODES[self.endpoint]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream")) and self.endpoint in ("chat/completions", "completions")


@dataclass
class EngineReply:
    """An engine's whole answer to one request."""

    status_code: int
    content: bytes
    headers: Any = None

    def json(self) -> Any:
        return json.loads(self.content)


class Inference:
    """One request's lease on a ready engine, with the request as the engine will get it (`body`). Made by
    `ModelRunnerService.infer` only; valid inside its `async with`."""

    def __init__(self, request: InferenceRequest, runner: Runner, body: dict[str, Any], metrics: Any) -> None:
        self.request = request
        self.runner = runner
        self.body = body
        self._metrics = metrics

    @property
    def engine_headers(self) -> dict[str, str]:
        """Which engine answers, for the client (`X-Model-Runner-Engine`, `-Device`): %%chat's footer shows it."""
        return {"X-Model-Runner-Engine": self.runner.choice.engine.name,
                "X-Model-Runner-Device": self.runner.choice.device}

    @property
    def path(self) -> str:
        return f"/v1/{self.request.endpoint}"

    def adapt(self, data: bytes) -> bytes:
        """The engine's answer (a whole body, or complete SSE events) with its fields named as every engine's are."""
        return self.runner.choice.engine.adapt_response(self.request.endpoint, data)

    async def answer(self) -> EngineReply:
        """The engine's whole answer to the request (not streamed, adapted); `EngineRefused` for an error answer."""
        reply = await self.send(self.path, self.body)
        return EngineReply(reply.status_code, self.adapt(reply.content), reply.headers)

    async def send(self, path: str, body: dict[str, Any]) -> EngineReply:
        """One request to the leased engine as it is (a rerank's query groups): its answer, or `EngineRefused`."""
        response = await self.runner.request("POST", path, json=body)
        if response.status_code >= 400:
            raise EngineRefused(response.status_code, engine_message(response.content), response.content)
        return EngineReply(response.status_code, response.content, response.headers)

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[EngineStream]:
        """The engine's streamed answer, chunk by chunk as it comes (adapt complete events with `adapt`). An error
        before the stream starts is an `EngineRefused`; leaving the block closes the engine request, which stops
        the generation."""
        async with self.runner.stream("POST", self.path, json=self.body) as upstream:
            if upstream.status_code != 200:
                content = b"".join([chunk async for chunk in upstream])
                raise EngineRefused(upstream.status_code, engine_message(content), content)
            yield upstream

    async def count_prompt_tokens(self) -> int:
        """The tokens the chat request's prompt takes, through the model's own template and tokenizer."""
        return await self.runner.choice.engine.count_prompt_tokens(self.runner, self.body)

    def failed_midstream(self, message: str) -> None:
        """Count and log an engine failure after the answer's first bytes were sent (the dialect ends its stream
        with an error event)."""
        self._metrics.errors.labels("stream").inc()
        log.warning("engine failed mid-stream for %s: %s", self.request.model, (message.splitlines() or [""])[0])


def media_refusal(body: dict[str, Any]) -> str | None:
    """Why a chat body's content parts may not reach an engine (None: they may). Images are checked and inlined
    elsewhere (images.py); here, whatever an engine would fetch or misread."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("audio_url", "video_url"):
                what = kind.split("_")[0]
                return (f"This runner does not fetch {what} by URL ({kind}): the engine would download it from any "
                        f"address, with no size limit. Send audio inline as an input_audio part (base64 data).")
            if kind not in _PLAIN_PARTS:
                return (f"Unknown content part type {kind!r}; this runner takes text, image_url and input_audio "
                        "parts.")
            if kind == "input_audio":
                audio = part.get("input_audio")
                data = audio.get("data") if isinstance(audio, dict) else None
                if not isinstance(data, str) or data.startswith(("http://", "https://", "file:")):
                    return "An input_audio part carries its audio as base64 data (input_audio.data), not a URL."
    return None


def tools_refusal(body: dict[str, Any]) -> str | None:
    """What is malformed in a chat body's tools, tool choice or the tool calls of its messages (None: nothing).
    Engines answer a malformed tool with a 500 of their own (llama-server's JSON parser), and dialects that build
    tools from their own shape (Anthropic, Responses) pass what they were given: the one check is here."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools must be a list of function tools."
        for index, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            where = f"tool {index + 1}"
            if not isinstance(function, dict) or tool.get("type", "function") != "function":
                return f"{where} must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}."
            if not isinstance(function.get("name"), str) or not function["name"]:
                return f"{where} needs a name (a string)."
            if function.get("description") is not None and not isinstance(function["description"], str):
                return f"{where} ({function['name']}): description must be a string."
            if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
                return f"{where} ({function['name']}): parameters must be a JSON Schema object."
    choice = body.get("tool_choice")
    if choice is not None and not (choice in ("none", "auto", "required") or (
            isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str))):
        return ('tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": …}}.')
    for message in body.get("messages") or []:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls is None:
            continue
        if not isinstance(calls, list):
            return "A message's tool_calls must be a list."
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if (not isinstance(function, dict) or not isinstance(function.get("name"), str)
                    or not isinstance(function.get("arguments", ""), str)):
                return "Each tool call in a message needs a function name and its arguments as a JSON string."
    return None


def requires_tool_call(body: dict[str, Any]) -> bool:
    """Whether the request's contract is a tool call in the answer: tools with `tool_choice` "required" or a named
    function (OpenAI's object, or a bare name as Ollama clients send it)."""
    if not body.get("tools"):
        return False
    choice = body.get("tool_choice")
    return choice == "required" or isinstance(choice, dict) or (
        isinstance(choice, str) and choice not in ("auto", "none", "required"))


class InferenceHost(Protocol):
    """What the inference path needs of the runner that takes it (`ModelRunnerService`): its scheduler and counters,
    and its limits on the images of requests."""

    scheduler: Scheduler
    metrics: Any
    max_image_bytes: int
    image_fetch_timeout: float
    allow_private_image_urls: bool
    max_images_per_request: int
    max_image_bytes_in_flight: int | None


@contextlib.asynccontextmanager
async def infer(host: InferenceHost, request: InferenceRequest) -> AsyncIterator[Inference]:
    """THE path from a translated request to an engine; every dialect's route takes it.

    Before anything loads: the model's capabilities are checked against what the request needs (images, a
    required tool call; a reranker's or chat model's mode when its runner has to start), every media part is
    guarded (images fetched here from public addresses and inlined; audio and video URLs refused), and the
    caller's policy applied (an inference key cannot pin a model, keep it longer than the server's keep_alive,
    nor restart it with another context). Then a ready runner is leased for the length of the block, the body
    adapted for its engine, and the request counted. Failures are counted under the request's route and raised
    as `ModelRunnerError`s (`EngineRefused` for an engine's own error answer), which each dialect shapes.
    """
    route = request.route or request.endpoint
    try:
        body = await admitted_body(host, request)
        context_size, keep_alive = allowed_lifetime(host, request)
        async with host.scheduler.use(request.model, mode=request.mode, engine=request.engine,
                                      context_size=context_size, keep_alive=keep_alive,
                                      background=request.background) as runner:
            host.metrics.requests.labels(route, runner.name).inc()
            if request.endpoint != "rerank":
                body = runner.choice.engine.adapt_request(
                    request.endpoint, {**body, "model": ENGINE_MODEL_NAME}, runner.plan, launch=runner.launch,
                    wants_matched_stop=request.wants_matched_stop)
            yield Inference(request, runner, body, host.metrics)
    except Exception:
        host.metrics.errors.labels(route).inc()
        raise

async def admitted_body(host: InferenceHost, request: InferenceRequest) -> dict[str, Any]:
    """The request's body once its media are guarded and the model can do what it asks (else a 400 that says
    why, before any engine starts)."""
    body = request.body
    if request.endpoint != "chat/completions":
        return body
    refusal = media_refusal(body)
    if refusal is not None:
        raise MediaRefused(refusal)
    refusal = tools_refusal(body)
    if refusal is not None:
        raise MalformedRequest(refusal)
    images, tool_call = bool(image_parts(body)), requires_tool_call(body)
    if not images and not tool_call:
        return body

    def capability_refusal() -> tuple[str | None, str | None]:
        model, choice = host.scheduler.choose(request.model, request.engine)
        engine = choice.engine
        return (engine.image_refusal(model, request.model) if images else None,
                engine.tool_refusal(model, request.model) if tool_call else None)

    image_refusal, tool_refusal = await asyncio.to_thread(capability_refusal)
    if image_refusal is not None:
        raise ImageRejected(image_refusal)
    if tool_refusal is not None:
        raise CapabilityMissing(tool_refusal)
    if not images:
        return body
    return await inline_images(body, max_bytes=host.max_image_bytes, timeout=host.image_fetch_timeout,
                               allow_private=host.allow_private_image_urls, max_images=host.max_images_per_request,
                               max_bytes_in_flight=host.max_image_bytes_in_flight)

def allowed_lifetime(host: InferenceHost, request: InferenceRequest) -> tuple[int | None, float | None]:
    """The request's own context size and keep_alive, as far as its caller may set them. A manager's are
    honoured; an inference key's context is ignored (a new one restarts the engine under everyone's requests)
    and its keep_alive is capped at the server's (never for good), so a key can neither pin a model nor hold
    memory longer than the server's policy."""
    if request.caller.may_manage:
        return request.context_size, request.keep_alive
    keep_alive = request.keep_alive
    if keep_alive is not None:
        keep_alive = None if keep_alive < 0 else min(keep_alive, host.scheduler.keep_alive)
    if request.context_size is not None or keep_alive != request.keep_alive:
        log.info("inference key %s: its context size and keep_alive beyond the server's policy are ignored",
                 request.caller.name)
    return None, keep_alive

