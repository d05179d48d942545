"""Translation between Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) and the OpenAI chat
completions our engines serve, so the `anthropic` SDK and the tools built on it (agents, Claude Code-style clients)
work against a local model.

Pure dict reshaping (standard library, no I/O), like `ollama_translate`: the handlers in `anthropic.py` only move
bytes. Field names follow Anthropic's API reference and the `anthropic` SDK's types. Malformed or unsupported
requests raise `ValueError` with the sentence to send back as an `invalid_request_error`.

What an OpenAI answer cannot say directly:

- Which stop sequence ended the answer: each engine names it on the choice as the runner's `matched_stop` (see
  `engines.base.Engine`; the handler asks for it with `wants_matched_stop`). Without it, a stop is an `end_turn`.
- Input tokens at the start of a stream: OpenAI reports usage in the last chunk, so `message_start` says 0 and
  `message_delta` carries the real `input_tokens` (the SDK's accumulator takes it from there).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from ..sse import named_events
from .tool_calls import opens_call, parse_arguments

#: OpenAI finish reasons as Anthropic stop reasons (a matched stop sequence is `stop_sequence`, found apart).
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
#: HTTP status → Anthropic's error type (anything else is an `api_error`).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
               422: "invalid_request_error", 429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}
_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object; the SDK raises the exception class of the status (`NotFoundError` for 404) with it
    as `body`, and a stream's `error` event carries the same object."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


# -- requests --------------------------------------------------------------------------------------------------


def messages_request_to_openai(body: dict[str, Any], *, count_only: bool = False) -> dict[str, Any]:
    """An Anthropic Messages body as an OpenAI chat.completions body. With `count_only` (count_tokens) only what
    shapes the prompt is read: model, system, messages, tools and tool_choice; `max_tokens` is not required.

    `metadata`, `service_tier`, `output_config.effort` and cache-control markers have no meaning for a local engine
    and are ignored. `temperature`, `top_p` and `top_k` are read when sent (newer SDKs send them only as extra
    body fields).
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("model: Field required (the name of a pulled model, e.g. \"ai/smollm2\")")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: Field required (a list of at least one message)")
    openai: dict[str, Any] = {"model": model, "messages": [*_system(body.get("system")), *_messages(messages)]}
    if body.get("tools"):
        openai["tools"] = _tools(body["tools"])
        openai.update(_tool_choice(body.get("tool_choice"), openai["tools"]))
    if count_only:
        return openai
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("max_tokens: Field required (a whole number of tokens, at least 1)")
    openai["max_tokens"] = max_tokens
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            openai[key] = body[key]
    response_format = _output_format(body)
    if response_format is not None:
        openai["response_format"] = response_format
    openai.update(_thinking(body.get("thinking")))
    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError("stop_sequences: a list of non-empty strings")
        openai["stop"] = stop
    if body.get("stream"):
        openai["stream"] = True
        openai["stream_options"] = {"include_usage": True}  # output and input tokens for message_delta
    return openai


def _output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """Structured outputs: `output_config.format` (or the beta's top-level `output_format`), a JSON schema the answer
    must follow, as OpenAI's `json_schema` response format (which the engines enforce with a grammar)."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    fmt = fmt or body.get("output_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise ValueError("output_config.format: {\"type\": \"json_schema\", \"schema\": {...}}")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def _thinking(thinking: Any) -> dict[str, Any]:
    """Extended thinking in the terms both engines read (as Ollama's `think` is): `enabled` asks the chat template to
    think (`enable_thinking`) within `budget_tokens` (the runner's per-request budget, which each engine gets under
    its own name), `disabled` is the template's no-thinking path (`reasoning_effort: "none"`), `adaptive` leaves it
    to the model. Unset: the model's own default, as configured."""
    if thinking is None:
        return {}
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return {"reasoning_effort": "none"}
    if kind == "adaptive":
        return {}
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError("thinking.budget_tokens: a whole number of tokens")
        return {"chat_template_kwargs": {"enable_thinking": True},
                **({"reasoning_budget_tokens": budget} if budget is not None else {})}
    raise ValueError('thinking: {"type": "enabled", "budget_tokens": N}, {"type": "disabled"} or {"type": "adaptive"}')


def _system(system: Any) -> list[dict[str, Any]]:
    """`system` as a string or as text blocks (each maybe with `cache_control`): one system message."""
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        return [{"role": "system", "content": "\n".join(str(b.get("text") or "") for b in system)}]
    raise ValueError("system: a string or a list of text blocks")


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ValueError(f"messages.{i}.role: must be \"user\" or \"assistant\"")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
        elif isinstance(content, list):
            out.extend(_user_blocks(content, i) if message["role"] == "user" else [_assistant_blocks(content, i)])
        else:
            raise ValueError(f"messages.{i}.content: a string or a list of content blocks")
    return out


def _user_blocks(blocks: list[Any], i: int) -> list[dict[str, Any]]:
    """A user turn: its `tool_result` blocks become OpenAI `tool` messages, which must directly follow the assistant
    turn that made the calls, so they come first; the remaining blocks are the user's message."""
    tool_messages, parts = [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"messages.{i}.content.{j}"
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}})
        elif kind == "document":
            parts.append({"type": "text", "text": _document_text(block, where)})
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise ValueError(f"{where}.tool_use_id: Field required")
            text = _tool_result_text(block.get("content"), where)
            if block.get("is_error"):
                text = f"Error: {text}" if text else "Error"
            tool_messages.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning is not sent back to it
        else:
            raise ValueError(f"{where}: content blocks of type {kind!r} are not supported here")
    if parts or not tool_messages:
        tool_messages.append({"role": "user", "content": _collapse(parts)})
    return tool_messages


