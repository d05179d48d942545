"""The llama.cpp engine: llama-server's command line, its flag allowlist, the context each source gives it, and
the llama-cpp-python fallback — with the real llama-server wherever an engine has to run."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

from jupyter_modelrunner.distribution import package_gguf
from jupyter_modelrunner.engines.base import (
    CONTEXT_ARTIFACT,
    CONTEXT_CONFIGURED,
    CONTEXT_DEFAULT,
    CONTEXT_REQUEST,
    CONTEXT_TRAINING,
    CONTEXT_TRAINING_CAPPED,
    RunConfig,
)
from jupyter_modelrunner.engines.hardware import Gpu, Hardware
from jupyter_modelrunner.engines.llamacpp import DEFAULT_SLOTS, LlamaServer
from jupyter_modelrunner.engines.select import select_engine
from jupyter_modelrunner.errors import EngineFlagRefused, EngineUnavailable
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.scheduling import Scheduler
from jupyter_modelrunner.sse import sse_data
from jupyter_modelrunner.store import Store

from ..support.models import make_tiny_gguf

pytestmark = pytest.mark.timeout(300)
CPU_ONLY = Hardware(cpu_count=2, memory_total=24 * 1024**3, memory_available=20 * 1024**3)
SIMULATED_CUDA = Hardware(cpu_count=8, memory_total=64 * 1024**3, memory_available=60 * 1024**3,
                          gpus=(Gpu("Simulated A100", 80 * 1024**3, 79 * 1024**3),))
BUDGET = 16 * 1024**3
HELLO = {"model": "model", "messages": [{"role": "user", "content": "Say hello"}], "temperature": 0,
         "max_tokens": 8}


def ref(name: str):
    return parse_reference(f"127.0.0.1:1/{name}")


@pytest.fixture(scope="module")
def tiny_4k(tmp_path_factory):
    """A tiny model trained (so it says) on 4096 tokens: room for every context the tests ask for."""
    return make_tiny_gguf(tmp_path_factory.mktemp("tiny-4k") / "tiny-4k.gguf", context_length=4096)


@pytest.fixture
def store(tmp_path, tiny_4k) -> Store:
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    package_gguf(store, tiny_4k, ref("ai/tiny"))
    package_gguf(store, tiny_4k, ref("ai/tiny-1280"), context_size=1280)
    return store


@pytest.fixture
def server_engine() -> LlamaServer:
    engine = LlamaServer()
    if engine.server is None:
        pytest.skip("llama-server is not installed (jupyter modelrunner install-runner llama.cpp)")
    return engine


def ps_entry(scheduler: Scheduler, name: str) -> dict:
    (entry,) = [r for r in scheduler.ps() if r["model_name"].endswith(name + ":latest")]
    return entry


# -- the command line -------------------------------------------------------------------------------------


def test_llama_server_is_started_on_a_socket_with_slots_jinja_metrics_and_the_artifact_files(
        store, tmp_path, tiny_4k):
    model = store.resolve("ai/tiny")
    engine = LlamaServer(server="/opt/llama.cpp/llama-server")
    plan = engine.plan(model, RunConfig(context_size=1024), budget=BUDGET)
    launch = engine.launch(model, workdir=tmp_path, config=RunConfig(), hardware=CPU_ONLY, mode="completion",
                           plan=plan)
    argv = launch.argv
    assert argv[0] == "/opt/llama.cpp/llama-server"
    assert argv[argv.index("--host") + 1] == str(tmp_path / "engine.sock") and launch.socket == tmp_path / "engine.sock"
    assert "--port" not in argv and "--api-key" not in argv
    assert {"--jinja", "--metrics", "--no-webui"} <= set(argv)
    assert argv[argv.index("--parallel") + 1] == str(DEFAULT_SLOTS)
    assert argv[argv.index("--ctx-size") + 1] == str(1024 * DEFAULT_SLOTS)  # every slot gets the whole context
    assert argv[argv.index("--n-gpu-layers") + 1] == "0"
    assert launch.health_path == "/health"

    cuda = engine.launch(model, workdir=tmp_path, config=RunConfig(), hardware=SIMULATED_CUDA, mode="completion",
                         plan=plan).argv
    assert cuda[cuda.index("--n-gpu-layers") + 1] == "999"

    embed = engine.launch(model, workdir=tmp_path, config=RunConfig(), hardware=CPU_ONLY, mode="embedding",
                          plan=plan).argv
    assert "--embeddings" in embed and embed[embed.index("--pooling") + 1] == "mean"

    rerank = engine.launch(model, workdir=tmp_path, config=RunConfig(), hardware=CPU_ONLY, mode="rerank",
                           plan=plan).argv
    assert "--rerank" in rerank and "--embeddings" not in rerank and "--pooling" not in rerank
    assert rerank[rerank.index("--ubatch-size") + 1] == "1024"  # a query-document pair is scored in one micro-batch
    assert "--reasoning-format" not in rerank


def test_the_chat_template_and_projector_layers_are_passed(tmp_path, tiny_vision, tiny_4k):
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages[0]['content'] }}")
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    model = package_gguf(store, tiny_vision.gguf, ref("ai/tiny-vision"), chat_template=template,
                         mmproj=tiny_vision.mmproj)
    engine = LlamaServer(server="/x/llama-server")
    argv = engine.launch(model, workdir=tmp_path, config=RunConfig(), hardware=CPU_ONLY, mode="completion").argv
    assert argv[argv.index("--chat-template-file") + 1] == str(model.bundle / "template.jinja")
    assert argv[argv.index("--mmproj") + 1] == str(model.bundle / "model.mmproj")
    text_only = package_gguf(store, tiny_4k, ref("ai/tiny-text"))
    argv = engine.launch(text_only, workdir=tmp_path, config=RunConfig(), hardware=CPU_ONLY, mode="completion").argv
    assert "--mmproj" not in argv


def test_images_are_refused_without_a_projector_and_on_the_fallback(tmp_path, tiny_vision, tiny_4k, server_engine):
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    vision = package_gguf(store, tiny_vision.gguf, ref("ai/tiny-vision"), mmproj=tiny_vision.mmproj)
    text_only = package_gguf(store, tiny_4k, ref("ai/tiny-text"))
    server = server_engine
    assert server.image_refusal(vision, "ai/tiny-vision") is None
    refusal = server.image_refusal(text_only, "ai/tiny-text")
    assert refusal and "ai/tiny-text has no multimodal projector" in refusal and "package" in refusal
    assert "--mmproj" in refusal
    for fallback in (LlamaServer(server="none"), LlamaServer(server=str(tmp_path / "no-such-llama-server"))):
        refusal = fallback.image_refusal(vision, "ai/tiny-vision")
        assert refusal and "llama-cpp-python" in refusal and "jupyter modelrunner install-runner llama.cpp" in refusal


def test_llama_server_encodes_an_image_through_the_projector(tmp_path, tiny_vision, server_engine):
    """The real engine: the projector loads, and an image part is encoded into the prompt (llama-server logs it at
    verbosity 4, a runtime flag users may set with `configure MODEL -- -lv 4`)."""
    from ..support.vision import data_url, images_encoded, png

    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    package_gguf(store, tiny_vision.gguf, ref("ai/tiny-vision"), mmproj=tiny_vision.mmproj)
    question = {"model": "model", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in the image?"},
        {"type": "image_url", "image_url": {"url": data_url(png(rgb=(0, 0, 255)))}}]}]}

    async def scenario():
        scheduler = Scheduler(store, engines=[server_engine], keep_alive=60)
        scheduler.configure("ai/tiny-vision", runtime_flags=["-lv", "4"])
        try:
            async with scheduler.use("ai/tiny-vision") as runner:
                response = await runner.request("POST", "/v1/chat/completions", json=question)
                # The engine's output reaches its log through the runner's log thread, moments after the answer.
                log = await asyncio.to_thread(images_encoded, lambda: runner.log_tail(400), at_least=1)
                return response.status_code, response.json(), log, runner.log_tail(400)
        finally:
            await scheduler.shutdown()

    status, answer, encoded, log = asyncio.run(scenario())
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"]
    assert "loaded multimodal model" in log
    assert encoded == 1, log


# -- runtime flags ----------------------------------------------------------------------------------------


def test_llama_server_flag_names_from_docker_model_runner_are_accepted():
    engine = LlamaServer(server="/x/llama-server")
    assert engine.check_flags(["--threads", "4", "-ngl", "99", "--flash-attn=on", "-fa", "--mlock"]) == (
        "--threads", "4", "-ngl", "99", "--flash-attn", "on", "-fa", "--mlock")
    assert engine.check_flags(["-fa", "off", "--cache-type-k", "q8_0", "--reasoning-budget", "0"]) == (
        "-fa", "off", "--cache-type-k", "q8_0", "--reasoning-budget", "0")


@pytest.mark.parametrize("flag", ["--host", "--port", "--api-key", "--api-prefix", "--model", "--mmproj",
                                  "--lora", "--spec-draft-model", "--n_threads", "--log-file"])
def test_flags_that_name_files_addresses_or_keys_are_refused_with_what_is_allowed(flag):
    with pytest.raises(EngineFlagRefused) as refused:
        LlamaServer(server="/x/llama-server").check_flags([flag, "x"])
    message = str(refused.value)
    assert f"'{flag}'" in message and "--threads" in message and "--ctx-size" in message


def test_context_and_slot_flags_become_the_plan_and_are_not_passed_twice(store, tmp_path):
    engine = LlamaServer(server="/x/llama-server")
    model = store.resolve("ai/tiny")
    plan = engine.plan(model, RunConfig(runtime_flags=("-c", "2048", "--parallel", "2", "--threads", "1")),
                       budget=BUDGET)
    assert (plan.context_size, plan.context_source, plan.slots) == (2048, CONTEXT_CONFIGURED, 2)
    argv = engine.launch(model, workdir=tmp_path, config=RunConfig(), hardware=CPU_ONLY, mode="completion",
                         plan=plan).argv
    assert argv.count("--ctx-size") == 1 and argv[argv.index("--ctx-size") + 1] == "4096"
    assert "-c" not in argv and argv.count("--parallel") == 1 and argv[-2:] == ["--threads", "1"]


def test_thinking_settings_and_their_flags_are_one_setting_on_the_command_line(store, tmp_path):
    """`configure --think/--no-think/--reasoning-budget` and llama-server's `--reasoning`/`--reasoning-budget` flags
    mean the same: the plan carries one value (the configured one wins) and the command line says it once."""
    engine = LlamaServer(server="/x/llama-server")
    model = store.resolve("ai/tiny")

    def argv(config: RunConfig, mode: str = "completion") -> list[str]:
        plan = engine.plan(model, config, budget=BUDGET, mode=mode)
        return engine.launch(model, workdir=tmp_path, config=config, hardware=CPU_ONLY, mode=mode, plan=plan).argv

    plain = argv(RunConfig())
    assert plain[plain.index("--reasoning-format") + 1] == "deepseek"  # thinking apart, in reasoning_content
    assert "--reasoning" not in plain and "--reasoning-budget" not in plain  # the template decides
    flagged = engine.plan(model, RunConfig(runtime_flags=("--reasoning-budget", "64", "-rea", "off")), budget=BUDGET)
    assert (flagged.think, flagged.reasoning_budget) == (False, 64) and flagged.flags == ()
    both = argv(RunConfig(runtime_flags=("--reasoning-budget", "64", "--reasoning", "auto"), think=True,
                          reasoning_budget=16))
    assert both.count("--reasoning-budget") == 1 and both[both.index("--reasoning-budget") + 1] == "16"
    assert both.count("--reasoning") == 1 and both[both.index("--reasoning") + 1] == "on"
    own_format = argv(RunConfig(runtime_flags=("--reasoning-format", "none")))
    assert own_format.count("--reasoning-format") == 1 and own_format[-2:] == ["--reasoning-format", "none"]
    embed = argv(RunConfig(think=False), mode="embedding")
    assert "--reasoning" not in embed and "--reasoning-format" not in embed
    with pytest.raises(EngineFlagRefused, match="reasoning budget"):
        engine.plan(model, RunConfig(runtime_flags=("--reasoning-budget", "-3")), budget=BUDGET)


def test_a_reasoning_effort_level_asks_the_template_to_think():
    engine = LlamaServer(server="/x/llama-server")
    ask = {"model": "model", "messages": []}
    assert engine.adapt_request("chat/completions", {**ask, "reasoning_effort": "low"})["chat_template_kwargs"] == {
        "enable_thinking": True}
    assert "chat_template_kwargs" not in engine.adapt_request("chat/completions", {**ask, "reasoning_effort": "none"})
    told = {**ask, "reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False, "x": 1}}
    assert engine.adapt_request("chat/completions", told) == told  # what the request says about thinking wins
    assert engine.adapt_request("chat/completions", {**ask, "thinking_token_budget": 8})["reasoning_budget_tokens"] == 8


def test_llama_servers_matched_stop_and_timings_get_the_engine_neutral_names():
    """What the dialects read (`matched_stop`, `generation_stats`; see `Engine`) is filled from llama-server's own
    fields, whole or streamed; events that carry neither pass as the same bytes."""
    engine = LlamaServer(server="/x/llama-server")
    timings = {"prompt_n": 9, "prompt_ms": 12.5, "predicted_n": 2, "predicted_ms": 30.0}
    whole = json.dumps({"choices": [{"index": 0, "message": {"content": "a"}, "finish_reason": "stop"}],
                        "__verbose": {"stop_type": "word", "stopping_word": "END"}, "timings": timings}).encode()
    answer = json.loads(engine.adapt_response("chat/completions", whole))
    assert answer["choices"][0]["matched_stop"] == "END"
    assert answer["generation_stats"] == {"prompt_tokens": 9, "prompt_seconds": 0.0125, "completion_tokens": 2,
                                          "generation_seconds": 0.03}
    plain = b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}\n\n'
    assert engine.adapt_response("chat/completions", plain) == plain
    last = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
            b'"__verbose":{"stop_type":"word","stopping_word":"\xc3\xa9nd"}}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":9},"timings":' + json.dumps(timings).encode() + b'}\n\n'
            b'data: [DONE]\n\n')
    events = list(sse_data(engine.adapt_response("chat/completions", plain + last)))
    assert [e["choices"][0].get("matched_stop") for e in events if e["choices"]] == [None, "\u00e9nd"]
    assert events[-1]["generation_stats"]["completion_tokens"] == 2
    eos = b'data: {"choices":[{"index":0,"delta":{}}],"__verbose":{"stop_type":"eos","stopping_word":""}}\n\n'
    assert "matched_stop" not in next(sse_data(engine.adapt_response("chat/completions", eos)))["choices"][0]


def test_the_fallback_translates_the_flags_it_knows_and_refuses_the_rest(store, tmp_path):
    fallback = LlamaServer(server="none")
    model = store.resolve("ai/tiny")
    plan = fallback.plan(model, RunConfig(runtime_flags=("--threads", "2", "-fa", "off", "--no-mmap")), budget=BUDGET)
    assert plan.slots == 1  # llama-cpp-python's server answers one request at a time
    argv = fallback.launch(model, workdir=tmp_path, config=RunConfig(), hardware=CPU_ONLY, mode="completion",
                           plan=plan).argv
    assert argv[-6:] == ["--n_threads", "2", "--flash_attn", "false", "--use_mmap", "false"]
    with pytest.raises(EngineFlagRefused, match=r"install-runner llama\.cpp"):
        fallback.plan(model, RunConfig(runtime_flags=("--cache-type-k", "q8_0")), budget=BUDGET)
    with pytest.raises(EngineUnavailable, match=r"Reranking needs llama\.cpp's llama-server"):
        fallback.launch(model, workdir=tmp_path, config=RunConfig(), hardware=CPU_ONLY, mode="rerank")


# -- which implementation ---------------------------------------------------------------------------------


def test_without_llama_server_the_fallback_is_chosen_and_the_reason_says_how_to_upgrade(store, monkeypatch):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    choice = select_engine(store.resolve("ai/tiny"), CPU_ONLY, [LlamaServer(server="none")])
    assert choice.engine.name == "llama.cpp"
    assert "llama-cpp-python" in choice.reason and "fallback" in choice.reason
    assert "jupyter modelrunner install-runner llama.cpp" in choice.reason


def test_the_fallback_answers_for_real(store):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")

    async def scenario():
        scheduler = Scheduler(store, engines=[LlamaServer(server="none")], keep_alive=60)
        try:
            async with scheduler.use("ai/tiny") as runner:
                response = await runner.request("POST", "/v1/chat/completions", json=HELLO)
                return response.json(), runner.status()
        finally:
            await scheduler.shutdown()

    answer, status = asyncio.run(scenario())
    assert answer["choices"][0]["message"]["content"]
    assert status["implementation"] == "llama-cpp-python" and status["slots"] == 1


def test_llama_server_is_chosen_when_installed_and_says_so(store, server_engine):
    choice = select_engine(store.resolve("ai/tiny"), CPU_ONLY, [server_engine])
    assert "llama-server" in choice.reason and "fallback" not in choice.reason


# -- context size, in Docker Model Runner's order of precedence -------------------------------------------


def test_each_context_source_wins_where_it_should_as_the_engine_reports_it(store, server_engine):
    """configure → the request's num_ctx → the artifact's context_size → the training context."""

    async def scenario():
        scheduler = Scheduler(store, engines=[server_engine], keep_alive=60)
        seen = {}
        try:
            async with scheduler.use("ai/tiny"):
                seen["training"] = ps_entry(scheduler, "ai/tiny")
            async with scheduler.use("ai/tiny-1280"):
                seen["artifact"] = ps_entry(scheduler, "ai/tiny-1280")
            async with scheduler.use("ai/tiny-1280", context_size=1536):  # restarts the loaded engine
                seen["request"] = ps_entry(scheduler, "ai/tiny-1280")
            scheduler.configure("ai/tiny-1280", context_size=2048)
            await scheduler.unload(["ai/tiny-1280"])
            async with scheduler.use("ai/tiny-1280", context_size=1536):
                seen["configured"] = ps_entry(scheduler, "ai/tiny-1280")
            return seen
        finally:
            await scheduler.shutdown()

    seen = asyncio.run(scenario())
    assert (seen["training"]["context_size"], seen["training"]["context_source"]) == (4096, CONTEXT_TRAINING)
    assert (seen["artifact"]["context_size"], seen["artifact"]["context_source"]) == (1280, CONTEXT_ARTIFACT)
    assert (seen["request"]["context_size"], seen["request"]["context_source"]) == (1536, CONTEXT_REQUEST)
    assert seen["request"]["pid"] != seen["artifact"]["pid"]
    assert (seen["configured"]["context_size"], seen["configured"]["context_source"]) == (2048, CONTEXT_CONFIGURED)
    assert seen["training"]["slots"] == DEFAULT_SLOTS


def test_a_long_training_context_is_capped_so_every_slot_fits_the_budget(tmp_path, server_engine):
    long_model = make_tiny_gguf(tmp_path / "tiny-64k.gguf", context_length=65536)
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    model = package_gguf(store, long_model, ref("ai/tiny-64k"))
    per_token = 2 * 2 * 2 * 16 * 2  # K and V, 2 layers, 2 KV heads of 16 values, f16
    budget = server_engine.overhead_bytes + model.size + DEFAULT_SLOTS * 8192 * per_token
    plan = server_engine.plan(model, RunConfig(), budget=budget)
    assert (plan.context_size, plan.context_source) == (8192, CONTEXT_TRAINING_CAPPED)
    assert plan.memory <= budget and plan.slots == DEFAULT_SLOTS

    async def scenario():
        scheduler = Scheduler(store, engines=[server_engine], keep_alive=60, memory_budget=budget)
        try:
            async with scheduler.use("ai/tiny-64k"):
                return ps_entry(scheduler, "ai/tiny-64k")
        finally:
            await scheduler.shutdown()

    assert asyncio.run(scenario())["context_size"] == 8192


def test_a_model_that_names_no_context_gets_4096(tmp_path):
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    model = package_gguf(store, make_tiny_gguf(tmp_path / "tiny-nc.gguf", context_length=None), ref("ai/nc"))
    plan = LlamaServer(server="/x/llama-server").plan(model, RunConfig(), budget=BUDGET)
    assert (plan.context_size, plan.context_source) == (4096, CONTEXT_DEFAULT)


def test_slots_shrink_before_a_model_would_not_fit(store):
    engine = LlamaServer(server="/x/llama-server")
    model = store.resolve("ai/tiny")
    full = engine.plan(model, RunConfig(context_size=4096), budget=BUDGET)
    tight = engine.plan(model, RunConfig(context_size=4096), budget=full.memory - 1)
    assert full.slots == DEFAULT_SLOTS and tight.slots == DEFAULT_SLOTS // 2
    assert tight.memory < full.memory and tight.context_size == 4096


def test_llama_server_contexts_are_whole_multiples_of_256_as_the_engine_allocates_them(store):
    """llama.cpp pads each slot's context to 256 tokens; the plan does the same, so ps and memory agree with it."""
    plan = LlamaServer(server="/x/llama-server").plan(store.resolve("ai/tiny"), RunConfig(context_size=640),
                                                         budget=BUDGET)
    assert plan.context_size == 768
