"""Translation between OpenAI's Responses API (`/v1/responses`) and the chat completions our engines serve, and the
bounded store that lets a response be retrieved, deleted and continued (`previous_response_id`).

Pure dict reshaping (standard library, no I/O), like `ollama_translate`: the handlers in `responses.py` only move
bytes. Field and event names follow OpenAI's API reference and the `openai` SDK's types. Malformed or unsupported
requests raise `ValueError` with the sentence to send back as a 400.

A Responses conversation is server-side state: a request that names `previous_response_id` continues from that
response's input and output (not its `instructions`, as OpenAI does). So each stored response keeps, beside the
response object, its conversation as chat messages, ready to prefix the next request.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..sse import named_events
from .tool_calls import opens_call

#: How many stored responses the runner keeps; the least recently used goes first.
STORE_LIMIT = 1000
#: The bytes (of their JSON) the stored responses may take together: a chain of long conversations costs each link
#: its whole history, and a client storing on purpose must not grow the runner's memory without end.
STORE_BYTES = 64 * 1024 * 1024


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# -- the store ---------------------------------------------------------------------------------------------------


@dataclass
class StoredResponse:
    """A stored response: what `GET responses/{id}` answers, the conversation up to and including its output (chat
    messages, for the next `previous_response_id`), and its input items (for `GET responses/{id}/input_items`)."""

    response: dict[str, Any]
    conversation: list[dict[str, Any]]
    input_items: list[dict[str, Any]] = field(default_factory=list)
    #: Who created it (a key's or a user's name): only they see it, continue from it or delete it.
    owner: str = ""

    @property
    def size(self) -> int:
        """Its bytes as JSON, what the store's byte budget counts."""
        return len(json.dumps([self.response, self.conversation, self.input_items]))


