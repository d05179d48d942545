"""Ollama's routes, driven by the official `ollama` Python client against a real `jupyter server`."""

from __future__ import annotations

import ollama
import pytest

pytestmark = pytest.mark.timeout(300)
HELLO = [{"role": "user", "content": "Say hello"}]
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 12}


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


def test_ps_shows_the_loaded_model(client):
    client.generate(model="ai/tiny", prompt="hi", options=OPTIONS)
    running = client.ps().models
    assert any(m.model.endswith("ai/tiny:latest") for m in running)


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
