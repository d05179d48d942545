"""Translation between Ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/ps`, `/api/show`) and the
OpenAI-compatible API of our engines (llama.cpp's and vLLM's servers).

Pure dict reshaping (standard library, no I/O), so the handlers stay thin and every mapping is tested in one
place. Field names follow Ollama's docs/api.md and the `ollama` client's pydantic models. Malformed or
unsupported requests raise `ValueError` with the sentence to send back in `error_body`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ..images import sniff_media_type
from ..scheduling.settings import InvalidSetting, parse_keep_alive
from .tool_calls import parse_arguments

Kind = Literal["chat", "generate"]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

# Ollama options that mean the same under the same name in OpenAI's API or in both engines' extensions
# (llama.cpp and vLLM both accept `top_k` and `min_p` beside the OpenAI fields).
_SAME_OPTIONS = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty")
# Go's largest time.Duration: what Ollama adds to "now" for a model kept loaded forever (so a date in ~2318).
_FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)
#: The `think` levels Ollama accepts besides true and false (gpt-oss's reasoning efforts).
_THINK_LEVELS = ("low", "medium", "high")
#: What a chat template of a thinking model contains (a think block, a thinking switch, harmony's channels).
_THINKING_MARKERS = ("<think>", "enable_thinking", "reasoning_content", "[THINK]", "<|channel|>")


def error_body(message: str) -> dict[str, str]:
    """Ollama's error shape; the `ollama` client raises `ResponseError(message)` from it, even mid-stream."""
    return {"error": message}


def keep_alive_seconds(value: Any) -> float | None:
    """A request's `keep_alive` in seconds (-1: keep loaded for good), or None when it names none (the model's own
    setting then applies). Parsed by the runner's one keep_alive parser, which reads Ollama's Go durations."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except InvalidSetting as exc:
        raise ValueError(str(exc)) from None


def context_size(body: dict[str, Any]) -> int | None:
    """`options.num_ctx`: the context the request wants the model loaded with (None: no wish)."""
    options = body.get("options") or {}
    value = options.get("num_ctx") if isinstance(options, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"options.num_ctx must be a positive whole number of tokens, not {value!r}")
    return value


def chat_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Ollama `/api/chat` body as an OpenAI chat.completions body (`keep_alive` is the caller's business)."""
    openai = {"model": _model(body), "messages": _messages(body.get("messages") or []), **_sampling(body),
              **_thinking(body)}
    if body.get("tools"):
        openai["tools"] = body["tools"]  # Ollama's tool definitions already have OpenAI's shape
        choice = _tool_choice(body)
        if choice is not None:
            openai["tool_choice"] = choice
    return _with_stream(openai, body)


