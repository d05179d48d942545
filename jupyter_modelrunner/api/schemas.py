"""The JSON bodies the routes take, as JSON Schema: handlers validate requests with them (`json_body(SCHEMA)`)
and openapi.py describes the routes with the same objects, so the description cannot drift from what is checked.

They describe what we read and allow more: clients send fields we pass on to the engine unread.
"""

from __future__ import annotations

from typing import Any

from ..engines.base import MODES


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
EMBED_INPUT = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                         {"type": "array", "items": {"type": "integer"}},
                         {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]}
COMPLETION = obj({"model": NAME, "prompt": EMBED_INPUT,
                  "max_tokens": TOKENS, **SAMPLING},
                 ("model", "prompt"), example={"model": "ai/tiny", "prompt": "Once upon", "max_tokens": 8})
EMBEDDING = obj({"model": NAME, "input": EMBED_INPUT,
                  "encoding_format": {"type": "string", "enum": ["float", "base64"]}}, ("model", "input"))
OLLAMA_OPTIONS = obj({"num_ctx": {"type": "integer", "minimum": 1}, "num_predict": {"type": "integer"},
                       "temperature": {"type": "number"}, "seed": {"type": "integer"}})
OLLAMA_COMMON = {"model": NAME, "stream": {"type": "boolean"}, "options": OLLAMA_OPTIONS,
                 "format": {"anyOf": [{"type": "string"}, {"type": "object"}]},
                 "keep_alive": {"anyOf": [{"type": "string"}, {"type": "number"}]},
                 # Checked by ollama_translate, whose refusal names the levels.
                 "think": {"anyOf": [{"type": "boolean"}, {"type": "string"}],
                           "description": "true, false, or a reasoning effort: low, medium, high"}}
# Ollama's routes take the model as `model` or (older clients) `name`: the handlers say when neither is there.
OLLAMA_MESSAGE = obj({"role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
                      "content": {"type": "string"}, "thinking": {"type": "string"},
                      "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
                      "tool_calls": {"type": "array", "items": obj({"function": obj({
                          "name": {"type": "string", "minLength": 1},
                          "arguments": {"anyOf": [{"type": "object"}, {"type": "string"}]}},
                          ("name", "arguments"))}, ("function",))},
                      "tool_name": {"type": "string"}}, ("role",))
OLLAMA_CHAT = obj({**OLLAMA_COMMON, "name": NAME, "messages": {"type": "array", "items": OLLAMA_MESSAGE},
                   "tools": {"type": "array", "items": TOOL}},
                  example={"model": "ai/tiny", "stream": False, "options": {"num_predict": 8},
                           "messages": [{"role": "user", "content": "Hello"}]})
