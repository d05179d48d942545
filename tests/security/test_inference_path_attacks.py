"""Attacks through the model routes of every API dialect, against a real `serve` with a real llama-server.

Each dialect translates, then takes the one inference path (`service.infer`), so a check there must hold on every
route: a private image URL, audio or video by URL, a tool call the model cannot make, an inference key trying to
manage models through Ollama's options, and a stored response read with someone else's credential.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jupyter_modelrunner.distribution import package_gguf, pull
from jupyter_modelrunner.engines.llamacpp import LlamaServer
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from ..conftest import TEST_API_KEY, server_env
from ..support.imageserver import ImageServer
from ..support.jupyter import ServerProcess

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(LlamaServer().server is None,
                                 reason="llama-server is not installed (jupyter modelrunner install-runner llama.cpp)")]

KEY = {"Authorization": f"Bearer {TEST_API_KEY}"}
#: The server's cap on images per request (c.ModelRunner.max_images_per_request).
MAX_IMAGES = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory, registry, seeded, tiny_vision) -> Store:
    """`ai/tiny-vision` (it can see: a projector) and `ai/tiny` (ChatML, whose template cannot call tools)."""
    store = Store(tmp_path_factory.mktemp("attacks") / "store", registry=registry.host)
    package_gguf(store, tiny_vision.gguf, parse_reference(f"{registry.host}/ai/tiny-vision"), mmproj=tiny_vision.mmproj)
    pull("ai/tiny", store, registry=registry.host)
    return store


@pytest.fixture(scope="module")
def server(tmp_path_factory, store, registry) -> Iterator[ServerProcess]:
    """`serve` as a user starts it: private image URLs refused (the default)."""
    workdir = tmp_path_factory.mktemp("attacks-serve")
    with ServerProcess.standalone(workdir, server_env(workdir, store.root, registry.host),
                                  "--Scheduler.keep_alive=10m", f"--ModelRunner.max_images_per_request={MAX_IMAGES}"
                                  ) as process:
        yield process


@pytest.fixture(scope="module")
def lan() -> Iterator[ImageServer]:
    """A web server on 127.0.0.1, standing for anything private: this machine, the LAN, 169.254.169.254."""
    with ImageServer() as web:
        yield web


def _http(server: ServerProcess, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=headers or server.headers, trust_env=False, timeout=120)


def _running(server: ServerProcess) -> list[str]:
    with _http(server) as http:
        return [entry["model_name"] for entry in http.get("engines/ps").json() if entry.get("mode") != "standby"]


def _private_image_requests(url: str) -> dict[str, tuple[str, dict]]:
    """The same picture by URL, in each dialect's own words."""
    return {
        "openai": ("v1/chat/completions", {"model": "ai/tiny-vision", "max_tokens": 4, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]}),
        "openai-stream": ("engines/llama.cpp/v1/chat/completions", {
            "model": "ai/tiny-vision", "max_tokens": 4, "stream": True, "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}),
        "anthropic": ("v1/messages", {"model": "ai/tiny-vision", "max_tokens": 4, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": url}},
                                         {"type": "text", "text": "What is it?"}]}]}),
        "anthropic-count": ("anthropic/v1/messages/count_tokens", {"model": "ai/tiny-vision", "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": url}}]}]}),
        "responses": ("v1/responses", {"model": "ai/tiny-vision", "max_output_tokens": 4, "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What is it?"},
                                         {"type": "input_image", "image_url": url}]}]}),
        "responses-stream": ("responses", {"model": "ai/tiny-vision", "max_output_tokens": 4, "stream": True,
                                           "input": [{"role": "user", "content": [
                                               {"type": "input_image", "image_url": url}]}]}),
    }


def _message(response: httpx.Response) -> str:
    body = response.json()
    error = body.get("error")
    return str(error.get("message") if isinstance(error, dict) else error or body.get("message"))


@pytest.mark.parametrize("credential", ["token", "key"])
def test_a_private_image_url_is_refused_alike_on_every_dialect_before_anything_loads(server, lan, credential):
    url = lan.url("/red.png")
    headers = server.headers if credential == "token" else KEY
    with _http(server, headers) as http:
        answers = {dialect: http.post(path, json=body)
                   for dialect, (path, body) in _private_image_requests(url).items()}
    wrong = {dialect: f"{r.status_code} {r.text[:200]}" for dialect, r in answers.items()
             if r.status_code != 400 or "non-public address (127.0.0.1)" not in _message(r)}
    assert not wrong, wrong
    assert lan.hits["/red.png"] == 0  # nothing was fetched from the private address, by the runner or an engine
    assert _running(server) == []  # refused before any engine started