def _tool_choice(body: dict[str, Any]) -> Any:
    """Ollama has no `tool_choice`: the model decides. We read OpenAI's from `options.tool_choice` (an extension that
    Ollama itself ignores): "auto", "none", "required", or a function name that must be called."""
    options = body.get("options") or {}
    choice = options.get("tool_choice") if isinstance(options, dict) else None
    if choice is None:
        return None
    if not isinstance(choice, str) or not choice:
        raise ValueError("options.tool_choice must be 'auto', 'none', 'required' or the name of a function")
    if choice in ("auto", "none", "required"):
        return choice
    names = {(t.get("function") or {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    if choice not in names:
        raise ValueError(f"options.tool_choice names {choice!r}, which is not among the tools")
    return {"type": "function", "function": {"name": choice}}


def generate_request_to_openai(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An Ollama `/api/generate` body as `(engine path, OpenAI body)`. Ordinary prompts go to chat.completions so
    the engine applies the chat template, as Ollama applies its TEMPLATE; `raw` prompts are already templated,
    so they go to plain completions untouched (and, as in Ollama, without the `system` prompt)."""
    if body.get("suffix"):
        raise ValueError("suffix (fill-in-the-middle) is not supported")
    prompt = body.get("prompt") or ""
    images = _image_parts(body.get("images"), "images")
    if body.get("raw"):
        if images:
            raise ValueError("images need a templated prompt: a raw prompt cannot place them")
        path, openai = COMPLETIONS_PATH, {"model": _model(body), "prompt": prompt}
    else:
        system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
        user = {"role": "user", "content": _with_images(prompt, images)}
        path, openai = CHAT_PATH, {"model": _model(body), "messages": [*system, user]}
    thinking = _thinking(body) if path == CHAT_PATH else {}  # a raw prompt has no template to switch thinking in
    return path, _with_stream({**openai, **_sampling(body), **thinking}, body)


def _thinking(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama's `think` in the OpenAI terms both engines read: `false` is `reasoning_effort: "none"` (the template's
    no-thinking path), `true` asks the template to think (`chat_template_kwargs.enable_thinking`), and gpt-oss-style
    levels (`"low"`, `"medium"`, `"high"`) are reasoning efforts. Unset: the model's own default."""
    think = body.get("think")
    if think is None:
        return {}
    if think is False:
        return {"reasoning_effort": "none"}
    if think is True:
        return {"chat_template_kwargs": {"enable_thinking": True}}
    if think in _THINK_LEVELS:
        return {"reasoning_effort": think}
    raise ValueError(f"think must be true, false, or one of {', '.join(map(repr, _THINK_LEVELS))}, not {think!r}")


def _model(body: dict[str, Any]) -> str:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ValueError("model is required")
    return body["model"]


def _with_stream(openai: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Ollama streams unless told `"stream": false`; usage is asked for so the final object can count tokens."""
    stream = body.get("stream") is not False
    openai["stream"] = stream
    if stream:
        openai["stream_options"] = {"include_usage": True}
    return openai


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama `options` and `format` as OpenAI sampling fields; options with no counterpart are ignored.

    `num_ctx` is a load-time setting (see `context_size`), not a sampling field. Ollama's
    `repeat_penalty` is multiplicative (1.0 = off) while OpenAI's `frequency_penalty` is additive (0 = off), so
    it is not mapped onto it; it is sent under llama.cpp's name (`repeat_penalty`) and vLLM's
    (`repetition_penalty`), which mean the same, and each engine ignores the name it does not know.
    `options.grammar` (not Ollama's) is llama-server's GBNF `grammar`, passed on for GGUF models.
    """
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError("options must be an object")
    out = {key: options[key] for key in _SAME_OPTIONS if options.get(key) is not None}
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    num_predict = options.get("num_predict")
    if isinstance(num_predict, int) and num_predict > 0:  # -1 (unlimited) and -2 (fill context): engine default
        out["max_tokens"] = num_predict
    if options.get("repeat_penalty") is not None:
        out["repeat_penalty"] = out["repetition_penalty"] = options["repeat_penalty"]
    if isinstance(options.get("grammar"), str) and options["grammar"]:
        out["grammar"] = options["grammar"]  # llama.cpp's GBNF grammar (an extension, like `tool_choice` here)
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt}}
    elif fmt not in (None, ""):
        raise ValueError(f"format must be 'json' or a JSON schema object, not {fmt!r}")
    return out


def _messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI's: tool-call arguments become JSON strings and calls get ids. Ollama names a
    tool result by `tool_name` only, so it is linked to the `tool_call_id` of the latest call of that function."""
    if not isinstance(messages, list):
        raise ValueError("messages must be a list")
    out, call_ids = [], {}
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"message {i} needs a role of system, user, assistant or tool")
        images = _image_parts(message.get("images"), f"message {i}'s images")
        converted: dict[str, Any] = {"role": message["role"], "content": _with_images(message.get("content") or "",
                                                                                      images)}
        if message["role"] == "assistant" and message.get("tool_calls"):
            converted["tool_calls"] = []
            for j, call in enumerate(message["tool_calls"]):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise ValueError(f"message {i} has a tool call without a function object")
                name, arguments = function.get("name") or "", function.get("arguments") or {}
                call_ids[name] = call.get("id") or f"call_{i}_{j}"
                converted["tool_calls"].append({"id": call_ids[name], "type": "function", "function": {
                    "name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
        if message["role"] == "tool":
            call_id = message.get("tool_call_id") or call_ids.get(message.get("tool_name") or "")
            if call_id:
                converted["tool_call_id"] = call_id
        out.append(converted)
    return out


def _image_parts(images: Any, where: str) -> list[dict[str, Any]]:
    """Ollama's images (base64 strings, no data: prefix) as OpenAI `image_url` parts with data URLs; the media type
    is read from the image's first bytes, since Ollama's API does not carry one."""
    if not images:
        return []
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise ValueError(f"{where} must be a list of base64-encoded images")
    parts = []
    for n, image in enumerate(images):
        if image.startswith("data:"):  # already a data URL: the runner checks it like OpenAI's
            url = image
        else:
            encoded = "".join(image.split())
            try:
                head = base64.b64decode(encoded[:24] + "=" * (-len(encoded[:24]) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}[{n}] is not base64-encoded image data") from None
            url = f"data:{sniff_media_type(head) or 'image/png'};base64,{encoded}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _with_images(text: str, images: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A message's content: the text alone, or OpenAI content parts (the text, then the images) when it has any."""
    if not images:
        return text
    return [{"type": "text", "text": text}, *images] if text else images


class OllamaStream:
    """Turns an engine's OpenAI stream (parsed SSE `data:` objects) into Ollama's NDJSON objects.

    Durations come from our clock (prompt evaluation until the first token, generation after it) unless a chunk
    carries the engine's own measurements (`generation_stats`). `clock` is injectable for tests.
    """

    def __init__(self, model: str, kind: Kind, started: float, *, clock: Callable[[], float] = time.monotonic):
        self.model, self.kind, self.started, self._clock = model, kind, started, clock
        self._first_token: float | None = None
        self._finish_reason: str | None = None
        self._usage, self._stats, self._pieces = {}, {}, 0
        self._tool_calls: dict[int, dict[str, str]] = {}

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The Ollama objects to send for one chunk: one per non-empty text delta, none for role/usage chunks."""
        self._usage = chunk.get("usage") or self._usage
        self._stats = chunk.get("generation_stats") or self._stats
        out = []
        for choice in chunk.get("choices") or []:
            self._finish_reason = choice.get("finish_reason") or self._finish_reason
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or []:
                self._started_generating()
                slot = self._tool_calls.setdefault(call.get("index") or 0, {"name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["name"] = slot["name"] or function.get("name") or ""  # sent once, with the first fragment
                if isinstance(function.get("arguments"), str):
                    slot["arguments"] += function["arguments"]
            thinking = _reasoning(delta)
            if thinking:
                self._started_generating()
                self._pieces += 1
                out.append(_ollama_object(self.model, self.kind, "", thinking))
            text = choice.get("text") if "text" in choice else delta.get("content")
            if text:
                self._started_generating()
                self._pieces += 1
                out.append(_ollama_object(self.model, self.kind, text))
        return out

    def finish(self) -> dict[str, Any]:
        """The closing object: `done`, reason, counts, durations and the accumulated tool calls (ValueError if
        a call's arguments are not a JSON object, since Ollama clients expect a dict)."""
        final = _ollama_object(self.model, self.kind, "")
        if self.kind == "chat" and self._tool_calls:
            calls = [_tool_call(c["name"], c["arguments"]) for _, c in sorted(self._tool_calls.items())]
            final["message"]["tool_calls"] = calls
        final.update(_final_fields(self.kind, self._finish_reason, self._usage, self._stats, self.started,
                                   self._first_token, self._clock(), self._pieces))
        return final

    def _started_generating(self) -> None:
        if self._first_token is None:
            self._first_token = self._clock()


def chat_response_to_ollama(model: str, response: dict[str, Any], started: float, kind: Kind, *,
                            clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """A whole OpenAI (chat or text) completion as Ollama's `"stream": false` object. With no first-token time,
    the whole request counts as generation unless the engine's `generation_stats` say better."""
    choice = (response.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    obj = _ollama_object(model, kind, (choice.get("text") if "text" in choice else message.get("content")) or "",
                         _reasoning(message))
    calls = [_tool_call((c.get("function") or {}).get("name") or "", (c.get("function") or {}).get("arguments"))
             for c in message.get("tool_calls") or []]
    if kind == "chat" and calls:
        obj["message"]["tool_calls"] = calls
    obj.update(_final_fields(kind, choice.get("finish_reason"), response.get("usage") or {},
                             response.get("generation_stats") or {}, started, started, clock(), 0))
    return obj


def _ollama_object(model: str, kind: Kind, text: str, thinking: str | None = None) -> dict[str, Any]:
    """One Ollama answer object: the text, and the thinking apart from it (`message.thinking` in a chat, `thinking`
    beside `response` in a generate) when there is some, as Ollama sends it."""
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        body: dict[str, Any] = {"message": message}
    else:
        body = {"response": text, **({"thinking": thinking} if thinking else {})}
    return {"model": model, "created_at": _rfc3339(), **body, "done": False}


def _reasoning(message: dict[str, Any]) -> str | None:
    """The thinking in an OpenAI message or delta, as every engine names it for the runner (`reasoning_content`)."""
    text = message.get("reasoning_content")
    return text if isinstance(text, str) and text else None


def _final_fields(kind: Kind, finish_reason: str | None, usage: dict[str, Any], stats: dict[str, Any],
                  started: float, first_token: float | None, now: float, pieces: int) -> dict[str, Any]:
    """Ollama's closing statistics. Durations are whole nanoseconds and at least 1, so clients that divide
    counts by durations (tokens per second) never divide by zero. Without usage, each streamed piece counts
    as one token, which is what llama.cpp and vLLM stream."""
    first = now if first_token is None else first_token
    prompt_s, eval_s = first - started, now - first
    if stats.get("prompt_seconds") is not None and stats.get("generation_seconds") is not None:
        prompt_s, eval_s = stats["prompt_seconds"], stats["generation_seconds"]
    return {
        "done": True,
        "done_reason": "length" if finish_reason == "length" else "stop",  # "tool_calls" is "stop" in Ollama
        "total_duration": _ns(now - started),
        "load_duration": 0,
        "prompt_eval_count": int(usage.get("prompt_tokens") or stats.get("prompt_tokens") or 0),
        "prompt_eval_duration": _ns(prompt_s),
        "eval_count": int(usage.get("completion_tokens") or stats.get("completion_tokens") or pieces),
        "eval_duration": _ns(eval_s),
        **({"context": []} if kind == "generate" else {}),  # no token context to offer back
    }


def _ns(seconds: float) -> int:
    return max(1, round(seconds * 1e9))


def _tool_call(name: str, arguments: Any) -> dict[str, Any]:
    """OpenAI's tool call (arguments as a JSON string) in Ollama's shape (arguments as an object)."""
    return {"function": {"name": name, "arguments": parse_arguments(name, arguments)}}


def tags_entry(name: str, model_json: dict[str, Any]) -> dict[str, Any]:
    """One model of `/api/tags`, from our store's model JSON (`created` is the artifact's unix time)."""
    return {"name": name, "model": name, "modified_at": _rfc3339(model_json.get("created") or 0),
            "size": int(model_json.get("size") or 0), "digest": _digest(model_json), "details": _details(model_json)}


def ps_entry(name: str, model_json: dict[str, Any], runner_status: dict[str, Any]) -> dict[str, Any]:
    """One model of `/api/ps`: `size` is the runner's memory and it expires when the runner says (`expires_at`);
    `size_vram` is 0 because we do not know how the engine split the model between host and GPU memory."""
    expires_at = runner_status.get("expires_at")
    keep = runner_status.get("keep_alive")
    if expires_at is not None:
        expires = datetime.fromtimestamp(expires_at, UTC)
    else:  # in use, or kept for good: due keep_alive after its last use, or never
        last_used = datetime.fromtimestamp(runner_status.get("last_used") or time.time(), UTC)
        forever = keep is None or keep < 0 or runner_status.get("pinned")
        expires = last_used + (_FOREVER if forever else timedelta(seconds=min(keep, _FOREVER.total_seconds())))
    entry = {"name": name, "model": name, "size": int(runner_status.get("memory") or model_json.get("size") or 0),
             "digest": _digest(model_json), "details": _details(model_json), "expires_at": _rfc3339(expires),
             "size_vram": 0}
    context_size = (model_json.get("config") or {}).get("context_size")
    if context_size:
        entry["context_length"] = context_size
    return entry


def show_response(model_json: dict[str, Any], template: str | None, raw_config: dict[str, Any]) -> dict[str, Any]:
    """`/api/show`: details, chat template, and `model_info` from the config blob's GGUF metadata; `capabilities`
    from the template and the model's files (see `_capabilities`)."""
    name = (model_json.get("tags") or [model_json.get("id") or ""])[0]
    modelfile = f"# Modelfile generated by jupyter-modelrunner\nFROM {name}\n"
    if template:
        modelfile += f'TEMPLATE """{template}"""\n'
    return {"modelfile": modelfile, "parameters": "", "template": template or "", "details": _details(model_json),
            "model_info": _model_info(model_json.get("config") or {}, raw_config),
            "capabilities": _capabilities(template, multimodal=bool(model_json.get("multimodal"))),
            "modified_at": _rfc3339(model_json.get("created") or 0)}


def _capabilities(template: str | None, *, multimodal: bool) -> list[str]:
    """Ollama's capabilities: "tools" when the chat template handles tools, "thinking" when it has a thinking block or
    switch, "vision" when the model has a multimodal projector (clients check these before offering tool calling,
    `think` or image upload)."""
    capabilities = ["completion"]
    if template and "tools" in template:
        capabilities.append("tools")
    if template and any(marker in template for marker in _THINKING_MARKERS):
        capabilities.append("thinking")
    if multimodal:
        capabilities.append("vision")
    return capabilities


def _details(model_json: dict[str, Any]) -> dict[str, Any]:
    config = model_json.get("config") or {}
    family = config.get("architecture") or ""
    return {"parent_model": "", "format": config.get("format") or model_json.get("format") or "", "family": family,
            "families": [family] if family else None, "parameter_size": config.get("parameters") or "",
            "quantization_level": config.get("quantization") or ""}


def _digest(model_json: dict[str, Any]) -> str:
    return str(model_json.get("id") or "").removeprefix("sha256:")


def _model_info(config: dict[str, Any], raw_config: dict[str, Any]) -> dict[str, Any]:
    """GGUF metadata (under `config.gguf`, all strings, in our blobs; or a flat dict of dotted keys) as Ollama
    shows it: numbers as numbers, arrays (token lists) left empty as Ollama does without `verbose`."""
    inner = raw_config.get("config")
    gguf = inner.get("gguf") if isinstance(inner, dict) else None
    if not isinstance(gguf, dict):
        gguf = {key: value for key, value in raw_config.items() if "." in key}
    info = {key: [] if isinstance(value, list) else _number(key, value) for key, value in gguf.items()}
    architecture = config.get("architecture")
    if architecture:
        info.setdefault("general.architecture", architecture)
        if config.get("context_size"):
            info.setdefault(f"{architecture}.context_length", config["context_size"])
    return dict(sorted(info.items()))


def _number(key: str, value: Any) -> Any:
    """Integers are always numbers; decimals only outside `general.*`, where strings like versions live."""
    if not isinstance(value, str):
        return value
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if not key.startswith("general.") and re.fullmatch(r"-?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", value, re.IGNORECASE):
        return float(value)
    return value


def _rfc3339(moment: datetime | float | None = None) -> str:
    """RFC 3339 in UTC with a `Z`, which Go and pydantic both parse."""
    if moment is None:
        moment = datetime.now(UTC)
    elif not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