OLLAMA_GENERATE = obj({**OLLAMA_COMMON, "name": NAME, "prompt": {"type": "string"}, "system": {"type": "string"},
                       "raw": {"type": "boolean"}, "suffix": {"type": "string"},
                       "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}},
                      example={"model": "ai/tiny", "stream": False, "prompt": "Once upon",
                               "options": {"num_predict": 8}})
OLLAMA_EMBED = obj({"model": NAME, "name": NAME, "input": EMBED_INPUT,
                    "prompt": {"type": "string"}})
OLLAMA_NAME = obj({"model": NAME, "name": NAME})
# Rerank and score, described here and checked by rerank_translate (its refusals say more). A text is a string or
# Cohere's and Jina's {"text": ...}.
TEXT_ITEM = {"anyOf": [{"type": "string", "minLength": 1},
                       obj({"text": {"type": "string", "minLength": 1}}, ("text",))]}
TEXTS = {"anyOf": [TEXT_ITEM, {"type": "array", "items": TEXT_ITEM, "minItems": 1}]}
RERANK = obj({"model": NAME, "query": TEXT_ITEM, "documents": TEXTS,
              "top_n": {"type": ["integer", "null"], "minimum": 0}, "return_documents": {"type": "boolean"}},
             ("model", "query", "documents"),
             example={"model": "ai/tiny-reranker", "query": "capital of France",
                      "documents": ["Paris is the capital of France.", "Bananas are yellow."]})
SCORE = obj({"model": NAME, **{field: TEXTS for field in ("text_1", "text_2", "queries", "documents", "items",
                                                           "data_1", "data_2")}}, ("model",),
            example={"model": "ai/tiny-reranker", "text_1": "capital of France",
                     "text_2": ["Paris is the capital of France.", "Bananas are yellow."]})

OPENAI_ERROR = obj({"message": {"type": "string"}, "error": obj({
    "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["integer", "string", "null"]}},
    ("message", "type"))}, ("error",))
OLLAMA_ERROR = obj({"error": {"type": "string"}}, ("error",))
ANTHROPIC_ERROR = obj({"type": {"const": "error"}, "error": obj({"type": {"type": "string"},
                                                                 "message": {"type": "string"}}, ("type", "message"))},
                      ("type", "error"))
MODEL = obj({"id": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
              "created": {"type": "integer"}, "size": {"type": "integer"}, "config": {"type": "object"}})
TARGET = obj({"target": NAME})
PULL = obj({"from": NAME, "model": NAME, "name": NAME})
PACKAGE = obj({"tag": NAME, "gguf": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
               "safetensors_dir": {"type": "string"}, "chat_template": {"type": "string"},
               "context_size": {"type": ["integer", "null"], "minimum": 1}, "mmproj": {"type": "string"},
               "license": {"type": "array", "items": {"type": "string"}}, "from": NAME}, ("tag",))
LOAD = obj({"model": NAME, "engine": {"type": ["string", "null"]},
            "mode": {"type": "string", "enum": list(MODES)}}, ("model",))
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

# Anthropic Messages and OpenAI Responses: described here, checked by their translators (anthropic_translate.py,
# responses_translate.py), which answer what they cannot translate with a 400 naming it. Precise enough that a fuzzer
# (schemathesis) generates bodies that reach the translators and the engine, not only refusals.
_ANTHROPIC_IMAGE_SOURCE = {"anyOf": [
    obj({"type": {"const": "base64"}, "media_type": {"type": "string", "enum": ["image/png", "image/jpeg",
                                                                                "image/gif", "image/webp"]},
         "data": {"type": "string"}}, ("type", "media_type", "data")),
    obj({"type": {"const": "url"}, "url": {"type": "string", "minLength": 1}}, ("type", "url"))]}
ANTHROPIC_BLOCK = {"anyOf": [
    obj({"type": {"const": "text"}, "text": {"type": "string"}}, ("type", "text")),
    obj({"type": {"const": "image"}, "source": _ANTHROPIC_IMAGE_SOURCE}, ("type", "source")),
    obj({"type": {"const": "tool_use"}, "id": {"type": "string", "minLength": 1}, "name": {"type": "string",
                                                                                        "minLength": 1},
         "input": {"type": "object"}}, ("type", "id", "name", "input")),
    obj({"type": {"const": "tool_result"}, "tool_use_id": {"type": "string", "minLength": 1},
         "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
         "is_error": {"type": "boolean"}}, ("type", "tool_use_id")),
    obj({"type": {"const": "thinking"}, "thinking": {"type": "string"}, "signature": {"type": "string"}},
        ("type", "thinking"))]}
ANTHROPIC_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": ANTHROPIC_BLOCK}]}
ANTHROPIC_TOOL = obj({"name": {"type": "string", "minLength": 1}, "description": {"type": "string"},
                      "input_schema": {"type": "object"}}, ("name", "input_schema"))
ANTHROPIC_TOOL_CHOICE = {"anyOf": [
    obj({"type": {"type": "string", "enum": ["auto", "any", "none"]}, "disable_parallel_tool_use": {"type": "boolean"}},
        ("type",)),
    obj({"type": {"const": "tool"}, "name": {"type": "string", "minLength": 1}}, ("type", "name"))]}
ANTHROPIC_THINKING = {"anyOf": [
    obj({"type": {"const": "enabled"}, "budget_tokens": {"type": "integer", "minimum": 1}}, ("type", "budget_tokens")),
    obj({"type": {"type": "string", "enum": ["disabled", "adaptive"]}}, ("type",))]}
MESSAGES = obj({"model": NAME, "max_tokens": {"type": "integer", "minimum": 1},
                "messages": {"type": "array", "minItems": 1,
                             "items": obj({"role": {"type": "string", "enum": ["user", "assistant"]},
                                           "content": ANTHROPIC_CONTENT}, ("role", "content"))},
                "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": ANTHROPIC_BLOCK}]},
                "stream": {"type": "boolean"},
                "stop_sequences": {"type": "array", "items": {"type": "string"}},
                "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1}, "top_k": {"type": "integer", "minimum": 1},
                "tools": {"type": "array", "items": ANTHROPIC_TOOL}, "tool_choice": ANTHROPIC_TOOL_CHOICE,
                "thinking": ANTHROPIC_THINKING},
               ("model", "max_tokens", "messages"),
               example={"model": "ai/tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]})
COUNT_TOKENS = obj({k: v for k, v in MESSAGES["properties"].items() if k != "max_tokens"}, ("model", "messages"))
_RESPONSE_PART = {"anyOf": [
    obj({"type": {"type": "string", "enum": ["input_text", "output_text"]}, "text": {"type": "string"}},
        ("type", "text")),
    obj({"type": {"const": "input_image"}, "image_url": {"type": "string", "minLength": 1},
         "detail": {"type": "string", "enum": ["auto", "low", "high"]}}, ("type", "image_url"))]}
RESPONSE_ITEM = {"anyOf": [
    obj({"type": {"const": "message"}, "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
         "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _RESPONSE_PART}]}}, ("role", "content")),
    obj({"type": {"const": "function_call"}, "call_id": {"type": "string", "minLength": 1},
         "name": {"type": "string", "minLength": 1}, "arguments": {"type": "string"}},
        ("type", "call_id", "name", "arguments")),
    obj({"type": {"const": "function_call_output"}, "call_id": {"type": "string", "minLength": 1},
         "output": {"type": "string"}}, ("type", "call_id", "output"))]}
RESPONSE_TOOL = obj({"type": {"const": "function"}, "name": {"type": "string", "minLength": 1},
                     "description": {"type": "string"}, "parameters": {"type": "object"},
                     "strict": {"type": "boolean"}}, ("type", "name"))
RESPONSE = obj({"model": NAME,
                "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": RESPONSE_ITEM}]},
                "instructions": {"type": ["string", "null"]}, "previous_response_id": {"type": ["string", "null"]},
                "max_output_tokens": {"type": ["integer", "null"], "minimum": 1}, "stream": {"type": "boolean"},
                "store": {"type": "boolean"}, "tools": {"type": "array", "items": RESPONSE_TOOL},
                "tool_choice": {"anyOf": [{"type": "string", "enum": ["none", "auto", "required"]},
                                          obj({"type": {"const": "function"}, "name": {"type": "string"}},
                                              ("type", "name"))]},
                "text": obj({"format": {"anyOf": [
                    obj({"type": {"type": "string", "enum": ["text", "json_object"]}}, ("type",)),
                    obj({"type": {"const": "json_schema"}, "name": {"type": "string"}, "schema": {"type": "object"}},
                        ("type", "schema"))]}}),
                "reasoning": obj({"effort": {"type": ["string", "null"],
                                             "enum": ["none", "minimal", "low", "medium", "high", None]}}),
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
                "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1}},
               ("model", "input"), example={"model": "ai/tiny", "input": "Hello", "max_output_tokens": 8})
# Answers of the Hugging Face routes (api/huggingface.py), for the description.
_STRINGS = {"type": "array", "items": {"type": "string"}}
HF_CACHED_MODEL = obj({"name": {"type": "string"}, "repo": {"type": "string"}, "revision": {"type": "string"},
                       "commit": {"type": "string"}, "format": {"type": "string", "enum": ["gguf", "safetensors"]},
                       "quantization": {"type": ["string", "null"]}, "files": _STRINGS, "size": {"type": "integer"},
                       "engine": {"type": "string"}, "mmproj": {"type": ["string", "null"]}},
                      ("name", "repo", "revision", "format", "size", "files"))
HF_CACHE = obj({"cache": {"type": "string"}, "models": {"type": "array", "items": HF_CACHED_MODEL}}, ("models",))
HF_SEARCH_RESULT = obj({"name": {"type": "string"}, "repo": {"type": "string"},
                        "format": {"type": "string", "enum": ["gguf", "safetensors"]},
                        "downloads": {"type": "integer"}, "likes": {"type": "integer"},
                        "size": {"type": ["integer", "null"]}, "parameters": {"type": ["integer", "null"]}},
                       ("name", "repo", "format", "downloads", "likes"))
HF_SEARCH = obj({"models": {"type": "array", "items": HF_SEARCH_RESULT}}, ("models",))
BATCH_ENDPOINT = {"type": "string", "enum": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]}
BATCH = obj({"input_file_id": {"type": "string", "minLength": 1}, "endpoint": BATCH_ENDPOINT,
             "completion_window": {"type": "string", "enum": ["24h"]},
             "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string", "maxLength": 512},
                          "maxProperties": 16}}, ("input_file_id", "endpoint"),
            example={"input_file_id": "file-0123456789abcdef01234567", "endpoint": "/v1/chat/completions",
                     "completion_window": "24h"})
FILE_UPLOAD = obj({"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]}},
                  ("file", "purpose"))
FILE = obj({"id": {"type": "string"}, "object": {"const": "file"}, "bytes": {"type": "integer"},
            "created_at": {"type": "integer"}, "filename": {"type": "string"}, "purpose": {"type": "string"}},
           ("id", "object", "bytes", "created_at", "filename", "purpose"))
BATCH_OBJECT = obj({"id": {"type": "string"}, "object": {"const": "batch"}, "endpoint": {"type": "string"},
                    "status": {"type": "string", "enum": ["validating", "failed", "in_progress", "finalizing",
                                                          "completed", "expired", "cancelling", "cancelled"]},
                    "input_file_id": {"type": "string"}, "request_counts": {"type": "object"}},
                   ("id", "object", "endpoint", "status", "input_file_id"))
