"""The OpenAI-compatible endpoint, driven by the real `openai` SDK against a real `jupyter server`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest
from pydantic import BaseModel

from ..conftest import TOOL_CALL_PREFILL, WEATHER_TOOL

pytestmark = pytest.mark.timeout(300)
HELLO = [{"role": "user", "content": "Say hello"}]
#: A stream that lasts seconds: the tiny model never picks its end token at temperature 0.
LONG = {"model": "ai/tiny-long", "messages": HELLO, "max_tokens": 12000, "stream": True, "temperature": 0}


@pytest.fixture(scope="module", params=["jupyter", "standalone"])
def jupyter(request):
    """Every test runs against the extension in `jupyter server` and against `jupyter modelrunner serve`."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def sdk(jupyter) -> openai.OpenAI:
    """What a notebook user writes: the base URL and the Jupyter token as the API key."""
    return openai.OpenAI(base_url=jupyter.url + "engines/v1", api_key=jupyter.token, max_retries=0)


def chat_text(client: openai.OpenAI, model: str = "ai/tiny", **extra) -> str:
    response = client.chat.completions.create(model=model, messages=HELLO, temperature=0, seed=1, max_tokens=12,
                                              **extra)
    return response.choices[0].message.content


def test_models_list_names_the_pulled_models(sdk):
    ids = [m.id for m in sdk.models.list()]
    assert any(i.endswith("ai/tiny:latest") for i in ids)
    assert all(m.object == "model" for m in sdk.models.list())


def test_chat_completion_answers_deterministically_under_the_name_asked(sdk):
    response = sdk.chat.completions.create(model="ai/tiny", messages=HELLO, temperature=0, seed=1, max_tokens=12)
    assert response.model == "ai/tiny"  # not the engine's internal name
    assert response.choices[0].message.content
    assert chat_text(sdk) == response.choices[0].message.content


