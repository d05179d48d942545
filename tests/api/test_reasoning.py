"""Reasoning models through every route, with the real llama-server, the `openai` and `ollama` SDKs and a real
`jupyter server`: thinking comes back apart from the answer, and the switches that turn it off reach the chat
template (read back from what the engine rendered)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from ..conftest import THINK_GRAMMAR, server_env
from ..support.jupyter import ServerProcess

pytestmark = pytest.mark.timeout(300)
HELLO = [{"role": "user", "content": "Say hello"}]
#: Where Qwen3's template leaves the model to answer: thinking on, and the empty think block of thinking off
#: (without whitespace: the engine gives its prompt back as detokenized tokens, spaced as its vocabulary spaces them).
THINKING_PROMPT_END = "<|im_start|>assistant"
NO_THINKING_PROMPT_END = "<|im_start|>assistant<think></think>"


@pytest.fixture(scope="module")
def server(tmp_path_factory, live_store, registry, reasoning_models) -> Iterator[ServerProcess]:
    """A `jupyter server` whose llama-server engines keep each slot's last prompt readable on their `/slots` route
    (LLAMA_SERVER_SLOTS_DEBUG), so a test can see what the chat template rendered for a request."""
    workdir = tmp_path_factory.mktemp("reasoning-jupyter")
    env = {**server_env(workdir, live_store.root, registry.host), "LLAMA_SERVER_SLOTS_DEBUG": "1"}
    with ServerProcess.jupyter_server(workdir, env, "--Scheduler.keep_alive=10m") as process:
        yield process


@pytest.fixture(scope="module")
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "v1", api_key=server.token, max_retries=0)


@pytest.fixture(scope="module")
def ollama_client(server) -> ollama.Client:
    return ollama.Client(host=server.url.rstrip("/"), headers=server.headers)


def runner(server: ServerProcess, model: str) -> dict:
    with server.client() as http:
        return next(r for r in http.get("engines/ps").json() if r["model_name"].endswith(model + ":latest"))


def engine_argv(server: ServerProcess, model: str) -> list[str]:
    """The command line of the engine serving `model` (its process replaced the launcher, same pid)."""
    return Path(f"/proc/{runner(server, model)['pid']}/cmdline").read_bytes().decode().split("\0")


def last_prompt(server: ServerProcess, model: str) -> str:
    """The prompt the engine rendered for its latest request (its chat template's output, read from llama-server),
    without whitespace."""
    argv = engine_argv(server, model)
    socket = argv[argv.index("--host") + 1]
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://engine") as engine:
        slots = engine.get("/slots").json()
    latest = max((s for s in slots if "prompt" in s), key=lambda s: s.get("id_task", -1))
    return "".join(latest["prompt"].split())


def think(sdk: openai.OpenAI, **extra) -> openai.types.chat.ChatCompletion:
    return sdk.chat.completions.create(model="ai/tiny-think", messages=HELLO, temperature=0, max_tokens=64, **extra)


# -- OpenAI ---------------------------------------------------------------------------------------------------------


def test_thinking_comes_back_as_reasoning_content_apart_from_the_answer(sdk, server):
    message = think(sdk, extra_body={"grammar": THINK_GRAMMAR}).choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning.strip() and message.content.strip()
    assert "<think>" not in message.content and "</think>" not in message.content
    assert "think>" not in reasoning  # the tags are the parser's, not part of either
    engine = engine_argv(server, "ai/tiny-think")
    assert engine[engine.index("--reasoning-format") + 1] == "deepseek"
    assert "--chat-template-file" in engine  # the artifact's template layer, Qwen3's


def test_streamed_thinking_arrives_as_reasoning_content_deltas_before_the_answer(sdk):
    whole = think(sdk, extra_body={"grammar": THINK_GRAMMAR}).choices[0].message
    kinds, thinking, answer = [], [], []
    for chunk in think(sdk, extra_body={"grammar": THINK_GRAMMAR}, stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        if (delta.model_extra or {}).get("reasoning_content"):
            thinking.append(delta.model_extra["reasoning_content"])
            kinds.append("thinking")
        if delta.content:
            answer.append(delta.content)
            kinds.append("answer")
    assert "".join(thinking) == whole.model_extra["reasoning_content"]
    assert "".join(answer) == whole.content
    assert kinds == sorted(kinds, key=lambda kind: kind == "answer") and len(set(kinds)) == 2, kinds


def test_reasoning_effort_none_renders_the_no_thinking_path_and_returns_no_reasoning(sdk, server):
    think(sdk)
    assert last_prompt(server, "ai/tiny-think").endswith(THINKING_PROMPT_END)
    message = think(sdk, reasoning_effort="none").choices[0].message
    assert last_prompt(server, "ai/tiny-think").endswith(NO_THINKING_PROMPT_END)
    assert message.content and not (message.model_extra or {}).get("reasoning_content")


def test_a_model_whose_template_opens_the_think_block_thinks_unless_told_not_to(sdk):
    """DeepSeek-R1's template starts the answer inside `<think>`: everything the model writes is thinking, until
    `reasoning_effort: "none"` makes the template close the block, and then it is the answer."""
    thinking = sdk.chat.completions.create(model="ai/tiny-r1", messages=HELLO, temperature=0, max_tokens=16)
    assert thinking.choices[0].message.model_extra["reasoning_content"].strip()
    assert not thinking.choices[0].message.content
    answer = sdk.chat.completions.create(model="ai/tiny-r1", messages=HELLO, temperature=0, max_tokens=16,
                                         reasoning_effort="none")
    assert answer.choices[0].message.content.strip()
    assert not (answer.choices[0].message.model_extra or {}).get("reasoning_content")


# -- Ollama ---------------------------------------------------------------------------------------------------------


OLLAMA_OPTIONS = {"temperature": 0, "num_predict": 64, "grammar": THINK_GRAMMAR}


def test_ollama_chat_returns_message_thinking_whole_and_streamed(ollama_client):
    whole = ollama_client.chat(model="ai/tiny-think", messages=HELLO, think=True, options=OLLAMA_OPTIONS)
    assert whole.message.thinking and whole.message.content
    assert "<think>" not in whole.message.content
    pieces = list(ollama_client.chat(model="ai/tiny-think", messages=HELLO, think=True, options=OLLAMA_OPTIONS,
                                     stream=True))
    assert "".join(p.message.thinking or "" for p in pieces) == whole.message.thinking
    assert "".join(p.message.content or "" for p in pieces) == whole.message.content
    assert pieces[-1].done


def test_ollama_generate_returns_thinking_beside_the_response(ollama_client):
    whole = ollama_client.generate(model="ai/tiny-think", prompt="Say hello", think=True, options=OLLAMA_OPTIONS)
    assert whole.thinking and whole.response and "</think>" not in whole.response
    pieces = list(ollama_client.generate(model="ai/tiny-think", prompt="Say hello", think=True,
                                         options=OLLAMA_OPTIONS, stream=True))
    assert "".join(p.thinking or "" for p in pieces) == whole.thinking


def test_ollama_think_false_renders_the_no_thinking_path(ollama_client, server):
    answer = ollama_client.chat(model="ai/tiny-think", messages=HELLO, think=False,
                                options={"temperature": 0, "num_predict": 8})
    assert last_prompt(server, "ai/tiny-think").endswith(NO_THINKING_PROMPT_END)
    assert answer.message.content and not answer.message.thinking
    for level in ("low", "high"):  # gpt-oss's levels: thinking on, the level for templates that know levels
        ollama_client.chat(model="ai/tiny-think", messages=HELLO, think=level, options={"num_predict": 4})
        assert last_prompt(server, "ai/tiny-think").endswith(THINKING_PROMPT_END)


def test_ollama_show_lists_thinking_among_the_capabilities_of_a_reasoning_template(ollama_client):
    assert "thinking" in ollama_client.show("ai/tiny-think").capabilities
    assert "thinking" not in ollama_client.show("ai/tiny").capabilities


def test_an_unknown_think_value_is_ollamas_400(server):
    with server.client() as http:
        answer = http.post("api/chat", json={"model": "ai/tiny-think", "messages": HELLO, "think": "maximum"})
    assert answer.status_code == 400
    assert "think must be true, false, or one of 'low', 'medium', 'high'" in answer.json()["error"]


# -- per-model settings ---------------------------------------------------------------------------------------------


def test_configure_no_think_restarts_the_model_with_thinking_off_by_default(server, sdk):
    think(sdk)
    before = runner(server, "ai/tiny-think")["pid"]
    with server.client() as http:
        saved = http.post("engines/_configure", json={"model": "ai/tiny-think", "think": False,
                                                      "reasoning-budget": 0}).json()
        assert saved["think"] is False and saved["reasoning_budget"] == 0
        shown = http.get("engines/_configure", params={"model": "ai/tiny-think"}).json()
        assert (shown["think"], shown["reasoning_budget"]) == (False, 0)
    think(sdk)  # waits for the restart with the new settings
    entry = runner(server, "ai/tiny-think")
    assert entry["pid"] != before and (entry["think"], entry["reasoning_budget"]) == (False, 0)
    argv = engine_argv(server, "ai/tiny-think")
    assert argv[argv.index("--reasoning") + 1] == "off" and argv[argv.index("--reasoning-budget") + 1] == "0"
    assert last_prompt(server, "ai/tiny-think").endswith(NO_THINKING_PROMPT_END)
    # A request still decides for itself.
    think(sdk, reasoning_effort="high")
    assert last_prompt(server, "ai/tiny-think").endswith(THINKING_PROMPT_END)
    with server.client() as http:
        http.post("engines/_configure", json={"model": "ai/tiny-think", "think": True, "reasoning-budget": -1})
    think(sdk)
    assert last_prompt(server, "ai/tiny-think").endswith(THINKING_PROMPT_END)


def test_a_reasoning_budget_flag_is_the_same_setting_as_configure_reasoning_budget(server, sdk):
    """R1's template opens the think block, so without a budget the tiny model thinks until `max_tokens`; with one,
    llama-server ends the thinking after that many tokens and the model answers."""
    unlimited = sdk.chat.completions.create(model="ai/tiny-r1", messages=HELLO, temperature=0, max_tokens=24)
    assert not unlimited.choices[0].message.content
    with server.client() as http:
        http.post("engines/_configure", json={"model": "ai/tiny-r1", "runtime-flags": ["--reasoning-budget", "7"]})
        http.post("engines/unload", json={"models": ["ai/tiny-r1"]})
        http.post("models/load", json={"model": "ai/tiny-r1"}).raise_for_status()
        entry = runner(server, "ai/tiny-r1")
        assert entry["reasoning_budget"] == 7
        argv = engine_argv(server, "ai/tiny-r1")
        assert argv.count("--reasoning-budget") == 1 and argv[argv.index("--reasoning-budget") + 1] == "7"
        capped = sdk.chat.completions.create(model="ai/tiny-r1", messages=HELLO, temperature=0, max_tokens=24)
        message = capped.choices[0].message
        assert message.content and message.model_extra["reasoning_content"]
        assert message.model_extra["reasoning_content"] in unlimited.choices[0].message.model_extra["reasoning_content"]
        invalid = http.post("engines/_configure", json={"model": "ai/tiny-r1", "reasoning-budget": -5})
        assert invalid.status_code == 400 and "reasoning budget" in invalid.json()["message"]
