"""OpenAI's Responses API, driven by the official `openai` SDK against a real `jupyter server`."""

from __future__ import annotations

import json
import os
import signal

import openai
import pytest
from pydantic import BaseModel

from ..conftest import TOOL_CALL_PREFILL, WEATHER_TOOL

pytestmark = pytest.mark.timeout(300)
SETTINGS = {"max_output_tokens": 12, "temperature": 0}
WEATHER = {"type": "function", **WEATHER_TOOL["function"]}


@pytest.fixture(scope="module")
def sdk(jupyter) -> openai.OpenAI:
    return openai.OpenAI(base_url=jupyter.url + "engines/v1", api_key=jupyter.token, max_retries=0)


def chat_text(sdk: openai.OpenAI, messages: list[dict], model: str = "ai/tiny") -> str:
    """The same question through chat completions, to compare against."""
    return sdk.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                       temperature=0).choices[0].message.content


def test_create_answers_like_chat_completions_under_the_name_asked(sdk):
    response = sdk.responses.create(model="ai/tiny", input="Say hello", **SETTINGS)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == "ai/tiny"
    assert response.output_text == chat_text(sdk, [{"role": "user", "content": "Say hello"}])
    # The tiny model never chooses to stop at temperature 0: it runs out of max_output_tokens, and says so.
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens == 12
    assert response.usage.total_tokens == response.usage.input_tokens + 12
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")


def test_instructions_are_the_system_message(sdk):
    response = sdk.responses.create(model="ai/tiny", instructions="Answer in French.", input="Say hello", **SETTINGS)
    assert response.instructions == "Answer in French."
    assert response.output_text == chat_text(sdk, [{"role": "system", "content": "Answer in French."},
                                                   {"role": "user", "content": "Say hello"}])


def test_a_stream_has_the_responses_events_in_order_and_adds_up_to_the_same_text(sdk):
    whole = sdk.responses.create(model="ai/tiny", input="Say hello", **SETTINGS)
    events = list(sdk.responses.create(model="ai/tiny", input="Say hello", stream=True, **SETTINGS))
    kinds = [event.type for event in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]  # max_output_tokens ran out, as above
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == whole.output_text == events[-4].text == events[-1].response.output_text
    assert events[0].response.status == "in_progress" and events[-1].response.id == events[0].response.id
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens


def test_the_sdks_stream_helper_collects_the_final_response(sdk, smollm2_tools):
    """`responses.stream()` wants `response.completed`: a model that ends its answer (SmolLM2, not the tiny one)."""
    with sdk.responses.stream(model=smollm2_tools, input="Say hello", max_output_tokens=60, temperature=0) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text
    assert "".join(deltas) == final.output_text
    assert sdk.responses.retrieve(final.id).output_text == final.output_text  # streamed responses are stored too


def test_a_stored_response_is_retrieved_listed_and_deleted(sdk):
    response = sdk.responses.create(model="ai/tiny", input="Say hello", metadata={"cell": "7"}, **SETTINGS)
    again = sdk.responses.retrieve(response.id)
    assert (again.id, again.output_text, again.metadata) == (response.id, response.output_text, {"cell": "7"})
    [item] = sdk.responses.input_items.list(response.id).data
    assert item.type == "message" and item.role == "user" and item.content[0].text == "Say hello"
    sdk.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(response.id)


def test_store_false_keeps_nothing(sdk):
    response = sdk.responses.create(model="ai/tiny", input="Say hello", store=False, **SETTINGS)
    assert response.output_text
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)


def test_previous_response_id_continues_the_conversation(sdk):
    first = sdk.responses.create(model="ai/tiny", input="My name is Ada.", instructions="Be brief.", **SETTINGS)
    second = sdk.responses.create(model="ai/tiny", previous_response_id=first.id, input="What is my name?",
                                  **SETTINGS)
    assert second.previous_response_id == first.id
    # Exactly the conversation so far, as OpenAI defines it: the first input and output, not its instructions.
    assert second.output_text == chat_text(sdk, [{"role": "user", "content": "My name is Ada."},
                                                 {"role": "assistant", "content": first.output_text},
                                                 {"role": "user", "content": "What is my name?"}])
    assert second.usage.input_tokens > first.usage.input_tokens
    with pytest.raises(openai.BadRequestError, match="resp_gone"):
        sdk.responses.create(model="ai/tiny", previous_response_id="resp_gone", input="Hi", **SETTINGS)