class ResponseStore:
    """Stored responses in memory, at most `limit` and `max_bytes` together, least recently used evicted first.
    Each is visible to its owner only: an id another client learned (a log, a shared notebook) opens nothing.
    Nothing survives a restart, as nothing promised it."""

    def __init__(self, limit: int = STORE_LIMIT, max_bytes: int = STORE_BYTES) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredResponse) -> bool:
        """Keep `entry` (evicting the least recently used to make room); False when it alone is over the budget."""
        size = entry.size
        if size > self.max_bytes:
            return False
        self._drop(entry.response["id"])
        self._entries[entry.response["id"]] = (entry, size)
        self.bytes += size
        while len(self._entries) > self.limit or self.bytes > self.max_bytes:
            _id, (_entry, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
        return True

    def get(self, response_id: str, owner: str = "") -> StoredResponse | None:
        found = self._entries.get(response_id)
        if found is None or found[0].owner != owner:
            return None
        self._entries.move_to_end(response_id)
        return found[0]

    def delete(self, response_id: str, owner: str = "") -> bool:
        return self.get(response_id, owner) is not None and self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        found = self._entries.pop(response_id, None)
        if found is not None:
            self.bytes -= found[1]
        return found is not None


# -- requests ----------------------------------------------------------------------------------------------------


@dataclass
class Translated:
    """A Responses request as the engine's chat request, and what storing its answer needs."""

    chat: dict[str, Any]
    #: The conversation without `instructions`: the previous response's, then this input.
    conversation: list[dict[str, Any]]
    input_items: list[dict[str, Any]]


def request_to_openai(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> Translated:
    """A Responses create body as an OpenAI chat.completions body; `history` is the stored conversation of
    `previous_response_id` (the caller looks it up)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("model is required (the name of a pulled model, e.g. \"ai/smollm2\")")
    for unsupported in ("background", "conversation"):
        if body.get(unsupported):
            raise ValueError(f"{unsupported} is not supported by the model runner")
    if "input" not in body or body["input"] in (None, "", []):
        raise ValueError("input is required: a string or a list of input items")
    items = _input_items(body["input"])
    conversation = [*(history or []), *_messages(items)]
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ValueError("instructions must be a string")
    for key in ("reasoning", "text", "metadata"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise ValueError(f"{key} must be an object")
    system = [{"role": "system", "content": instructions}] if instructions else []
    chat: dict[str, Any] = {"model": model, "messages": [*system, *conversation]}
    if body.get("max_output_tokens") is not None:
        value = body["max_output_tokens"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("max_output_tokens must be a whole number of tokens, at least 1")
        chat["max_tokens"] = value
    for key in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(key) is not None:
            chat[key] = body[key]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = _tool_choice(body["tool_choice"], chat["tools"])
    response_format = _text_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return Translated(chat, conversation, items)


def _input_items(value: Any) -> list[dict[str, Any]]:
    """`input` as a list of items, each with an id (what `input_items` lists): a string is one user message."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise ValueError("input must be a string or a list of input items")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"input[{i}] must be an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ValueError(f"input[{i}].role must be user, assistant, system or developer")
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
            if not isinstance(content, list):
                raise ValueError(f"input[{i}].content must be a string or a list of content parts")
            items.append({"type": "message", "id": item.get("id") or new_id("msg"), "role": role,
                          "content": content, "status": item.get("status") or "completed"})
        elif kind in ("function_call", "function_call_output"):
            if not isinstance(item.get("call_id"), str):
                raise ValueError(f"input[{i}].call_id is required")
            items.append({**item, "id": item.get("id") or new_id("fc" if kind == "function_call" else "fco")})
        elif kind == "reasoning":
            items.append(item)
        else:
            raise ValueError(f"input[{i}]: items of type {kind!r} are not supported by the model runner")
    return items


def _messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as chat messages. A `function_call` joins the assistant turn before it (a turn's text and its
    calls are one message to chat templates); a `function_call_output` is a `tool` message."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if item["type"] == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _content(item["content"], i)})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or "{}"}}
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item["type"] == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output if isinstance(output, list) else [], i)
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        # reasoning items: the model's earlier reasoning is not sent back to it
    return out


def _content(parts: list[Any], i: int) -> str | list[dict[str, Any]]:
    """Content parts as chat content: one string when all are text (every template reads that), else parts."""
    converted = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            converted.append({"type": "text", "text": str(part.get("text") or part.get("refusal") or "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            converted.append({"type": "image_url", "image_url": image})
        else:
            raise ValueError(f"input[{i}]: content parts of type {kind!r} are not supported (text, and images by "
                             "image_url, are)")
    if all(part["type"] == "text" for part in converted):
        return "\n".join(part["text"] for part in converted)
    return converted


def _text_of(parts: list[Any], i: int) -> str:
    content = _content(parts, i)
    if not isinstance(content, str):
        raise ValueError(f"input[{i}]: a function call's output may hold text only")
    return content


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Function tools (`{"type": "function", "name", "parameters", ...}`, flat in the Responses API) as chat tools.
    Hosted tools (web search, file search, code interpreter...) run on OpenAI's side."""
    if not isinstance(tools, list):
        raise ValueError("tools must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else tool
            raise ValueError(f"tools[{i}]: {kind!r} tools are hosted by OpenAI; the model runner calls function tools")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ValueError(f"tools[{i}].name is required")
        function = {key: tool[key] for key in ("name", "description", "parameters", "strict")
                    if tool.get(key) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        if choice.get("name") not in {tool["function"]["name"] for tool in tools}:
            raise ValueError(f"tool_choice names {choice.get('name')!r}, which is not among the tools")
        return {"type": "function", "function": {"name": choice["name"]}}
    raise ValueError("tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": ...}")


def _text_format(text: Any) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format`: `json_schema` (flat here, nested under `json_schema` in chat) or
    `json_object`; `text` is the default and needs nothing."""
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {key: fmt[key] for key in ("name", "schema", "strict", "description") if fmt.get(key) is not None}
        schema.setdefault("name", "output")
        return {"type": "json_schema", "json_schema": schema}
    raise ValueError("text.format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                     "{\"type\": \"json_schema\", \"name\": ..., \"schema\": {...}}")


# -- responses ---------------------------------------------------------------------------------------------------


def new_response(body: dict[str, Any], *, response_id: str | None = None,
                 created_at: float | None = None) -> dict[str, Any]:
    """The response object before any output (`in_progress`), echoing the request's settings as OpenAI does."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    return {
        "id": response_id or new_id("resp"), "object": "response",
        "created_at": int(created_at if created_at is not None else time.time()),
        "status": "in_progress", "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"), "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "store": body.get("store", True) is not False, "temperature": body.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": body.get("top_p"), "truncation": "disabled",
        "usage": None, "user": body.get("user"), "metadata": body.get("metadata") or {},
    }


def response_from_openai(base: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """A whole chat completion as the finished response: output items (reasoning, message, function calls),
    status (`incomplete` when `max_output_tokens` cut it short) and usage."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    incomplete = choice.get("finish_reason") == "length"
    status = "incomplete" if incomplete else "completed"
    output = []
    reasoning = _reasoning(message)
    if reasoning:
        output.append(_reasoning_item(new_id("rs"), reasoning, "completed"))
    if message.get("content"):
        output.append(_message_item(new_id("msg"), message["content"], status))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append({"type": "function_call", "id": new_id("fc"), "call_id": call.get("id") or new_id("call"),
                       "name": function.get("name") or "", "arguments": function.get("arguments") or "",
                       "status": "completed"})
    return _finished(base, output, incomplete, completion.get("usage") or {}, 0)


def assistant_message(response: dict[str, Any]) -> dict[str, Any]:
    """A response's output as the assistant turn of the conversation that the next response continues."""
    text = "".join(part.get("text") or "" for item in response["output"] if item["type"] == "message"
                   for part in item["content"])
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"] or "{}"}}
             for item in response["output"] if item["type"] == "function_call"]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def deleted(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response.deleted", "deleted": True}


def input_items_page(items: list[dict[str, Any]], *, order: str = "desc") -> dict[str, Any]:
    """`GET responses/{id}/input_items`: OpenAI's list, newest first unless `order=asc`."""
    data = list(reversed(items)) if order == "desc" else list(items)
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": False}


def input_tokens(count: int) -> dict[str, Any]:
    """`POST responses/input_tokens`: the prompt's size before anything is generated."""
    return {"object": "response.input_tokens", "input_tokens": count}


def _finished(base: dict[str, Any], output: list[dict[str, Any]], incomplete: bool, usage: dict[str, Any],
              pieces: int) -> dict[str, Any]:
    prompt, generated = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or pieces)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {**base, "status": "incomplete" if incomplete else "completed", "output": output,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "completed_at": None if incomplete else int(time.time()),
            "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": int(cached)},
                      "output_tokens": generated, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": prompt + generated}}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [_text_part(text)]}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}


def _reasoning(message_or_delta: dict[str, Any]) -> str:
    """The model's thinking, as every engine names it for the runner (`reasoning_content`)."""
    value = message_or_delta.get("reasoning_content")
    return value if isinstance(value, str) else ""


class ResponseStream:
    """Turns an engine's OpenAI stream (parsed SSE `data:` objects) into the Responses API's events, each with its
    `sequence_number`: `response.created` and `response.in_progress`; for each output item `output_item.added`,
    its content part and deltas (`output_text.delta`, `reasoning_text.delta`, `function_call_arguments.delta`),
    their `.done` events and `output_item.done`; and `response.completed` (or `.incomplete`, or `.failed`).

    One output item is open at a time, as in OpenAI's streams: reasoning, then the message, then each tool call
    (by its OpenAI index). Events carry copies of the items, so a caller may keep them.
    """

    def __init__(self, base: dict[str, Any]) -> None:
        self.response = copy.deepcopy(base)
        self._sequence = 0
        self._open: str | None = None  # "reasoning", "message", or "tool:<openai index>"
        self._tools_seen: set[int] = set()
        self._text = ""
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}
        self._pieces = 0

    @property
    def finished(self) -> bool:
        return self.response["status"] in ("completed", "incomplete")

    def start(self) -> list[dict[str, Any]]:
        snapshot = copy.deepcopy(self.response)
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=copy.deepcopy(snapshot))]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events for one chunk; ValueError when the engine reports an error in the stream."""
        if "error" in chunk:
            error = chunk["error"]
            raise ValueError(str(error.get("message", error) if isinstance(error, dict) else error))
        self._usage = chunk.get("usage") or self._usage
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            self._finish_reason = choice.get("finish_reason") or self._finish_reason
            delta = choice.get("delta") or {}
            reasoning = _reasoning(delta)
            if reasoning:
                events += self._switch("reasoning", _reasoning_item(new_id("rs"), "", "in_progress"))
                events.append(self._text_delta("response.reasoning_text.delta", reasoning))
            if delta.get("content"):
                self._pieces += 1
                events += self._switch("message", {**_message_item(new_id("msg"), "", "in_progress"), "content": []})
                events.append(self._text_delta("response.output_text.delta", delta["content"], logprobs=[]))
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close the open item and finish the response (`incomplete` when it ran out of `max_output_tokens`)."""
        incomplete = self._finish_reason == "length"
        events = self._close("incomplete" if incomplete else "completed")
        self.response = _finished(self.response, self.response["output"], incomplete, self._usage, self._pieces)
        kind = "response.incomplete" if incomplete else "response.completed"
        return [*events, self._event(kind, response=copy.deepcopy(self.response))]

    def fail(self, status: int, message: str, code: str = "server_error") -> list[dict[str, Any]]:
        """An engine failure mid-stream: OpenAI's `error` event, then `response.failed`."""
        self.response = {**self.response, "status": "failed", "error": {"code": code, "message": message}}
        return [self._event("error", code=code, message=message, param=None),
                self._event("response.failed", response=copy.deepcopy(self.response))]

    def _tool_call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        function = call.get("function") or {}
        events = []
        if starts := opens_call(call, self._open, self._tools_seen):
            events += self._switch(starts, {
                "type": "function_call", "id": new_id("fc"), "call_id": call.get("id") or new_id("call"),
                "name": function.get("name") or "", "arguments": "", "status": "in_progress"})
        if isinstance(function.get("arguments"), str) and function["arguments"]:
            item = self.response["output"][-1]
            item["arguments"] += function["arguments"]
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=len(self.response["output"]) - 1, delta=function["arguments"]))
        return events

    def _switch(self, kind: str, item: dict[str, Any]) -> list[dict[str, Any]]:
        if self._open == kind:
            return []
        events = self._close("completed")
        self._open, self._text = kind, ""
        self.response["output"].append(item)
        index = len(self.response["output"]) - 1
        events.append(self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item)))
        if kind in ("message", "reasoning"):
            part = _text_part("") if kind == "message" else {"type": "reasoning_text", "text": ""}
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))
        return events

    def _text_delta(self, kind: str, text: str, **extra: Any) -> dict[str, Any]:
        self._text += text
        item = self.response["output"][-1]
        return self._event(kind, item_id=item["id"], output_index=len(self.response["output"]) - 1,
                           content_index=0, delta=text, **extra)

    def _close(self, status: str) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        item, index = self.response["output"][-1], len(self.response["output"]) - 1
        events = []
        if self._open == "message":
            part = _text_part(self._text)
            item["content"] = [part]
            events += [self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                   content_index=0, text=self._text, logprobs=[]),
                       self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                   content_index=0, part=copy.deepcopy(part))]
        elif self._open == "reasoning":
            part = {"type": "reasoning_text", "text": self._text}
            item["content"] = [part]
            events += [self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                   content_index=0, text=self._text),
                       self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                   content_index=0, part=copy.deepcopy(part))]
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"], arguments=item["arguments"]))
        item["status"] = status if self._open == "message" else "completed"
        events.append(self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item)))
        self._open = None
        return events

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event


#: The stream's wire format: events named by their type (one encoder, in sse.py).
sse = named_events