def test_streaming_chat_yields_the_same_text_piece_by_piece(sdk):
    stream = sdk.chat.completions.create(model="ai/tiny", messages=HELLO, temperature=0, seed=1, max_tokens=12,
                                         stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == chat_text(sdk)


def test_completions_and_embeddings(sdk):
    text = sdk.completions.create(model="ai/tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert text.choices[0].text
    vectors = sdk.embeddings.create(model="ai/tiny", input=["hello", "world"])
    assert len(vectors.data) == 2
    assert len(vectors.data[0].embedding) == 64  # the tiny model's hidden size
    assert vectors.data[0].embedding != vectors.data[1].embedding


def test_v1_alias_and_engine_route_give_the_same_answer(jupyter, sdk):
    expected = chat_text(sdk)
    for path in ("v1", "engines/llama.cpp/v1"):
        client = openai.OpenAI(base_url=jupyter.url + path, api_key=jupyter.token, max_retries=0)
        assert chat_text(client) == expected
    llama_models = openai.OpenAI(base_url=jupyter.url + "engines/llama.cpp/v1", api_key=jupyter.token).models.list()
    assert any(m.id.endswith("ai/tiny:latest") for m in llama_models)


def test_unknown_model_is_a_404_with_the_pull_command(sdk):
    with pytest.raises(openai.NotFoundError) as caught:
        chat_text(sdk, model="ai/not-pulled")
    assert "pull ai/not-pulled" in str(caught.value)


def test_wrong_token_is_refused(jupyter):
    client = openai.OpenAI(base_url=jupyter.url + "engines/v1", api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:  # 401, as OpenAI answers a bad key
        client.models.list()
    assert "key create" in caught.value.body["message"]


def runner_of(jupyter, model: str) -> dict:
    with jupyter.client() as http:
        return next(r for r in http.get("engines/ps").json() if r["model_name"].endswith(model + ":latest"))


def test_client_disconnecting_mid_stream_frees_the_engine(jupyter, sdk):
    stream = sdk.chat.completions.create(**LONG)
    for count, _chunk in enumerate(stream):
        if count == 5:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while runner_of(jupyter, "ai/tiny-long")["in_use"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runner_of(jupyter, "ai/tiny-long")["in_use"]
    started = time.monotonic()
    assert chat_text(sdk, model="ai/tiny-long")
    assert time.monotonic() - started < 5  # the engine is not still generating the abandoned answer


def test_a_client_that_leaves_mid_stream_and_asks_again_at_once_is_answered(jupyter, sdk):
    """The interrupted-cell case: no waiting for the server to notice before the next request."""
    for _ in range(5):
        stream = sdk.chat.completions.create(**LONG)
        for count, _chunk in enumerate(stream):
            if count == 5:
                break
        stream.close()
        started = time.monotonic()
        assert chat_text(sdk, model="ai/tiny-long")
        assert time.monotonic() - started < 5


def test_engine_killed_mid_stream_gives_an_error_event_and_the_next_request_works(jupyter, sdk):
    chat_text(sdk, model="ai/tiny-long")
    pid = runner_of(jupyter, "ai/tiny-long")["pid"]
    stream = sdk.chat.completions.create(**LONG)
    received = 0
    with pytest.raises(openai.APIError) as caught:
        for _chunk in stream:
            received += 1
            if received == 3:
                os.killpg(pid, signal.SIGKILL)
    assert received >= 3
    assert "llama.cpp" in str(caught.value.message) or "llama.cpp" in str(caught.value.body)
    assert chat_text(sdk, model="ai/tiny-long")  # a fresh engine answers
    assert runner_of(jupyter, "ai/tiny-long")["pid"] != pid


def test_sixteen_concurrent_streams_complete_while_the_server_stays_responsive(jupyter, sdk):
    expected = chat_text(sdk)
    results: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            stream = sdk.chat.completions.create(model="ai/tiny", messages=HELLO, temperature=0, seed=1,
                                                 max_tokens=12, stream=True)
            results.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for thread in threads:
        thread.start()
    slowest = 0.0
    with httpx.Client(base_url=jupyter.origin, headers=jupyter.headers, trust_env=False) as http:
        while any(t.is_alive() for t in threads):
            started = time.perf_counter()
            assert http.get("api/status").status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.02)
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [expected] * 16  # every stream intact, none interleaved with another
    assert slowest < 1.0  # generous: benchmarks/endpoint.py measures the p99


# -- structured output, tool calls and parallel slots (llama-server) --------------------------------------


class City(BaseModel):
    name: str
    country: str


def test_parse_with_a_pydantic_model_returns_an_instance(sdk, smollm2_tools):
    """What `client.chat.completions.parse(response_format=Model)` (and LangChain's with_structured_output) send:
    a `json_schema` response format, answered with JSON the schema's grammar allowed."""
    completion = sdk.chat.completions.parse(
        model=smollm2_tools, messages=[{"role": "user", "content": "Name the capital of France and its country."}],
        response_format=City, temperature=0, max_tokens=64)
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and city.name and city.country


def tool_call_request(model: str, **extra) -> dict:
    return {"model": model, "temperature": 0, "max_tokens": 100, "tools": [WEATHER_TOOL], "parallel_tool_calls": False,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}, TOOL_CALL_PREFILL], **extra}


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_calls_come_back_parsed(sdk, smollm2_tools, tool_choice):
    response = sdk.chat.completions.create(**tool_call_request(smollm2_tools, tool_choice=tool_choice))
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_streamed_tool_call_deltas_add_up_to_the_same_call(sdk, smollm2_tools):
    whole = sdk.chat.completions.create(**tool_call_request(smollm2_tools, tool_choice="required"))
    calls: dict[int, dict] = {}
    finish = None
    for chunk in sdk.chat.completions.create(**tool_call_request(smollm2_tools, tool_choice="required", stream=True)):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls" and calls
    expected = whole.choices[0].message.tool_calls[0].function
    assert calls[0]["name"] == expected.name
    assert json.loads(calls[0]["arguments"]) == json.loads(expected.arguments)


def test_eight_streams_are_answered_at_once_by_the_engines_slots(jupyter, sdk):
    """Eight streams are generated together by the engine's slots (its own metrics say eight are processing at
    one moment), each ends intact, and the server keeps answering meanwhile."""
    finished: list[tuple[str, str | None]] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            text, finish = [], None
            stream = sdk.chat.completions.create(model="ai/tiny-long", temperature=0, max_tokens=1500, stream=True,
                                                 messages=[{"role": "user", "content": f"Count to {i}"}])
            for chunk in stream:
                for choice in chunk.choices:
                    text.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
            finished.append(("".join(text), finish))
        except BaseException as exc:
            errors.append(exc)

    chat_text(sdk, model="ai/tiny-long")  # loaded first: the streams measure answering, not loading
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    at_once = 0
    with httpx.Client(base_url=jupyter.url, headers=jupyter.headers, trust_env=False) as http:
        while any(t.is_alive() for t in threads):
            assert http.get(jupyter.origin + "api/status").status_code == 200
            page = http.get("metrics").text
            at_once = max([at_once] + [int(float(line.rsplit(" ", 1)[1])) for line in page.splitlines()
                                       if line.startswith("llamacpp:requests_processing{")
                                       and "ai/tiny-long" in line])
            time.sleep(0.05)
    assert not errors and len(finished) == 8
    assert all(text and finish == "length" for text, finish in finished)  # 1500 tokens each, none cut short
    assert at_once == 8  # all eight were being generated at one moment
    assert runner_of(jupyter, "ai/tiny-long")["slots"] >= 8


# -- one model: GET v1/models/{id} ------------------------------------------------------------------------------


def test_retrieve_a_model_by_any_of_its_names_gives_the_lists_id(jupyter, sdk):
    listed = next(m.id for m in sdk.models.list() if m.id.endswith("ai/tiny:latest"))
    model_id = next(m.model_id for m in sdk.models.list() if m.id == listed)
    for name in ("ai/tiny", listed, model_id.removeprefix("sha256:")[:12]):
        model = sdk.models.retrieve(name)  # the SDK percent-encodes the slash
        assert (model.id, model.object) == (listed, "model")
        assert model.model_id == model_id and model.format == "gguf"
    with jupyter.client() as http:  # as written, unencoded, and under an engine's route
        assert http.get(f"v1/models/{listed}").json()["id"] == listed
        assert http.get("engines/llama.cpp/v1/models/ai/tiny").json()["id"] == listed
        refused = http.get("engines/vllm/v1/models/ai/tiny")
        assert refused.status_code == 404 and "vllm does not run" in refused.json()["error"]["message"]


def test_retrieve_an_unknown_model_is_openais_404(sdk):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("ai/not-pulled:latest")
    assert caught.value.body["type"] == "not_found_error"
    assert "pull ai/not-pulled" in caught.value.body["message"]
