"""The Anthropic Messages <-> OpenAI chat translation: requests, whole answers, streams and errors."""

from __future__ import annotations

import json

import pytest

from jupyter_modelrunner.api.anthropic_translate import (
    MessageStream,
    error_body,
    message_from_openai,
    messages_request_to_openai,
    sse,
)

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def request(**extra) -> dict:
    return {"model": "ai/smollm2", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **extra}


def completion(message: dict, finish_reason: str = "stop", **extra) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "model",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}, **extra}


def chunk(delta: dict | None = None, finish_reason: str | None = None, **extra) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}], **extra}


# -- requests ----------------------------------------------------------------------------------------------------


def test_a_plain_request_becomes_a_chat_request_with_the_sampling_fields():
    out = messages_request_to_openai(request(system="Be brief.", temperature=0.2, top_p=0.9, top_k=40,
                                             stop_sequences=["END"], metadata={"user_id": "u1"}))
    assert out == {"model": "ai/smollm2", "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
                   "stop": ["END"], "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi"}]}


def test_system_blocks_are_one_system_message():
    out = messages_request_to_openai(request(system=[{"type": "text", "text": "One.", "cache_control": {
        "type": "ephemeral"}}, {"type": "text", "text": "Two."}]))
    assert out["messages"][0] == {"role": "system", "content": "One.\nTwo."}


def test_streaming_asks_for_usage():
    out = messages_request_to_openai(request(stream=True))
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_text_blocks_are_joined_and_images_become_image_url_parts():
    text_only = messages_request_to_openai(request(messages=[{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]))
    assert text_only["messages"] == [{"role": "user", "content": "a\nb"}]
    with_images = messages_request_to_openai(request(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.png"}},
        {"type": "text", "text": "What is this?"}]}]))
    assert with_images["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}},
        {"type": "text", "text": "What is this?"}]}]


def test_a_tool_use_turn_and_its_results_become_tool_calls_and_tool_messages_in_order():
    out = messages_request_to_openai(request(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "x"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "no station"}]},
            {"type": "text", "text": "Thanks!"}]}]))
    paris, rome = ({"name": "get_weather", "arguments": json.dumps({"city": city})} for city in ("Paris", "Rome"))
    assert out["messages"][1:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": paris},
            {"id": "toolu_2", "type": "function", "function": rome}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no station"},
        {"role": "user", "content": "Thanks!"}]


def test_an_assistant_turn_of_only_tool_calls_has_no_text_content():
    out = messages_request_to_openai(request(messages=[{"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]}]))
    assert out["messages"][0]["content"] is None
    assert out["messages"][0]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather"},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"type": "any", "disable_parallel_tool_use": True}, {"tool_choice": "required", "parallel_tool_calls": False}),
])
def test_tools_and_tool_choice_become_openais(choice, expected):
    out = messages_request_to_openai(request(tools=[WEATHER], tool_choice=choice))
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER["input_schema"]}}]
    assert {key: out[key] for key in expected} == expected


def test_structured_output_becomes_a_json_schema_response_format():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    out = messages_request_to_openai(request(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert out["response_format"] == {"type": "json_schema",
                                      "json_schema": {"name": "output", "schema": schema, "strict": True}}


@pytest.mark.parametrize(("thinking", "expected"), [
    ({"type": "enabled", "budget_tokens": 1024},
     {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_budget_tokens": 1024}),
    ({"type": "enabled"}, {"chat_template_kwargs": {"enable_thinking": True}}),
    ({"type": "disabled"}, {"reasoning_effort": "none"}),
    ({"type": "adaptive"}, {}),
])
def test_extended_thinking_becomes_the_engines_reasoning_controls(thinking, expected):
    """The same controls Ollama's `think` and OpenAI's `reasoning_effort` reach; the budget is the runner's
    per-request one, which each engine's adapt_request names its own way."""
    openai = messages_request_to_openai(request(thinking=thinking))
    controls = {k: openai[k] for k in ("chat_template_kwargs", "reasoning_budget_tokens", "reasoning_effort")
                if k in openai}
    assert controls == expected
    assert "thinking" not in openai
    with pytest.raises(ValueError, match="thinking"):
        messages_request_to_openai(request(thinking={"type": "maximum"}))


def test_count_only_reads_the_prompt_and_needs_no_max_tokens():
    body = {"model": "ai/smollm2", "system": "S", "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER],
            "tool_choice": {"type": "auto"}}
    out = messages_request_to_openai(body, count_only=True)
    assert set(out) == {"model", "messages", "tools", "tool_choice"}


@pytest.mark.parametrize(("body", "message"), [
    ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}, "model"),
    ({"model": "m", "messages": [], "max_tokens": 5}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "system", "content": "Hi"}], "max_tokens": 5}, "messages.0.role"),
    ({**request(), "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({**request(), "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}}, "not among the tools"),
    ({**request(), "messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]}, "PDFs"),
    ({**request(), "stop_sequences": "END"}, "stop_sequences"),
])
def test_requests_anthropic_would_refuse_are_refused_with_the_field_named(body, message):
    with pytest.raises(ValueError, match=message):
        messages_request_to_openai(body)


