"""The JSON bodies the routes take, as JSON Schema: handlers validate requests with them (`json_body(SCHEMA)`)
and openapi.py describes the routes with the same objects, so the description cannot drift from what is checked.

They describe what we read and allow more: clients send fields we pass on to the engine unread.
"""

from __future__ import annotations

from typing import Any


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A JSON object schema; more properties are allowed (clients send fields we pass on to the engine)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


NAME = {"type": "string", "minLength": 1, "description": "A model: `ai/smollm2`, `smollm2:latest`, a digest or "
        "its first 12 characters."}
PART = {"anyOf": [
    obj({"type": {"const": "text"}, "text": {"type": "string"}}, ("type", "text")),
    obj({"type": {"const": "image_url"}, "image_url": obj({"url": {"type": "string", "minLength": 1}}, ("url",))},
        ("type", "image_url"))]}
TEXT_OR_PARTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": PART}, {"type": "null"}]}
TOOL_CALL = obj({"id": {"type": "string"}, "type": {"const": "function"}, "function": obj({
    "name": {"type": "string", "minLength": 1}, "arguments": {"type": "string"}}, ("name", "arguments"))},
    ("type", "function"))
MESSAGE = obj({"role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
               "content": TEXT_OR_PARTS, "tool_calls": {"type": "array", "items": TOOL_CALL},
               "tool_call_id": {"type": "string"}}, ("role",))
TOOL = obj({"type": {"const": "function"}, "function": obj({
    "name": {"type": "string", "minLength": 1}, "description": {"type": "string"},
    "parameters": {"type": "object"}}, ("name",))}, ("type", "function"))
TOOL_CHOICE = {"anyOf": [{"type": "string", "enum": ["none", "auto", "required"]},
                         obj({"type": {"const": "function"}, "function": obj({"name": {"type": "string"}}, ("name",))},
                             ("type", "function"))]}
TOKENS = {"type": ["integer", "null"], "minimum": 1}
SAMPLING = {"temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "seed": {"type": ["integer", "null"]}, "stream": {"type": ["boolean", "null"]},
            "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]}}
CHAT = obj({"model": NAME, "messages": {"type": "array", "items": MESSAGE, "minItems": 1},
            "max_tokens": TOKENS, "max_completion_tokens": TOKENS,
            "tools": {"type": "array", "items": TOOL}, "tool_choice": TOOL_CHOICE,
            "response_format": {"type": "object"}, **SAMPLING}, ("model", "messages"),
           example={"model": "ai/tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]})
COMPLETION = obj({"model": NAME, "prompt": {"anyOf": [{"type": "string"}, {"type": "array"}]},
                  "max_tokens": TOKENS, **SAMPLING},
                 ("model", "prompt"), example={"model": "ai/tiny", "prompt": "Once upon", "max_tokens": 8})
EMBEDDING = obj({"model": NAME, "input": {"anyOf": [{"type": "string"}, {"type": "array"}]},
                  "encoding_format": {"type": "string", "enum": ["float", "base64"]}}, ("model", "input"))
OLLAMA_OPTIONS = obj({"num_ctx": {"type": "integer", "minimum": 1}, "num_predict": {"type": "integer"},
                       "temperature": {"type": "number"}, "seed": {"type": "integer"}})
OLLAMA_COMMON = {"model": NAME, "stream": {"type": "boolean"}, "options": OLLAMA_OPTIONS,
                 "format": {"anyOf": [{"type": "string"}, {"type": "object"}]},
                 "keep_alive": {"anyOf": [{"type": "string"}, {"type": "number"}]}}
# Ollama's routes take the model as `model` or (older clients) `name`: the handlers say when neither is there.
OLLAMA_CHAT = obj({**OLLAMA_COMMON, "name": NAME, "messages": {"type": "array", "items": MESSAGE},
                   "tools": {"type": "array", "items": TOOL}})
OLLAMA_GENERATE = obj({**OLLAMA_COMMON, "name": NAME, "prompt": {"type": "string"}, "system": {"type": "string"},
                       "raw": {"type": "boolean"}})
OLLAMA_EMBED = obj({"model": NAME, "name": NAME, "input": {"anyOf": [{"type": "string"}, {"type": "array"}]},
                    "prompt": {"type": "string"}})
OLLAMA_NAME = obj({"model": NAME, "name": NAME})

OPENAI_ERROR = obj({"message": {"type": "string"}, "error": obj({
    "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["integer", "string", "null"]}},
    ("message", "type"))}, ("error",))
OLLAMA_ERROR = obj({"error": {"type": "string"}}, ("error",))
MODEL = obj({"id": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
              "created": {"type": "integer"}, "size": {"type": "integer"}, "config": {"type": "object"}})
TARGET = obj({"target": NAME})
PULL = obj({"from": NAME, "model": NAME, "name": NAME})
PACKAGE = obj({"tag": NAME, "gguf": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
               "safetensors_dir": {"type": "string"}, "chat_template": {"type": "string"},
               "context_size": {"type": "integer", "minimum": 1},
               "license": {"type": "array", "items": {"type": "string"}}}, ("tag",))
LOAD = obj({"model": NAME, "engine": {"type": ["string", "null"]},
            "mode": {"type": "string", "enum": ["completion", "embedding"]}}, ("model",))
GC = obj({"min_age": {"type": "number", "minimum": 0}})
FSCK = obj({"repair": {"type": "boolean"}, "stream": {"type": "boolean"}})
UNLOAD = obj({"all": {"type": "boolean"}, "models": {"type": "array", "items": NAME}, "model": NAME,
              "backend": {"type": "string"}})
CONFIGURE = obj({"model": NAME, "context-size": {"type": ["integer", "null"], "minimum": 1},
                 "context_size": {"type": ["integer", "null"], "minimum": 1},
                 "runtime-flags": {"type": "array", "items": {"type": "string"}},
                 "runtime_flags": {"type": "array", "items": {"type": "string"}},
                 "keep_alive": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]},
                 "backend": {"type": ["string", "null"]}}, ("model",))
OLLAMA_PULL = obj({**OLLAMA_NAME["properties"], "stream": {"type": "boolean"}, "insecure": {"type": "boolean"}})
OLLAMA_COPY = obj({"source": NAME, "destination": NAME}, ("source", "destination"))