def _assistant_blocks(blocks: list[Any], i: int) -> dict[str, Any]:
    """An assistant turn: text blocks are its content, `tool_use` blocks its tool calls (arguments as JSON text)."""
    texts, calls = [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"messages.{i}.content.{j}"
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise ValueError(f"{where}: a tool_use block needs an id and a name")
            calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"], "arguments": json.dumps(block.get("input") or {})}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise ValueError(f"{where}: content blocks of type {kind!r} are not supported in an assistant turn")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string (every chat template reads that; llama-server joins parts with a newline
    too); content with images stays a list of parts."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _image_url(source: Any, where: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64" and source.get("data"):
        return f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    if isinstance(source, dict) and source.get("type") == "url" and source.get("url"):
        return str(source["url"])
    raise ValueError(f"{where}.source: an image source of type \"base64\" (media_type, data) or \"url\"")


def _document_text(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        title = block.get("title")
        return f"{title}\n\n{source.get('data') or ''}" if title else str(source.get("data") or "")
    raise ValueError(f"{where}: only plain-text documents are supported (source type \"text\"), not PDFs")


def _tool_result_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "text":
                raise ValueError(f"{where}.content: tool results may hold text blocks only (OpenAI-style engines "
                                 "take no images in tool results)")
            texts.append(str(block.get("text") or ""))
        return "\n".join(texts)
    raise ValueError(f"{where}.content: a string or a list of text blocks")


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Anthropic's client tools (`name`, `description`, `input_schema`) as OpenAI function tools. Server tools
    (web search, code execution, bash, the text editor) run on Anthropic's side and have no local counterpart."""
    if not isinstance(tools, list):
        raise ValueError("tools: a list of tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ValueError(f"tools.{i}.name: Field required")
        if tool.get("type") not in (None, "custom"):
            raise ValueError(f"tools.{i}: {tool['type']!r} is one of Anthropic's server tools, which a local model "
                             "cannot run; define it as a client tool (name, description, input_schema)")
        function: dict[str, Any] = {"name": tool["name"],
                                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """`auto` / `any` / `tool` (by name) / `none` as OpenAI's `auto` / `required` / a named function / `none`;
    `disable_parallel_tool_use` as `parallel_tool_calls: false`."""
    if choice is None:
        return {}
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise ValueError("tool_choice.type: one of \"auto\", \"any\", \"tool\" or \"none\"")
    out: dict[str, Any] = {}
    if choice["type"] == "tool":
        name = choice.get("name")
        if name not in {tool["function"]["name"] for tool in tools}:
            raise ValueError(f"tool_choice.name: {name!r} is not among the tools")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice["type"]]
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# -- responses -------------------------------------------------------------------------------------------------


def message_from_openai(model: str, completion: dict[str, Any], *, message_id: str | None = None) -> dict[str, Any]:
    """A whole OpenAI chat completion as an Anthropic Message (ValueError for a tool call whose arguments are not
    a JSON object: Anthropic's `input` is an object)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": tool_use_id(call.get("id")), "name": function.get("name") or "",
                        "input": parse_arguments(function.get("name") or "", function.get("arguments"))})
    stop_reason, stop_sequence = _stop(choice.get("finish_reason"), _matched_stop(choice))
    if any(block["type"] == "tool_use" for block in content) and stop_reason == "end_turn":
        stop_reason = "tool_use"
    usage = completion.get("usage") or {}
    return {"id": message_id or new_message_id(), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": {"input_tokens": int(usage.get("prompt_tokens") or 0),
                      "output_tokens": int(usage.get("completion_tokens") or 0)}}


def tool_use_id(engine_id: Any) -> str:
    """The engine's tool-call id when Anthropic would accept it (clients send it back in `tool_result`), else a new
    one of Anthropic's form."""
    if isinstance(engine_id, str) and _TOOL_ID.fullmatch(engine_id):
        return engine_id
    return "toolu_" + secrets.token_hex(12)




def _reasoning(message_or_delta: dict[str, Any]) -> str:
    """The model's thinking, as every engine names it for the runner (`reasoning_content`)."""
    value = message_or_delta.get("reasoning_content")
    return value if isinstance(value, str) else ""


def _matched_stop(choice: dict[str, Any]) -> str | None:
    """The stop sequence that ended the choice, when the engine says (`matched_stop`)."""
    matched = choice.get("matched_stop")
    return matched if isinstance(matched, str) and matched else None


def _stop(finish_reason: Any, matched: str | None) -> tuple[str, str | None]:
    if matched and finish_reason in (None, "stop"):
        return "stop_sequence", matched
    return STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


class MessageStream:
    """Turns an engine's OpenAI stream (parsed SSE `data:` objects) into Anthropic's stream events.

    Anthropic's stream is a sequence of content blocks, each opened, filled by deltas and closed, one at a time
    (`content_block_start`, `content_block_delta`…, `content_block_stop`), inside `message_start` … `message_stop`.
    OpenAI's chunks interleave kinds freely, so this keeps the open block and switches when the kind changes:
    reasoning → a `thinking` block, text → a `text` block, each tool call (by its OpenAI index) → a `tool_use`
    block whose arguments arrive as `input_json_delta` fragments.
    """

    def __init__(self, model: str, *, message_id: str | None = None) -> None:
        self.model = model
        self.message_id = message_id or new_message_id()
        self._index = -1
        self._open: str | None = None  # "text", "thinking", or "tool:<openai index>"
        self._tools_seen: set[int] = set()
        self._finish_reason: str | None = None
        self._matched: str | None = None
        self._usage: dict[str, Any] = {}
        self._pieces = 0
        self._has_tool_use = False

    def start(self) -> list[dict[str, Any]]:
        """`message_start` (empty content, usage still unknown) and a `ping`, sent before the first token."""
        message = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events for one chunk; ValueError when the engine reports an error in the stream."""
        if "error" in chunk:
            error = chunk["error"]
            raise ValueError(str(error.get("message", error) if isinstance(error, dict) else error))
        self._usage = chunk.get("usage") or self._usage
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            self._finish_reason = choice.get("finish_reason") or self._finish_reason
            self._matched = self._matched or _matched_stop(choice)  # on the last chunks
            delta = choice.get("delta") or {}
            reasoning = _reasoning(delta)
            if reasoning:
                events += self._switch("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            if delta.get("content"):
                self._pieces += 1
                events += self._switch("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        function = call.get("function") or {}
        events = []
        if starts := opens_call(call, self._open, self._tools_seen):
            self._has_tool_use = True
            events += self._switch(starts, {"type": "tool_use", "id": tool_use_id(call.get("id")),
                                            "name": function.get("name") or "", "input": {}})
        if isinstance(function.get("arguments"), str) and function["arguments"]:
            events.append(self._delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
        return events

    def _switch(self, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        if self._open == kind:
            return []
        events = self._close()
        self._index += 1
        self._open = kind
        return [*events, {"type": "content_block_start", "index": self._index, "content_block": block}]

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    def fail(self, status: int, message: str) -> list[dict[str, Any]]:
        """An engine failure mid-stream: Anthropic's `error` event (the SDK raises it as an APIError)."""
        return [error_body(status, message)]

    def finish(self) -> list[dict[str, Any]]:
        """Close the open block; `message_delta` with the stop reason and the usage; `message_stop`."""
        stop_reason, stop_sequence = _stop(self._finish_reason, self._matched)
        if self._has_tool_use and stop_reason == "end_turn":
            stop_reason = "tool_use"
        usage = {"output_tokens": int(self._usage.get("completion_tokens") or self._pieces)}
        if self._usage.get("prompt_tokens") is not None:
            usage["input_tokens"] = int(self._usage["prompt_tokens"])
        return [*self._close(),
                {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                 "usage": usage},
                {"type": "message_stop"}]


#: The stream's wire format: events named by their type (one encoder, in sse.py).
sse = named_events