# -- whole answers -----------------------------------------------------------------------------------------------


def test_a_text_answer_becomes_a_message():
    message = message_from_openai("ai/smollm2", completion({"content": "Hello!"}), message_id="msg_1")
    assert message == {"id": "msg_1", "type": "message", "role": "assistant", "model": "ai/smollm2",
                       "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
                       "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 5}}
    assert message_from_openai("m", completion({"content": "x"}))["id"].startswith("msg_")


def test_tool_calls_become_tool_use_blocks_with_parsed_input():
    message = message_from_openai("m", completion({"content": None, "tool_calls": [
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "bad id!", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
        finish_reason="tool_calls"))
    assert message["stop_reason"] == "tool_use"
    first, second = message["content"]
    assert first == {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"city": "Paris"}}
    assert second["id"].startswith("toolu_") and second["input"] == {}


def test_a_tool_call_with_arguments_that_are_not_an_object_is_an_error():
    with pytest.raises(ValueError, match="not valid JSON"):
        message_from_openai("m", completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]}))


@pytest.mark.parametrize(("finish_reason", "choice_extra", "expected"), [
    ("length", {}, ("max_tokens", None)),
    ("stop", {"matched_stop": "END"}, ("stop_sequence", "END")),  # the engine-neutral field every engine fills
    ("stop", {}, ("end_turn", None)),
    ("length", {"matched_stop": "END"}, ("max_tokens", None)),
])
def test_stop_reasons(finish_reason, choice_extra, expected):
    body = completion({"content": "x"}, finish_reason)
    body["choices"][0].update(choice_extra)
    message = message_from_openai("m", body)
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def test_reasoning_comes_first_as_a_thinking_block():
    message = message_from_openai("m", completion({"content": "42", "reasoning_content": "6 times 7"}))
    assert message["content"] == [{"type": "thinking", "thinking": "6 times 7", "signature": ""},
                                  {"type": "text", "text": "42"}]


# -- streams -----------------------------------------------------------------------------------------------------


def run(stream: MessageStream, chunks: list[dict]) -> list[dict]:
    return [event for c in chunks for event in stream.feed(c)] + stream.finish()


def test_a_text_stream_is_one_text_block_between_message_start_and_stop():
    stream = MessageStream("ai/smollm2", message_id="msg_1")
    start = stream.start()
    assert start[0] == {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "ai/smollm2", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}
    assert start[1] == {"type": "ping"}
    events = run(stream, [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                          chunk({"content": "lo"}), chunk({}, "stop"),
                          {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}])
    assert events == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 2, "input_tokens": 9}},
        {"type": "message_stop"}]


def test_reasoning_text_and_tool_calls_are_blocks_one_after_another():
    events = run(MessageStream("m"), [
        chunk({"reasoning_content": "hmm"}), chunk({"content": "Calling."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls")])
    starts = [(e["index"], e["content_block"]) for e in events if e["type"] == "content_block_start"]
    assert starts == [(0, {"type": "thinking", "thinking": "", "signature": ""}), (1, {"type": "text", "text": ""}),
                      (2, {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}),
                      (3, {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}})]
    json_parts = [e["delta"]["partial_json"] for e in events
                  if e["type"] == "content_block_delta" and e["index"] == 2]
    assert json.loads("".join(json_parts)) == {"city": "Paris"}
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1, 2, 3]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"] == {"output_tokens": 1}  # no usage chunk: the text pieces counted


def test_a_stop_sequence_named_on_a_last_chunk_ends_the_stream_as_stop_sequence():
    named = chunk({"content": "b"})
    named["choices"][0]["matched_stop"] = "END"  # llama-server may name it on the chunk before the finish
    events = run(MessageStream("m"), [chunk({"content": "a"}), named, chunk({}, "stop")])
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_an_error_from_the_engine_or_interleaved_tool_calls_raise():
    with pytest.raises(ValueError, match="out of memory"):
        MessageStream("m").feed({"error": {"message": "out of memory", "code": 500}})
    stream = MessageStream("m")
    stream.feed(chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]}))
    stream.feed(chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]}))
    with pytest.raises(ValueError, match="interleaved"):
        stream.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))


def test_events_are_encoded_as_named_server_sent_events():
    assert sse([{"type": "ping"}, {"type": "message_stop"}]) == (
        b'event: ping\ndata: {"type": "ping"}\n\nevent: message_stop\ndata: {"type": "message_stop"}\n\n')


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (403, "permission_error"),
                                              (404, "not_found_error"), (429, "rate_limit_error"),
                                              (500, "api_error"), (502, "api_error")])
def test_errors_have_anthropics_shape(status, kind):
    assert error_body(status, "why") == {"type": "error", "error": {"type": kind, "message": "why"}}