def test_input_tokens_counts_what_the_model_is_given(sdk):
    response = sdk.responses.create(model="ai/tiny", input="Say hello", instructions="Be brief.", **SETTINGS)
    counted = sdk.responses.input_tokens.count(model="ai/tiny", input="Say hello", instructions="Be brief.")
    assert counted.input_tokens == response.usage.input_tokens


def test_unknown_model_is_a_404_with_the_pull_command(sdk):
    with pytest.raises(openai.NotFoundError, match="pull ai/not-pulled"):
        sdk.responses.create(model="ai/not-pulled", input="Hi")


def test_engine_killed_mid_stream_ends_with_error_and_response_failed(jupyter, sdk):
    sdk.responses.create(model="ai/tiny-long", input="Say hello", **SETTINGS)
    with jupyter.client() as http:
        pid = next(r["pid"] for r in http.get("engines/ps").json() if r["model_name"].endswith("ai/tiny-long:latest"))
    events, deltas = [], 0
    for event in sdk.responses.create(model="ai/tiny-long", input="Say hello", max_output_tokens=12000,
                                      temperature=0, stream=True):
        events.append(event)
        deltas += event.type == "response.output_text.delta"
        if deltas == 3 and event.type == "response.output_text.delta":
            os.killpg(pid, signal.SIGKILL)
    assert [event.type for event in events[-2:]] == ["error", "response.failed"]
    assert "llama.cpp" in events[-2].message and events[-1].response.error.message == events[-2].message
    with pytest.raises(openai.NotFoundError):  # a failed stream is not stored
        sdk.responses.retrieve(events[-1].response.id)
    assert sdk.responses.create(model="ai/tiny-long", input="Say hello", **SETTINGS).output_text  # a fresh engine


def test_dmr_routes_and_the_engine_route_share_one_store(jupyter, sdk):
    response = sdk.responses.create(model="ai/tiny", input="Say hello", **SETTINGS)
    for path in ("", "v1", "engines", "engines/llama.cpp/v1"):
        client = openai.OpenAI(base_url=jupyter.url + path, api_key=jupyter.token, max_retries=0)
        assert client.responses.retrieve(response.id).output_text == response.output_text
        assert client.responses.create(model="ai/tiny", input="Say hello", **SETTINGS).output_text == \
            response.output_text


# -- tools and structured output (llama-server, Qwen2.5's template) -----------------------------------------------


def weather_input() -> list[dict]:
    """A forced call; the prefilled assistant turn makes a 135M model's continuation the call (tests/conftest.py)."""
    return [{"role": "user", "content": "What is the weather in Paris?"}, TOOL_CALL_PREFILL]


def test_function_tools_are_answered_with_function_call_items_and_continued_with_their_output(sdk, smollm2_tools):
    request = {"model": smollm2_tools, "input": weather_input(), "tools": [WEATHER], "temperature": 0,
               "max_output_tokens": 100, "tool_choice": {"type": "function", "name": "get_weather"},
               "parallel_tool_calls": False}
    response = sdk.responses.create(**request)
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    assert isinstance(json.loads(call.arguments)["city"], str)
    events = list(sdk.responses.create(**request, stream=True))
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    arguments = "".join(e.delta for e in events
                        if e.type == "response.function_call_arguments.delta" and e.item_id == done.item_id)
    assert json.loads(arguments) == json.loads(done.arguments) == json.loads(call.arguments)
    assert events[-1].type == "response.completed"
    answer = sdk.responses.create(model=smollm2_tools, previous_response_id=response.id, tools=[WEATHER],
                                  temperature=0, max_output_tokens=20,
                                  input=[{"type": "function_call_output", "call_id": call.call_id,
                                          "output": "Sunny, 24 degrees"}])
    assert answer.output_text


class City(BaseModel):
    name: str
    country: str


def test_parse_with_a_pydantic_text_format_returns_an_instance(sdk, smollm2_tools):
    response = sdk.responses.parse(model=smollm2_tools, input="Name the capital of France and its country.",
                                   text_format=City, temperature=0, max_output_tokens=64)
    assert isinstance(response.output_parsed, City) and response.output_parsed.name
