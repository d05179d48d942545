"""The Ollama <-> OpenAI translation layer: requests, streamed and whole responses, model listings."""

from __future__ import annotations

import base64
import json
from datetime import datetime

import pytest

from jupyter_modelrunner.api.ollama_translate import (
    OllamaStream,
    chat_request_to_openai,
    chat_response_to_ollama,
    context_size,
    error_body,
    generate_request_to_openai,
    keep_alive_seconds,
    ps_entry,
    show_response,
    tags_entry,
)

DIGEST = "ab" * 32
MODEL_JSON = {
    "id": f"sha256:{DIGEST}",
    "tags": ["ai/smollm2:latest"],
    "created": 1732000000,
    "size": 98362432,
    "format": "gguf",
    "config": {"format": "gguf", "quantization": "Q4_1", "parameters": "135M", "architecture": "llama",
               "size": "93.8 MiB", "context_size": None},
}
RAW_CONFIG = {"config": {"format": "gguf", "gguf": {
    "general.architecture": "llama", "general.name": "SmolLM2", "general.version": "1.0",
    "general.parameter_count": "134515008", "llama.context_length": "8192",
    "llama.attention.layer_norm_rms_epsilon": "1e-05", "tokenizer.ggml.tokens": ["a", "b"]}}}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def chunk(delta: dict | None = None, finish_reason: str | None = None, **extra) -> dict:
    """A llama.cpp-style chat.completion.chunk."""
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1732000000, "model": "smollm2",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}], **extra}


def tool_delta(arguments: str, *, index: int = 0, name: str | None = None) -> dict:
    function = {"arguments": arguments} | ({"name": name} if name else {})
    call = {"index": index, "function": function} | ({"id": f"call-{index}", "type": "function"} if name else {})
    return chunk({"tool_calls": [call]})


def llamacpp_stream() -> list[dict]:
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"content": "Hello"}),
        chunk({"content": " there"}),
        chunk({}, "length"),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}},
    ]


def run_stream(stream: OllamaStream, clock: Clock, chunks: list[dict], step: float = 0.5) -> list[dict]:
    sent = []
    for item in chunks:
        clock.now += step
        sent += stream.feed(item)
    clock.now += step
    return [*sent, stream.finish()]


# --- requests ---------------------------------------------------------------------------------------------


def test_chat_request_maps_messages_and_options_and_streams_by_default():
    body = {"model": "ai/smollm2", "keep_alive": "10m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "options": {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "num_predict": 64, "stop": ["\n"],
                    "presence_penalty": 0.5, "frequency_penalty": 0.1, "num_ctx": 4096, "mirostat": 1}}
    openai = chat_request_to_openai(body)
    assert openai == {
        "model": "ai/smollm2",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "max_tokens": 64, "stop": ["\n"],
        "presence_penalty": 0.5, "frequency_penalty": 0.1,
        "stream": True, "stream_options": {"include_usage": True},
    }


def test_chat_request_with_stream_false_asks_for_one_response():
    openai = chat_request_to_openai({"model": "m", "messages": [], "stream": False})
    assert openai["stream"] is False
    assert "stream_options" not in openai


def test_repeat_penalty_goes_to_both_engines_names_not_frequency_penalty():
    openai = chat_request_to_openai({"model": "m", "options": {"repeat_penalty": 1.1}})
    assert openai["repeat_penalty"] == openai["repetition_penalty"] == 1.1
    assert "frequency_penalty" not in openai


def test_unlimited_num_predict_leaves_max_tokens_to_the_engine():
    assert "max_tokens" not in chat_request_to_openai({"model": "m", "options": {"num_predict": -1}})
    assert "max_tokens" not in chat_request_to_openai({"model": "m", "options": {"num_predict": -2}})


def test_single_stop_string_becomes_a_list():
    assert chat_request_to_openai({"model": "m", "options": {"stop": "END"}})["stop"] == ["END"]


