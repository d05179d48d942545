"""The scheduler with the real llama.cpp engine: loading, sharing, keep_alive, memory, crashes, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jupyter_modelrunner.distribution import package_gguf
from jupyter_modelrunner.engines.base import EngineFlagRefused
from jupyter_modelrunner.engines.llamacpp import LlamaCppEngine
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.scheduler import EngineFailed, NotEnoughMemory, Scheduler, sse_events
from jupyter_modelrunner.store import Store

pytestmark = pytest.mark.timeout(300)
CHAT = {"model": "model", "temperature": 0, "max_tokens": 16, "seed": 1,
        "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
def local_store(tmp_path, tiny_gguf) -> Store:
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    package_gguf(store, tiny_gguf, parse_reference("127.0.0.1:1/ai/tiny"))
    package_gguf(store, tiny_gguf, parse_reference("127.0.0.1:1/ai/tiny-other"), context_size=256)
    return store


def run(coro):
    return asyncio.run(coro)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


async def chat(scheduler: Scheduler, name: str = "ai/tiny", **extra) -> dict:
    async with scheduler.use(name) as runner:
        response = await runner.request("POST", "/v1/chat/completions", json={**CHAT, **extra})
        response.raise_for_status()
        return response.json()


async def stream_text(scheduler: Scheduler, name: str = "ai/tiny", **extra) -> list[str]:
    pieces = []
    async with scheduler.use(name) as runner, runner.stream(
        "POST", "/v1/chat/completions", json={**CHAT, **extra, "stream": True}
    ) as chunks:
        async for event in sse_events(chunks):
            delta = event["choices"][0].get("delta", {}).get("content")
            if delta:
                pieces.append(delta)
    return pieces


def test_chat_is_deterministic_at_temperature_zero_streaming_and_not(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            first = await chat(scheduler)
            second = await chat(scheduler)
            pieces = await stream_text(scheduler)
            (status,) = scheduler.ps()
            return first, second, pieces, status
        finally:
            await scheduler.shutdown()

    first, second, pieces, status = run(scenario())
    text = first["choices"][0]["message"]["content"]
    assert text and text == second["choices"][0]["message"]["content"]
    assert len(pieces) > 1 and "".join(pieces) == text
    assert status["backend_name"] == "llama.cpp" and status["device"] == "cpu" and status["state"] == "ready"
    assert "gguf" in status["reason"]


def test_concurrent_first_requests_start_one_process(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            results = await asyncio.gather(*(chat(scheduler, "ai/tiny" if i % 2 else "127.0.0.1:1/ai/tiny:latest")
                                            for i in range(4)))
            return results, scheduler.stats["loads"], len(scheduler.ps())
        finally:
            await scheduler.shutdown()

    results, loads, runners = run(scenario())
    assert len({r["choices"][0]["message"]["content"] for r in results}) == 1
    assert loads == 1 and runners == 1


def test_keep_alive_zero_and_short_keep_alive_unload(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            scheduler.configure("ai/tiny", keep_alive="0")
            await chat(scheduler)
            await asyncio.sleep(0.5)
            after_zero = scheduler.ps()
            scheduler.configure("ai/tiny", keep_alive="1s")
            await chat(scheduler)
            loaded = scheduler.ps()
            await asyncio.sleep(2.5)
            return after_zero, loaded, scheduler.ps()
        finally:
            await scheduler.shutdown()

    after_zero, loaded, later = run(scenario())
    assert after_zero == []
    assert loaded and loaded[0]["keep_alive"] == 1.0 and loaded[0]["expires_at"] <= time.time() + 1.0
    assert later == []


def test_a_requests_keep_alive_only_lengthens_its_own_lease(local_store):
    """Ollama's per-request keep_alive: one client's `0` must not unload a model another client's request keeps;
    a longer one keeps it longer; a negative one keeps it until it is unloaded."""

    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            async with scheduler.use("ai/tiny"):
                pass  # another client: the default, 60 s
            async with scheduler.use("ai/tiny", keep_alive=0):
                pass
            await asyncio.sleep(0.3)
            after_zero = scheduler.ps()
            async with scheduler.use("ai/tiny", keep_alive=3600):
                pass
            longer = scheduler.ps()[0]["expires_at"]
            async with scheduler.use("ai/tiny", keep_alive=-1):
                pass
            pinned = scheduler.ps()[0]
            return after_zero, longer, pinned
        finally:
            await scheduler.shutdown()

    started = time.time()
    after_zero, longer, pinned = run(scenario())
    assert len(after_zero) == 1 and after_zero[0]["expires_at"] >= started + 59
    assert longer >= started + 3599
    assert pinned["expires_at"] is None and pinned["state"] == "ready"


def test_idle_runner_is_evicted_lru_to_fit_the_budget(local_store):
    engine = LlamaCppEngine()
    one = engine.estimate_memory(local_store.resolve("ai/tiny"), _config(local_store, "ai/tiny"))
    two = engine.estimate_memory(local_store.resolve("ai/tiny-other"), _config(local_store, "ai/tiny-other"))

    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60, memory_budget=max(one, two) + min(one, two) // 2)
        try:
            await chat(scheduler, "ai/tiny")
            first = [r["model_name"] for r in scheduler.ps()]
            await chat(scheduler, "ai/tiny-other")
            return first, [r["model_name"] for r in scheduler.ps()], scheduler.stats["evictions"]
        finally:
            await scheduler.shutdown()

    first, second, evictions = run(scenario())
    assert first == ["ai/tiny:latest"]
    assert second == ["ai/tiny-other:latest"] and evictions == 1


def _config(store, name):
    from jupyter_modelrunner.runner_config import RunConfigFile

    return RunConfigFile(store.root).get(store.resolve(name).id)


def test_a_model_larger_than_the_budget_is_refused_with_numbers(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, memory_budget=1024 * 1024)
        try:
            await chat(scheduler)
        finally:
            await scheduler.shutdown()

    with pytest.raises(NotEnoughMemory, match=r"needs about .* more than the memory budget of 1\.00 MiB"):
        run(scenario())


def test_engine_killed_mid_stream_fails_fast_and_the_next_request_works(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            started = None
            with pytest.raises(EngineFailed) as info:
                async with scheduler.use("ai/tiny") as runner, runner.stream(
                    "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 400, "stream": True,
                                                          "temperature": 1.0}
                ) as chunks:
                    async for _event in sse_events(chunks):
                        if started is None:
                            started = time.monotonic()
                            os.killpg(runner.process.pid, signal.SIGKILL)
            elapsed = time.monotonic() - started
            again = await chat(scheduler)
            return info.value, elapsed, again, scheduler.stats
        finally:
            await scheduler.shutdown()

    error, elapsed, again, stats = run(scenario())
    assert "llama.cpp stopped while answering" in str(error) and "signal 9" in str(error)
    assert elapsed < 3
    assert again["choices"][0]["message"]["content"]
    assert stats["crashes"] == 1 and stats["loads"] == 2


def test_disallowed_runtime_flag_is_refused_with_the_allowed_list(local_store):
    scheduler = Scheduler(local_store)
    with pytest.raises(EngineFlagRefused, match=r"Allowed: .*--threads"):
        scheduler.configure("ai/tiny", runtime_flags=["--host", "0.0.0.0"])


def test_configuration_survives_a_restart_and_reaches_the_engine(local_store):
    Scheduler(local_store).configure("ai/tiny", context_size=256, runtime_flags=["--threads", "1"])

    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            async with scheduler.use("ai/tiny") as runner:
                return list(runner.launch.argv), scheduler.logs("ai/tiny")
        finally:
            await scheduler.shutdown()

    argv, logs = run(scenario())
    assert argv[argv.index("--ctx-size") + 1] == str(256 * int(argv[argv.index("--parallel") + 1]))
    assert argv[-2:] == ["--threads", "1"]
    assert isinstance(logs, str)


def test_no_engine_survives_its_owner_even_after_sigkill(local_store, tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        from jupyter_modelrunner.scheduler import Scheduler
        from jupyter_modelrunner.store import Store

        async def main():
            scheduler = Scheduler(Store({str(local_store.root)!r}), keep_alive=-1)
            runner = await scheduler.load("ai/tiny")
            print(runner.process.pid, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    engine_pid = int(owner.stdout.readline())
    assert alive(engine_pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(engine_pid)


def test_shutdown_stops_every_engine(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=-1)
        pids = []
        for name in ("ai/tiny", "ai/tiny-other"):
            pids.append((await scheduler.load(name)).process.pid)
        await scheduler.shutdown()
        return pids, scheduler.ps()

    pids, remaining = run(scenario())
    assert remaining == [] and not any(alive(pid) for pid in pids)


def test_concurrent_streams_on_one_engine_all_complete(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            return await asyncio.gather(*(stream_text(scheduler, max_tokens=24) for _ in range(4)))
        finally:
            await scheduler.shutdown()

    results = run(scenario())
    # llama-cpp-python cancels a stream when a new request arrives unless told otherwise; ours queue.
    assert len({"".join(pieces) for pieces in results}) == 1 and all(results)


def test_embedding_mode_runs_its_own_runner(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            async with scheduler.use("ai/tiny", mode="embedding") as runner:
                response = await runner.request("POST", "/v1/embeddings", json={"model": "model", "input": "hello"})
            await chat(scheduler)
            return response.json(), sorted(r["mode"] for r in scheduler.ps())
        finally:
            await scheduler.shutdown()

    body, modes = run(scenario())
    assert len(body["data"][0]["embedding"]) == 64
    assert modes == ["completion", "embedding"]


def test_a_chat_template_layer_replaces_the_gguf_template(tmp_path, tiny_gguf):
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    package_gguf(store, tiny_gguf, parse_reference("127.0.0.1:1/ai/plain"), chat_template=template)
    package_gguf(store, tiny_gguf, parse_reference("127.0.0.1:1/ai/tiny"))

    async def scenario():
        scheduler = Scheduler(store, keep_alive=60)
        try:
            plain = await chat(scheduler, "ai/plain")
            chatml = await chat(scheduler, "ai/tiny")
            return plain["usage"]["prompt_tokens"], chatml["usage"]["prompt_tokens"]
        finally:
            await scheduler.shutdown()

    plain_tokens, chatml_tokens = run(scenario())
    assert plain_tokens < chatml_tokens  # no <|im_start|>user … <|im_end|> wrapping
