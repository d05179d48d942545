"""The OpenAI Responses <-> chat completions translation, the stream of Responses events, and the response store."""

from __future__ import annotations

import json

import pytest

from jupyter_modelrunner.api.responses_translate import (
    ResponseStore,
    ResponseStream,
    StoredResponse,
    assistant_message,
    input_items_page,
    new_response,
    request_to_openai,
    response_from_openai,
    sse,
)

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def completion(message: dict, finish_reason: str = "stop") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "model",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16,
                      "prompt_tokens_details": {"cached_tokens": 3}}}


def chunk(delta: dict | None = None, finish_reason: str | None = None, **extra) -> dict:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}], **extra}


# -- requests ----------------------------------------------------------------------------------------------------


def test_a_string_input_with_instructions_and_settings_becomes_a_chat_request():
    translated = request_to_openai({"model": "ai/smollm2", "input": "Hi", "instructions": "Be brief.",
                                    "max_output_tokens": 30, "temperature": 0.1, "top_p": 0.5, "store": False,
                                    "metadata": {"a": "b"}, "reasoning": {"effort": "low"}})
    assert translated.chat == {"model": "ai/smollm2", "max_tokens": 30, "temperature": 0.1, "top_p": 0.5,
                               "reasoning_effort": "low", "messages": [{"role": "system", "content": "Be brief."},
                                                                       {"role": "user", "content": "Hi"}]}
    assert translated.conversation == [{"role": "user", "content": "Hi"}]  # instructions are not carried over
    [item] = translated.input_items
    assert item["type"] == "message" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "Hi"}]


def test_streaming_asks_for_usage():
    chat = request_to_openai({"model": "m", "input": "Hi", "stream": True}).chat
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_items_become_messages_calls_join_their_turn_and_outputs_are_tool_messages():
    translated = request_to_openai({"model": "m", "input": [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in"},
                                                        {"type": "input_text", "text": "Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,QUJD"},
                                     {"type": "input_text", "text": "And this?"}]}]})
    assert translated.chat["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in\nParis?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                                     {"type": "text", "text": "And this?"}]}]
    assert [item["id"][:3] for item in translated.input_items] == ["msg", "msg", "rs_", "msg", "fc_", "fco", "msg"]


def test_a_function_call_with_no_turn_before_it_is_an_assistant_turn_of_its_own():
    messages = request_to_openai({"model": "m", "input": [
        {"role": "user", "content": "Hi"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}).chat["messages"]
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def test_history_comes_before_the_new_input():
    history = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada."}]
    translated = request_to_openai({"model": "m", "input": "Who am I?", "instructions": "Be brief."}, history)
    assert translated.chat["messages"] == [{"role": "system", "content": "Be brief."}, *history,
                                           {"role": "user", "content": "Who am I?"}]
    assert translated.conversation == [*history, {"role": "user", "content": "Who am I?"}]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", "auto"), ("required", "required"), ("none", "none"),
    ({"type": "function", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_function_tools_and_tool_choice_become_chats(choice, expected):
    chat = request_to_openai({"model": "m", "input": "Hi", "tools": [WEATHER], "tool_choice": choice,
                              "parallel_tool_calls": False}).chat
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER["parameters"]}}]
    assert chat["tool_choice"] == expected and chat["parallel_tool_calls"] is False


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "name": "City", "schema": {"type": "object"}, "strict": True},
     {"type": "json_schema", "json_schema": {"name": "City", "schema": {"type": "object"}, "strict": True}}),
])
def test_text_format_becomes_response_format(fmt, expected):
    chat = request_to_openai({"model": "m", "input": "Hi", "text": {"format": fmt}}).chat
    assert chat.get("response_format") == expected


