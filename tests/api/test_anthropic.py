"""Anthropic's Messages API, driven by the official `anthropic` SDK against a real `jupyter server`."""

from __future__ import annotations

import os
import signal

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from jupyter_modelrunner.engines.vllm import default_vllm_python

from ..conftest import TOOL_CALL_PREFILL, WEATHER_TOOL

pytestmark = pytest.mark.timeout(300)
HELLO = [{"role": "user", "content": "Say hello"}]
#: Newer SDKs have no `temperature` argument; the API (and the runner) still read it from the body.
SETTINGS = {"max_tokens": 12, "extra_body": {"temperature": 0}}
WEATHER = {"name": "get_weather", "description": WEATHER_TOOL["function"]["description"],
           "input_schema": WEATHER_TOOL["function"]["parameters"]}


@pytest.fixture(scope="module")
def client(jupyter) -> anthropic.Anthropic:
    """What a notebook user writes: the runner's URL and the Jupyter token as the API key (sent as `x-api-key`)."""
    return anthropic.Anthropic(base_url=jupyter.url.rstrip("/"), api_key=jupyter.token, max_retries=0)


def answer(client: anthropic.Anthropic, model: str = "ai/tiny", **extra) -> anthropic.types.Message:
    return client.messages.create(model=model, messages=extra.pop("messages", HELLO), **{**SETTINGS, **extra})


def test_create_answers_like_the_openai_route_under_the_name_asked(jupyter, client):
    message = answer(client)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == "ai/tiny"
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 12
    # The same model, prompt and settings through the OpenAI route say the same thing: nothing lost in translation.
    chat = openai.OpenAI(base_url=jupyter.url + "v1", api_key=jupyter.token, max_retries=0)
    expected = chat.chat.completions.create(model="ai/tiny", messages=HELLO, max_tokens=12,
                                            temperature=0).choices[0].message.content
    assert message.content[0].text == expected


def test_the_routes_where_docker_model_runner_serves_them_answer_alike(jupyter, client):
    expected = answer(client).content[0].text
    for path in ("anthropic", "engines", "engines/llama.cpp"):
        other = anthropic.Anthropic(base_url=jupyter.url + path, api_key=jupyter.token, max_retries=0)
        assert answer(other).content[0].text == expected


def test_stream_gives_the_same_text_and_final_message(client):
    whole = answer(client)
    with client.messages.stream(model="ai/tiny", messages=HELLO, **SETTINGS) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == whole.content[0].text == final.content[0].text
    assert final.model == "ai/tiny" and final.id.startswith("msg_")
    assert final.stop_reason == whole.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens,
                                                                     whole.usage.output_tokens)


