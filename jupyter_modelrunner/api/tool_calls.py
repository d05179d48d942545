"""Tool calls as the engines send them (OpenAI's shape: arguments as a JSON string), for the translators that hand
them on as objects (Anthropic's `tool_use.input`, Ollama's `tool_calls[].function.arguments`)."""

from __future__ import annotations

import json
from typing import Any


def parse_arguments(name: str, arguments: Any) -> dict[str, Any]:
    """A call's arguments as an object; ValueError naming the tool when the model wrote something else (a small
    model may), which the routes answer with a 502: the engine's answer, not the client's request, is at fault."""
    try:
        parsed = arguments if isinstance(arguments, dict) else json.loads(arguments or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"the model called {name!r} with arguments that are not valid JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise ValueError(f"the model called {name!r} with arguments that are not a JSON object")
    return parsed


def opens_call(call: dict[str, Any], open_block: str | None, seen: set[int]) -> str | None:
    """For a streamed tool-call fragment (OpenAI's `delta.tool_calls[]`): the block key (`tool:<index>`) when it starts
    a call, None when it continues the open one. OpenAI streams one call's fragments after another's, so a fragment of
    a call already closed cannot be placed: ValueError. `seen` is the stream's record of calls started."""
    index = call.get("index") or 0
    key = f"tool:{index}"
    if key == open_block:
        return None
    if index in seen:
        raise ValueError("the engine interleaved the arguments of several tool calls")
    seen.add(index)
    return key
