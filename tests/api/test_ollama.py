"""Ollama's routes, driven by the official `ollama` Python client against a real `jupyter server`."""

from __future__ import annotations

import os
import signal
import time

import httpx
import ollama
import pytest
from pydantic import BaseModel

from ..conftest import TOOL_CALL_PREFILL, WEATHER_TOOL

pytestmark = pytest.mark.timeout(300)
HELLO = [{"role": "user", "content": "Say hello"}]
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 12}
#: With `ai/tiny-long`, a stream that lasts seconds: the tiny model never picks its end token at temperature 0.
LONG_OPTIONS = {"temperature": 0, "num_predict": 12000}


@pytest.fixture(scope="module")
def client(jupyter) -> ollama.Client:
    return ollama.Client(host=jupyter.url.rstrip("/"), headers=jupyter.headers)


def test_tags_version_and_show(client):
    names = [m.model for m in client.list().models]
    assert any(n.endswith("ai/tiny:latest") for n in names)
    assert client.list().models[0].details.format == "gguf"
    assert client._client.get("/api/version").json()["version"]
    shown = client.show("ai/tiny")
    assert shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"


def test_chat_streams_the_same_answer_it_gives_whole(client):
    whole = client.chat(model="ai/tiny", messages=HELLO, options=OPTIONS)
    assert whole.done and whole.message.content
    assert whole.eval_count and whole.eval_count > 0
    parts = list(client.chat(model="ai/tiny", messages=HELLO, options=OPTIONS, stream=True))
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert "".join(p.message.content for p in parts) == whole.message.content


def test_generate_and_embed(client):
    answer = client.generate(model="ai/tiny", prompt="Say hello", options=OPTIONS)
    assert answer.done and answer.response
    vectors = client.embed(model="ai/tiny", input=["a", "b"])
    assert len(vectors.embeddings) == 2 and len(vectors.embeddings[0]) == 64


def test_legacy_embeddings_give_the_vector_embed_gives(client):
    vector = client.embeddings(model="ai/tiny", prompt="hello").embedding
    assert len(vector) == 64
    assert list(vector) == client.embed(model="ai/tiny", input="hello").embeddings[0]
    assert list(client.embeddings(model="ai/tiny", prompt="").embedding) == []


def test_copy_names_the_model_again_and_push_uploads_it(client, registry):
    name = f"ai/tiny-copy-{os.urandom(3).hex()}"
    assert client.copy("ai/tiny", name).status == "success"
    assert any(m.model.endswith(f"{name}:latest") for m in client.list().models)
    assert client.show(name).details.format == "gguf"
    assert client.push(name).status == "success"
    tags = httpx.get(f"http://{registry.host}/v2/{name}/tags/list", trust_env=False).json()
    assert tags["tags"] == ["latest"]
    statuses = [part.status for part in client.push(name, stream=True)]
    assert statuses[-1] == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        client.copy("ai/absent", "ai/other")
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as caught:
        client.push("ai/absent")
    assert caught.value.status_code == 404 and "ai/absent" in caught.value.error


def test_ps_shows_the_loaded_model(client):
    client.generate(model="ai/tiny", prompt="hi", options=OPTIONS)
    running = client.ps().models
    assert any(m.model.endswith("ai/tiny:latest") for m in running)


def runner_of(jupyter, model: str) -> dict:
    with jupyter.client() as http:
        return next(r for r in http.get("engines/ps").json() if r["model_name"].endswith(model + ":latest"))


def leave_mid_stream(client: ollama.Client) -> None:
    """Read a few parts of a long streamed chat, then hang up, as an interrupted cell does."""
    stream = client.chat(model="ai/tiny-long", messages=HELLO, options=LONG_OPTIONS, stream=True)
    for count, part in enumerate(stream):
        assert not part.done
        if count == 5:
            break
    stream.close()  # closes the HTTP response, and so the connection