def test_stream_events_come_in_anthropics_order(client):
    events = [event.type for event in answer(client, stream=True)]
    assert events[:2] == ["message_start", "content_block_start"]
    assert set(events[2:-3]) == {"content_block_delta"}
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_a_stop_sequence_ends_the_answer_and_is_named(client):
    text = answer(client, max_tokens=24).content[0].text
    stop = text.split()[len(text.split()) // 2]  # a word the answer is known to reach
    message = answer(client, max_tokens=24, stop_sequences=[stop])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert text.startswith(message.content[0].text) and stop not in message.content[0].text
    with client.messages.stream(model="ai/tiny", messages=HELLO, **{**SETTINGS, "max_tokens": 24},
                                stop_sequences=[stop]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)


def test_count_tokens_is_the_prompt_the_model_is_given(client):
    system = "You answer in one word."
    counted = client.messages.count_tokens(model="ai/tiny", system=system, messages=HELLO)
    message = answer(client, system=system)
    assert counted.input_tokens == message.usage.input_tokens
    longer = [{"role": "user", "content": [{"type": "text", "text": "Say hello"},
                                           {"type": "text", "text": "and goodbye, twice over"}]}]
    assert client.messages.count_tokens(model="ai/tiny", system=system,
                                        messages=longer).input_tokens > counted.input_tokens


def test_unknown_model_raises_not_found_in_anthropics_error_shape(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        answer(client, model="ai/not-pulled")
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "pull ai/not-pulled" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="ai/not-pulled", messages=HELLO)


def test_a_request_anthropic_would_refuse_is_an_invalid_request_error(client):
    with pytest.raises(anthropic.BadRequestError) as caught:
        answer(client, tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "server tools" in caught.value.body["error"]["message"]


def test_a_wrong_key_is_refused(jupyter):
    stranger = anthropic.Anthropic(base_url=jupyter.url.rstrip("/"), api_key="wrong-token", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:  # 401, as Anthropic's API answers a bad key
        answer(stranger)
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert "key create" in caught.value.body["error"]["message"]
    # The token as a bearer (`auth_token`) works as well as `api_key`.
    bearer = anthropic.Anthropic(base_url=jupyter.url.rstrip("/"), auth_token=jupyter.token, max_retries=0)
    assert answer(bearer).content


def test_on_vllm_count_tokens_and_stop_sequences_work_as_on_llama_cpp(jupyter, client):
    """vLLM counts with its own `/tokenize` (messages in, template applied) and names the matched stop sequence in
    `stop_reason`: the same answers through the same routes as llama-server's."""
    if default_vllm_python() is None:
        pytest.skip("no vLLM environment (jupyter modelrunner install-runner vllm)")
    with jupyter.client() as http:
        assert http.post("models/create", json={"from": "ai/tiny-st"}).status_code == 200
    counted = client.messages.count_tokens(model="ai/tiny-st", system="Be brief.", messages=HELLO)
    message = answer(client, model="ai/tiny-st", system="Be brief.", max_tokens=24)
    assert message.model == "ai/tiny-st" and message.content[0].text
    assert counted.input_tokens == message.usage.input_tokens
    text = message.content[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]  # the byte-level tiny model's output has few spaces
    stopped = answer(client, model="ai/tiny-st", system="Be brief.", max_tokens=24, stop_sequences=[stop])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    with client.messages.stream(model="ai/tiny-st", system="Be brief.", messages=HELLO, stop_sequences=[stop],
                                **{**SETTINGS, "max_tokens": 24}) as stream:
        assert "".join(stream.text_stream) == stopped.content[0].text
        assert stream.get_final_message().stop_sequence == stop
    with jupyter.client() as http:
        http.post("engines/unload", json={"models": ["ai/tiny-st"]})


def runner_of(jupyter, model: str) -> dict:
    with jupyter.client() as http:
        return next(r for r in http.get("engines/ps").json() if r["model_name"].endswith(model + ":latest"))


def test_engine_killed_mid_stream_ends_the_stream_with_an_error_event(jupyter, client):
    answer(client, model="ai/tiny-long")
    pid = runner_of(jupyter, "ai/tiny-long")["pid"]
    received = 0
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in answer(client, model="ai/tiny-long", max_tokens=12000, stream=True):
            received += event.type == "content_block_delta"
            if received == 3:
                os.killpg(pid, signal.SIGKILL)
    assert received >= 3
    assert caught.value.body["type"] == "error" and "llama.cpp" in caught.value.body["error"]["message"]
    assert answer(client, model="ai/tiny-long").content  # a fresh engine answers


def test_x_api_key_does_not_open_other_routes(jupyter):
    """The Anthropic routes read `x-api-key` for the SDK's sake; the rest of the API still wants the token."""
    response = httpx.get(jupyter.url + "models", headers={"x-api-key": jupyter.token}, trust_env=False)
    assert response.status_code == 403


# -- tools (llama-server, Qwen2.5's template) ---------------------------------------------------------------------


def weather_request(model: str) -> dict:
    """A forced call of `get_weather`; the prefilled assistant turn makes even a 135M model's continuation the call
    (see tests/conftest.py)."""
    return {"model": model, "max_tokens": 100, "extra_body": {"temperature": 0}, "tools": [WEATHER],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [{"role": "user", "content": "What is the weather in Paris?"},
                         {"role": "assistant", "content": TOOL_CALL_PREFILL["content"]}]}


def test_a_forced_tool_call_comes_back_as_a_tool_use_block(client, smollm2_tools):
    message = client.messages.create(**weather_request(smollm2_tools))
    assert message.stop_reason == "tool_use"
    call = next(block for block in message.content if block.type == "tool_use")
    assert call.name == "get_weather" and call.id
    assert isinstance(call.input["city"], str)
    with client.messages.stream(**weather_request(smollm2_tools)) as stream:
        final = stream.get_final_message()
    streamed = next(block for block in final.content if block.type == "tool_use")
    assert (streamed.name, streamed.input) == (call.name, call.input)
    assert final.stop_reason == "tool_use"
    # The tool's result goes back as a `tool_result` block, and the model answers from it.
    follow_up = client.messages.create(
        model=smollm2_tools, max_tokens=20, extra_body={"temperature": 0}, tools=[WEATHER],
        messages=[{"role": "user", "content": "What is the weather in Paris?"},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name,
                                                     "input": call.input}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": "Sunny, 24 degrees"}]}])
    assert follow_up.content and follow_up.content[0].type == "text" and follow_up.content[0].text


class City(BaseModel):
    name: str
    country: str


def test_parse_with_a_pydantic_output_format_returns_an_instance(client, smollm2_tools):
    """`messages.parse(output_format=Model)` sends `output_config.format` (a JSON schema), which the engine enforces."""
    message = client.messages.parse(
        model=smollm2_tools, max_tokens=64, extra_body={"temperature": 0}, output_format=City,
        messages=[{"role": "user", "content": "Name the capital of France and its country."}])
    assert isinstance(message.parsed_output, City) and message.parsed_output.name