def test_format_json_and_json_schema_become_response_format():
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert chat_request_to_openai({"model": "m", "format": "json"})["response_format"] == {"type": "json_object"}
    assert chat_request_to_openai({"model": "m", "format": schema})["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
    assert "response_format" not in chat_request_to_openai({"model": "m", "format": ""})


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="format"):
        chat_request_to_openai({"model": "m", "format": "yaml"})


PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20).decode()
JPEG_B64 = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 20).decode()


def test_chat_images_become_image_url_parts_after_the_text():
    request = chat_request_to_openai({"model": "m", "messages": [
        {"role": "user", "content": "What is this?", "images": [PNG_B64, JPEG_B64]},
        {"role": "assistant", "content": "A square."}]})
    first, second = request["messages"]
    assert first["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG_B64}"}},
    ]
    assert second["content"] == "A square."  # messages without images keep a plain string


def test_generate_images_join_the_prompt_and_a_raw_prompt_cannot_place_them():
    path, request = generate_request_to_openai({"model": "m", "prompt": "Describe", "images": [PNG_B64],
                                                "system": "Be brief"})
    assert path == "/v1/chat/completions"
    assert request["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]},
    ]
    with pytest.raises(ValueError, match="raw prompt"):
        generate_request_to_openai({"model": "m", "prompt": "x", "raw": True, "images": [PNG_B64]})


def test_an_image_alone_and_images_that_are_not_base64():
    request = chat_request_to_openai({"model": "m", "messages": [{"role": "user", "images": [PNG_B64]}]})
    assert request["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]
    with pytest.raises(ValueError, match=r"message 0's images\[0\] is not base64"):
        chat_request_to_openai({"model": "m", "messages": [{"role": "user", "content": "?", "images": ["%%%"]}]})
    with pytest.raises(ValueError, match="must be a list of base64-encoded images"):
        chat_request_to_openai({"model": "m", "messages": [{"role": "user", "content": "?", "images": "iVBO"}]})


def test_empty_images_list_is_not_an_image():
    chat_request_to_openai({"model": "m", "messages": [{"role": "user", "content": "?", "images": None}]})


@pytest.mark.parametrize("body", [
    {"messages": []},
    {"model": "", "messages": []},
    {"model": "m", "messages": [{"role": "robot", "content": "beep"}]},
    {"model": "m", "messages": "hello"},
    {"model": "m", "options": [1]},
    {"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": ["get_weather"]}]},
])
def test_malformed_chat_requests_are_rejected(body):
    with pytest.raises(ValueError):
        chat_request_to_openai(body)


def test_tools_pass_through_and_tool_history_gets_openai_ids():
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    openai = chat_request_to_openai({"model": "m", "tools": [tool], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C", "tool_name": "get_weather"}]})
    assert openai["tools"] == [tool]
    call = openai["messages"][1]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert openai["messages"][2] == {"role": "tool", "content": "18C", "tool_call_id": call["id"]}


def test_generate_uses_chat_completions_with_system_and_user_messages():
    path, openai = generate_request_to_openai(
        {"model": "m", "prompt": "Why?", "system": "Be brief.", "format": "json", "options": {"temperature": 0}})
    assert path == "/v1/chat/completions"
    assert openai["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    assert openai["temperature"] == 0
    assert openai["response_format"] == {"type": "json_object"}
    assert openai["stream"] is True


def test_raw_generate_uses_text_completions_with_the_prompt_untouched():
    path, openai = generate_request_to_openai(
        {"model": "m", "prompt": "<|im_start|>user\nHi", "system": "ignored", "raw": True, "stream": False})
    assert path == "/v1/completions"
    assert openai == {"model": "m", "prompt": "<|im_start|>user\nHi", "stream": False}


def test_generate_suffix_is_rejected():
    with pytest.raises(ValueError, match="suffix"):
        generate_request_to_openai({"model": "m", "prompt": "def f(", "suffix": "return x"})


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), ("5m", 300), ("1h30m", 5400), ("0s", 0), ("0", 0), (0, 0), (90, 90), ("1.5s", 1.5), ("250ms", 0.25),
    ("never", -1), (-1, -1), ("-1m", -1)])
