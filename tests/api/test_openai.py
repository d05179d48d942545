"""The OpenAI-compatible endpoint, driven by the real `openai` SDK against a real `jupyter server`."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(300)
HELLO = [{"role": "user", "content": "Say hello"}]


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
    with pytest.raises(openai.PermissionDeniedError):
        client.models.list()


def runner_of(jupyter, model: str) -> dict:
    with jupyter.client() as http:
        return next(r for r in http.get("engines/ps").json() if r["model_name"].endswith(model + ":latest"))


def test_client_disconnecting_mid_stream_frees_the_engine(jupyter, sdk):
    stream = sdk.chat.completions.create(model="ai/tiny-long", messages=HELLO, max_tokens=12000, stream=True)
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
        stream = sdk.chat.completions.create(model="ai/tiny-long", messages=HELLO, max_tokens=12000, stream=True)
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
    stream = sdk.chat.completions.create(model="ai/tiny-long", messages=HELLO, max_tokens=12000, stream=True)
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