def test_more_images_than_the_servers_cap_are_refused_on_every_dialect_before_any_fetch(server, lan):
    urls = [lan.url(f"/green.png?{n}") for n in range(MAX_IMAGES + 1)]
    with _http(server, KEY) as http:
        answers = {
            "openai": http.post("v1/chat/completions", json={"model": "ai/tiny-vision", "max_tokens": 2, "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}} for u in urls]}]}),
            "anthropic": http.post("v1/messages", json={"model": "ai/tiny-vision", "max_tokens": 2, "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": u}} for u in urls]}]}),
            "responses": http.post("v1/responses", json={"model": "ai/tiny-vision", "input": [
                {"role": "user", "content": [{"type": "input_image", "image_url": u} for u in urls]}]}),
        }
    wrong = {d: f"{r.status_code} {r.text[:200]}" for d, r in answers.items()
             if r.status_code != 400 or "max_images_per_request" not in _message(r)}
    assert not wrong, wrong
    assert not any(path.startswith("/green.png") for path in lan.hits)


def test_audio_and_video_urls_are_refused_and_never_fetched(server, lan):
    with _http(server, KEY) as http:
        for part in ({"type": "audio_url", "audio_url": {"url": lan.url("/red.png")}},
                     {"type": "video_url", "video_url": {"url": lan.url("/red.png")}},
                     {"type": "input_audio", "input_audio": {"data": lan.url("/red.png"), "format": "wav"}},
                     {"type": "file", "file": {"file_id": "file-1"}}):
            answer = http.post("v1/chat/completions", json={
                "model": "ai/tiny-vision", "max_tokens": 2, "messages": [{"role": "user", "content": [part]}]})
            assert answer.status_code == 400, (part, answer.text)
            assert part["type"] in _message(answer) or "input_audio" in _message(answer)
    assert lan.hits["/red.png"] == 0
    assert _running(server) == []


TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}