def test_keep_alive_accepts_ollama_durations(value, seconds):
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "nan", "inf", True, [5]])
def test_keep_alive_rejects_nonsense(value):
    with pytest.raises(ValueError, match="keep_alive"):
        keep_alive_seconds(value)


# --- streamed responses -----------------------------------------------------------------------------------


def test_llamacpp_chat_stream_becomes_content_pieces_and_a_done_object():
    clock = Clock()
    stream = OllamaStream("ai/smollm2", "chat", clock.now, clock=clock)
    *pieces, final = run_stream(stream, clock, llamacpp_stream())
    assert [p["message"] for p in pieces] == [{"role": "assistant", "content": "Hello"},
                                              {"role": "assistant", "content": " there"}]
    assert all(p["done"] is False and p["model"] == "ai/smollm2" for p in pieces)
    assert final["done"] is True
    assert final["done_reason"] == "length"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert (final["prompt_eval_count"], final["eval_count"]) == (12, 2)
    assert final["load_duration"] == 0
    # First token at +1.0 s, finish at +3.0 s.
    assert final["prompt_eval_duration"] == 1_000_000_000
    assert final["eval_duration"] == 2_000_000_000
    assert final["total_duration"] == 3_000_000_000
    assert all(isinstance(final[k], int) for k in ("total_duration", "prompt_eval_duration", "eval_duration"))


def test_created_at_is_rfc3339_utc_with_z():
    stream = OllamaStream("m", "chat", 0.0)
    created = stream.feed(chunk({"content": "x"}))[0]["created_at"]
    assert created.endswith("Z")
    assert datetime.fromisoformat(created.replace("Z", "+00:00")).utcoffset().total_seconds() == 0


def test_text_completion_stream_becomes_generate_responses():
    clock = Clock()
    stream = OllamaStream("m", "generate", clock.now, clock=clock)
    chunks = [{"choices": [{"index": 0, "text": "Once", "finish_reason": None}]},
              {"choices": [{"index": 0, "text": " upon", "finish_reason": "stop"}]}]
    *pieces, final = run_stream(stream, clock, chunks)
    assert [p["response"] for p in pieces] == ["Once", " upon"]
    assert final["response"] == ""
    assert final["context"] == []
    assert final["done_reason"] == "stop"
    assert "message" not in final


def test_without_usage_each_streamed_piece_counts_as_a_token():
    clock = Clock()
    stream = OllamaStream("m", "chat", clock.now, clock=clock)
    final = run_stream(stream, clock, llamacpp_stream()[:-1])[-1]
    assert (final["prompt_eval_count"], final["eval_count"]) == (0, 2)


def test_the_engines_own_measurements_replace_the_clock_estimate():
    clock = Clock()
    stream = OllamaStream("m", "chat", clock.now, clock=clock)
    chunks = [chunk({"content": "Hi"}),
              chunk({}, "stop", generation_stats={"prompt_tokens": 9, "prompt_seconds": 0.0125,
                                                  "completion_tokens": 1, "generation_seconds": 0.03})]
    final = run_stream(stream, clock, chunks)[-1]
    assert final["prompt_eval_duration"] == 12_500_000
    assert final["eval_duration"] == 30_000_000
    assert (final["prompt_eval_count"], final["eval_count"]) == (9, 1)


def test_stream_with_no_tokens_never_reports_zero_durations():
    final = OllamaStream("m", "chat", 5.0, clock=Clock(5.0)).finish()
    assert final["eval_count"] == 0
    assert min(final["prompt_eval_duration"], final["eval_duration"], final["total_duration"]) >= 1