def test_a_client_that_leaves_mid_stream_frees_the_engine_and_is_answered_again_at_once(jupyter, client):
    """The interrupted-cell case, as with the OpenAI routes: the next request needs no waiting."""
    for _ in range(5):
        leave_mid_stream(client)
        started = time.monotonic()
        assert client.chat(model="ai/tiny-long", messages=HELLO, options=OPTIONS).message.content
        assert time.monotonic() - started < 5  # the engine is not still generating the abandoned answer
    deadline = time.monotonic() + 5
    while runner_of(jupyter, "ai/tiny-long")["in_use"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runner_of(jupyter, "ai/tiny-long")["in_use"]
    # No connection to the engine was left open: it stops at once when asked (one left open holds its exit until
    # the scheduler's grace period, 10 s, runs out and it is killed).
    started = time.monotonic()
    with jupyter.client() as http:
        assert http.post("engines/unload", json={"models": ["ai/tiny-long"]}).json()["unloaded_runners"] == 1
    assert time.monotonic() - started < 5


def test_engine_killed_mid_stream_ends_the_stream_with_ollamas_error_and_the_next_chat_works(jupyter, client):
    client.chat(model="ai/tiny-long", messages=HELLO, options=OPTIONS)
    pid = runner_of(jupyter, "ai/tiny-long")["pid"]
    received = 0
    with pytest.raises(ollama.ResponseError) as caught:
        for _part in client.chat(model="ai/tiny-long", messages=HELLO, options=LONG_OPTIONS, stream=True):
            received += 1
            if received == 3:
                os.killpg(pid, signal.SIGKILL)
    assert received >= 3
    assert "llama.cpp" in caught.value.error
    assert client.chat(model="ai/tiny-long", messages=HELLO, options=OPTIONS).message.content  # a fresh engine
    assert runner_of(jupyter, "ai/tiny-long")["pid"] != pid


def test_unknown_model_raises_the_clients_error_with_our_message(client):
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="ai/absent", messages=HELLO)
    assert caught.value.status_code == 404
    assert "pull ai/absent" in caught.value.error


def test_pull_and_delete(client):
    progress = list(client.pull("ai/tiny-st", stream=True))
    assert progress[-1].status == "success"
    assert any(p.completed for p in progress if p.total)
    assert any(m.model.endswith("ai/tiny-st:latest") for m in client.list().models)
    client.delete("ai/tiny-st")
    assert not any(m.model.endswith("ai/tiny-st:latest") for m in client.list().models)
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("127.0.0.1:1/ai/tiny")
    assert caught.value.status_code == 503


# -- structured output and tools (llama-server) -----------------------------------------------------------


class City(BaseModel):
    name: str
    country: str


def test_format_with_a_json_schema_returns_json_that_validates(client, smollm2_tools):
    """`ollama.chat(format=Model.model_json_schema())`, as Ollama's docs show for structured outputs."""
    answer = client.chat(model=smollm2_tools, format=City.model_json_schema(), options={"temperature": 0},
                         messages=[{"role": "user", "content": "Name the capital of France and its country."}])
    city = City.model_validate_json(answer.message.content)
    assert city.name and city.country


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_come_back_as_ollama_tool_calls(client, smollm2_tools, stream):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}, TOOL_CALL_PREFILL]
    # Ollama has no tool_choice; the runner reads OpenAI's from options (see ollama_translate._tool_choice).
    answer = client.chat(model=smollm2_tools, messages=messages, tools=[WEATHER_TOOL], stream=stream,
                         options={"temperature": 0, "num_predict": 100, "tool_choice": "get_weather"})
    if stream:
        parts = list(answer)
        calls = [call for part in parts for call in part.message.tool_calls or []]
        assert parts[-1].done
    else:
        calls = answer.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments["city"], str)  # Ollama's arguments are an object, not a string


def test_show_advertises_tools_only_where_the_template_supports_them(client, smollm2_tools):
    assert "tools" in client.show(smollm2_tools).capabilities
    assert "tools" not in client.show("ai/tiny").capabilities