@pytest.mark.parametrize(("body", "message"), [
    ({"input": "Hi"}, "model is required"),
    ({"model": "m"}, "input is required"),
    ({"model": "m", "input": "Hi", "background": True}, "background"),
    ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input_file"),
    ({"model": "m", "input": "Hi", "tools": [{"type": "web_search"}]}, "hosted by OpenAI"),
    ({"model": "m", "input": "Hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}}, "not among"),
    ({"model": "m", "input": "Hi", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"model": "m", "input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_requests_that_cannot_be_served_are_refused_with_a_reason(body, message):
    with pytest.raises(ValueError, match=message):
        request_to_openai(body)


# -- whole answers -----------------------------------------------------------------------------------------------


def test_the_response_echoes_the_request_and_starts_in_progress():
    base = new_response({"model": "ai/smollm2", "input": "Hi", "instructions": "Be brief.", "store": False,
                         "tools": [WEATHER], "previous_response_id": "resp_0"}, response_id="resp_1", created_at=5)
    assert base["id"] == "resp_1" and base["object"] == "response" and base["created_at"] == 5
    assert base["status"] == "in_progress" and base["output"] == [] and base["usage"] is None
    assert (base["model"], base["instructions"], base["store"], base["tools"], base["previous_response_id"]) == (
        "ai/smollm2", "Be brief.", False, [WEATHER], "resp_0")
    assert base["text"] == {"format": {"type": "text"}} and base["tool_choice"] == "auto"


def test_a_text_completion_becomes_a_completed_response_with_one_message():
    response = response_from_openai(new_response({"model": "m"}), completion({"content": "Hello!"}))
    assert response["status"] == "completed" and response["incomplete_details"] is None
    [item] = response["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"] == [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}]
    assert response["usage"] == {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 5,
                                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 16}


def test_running_out_of_tokens_is_incomplete():
    response = response_from_openai(new_response({"model": "m"}), completion({"content": "Hel"}, "length"))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_reasoning_and_tool_calls_become_their_own_output_items():
    response = response_from_openai(new_response({"model": "m"}), completion({
        "content": None, "reasoning_content": "need weather",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}, "tool_calls"))
    reasoning, call = response["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [{"type": "reasoning_text",
                                                                         "text": "need weather"}]
    assert call["type"] == "function_call" and call["id"].startswith("fc_")
    assert (call["call_id"], call["name"], call["arguments"]) == ("call_1", "get_weather", '{"city":"Paris"}')
    assert assistant_message(response) == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}


def test_input_items_are_listed_newest_first_unless_asked():
    items = [{"id": "msg_1"}, {"id": "msg_2"}]
    assert input_items_page(items) == {"object": "list", "data": [{"id": "msg_2"}, {"id": "msg_1"}],
                                       "first_id": "msg_2", "last_id": "msg_1", "has_more": False}
    assert [i["id"] for i in input_items_page(items, order="asc")["data"]] == ["msg_1", "msg_2"]


# -- streams -----------------------------------------------------------------------------------------------------


def run(stream: ResponseStream, chunks: list[dict]) -> list[dict]:
    return [*stream.start(), *[e for c in chunks for e in stream.feed(c)], *stream.finish()]


def test_a_text_stream_has_the_whole_event_sequence_numbered():
    stream = ResponseStream(new_response({"model": "m"}, response_id="resp_1"))
    events = run(stream, [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                          chunk({"content": "lo"}), chunk({}, "stop"),
                          {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(10))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    added, done = events[2], events[8]
    assert added["item"]["status"] == "in_progress" and added["item"]["content"] == []
    assert done["item"]["status"] == "completed" and done["item"]["content"][0]["text"] == "Hello"
    assert events[4]["item_id"] == added["item"]["id"] and events[4]["delta"] == "Hel"
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"] == [done["item"]]
    assert final["usage"]["input_tokens"] == 9 and final["usage"]["output_tokens"] == 2
    assert stream.finished and stream.response == final


def test_a_stream_cut_by_max_output_tokens_ends_incomplete():
    events = run(ResponseStream(new_response({"model": "m"})), [chunk({"content": "Hel"}), chunk({}, "length")])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_reasoning_then_tool_calls_are_items_one_after_another():
    events = run(ResponseStream(new_response({"model": "m"})), [
        chunk({"reasoning_content": "hmm"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls")])
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(i["type"], i.get("name")) for i in added] == [("reasoning", None), ("function_call", "get_weather"),
                                                          ("function_call", "get_time")]
    assert [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"] == ["hmm"]
    first = [e["delta"] for e in events
             if e["type"] == "response.function_call_arguments.delta" and e["item_id"] == added[1]["id"]]
    assert json.loads("".join(first)) == {"city": "Paris"}
    arguments_done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"]) for e in arguments_done] == [("get_weather", '{"city": "Paris"}'),
                                                                      ("get_time", "{}")]
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert [item["status"] for item in final["output"]] == ["completed"] * 3
    assert final["output"][1]["call_id"] == "call_1"


def test_a_failure_mid_stream_is_an_error_event_then_response_failed():
    stream = ResponseStream(new_response({"model": "m"}))
    stream.start()
    stream.feed(chunk({"content": "Hel"}))
    error, failed = stream.fail(502, "llama.cpp stopped while answering")
    assert error == {"type": "error", "sequence_number": 5, "code": "server_error",
                     "message": "llama.cpp stopped while answering", "param": None}
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "llama.cpp stopped while answering"}
    assert not stream.finished
    with pytest.raises(ValueError, match="boom"):
        ResponseStream(new_response({"model": "m"})).feed({"error": {"message": "boom"}})


def test_events_are_named_server_sent_events():
    assert sse([{"type": "response.created", "sequence_number": 0}]) == (
        b'event: response.created\ndata: {"type": "response.created", "sequence_number": 0}\n\n')


# -- the store ---------------------------------------------------------------------------------------------------


def stored(response_id: str) -> StoredResponse:
    return StoredResponse({"id": response_id}, [])


def test_the_store_keeps_the_most_recently_used_within_its_limit():
    store = ResponseStore(limit=2)
    store.put(stored("a"))
    store.put(stored("b"))
    assert store.get("a") is not None  # a is now the most recently used
    store.put(stored("c"))
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert len(store) == 2
    assert store.delete("a") and not store.delete("a") and store.get("a") is None