def test_a_required_tool_call_from_a_template_that_cannot_call_tools_is_a_400_on_every_dialect(server):
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    with _http(server, KEY) as http:
        answers = {
            "openai required": http.post("v1/chat/completions", json={
                "model": "ai/tiny", "messages": ask, "tools": [TOOL], "tool_choice": "required", "max_tokens": 8}),
            "openai named": http.post("v1/chat/completions", json={
                "model": "ai/tiny", "messages": ask, "tools": [TOOL], "max_tokens": 8,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            "anthropic": http.post("v1/messages", json={
                "model": "ai/tiny", "messages": ask, "max_tokens": 8, "tool_choice": {"type": "any"},
                "tools": [{"name": "get_weather", "input_schema": TOOL["function"]["parameters"]}]}),
            "ollama": http.post("api/chat", json={
                "model": "ai/tiny", "messages": ask, "stream": False, "tools": [TOOL],
                "options": {"tool_choice": "get_weather", "num_predict": 8}}),
        }
        wrong = {name: f"{r.status_code} {r.text[:200]}" for name, r in answers.items()
                 if r.status_code != 400 or "cannot call tools" not in _message(r)}
        assert not wrong, wrong
        # `auto` leaves the choice to the model: answered
        auto = http.post("v1/chat/completions", json={"model": "ai/tiny", "messages": ask, "tools": [TOOL],
                                                      "tool_choice": "auto", "max_tokens": 4, "temperature": 0})
        assert auto.status_code == 200, auto.text


def _entry(server: ServerProcess, model: str) -> dict | None:
    with _http(server) as http:
        return next((e for e in http.get("engines/ps").json() if e["model_name"].split(":")[0] == model), None)


def test_an_inference_key_cannot_unload_pin_or_resize_a_model_through_ollama(server):
    chat = {"model": "ai/tiny", "stream": False, "options": {"num_predict": 2, "temperature": 0},
            "messages": [{"role": "user", "content": "Hi"}]}
    with _http(server, KEY) as http:
        assert http.post("api/chat", json=chat).status_code == 200
        loaded = _entry(server, "ai/tiny")
        assert loaded is not None
        # Ollama's unload idiom: empty messages, keep_alive 0
        refused = http.post("api/chat", json={"model": "ai/tiny", "messages": [], "keep_alive": 0})
        assert refused.status_code == 403 and "may not unload" in refused.json()["error"]
        assert _entry(server, "ai/tiny")["pid"] == loaded["pid"]
        # pinning (a negative keep_alive) and another context (which would restart the engine for everyone)
        answer = http.post("api/chat", json={**chat, "keep_alive": -1, "options": {**chat["options"],
                                                                                   "num_ctx": 1024}})
        assert answer.status_code == 200, answer.text
        after = _entry(server, "ai/tiny")
        assert after["pid"] == loaded["pid"] and after["context_size"] == loaded["context_size"]
        assert after["expires_at"] is not None  # not pinned: it still idles out
        assert after["expires_at"] <= time.time() + 10 * 60 + 5  # never kept beyond the server's keep_alive
    with _http(server) as http:  # the token's user manages: the same idiom unloads
        unloaded = http.post("api/chat", json={"model": "ai/tiny", "messages": [], "keep_alive": 0})
        assert unloaded.status_code == 200 and unloaded.json()["done_reason"] == "unload"
    assert _entry(server, "ai/tiny") is None


def test_a_stored_response_is_visible_only_to_its_creator(server):
    with _http(server, KEY) as http:
        created = http.post("v1/responses", json={"model": "ai/tiny", "input": "Hi", "max_output_tokens": 2})
        assert created.status_code == 200, created.text
        response_id = created.json()["id"]
        assert http.get(f"v1/responses/{response_id}").status_code == 200
    with _http(server) as http:  # the token holder did not create it
        assert http.get(f"v1/responses/{response_id}").status_code == 404
        assert http.get(f"v1/responses/{response_id}/input_items").status_code == 404
        assert http.delete(f"v1/responses/{response_id}").status_code == 404
        followed = http.post("v1/responses", json={"model": "ai/tiny", "input": "And?", "max_output_tokens": 2,
                                                   "previous_response_id": response_id})
        assert followed.status_code == 400 and "not found" in _message(followed)
    with _http(server, KEY) as http:
        assert http.delete(f"v1/responses/{response_id}").status_code == 200


def test_a_response_store_keeps_its_byte_budget():
    from jupyter_modelrunner.api.responses_translate import ResponseStore, StoredResponse

    store = ResponseStore(max_bytes=4096)
    big = "x" * 1500
    for n in range(5):
        assert store.put(StoredResponse({"id": f"resp_{n}", "output": big}, [], owner="a"))
    assert store.bytes <= 4096 and len(store) == 2
    assert store.get("resp_4", "a") is not None and store.get("resp_0", "a") is None
    assert not store.put(StoredResponse({"id": "huge", "output": "x" * 5000}, [], owner="a"))
    assert store.get("resp_4", "b") is None


def test_the_dialect_modules_name_no_engine_and_call_no_scheduler():
    """The one path is the only way to an engine: no dialect drives an engine or the scheduler itself."""
    api = Path(__file__).parents[2] / "jupyter_modelrunner" / "api"
    dialects = ["openai.py", "anthropic.py", "responses.py", "ollama.py", "rerank.py", "stream_relay.py"]
    found = {name: [word for word in ("scheduler", "llama-server", "llama.cpp", "vllm", "runner.request",
                                      "adapt_request") if word in (api / name).read_text().lower()]
             for name in dialects}
    assert found == {name: [] for name in dialects}


#: Fields of one engine's answers (llama-server's debugging block and timings, vLLM's `stop_reason` and `reasoning`):
#: each engine's `adapt_response` turns them into the runner's engine-neutral ones (`matched_stop`,
#: `generation_stats`, `reasoning_content`), so no dialect module may read them.
_ENGINE_ANSWER_FIELDS = re.compile(
    r"__verbose|stopping_word|stop_word|stop_type|timings|prompt_ms|predicted_ms|predicted_n|prompt_n\b"
    r"""|\.get\(\s*["']stop_reason["']|\[\s*["']stop_reason["']\s*\]"""  # Anthropic's own `stop_reason` is only written
    r"""|(?:message|delta|choice)\w*\.get\(\s*["']reasoning["']""")  # not Responses' request `reasoning`


def test_no_module_of_the_api_reads_an_engines_own_answer_fields():
    """Which stop sequence matched, the engine's timings and the thinking reach every dialect under one name; the
    engine-specific names stay in `engines/`."""
    api = Path(__file__).parents[2] / "jupyter_modelrunner" / "api"
    found = {path.name: sorted(set(_ENGINE_ANSWER_FIELDS.findall(path.read_text()))) for path in api.glob("*.py")}
    assert {name: words for name, words in found.items() if words} == {}


def test_a_malformed_tool_is_a_400_on_every_dialect_not_the_engines_500(server):
    """llama-server answers a tool whose description is not a string with a 500 of its JSON parser (schemathesis
    found it through the Anthropic and Responses routes, which build tools from their own shapes)."""
    ask = [{"role": "user", "content": "Hi"}]
    with _http(server, KEY) as http:
        answers = {
            "anthropic": http.post("v1/messages", json={"model": "ai/tiny", "max_tokens": 2, "messages": ask,
                                                        "tools": [{"name": "f", "description": [None],
                                                                   "input_schema": {}}]}),
            "responses": http.post("v1/responses", json={"model": "ai/tiny", "input": "Hi", "tools": [
                {"type": "function", "name": "f", "description": {}, "parameters": {}}]}),
            "responses tokens": http.post("v1/responses/input_tokens", json={
                "model": "ai/tiny", "input": "Hi",
                "tools": [{"type": "function", "name": "f", "parameters": "not a schema"}]}),
            "ollama": http.post("api/chat", json={"model": "ai/tiny", "stream": False, "messages": ask, "tools": [
                {"type": "function", "function": {"name": "f", "description": 7}}]}),
            "responses reasoning": http.post("v1/responses", json={"model": "ai/tiny", "input": "Hi",
                                                                   "reasoning": [None, None]}),
        }
    wrong = {name: f"{r.status_code} {r.text[:200]}" for name, r in answers.items() if r.status_code != 400}
    assert not wrong, wrong
