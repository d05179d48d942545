"""vLLM (the CPU build in CI) serving a tiny safetensors model pulled from the test registry."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from jupyter_modelrunner.distribution import package_safetensors, pull
from jupyter_modelrunner.engines.base import LoadPlan, RunConfig
from jupyter_modelrunner.engines.hardware import probe
from jupyter_modelrunner.engines.select import select_engine
from jupyter_modelrunner.engines.vllm import Vllm, default_vllm_python, reasoning_parser, tool_call_parser
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.scheduling import Scheduler
from jupyter_modelrunner.sse import sse_data, sse_events
from jupyter_modelrunner.store import Store

from ..conftest import R1_TEMPLATE, THINK_TEMPLATE, TOOLS_TEMPLATE
from ..support.models import llama_cpp_chat_template, make_tiny_safetensors, smollm2_twin

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = default_vllm_python()
    if python is None:
        pytest.skip("no vLLM environment (jupyter modelrunner install-runner vllm, or set MODEL_RUNNER_VLLM_PYTHON)")
    return python


def test_selection_reports_vllm_on_the_cpu_with_its_reason(store, seeded, vllm_python):
    model = pull("ai/tiny-st", store).model
    choice = select_engine(model, probe())
    assert choice.engine.name == "vllm" and choice.device == "cpu"
    assert "CPU build" in choice.reason and "safetensors" in choice.reason


def test_tiny_safetensors_model_answers_streaming_and_not(store, seeded, vllm_python):
    pull("ai/tiny-st", store)
    events: list[tuple[str, dict]] = []
    body = {"model": "model", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}

    async def scenario():
        scheduler = Scheduler(store, keep_alive=-1, engines=[Vllm(vllm_python)],
                              on_event=lambda kind, data: events.append((kind, data)))
        try:
            async with scheduler.use("ai/tiny-st") as runner:
                whole = (await runner.request("POST", "/v1/chat/completions", json=body)).json()
                pieces = []
                async with runner.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as chunks:
                    async for event in sse_events(chunks):
                        delta = (event.get("choices") or [{}])[0].get("delta", {}).get("content")
                        if delta:
                            pieces.append(delta)
                return whole, pieces, scheduler.ps()
        finally:
            await scheduler.shutdown()

    whole, pieces, ps = asyncio.run(scenario())
    assert whole["choices"][0]["message"]["content"]
    assert whole["usage"]["completion_tokens"] > 0
    assert pieces and "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert ps[0]["backend_name"] == "vllm" and ps[0]["device"] == "cpu"
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "loading" and "ready" in kinds and kinds[-1] == "unloaded"
    assert any("elapsed" in data for kind, data in events if kind == "loading")  # progress while it loads


def with_template(folder: Path, template: str, into: Path, *, context: int | None = None) -> Path:
    """A copy of a Hugging Face folder (weights hard-linked) whose chat template is `template`; `context` raises
    the model's position limit, for tool templates' long system prompts in the tiny byte-level tokenizer."""
    shutil.copytree(folder, into, copy_function=os.link)

    def rewrite(name: str, text: str) -> None:
        (into / name).unlink()  # a hard link to the original: replace it, never write through it
        (into / name).write_text(text)

    rewrite("chat_template.jinja", template)
    config = json.loads((into / "tokenizer_config.json").read_text())
    rewrite("tokenizer_config.json", json.dumps({**config, "chat_template": template}))
    if context:
        model_config = json.loads((into / "config.json").read_text())
        rewrite("config.json", json.dumps({**model_config, "max_position_embeddings": context}))
    return into


def test_the_tool_call_parser_is_read_off_the_chat_template(tmp_path, tiny_safetensors):
    qwen = with_template(tiny_safetensors, llama_cpp_chat_template(TOOLS_TEMPLATE), tmp_path / "qwen")
    llama = with_template(tiny_safetensors, llama_cpp_chat_template("meta-llama-Llama-3.1-8B-Instruct.jinja"),
                          tmp_path / "llama")
    mistral = with_template(tiny_safetensors, llama_cpp_chat_template("mistralai-Mistral-Nemo-Instruct-2407.jinja"),
                            tmp_path / "mistral")
    assert tool_call_parser(qwen) == "hermes"
    assert tool_call_parser(llama) == "llama3_json"
    assert tool_call_parser(mistral) == "mistral"
    assert tool_call_parser(tiny_safetensors) is None  # ChatML without tools: no tool calling
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    model = package_safetensors(store, qwen, parse_reference("127.0.0.1:1/ai/tiny-tools"))
    engine = Vllm(python="/x/python")
    argv = engine.launch(model, workdir=tmp_path, config=RunConfig(), hardware=probe(), mode="completion").argv
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in argv
    override = RunConfig(runtime_flags=("--tool-call-parser", "qwen3_xml"))
    overridden = engine.launch(model, workdir=tmp_path, config=override, hardware=probe(), mode="completion").argv
    assert overridden.count("--tool-call-parser") == 1 and overridden[-2:] == ["--tool-call-parser", "qwen3_xml"]


@pytest.mark.slow
def test_vllm_answers_tool_calls_and_json_schemas(tmp_path, vllm_python):
    """The real SmolLM2 (its safetensors twin) with Qwen2.5's template: vLLM starts with the hermes parser and
    constrains `tool_choice` "required"/named and `json_schema` itself (guided decoding)."""
    qwen = with_template(smollm2_twin(), llama_cpp_chat_template(TOOLS_TEMPLATE), tmp_path / "qwen")
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    package_safetensors(store, qwen, parse_reference("127.0.0.1:1/ai/smollm2-tools-vllm"))
    Scheduler(store).configure("ai/smollm2-tools-vllm", context_size=2048)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    ask = {"model": "model", "temperature": 0, "max_tokens": 64,
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
              "required": ["name", "country"]}

    async def scenario():
        scheduler = Scheduler(store, keep_alive=-1, engines=[Vllm(vllm_python)])
        try:
            async with scheduler.use("ai/smollm2-tools-vllm") as runner:
                answers = [(await runner.request("POST", "/v1/chat/completions", json={
                    **ask, "tools": [tool], "tool_choice": choice})).json()
                    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}})]
                structured = (await runner.request("POST", "/v1/chat/completions", json={
                    **ask, "messages": [{"role": "user", "content": "Name the capital of France and its country."}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
                })).json()
                return answers, structured, runner.launch.argv
        finally:
            await scheduler.shutdown()

    answers, structured, argv = asyncio.run(scenario())
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in argv
    for answer in answers:
        call = answer["choices"][0]["message"]["tool_calls"][0]["function"]
        # Parsed into OpenAI's shape by vLLM; what a 135M model puts in the arguments is its own business.
        assert call["name"] == "get_weather" and "city" in json.loads(call["arguments"]), answer
    city = json.loads(structured["choices"][0]["message"]["content"])
    assert city["name"] and city["country"], structured


def test_the_reasoning_parser_is_read_off_the_template_where_the_tokenizer_has_its_markers(tmp_path):
    qwen3 = make_tiny_safetensors(tmp_path / "qwen3", special_tokens=("<think>", "</think>"),
                                  chat_template=llama_cpp_chat_template(THINK_TEMPLATE))
    r1 = make_tiny_safetensors(tmp_path / "r1", special_tokens=("<think>", "</think>"),
                               chat_template=llama_cpp_chat_template(R1_TEMPLATE))
    no_tokens = make_tiny_safetensors(tmp_path / "no-tokens", chat_template=llama_cpp_chat_template(THINK_TEMPLATE))
    chatml = make_tiny_safetensors(tmp_path / "chatml", special_tokens=("<think>", "</think>"))
    assert reasoning_parser(qwen3) == "qwen3" and reasoning_parser(r1) == "deepseek_r1"
    # vLLM's parser would refuse to start without `<think>` as a token: no parser, the thinking stays in the answer.
    assert reasoning_parser(no_tokens) is None and reasoning_parser(chatml) is None
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    model = package_safetensors(store, qwen3, parse_reference("127.0.0.1:1/ai/tiny-qwen3"))
    engine = Vllm(python="/x/python")

    def argv(config: RunConfig, mode: str = "completion") -> list[str]:
        return engine.launch(model, workdir=tmp_path, config=config, hardware=probe(), mode=mode).argv

    plain = argv(RunConfig())
    assert plain[plain.index("--reasoning-parser") + 1] == "qwen3" and "--default-chat-template-kwargs" not in plain
    off = argv(RunConfig(think=False))
    assert json.loads(off[off.index("--default-chat-template-kwargs") + 1]) == {"enable_thinking": False}
    overridden = argv(RunConfig(runtime_flags=("--reasoning-parser", "deepseek_r1")))
    assert overridden.count("--reasoning-parser") == 1 and overridden[-1] == "deepseek_r1"
    assert "--reasoning-parser" not in argv(RunConfig(), mode="embedding")
    rerank = argv(RunConfig(), mode="rerank")
    assert rerank[rerank.index("--runner") + 1] == "pooling" and "--convert" not in rerank
    assert "--reasoning-parser" not in rerank and "--tool-call-parser" not in rerank


def test_a_configured_budget_is_each_requests_thinking_budget_on_vllm(tmp_path):
    engine = Vllm(python="/x/python")
    ask = {"model": "model", "messages": []}
    plan = LoadPlan(512, "default", 1, 0, ("--reasoning-parser", "qwen3"), reasoning_budget=32)
    assert engine.adapt_request("chat/completions", ask, plan)["thinking_token_budget"] == 32
    # llama-server's name for it means the same; a request's own budget wins, -1 is no limit.
    assert engine.adapt_request("chat/completions", {**ask, "reasoning_budget_tokens": 5}, plan) == {
        **ask, "thinking_token_budget": 5}
    assert "thinking_token_budget" not in engine.adapt_request("chat/completions", {**ask, "thinking_token_budget": -1},
                                                               plan)
    # Without a reasoning parser vLLM refuses a budget: none is sent.
    assert engine.adapt_request("chat/completions", ask, LoadPlan(512, "default", 1, 0, (), reasoning_budget=32)) == ask


def test_vllms_reasoning_field_is_also_sent_as_reasoning_content():
    engine = Vllm(python="/x/python")
    whole = b'{"message":{"content":null,"reasoning":"a \\"quoted\\" thought"}}'
    assert json.loads(engine.adapt_response("chat/completions", whole))["message"] == {
        "content": None, "reasoning": 'a "quoted" thought', "reasoning_content": 'a "quoted" thought'}
    events = b'data: {"delta":{"reasoning":"x"}}\n\ndata: {"delta":{"reasoning": null,"content":"y"}}\n\n'
    assert [e["delta"].get("reasoning_content") for e in sse_data(engine.adapt_response("chat/completions", events))] \
        == ["x", None]
    spoken = b'{"message":{"content":"I said \\"reasoning\\": \\"no\\""}}'  # the word inside text is left alone
    assert engine.adapt_response("chat/completions", spoken) == spoken


def test_vllms_stop_reason_string_is_also_sent_as_matched_stop():
    """A string `stop_reason` is the stop sequence that matched (the engine-neutral `matched_stop`); a number is a
    stop token and null says nothing: those events keep their bytes."""
    engine = Vllm(python="/x/python")
    whole = b'{"choices":[{"index":0,"message":{"content":"a"},"finish_reason":"stop","stop_reason":"END"}]}'
    assert json.loads(engine.adapt_response("chat/completions", whole))["choices"][0]["matched_stop"] == "END"
    streamed = (b'data: {"choices":[{"index":0,"delta":{"content":"a"},"stop_reason":null}]}\n\n'
                b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason": "END"}]}\n\n')
    assert [e["choices"][0].get("matched_stop") for e in sse_data(engine.adapt_response("chat/completions",
                                                                                         streamed))] == [None, "END"]
    token = b'{"choices":[{"index":0,"finish_reason":"stop","stop_reason":2}]}'
    assert engine.adapt_response("chat/completions", token) == token


def test_vllm_starts_with_the_reasoning_parser_and_renders_the_thinking_switches(tmp_path, vllm_python):
    """DeepSeek-R1's template (llama.cpp's copy: the prompt ends inside `<think>` unless `enable_thinking` is false or
    undefined, which vLLM leaves it) on a tiny model whose tokenizer has the think tokens: vLLM starts with the parser
    chosen from the template, what the model writes in the open block comes back as reasoning (under both names),
    and `configure --think/--no-think` and `reasoning_effort` reach the template (read back from the prompt vLLM
    rendered)."""
    folder = make_tiny_safetensors(tmp_path / "r1", special_tokens=("<think>", "</think>"),
                                   chat_template=llama_cpp_chat_template(R1_TEMPLATE))
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    package_safetensors(store, folder, parse_reference("127.0.0.1:1/ai/tiny-r1-st"))
    ask = {"model": "model", "temperature": 0, "max_tokens": 8, "return_token_ids": True,
           "messages": [{"role": "user", "content": "Hi"}]}

    async def scenario():
        scheduler = Scheduler(store, keep_alive=-1, engines=[Vllm(vllm_python)])
        answers = {}
        try:
            for think in (True, False):
                scheduler.configure("ai/tiny-r1-st", think=think)  # restarts the loaded engine for the next request
                async with scheduler.use("ai/tiny-r1-st") as runner:
                    engine = runner.choice.engine
                    for name, extra in (("default", {}), ("none", {"reasoning_effort": "none"}),
                                        ("high", {"reasoning_effort": "high"})):
                        body = engine.adapt_request("chat/completions", {**ask, **extra}, runner.plan)
                        response = await runner.request("POST", "/v1/chat/completions", json=body)
                        answer = json.loads(engine.adapt_response("chat/completions", response.content))
                        prompt = (await runner.request("POST", "/detokenize", json={
                            "model": "model", "tokens": answer["prompt_token_ids"]})).json()["prompt"]
                        answers[think, name] = answer["choices"][0]["message"], prompt
                    argv = runner.launch.argv
        finally:
            await scheduler.shutdown()
        return answers, argv

    answers, argv = asyncio.run(scenario())
    assert argv[argv.index("--reasoning-parser") + 1] == "deepseek_r1"
    message, prompt = answers[True, "default"]
    assert prompt.endswith("<think>\n") and message["reasoning_content"] == message["reasoning"]
    assert message["reasoning_content"]  # what the model wrote inside the open think block
    thinking = {key: prompt.endswith("<think>\n") for key, (_message, prompt) in answers.items()}
    assert thinking == {(True, "default"): True, (True, "none"): False, (True, "high"): True,
                        (False, "default"): False, (False, "none"): False, (False, "high"): True}