def test_tool_call_fragments_are_accumulated_into_the_final_message():
    clock = Clock()
    stream = OllamaStream("m", "chat", clock.now, clock=clock)
    chunks = [chunk({"role": "assistant", "content": None}),
              tool_delta("", name="get_weather"), tool_delta('{"city": "Pa'), tool_delta('ris", "unit": "C"}'),
              tool_delta('{"q": 1}', index=1, name="search"),
              chunk({}, "tool_calls")]
    *pieces, final = run_stream(stream, clock, chunks)
    assert pieces == []
    assert final["done_reason"] == "stop"
    assert final["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}},
        {"function": {"name": "search", "arguments": {"q": 1}}}]


def test_invalid_tool_call_arguments_raise_value_error():
    stream = OllamaStream("m", "chat", 0.0)
    stream.feed(tool_delta('{"city": ', name="get_weather"))
    with pytest.raises(ValueError, match="get_weather"):
        stream.finish()


# --- whole responses --------------------------------------------------------------------------------------


def test_non_streaming_chat_response_is_one_done_object():
    response = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Hello!", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
    obj = chat_response_to_ollama("m", response, 10.0, "chat", clock=Clock(12.0))
    assert obj["message"] == {"role": "assistant", "content": "Hello!",
                              "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}
    assert obj["done"] is True
    assert obj["done_reason"] == "stop"
    assert (obj["prompt_eval_count"], obj["eval_count"]) == (5, 3)
    assert obj["total_duration"] == obj["eval_duration"] == 2_000_000_000


def test_non_streaming_text_completion_becomes_a_generate_response():
    response = {"choices": [{"index": 0, "text": "42", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    obj = chat_response_to_ollama("m", response, 0.0, "generate", clock=Clock(1.0))
    assert (obj["response"], obj["context"], obj["done_reason"], obj["eval_count"]) == ("42", [], "length", 1)


# --- listings ---------------------------------------------------------------------------------------------


def test_tags_entry_has_ollamas_shape():
    entry = tags_entry("ai/smollm2:latest", MODEL_JSON)
    assert entry == {
        "name": "ai/smollm2:latest", "model": "ai/smollm2:latest",
        "modified_at": "2024-11-19T07:06:40.000000Z", "size": 98362432, "digest": DIGEST,
        "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                    "parameter_size": "135M", "quantization_level": "Q4_1"},
    }


@pytest.mark.parametrize(("status", "expires_at"), [
    ({"keep_alive": 300, "expires_at": 1732000300}, "2024-11-19T07:11:40.000000Z"),
    ({"keep_alive": 300, "expires_at": None}, "2024-11-19T07:11:40.000000Z"),  # in use: due keep_alive after use
    ({"keep_alive": -1, "expires_at": None}, "2317-")])
def test_ps_entry_expires_when_the_runner_says(status, expires_at):
    status = {"memory": 200_000_000, "last_used": 1732000000, **status}
    entry = ps_entry("ai/smollm2:latest", MODEL_JSON, status)
    assert entry["expires_at"].startswith(expires_at)
    assert (entry["size"], entry["size_vram"], entry["digest"]) == (200_000_000, 0, DIGEST)
    assert entry["details"]["quantization_level"] == "Q4_1"
    assert entry["name"] == entry["model"] == "ai/smollm2:latest"
    assert "context_length" not in entry  # unknown for this model


def test_ps_entry_reports_a_known_context_size():
    model_json = MODEL_JSON | {"config": MODEL_JSON["config"] | {"context_size": 8192}}
    entry = ps_entry("m", model_json, {"memory": 1, "keep_alive": 300, "last_used": 1732000000})
    assert entry["context_length"] == 8192


def test_show_response_has_details_template_and_model_info():
    template = "{% for message in messages %}{{ message.content }}{% endfor %}"
    shown = show_response(MODEL_JSON, template, RAW_CONFIG)
    assert shown["template"] == template
    assert shown["capabilities"] == ["completion"]
    assert shown["details"]["family"] == "llama"
    assert "FROM ai/smollm2:latest" in shown["modelfile"]
    assert shown["model_info"] == {
        "general.architecture": "llama", "general.name": "SmolLM2", "general.version": "1.0",
        "general.parameter_count": 134515008, "llama.context_length": 8192,
        "llama.attention.layer_norm_rms_epsilon": 1e-05, "tokenizer.ggml.tokens": []}


def test_show_response_without_gguf_metadata_or_template():
    shown = show_response(MODEL_JSON | {"config": MODEL_JSON["config"] | {"context_size": 2048}}, None, {})
    assert shown["template"] == ""
    assert shown["model_info"] == {"general.architecture": "llama", "llama.context_length": 2048}


def test_show_response_advertises_tools_when_the_template_handles_them():
    shown = show_response(MODEL_JSON, "{% if tools %}{{ tools | tojson }}{% endif %}", RAW_CONFIG)
    assert shown["capabilities"] == ["completion", "tools"]


def test_show_response_advertises_vision_when_the_model_has_a_projector():
    shown = show_response(MODEL_JSON | {"multimodal": True}, None, RAW_CONFIG)
    assert shown["capabilities"] == ["completion", "vision"]


def test_error_body_is_ollamas_error_shape():
    assert error_body("model 'x' not found") == {"error": "model 'x' not found"}


def test_everything_is_json_serialisable():
    clock = Clock()
    stream = OllamaStream("m", "chat", clock.now, clock=clock)
    objects = [*run_stream(stream, clock, llamacpp_stream()), tags_entry("m", MODEL_JSON),
               ps_entry("m", MODEL_JSON, {"memory": 1, "keep_alive": -1, "last_used": 0}),
               show_response(MODEL_JSON, "t", RAW_CONFIG)]
    for obj in objects:
        assert json.loads(json.dumps(obj)) == obj


# --- the official client reads what we send ---------------------------------------------------------------


def test_ollama_client_parses_chat_stream_and_final_objects():
    ollama = pytest.importorskip("ollama")
    clock = Clock()
    stream = OllamaStream("m", "chat", clock.now, clock=clock)
    chunks = [*llamacpp_stream()[:-1], tool_delta('{"a": 1}', name="f")]
    for obj in run_stream(stream, clock, chunks):
        parsed = ollama.ChatResponse.model_validate(obj)
        assert parsed.message.role == "assistant"
    assert parsed.done and parsed.eval_count == 2
    assert parsed.message.tool_calls[0].function.arguments == {"a": 1}


def test_ollama_client_parses_generate_objects():
    ollama = pytest.importorskip("ollama")
    obj = chat_response_to_ollama("m", {"choices": [{"text": "hi", "finish_reason": "stop"}]}, 0.0, "generate")
    parsed = ollama.GenerateResponse.model_validate(obj)
    assert (parsed.response, parsed.done_reason) == ("hi", "stop")


def test_ollama_client_parses_listings():
    ollama = pytest.importorskip("ollama")
    listed = ollama.ListResponse.model_validate({"models": [tags_entry("ai/smollm2:latest", MODEL_JSON)]})
    assert listed.models[0].details.parameter_size == "135M"
    status = {"memory": 1024, "keep_alive": -1, "last_used": 1732000000}
    running = ollama.ProcessResponse.model_validate({"models": [ps_entry("ai/smollm2:latest", MODEL_JSON, status)]})
    assert running.models[0].expires_at.year == 2317
    shown = ollama.ShowResponse.model_validate(show_response(MODEL_JSON, "t", RAW_CONFIG))
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.capabilities == ["completion"]


def test_options_tool_choice_is_read_as_openais():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    assert "tool_choice" not in chat_request_to_openai(body)
    assert chat_request_to_openai({**body, "options": {"tool_choice": "required"}})["tool_choice"] == \
        "required"
    named = chat_request_to_openai({**body, "options": {"tool_choice": "get_weather"}})
    assert named["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    with pytest.raises(ValueError, match="not among the tools"):
        chat_request_to_openai({**body, "options": {"tool_choice": "get_time"}})


def test_num_ctx_is_the_requests_context_size():
    assert context_size({"options": {"num_ctx": 8192}}) == 8192
    assert context_size({"options": {}}) is None and context_size({}) is None
    with pytest.raises(ValueError, match="num_ctx"):
        context_size({"options": {"num_ctx": "big"}})


# --- thinking ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("think", "fields"), [
    (None, {}),
    (False, {"reasoning_effort": "none"}),
    (True, {"chat_template_kwargs": {"enable_thinking": True}}),
    ("low", {"reasoning_effort": "low"}),
    ("high", {"reasoning_effort": "high"}),
])
def test_think_becomes_the_openai_fields_both_engines_read(think, fields):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "think": think}
    request = chat_request_to_openai(body)
    assert {k: request[k] for k in ("reasoning_effort", "chat_template_kwargs") if k in request} == fields
    _path, generate = generate_request_to_openai({"model": "m", "prompt": "hi", "think": think})
    assert {k: generate[k] for k in ("reasoning_effort", "chat_template_kwargs") if k in generate} == fields


def test_think_is_not_sent_with_a_raw_prompt_and_unknown_values_are_refused():
    _path, raw = generate_request_to_openai({"model": "m", "prompt": "<|im_start|>x", "raw": True, "think": False})
    assert "reasoning_effort" not in raw
    with pytest.raises(ValueError, match="think must be true, false"):
        chat_request_to_openai({"model": "m", "messages": [], "think": "max"})


def test_options_grammar_is_llama_cpps_grammar():
    request = chat_request_to_openai({"model": "m", "messages": [], "options": {"grammar": 'root ::= "x"'}})
    assert request["grammar"] == 'root ::= "x"'


def test_streamed_thinking_becomes_message_thinking_before_the_content():
    clock = Clock()
    stream = OllamaStream("m", "chat", clock.now, clock=clock)
    chunks = [chunk({"role": "assistant", "content": None}), chunk({"reasoning_content": "Let me see."}),
              chunk({"reasoning_content": " Hm."}), chunk({"content": "Hi"}), chunk({}, "stop")]
    *pieces, final = run_stream(stream, clock, chunks)
    assert [(p["message"].get("thinking"), p["message"]["content"]) for p in pieces] == [
        ("Let me see.", ""), (" Hm.", ""), (None, "Hi")]
    assert final["eval_count"] == 3 and "thinking" not in final["message"]
    generate = OllamaStream("m", "generate", clock.now, clock=clock)
    assert [(p.get("thinking"), p["response"]) for p in generate.feed(chunk({"reasoning_content": "t"}))] == [
        ("t", "")]


def test_whole_answers_carry_thinking_apart_and_the_client_reads_it():
    ollama = pytest.importorskip("ollama")
    response = {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "Hi",
                                                                   "reasoning_content": "They greet me."}}]}
    chat = ollama.ChatResponse.model_validate(chat_response_to_ollama("m", response, 0.0, "chat"))
    assert (chat.message.thinking, chat.message.content) == ("They greet me.", "Hi")
    generate = ollama.GenerateResponse.model_validate(chat_response_to_ollama("m", response, 0.0, "generate"))
    assert (generate.thinking, generate.response) == ("They greet me.", "Hi")


def test_show_response_advertises_thinking_for_reasoning_templates():
    assert show_response(MODEL_JSON, "{{ '<think>' }}{% if tools %}{% endif %}", RAW_CONFIG)["capabilities"] == [
        "completion", "tools", "thinking"]
    assert "thinking" not in show_response(MODEL_JSON, "{{ messages }}", RAW_CONFIG)["capabilities"]
