"""vLLM (the CPU build in CI) serving a tiny safetensors model pulled from the test registry."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from jupyter_modelrunner.distribution import package_safetensors, pull
from jupyter_modelrunner.engines.base import RunConfig
from jupyter_modelrunner.engines.hardware import probe
from jupyter_modelrunner.engines.select import select_engine
from jupyter_modelrunner.engines.vllm import VllmEngine, default_vllm_python, tool_call_parser
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.scheduler import Scheduler, sse_events
from jupyter_modelrunner.store import Store

from ..conftest import TOOLS_TEMPLATE
from ..support.models import llama_cpp_chat_template, smollm2_twin

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
        scheduler = Scheduler(store, keep_alive=-1, engines=[VllmEngine(vllm_python)],
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
    engine = VllmEngine(python="/x/python")
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
        scheduler = Scheduler(store, keep_alive=-1, engines=[VllmEngine(vllm_python)])
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
