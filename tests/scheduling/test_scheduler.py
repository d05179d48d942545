"""The scheduler with the real llama.cpp engine: loading, sharing, keep_alive, memory, crashes, cleanup."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from jupyter_modelrunner.distribution import package_gguf
from jupyter_modelrunner.engines.hardware import Gpu, Hardware, probe
from jupyter_modelrunner.engines.llamacpp import LlamaServer
from jupyter_modelrunner.errors import EngineFlagRefused
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.scheduling import EngineFailed, NotEnoughMemory, Scheduler, SettingsFile
from jupyter_modelrunner.sizes import format_bytes
from jupyter_modelrunner.sse import sse_events
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
            await _poll(lambda: scheduler.ps() == [])  # unloaded after its request
            scheduler.configure("ai/tiny", keep_alive="1s")
            await chat(scheduler)
            loaded = scheduler.ps()
            await _poll(lambda: scheduler.ps() == [])  # and after its second
            return loaded
        finally:
            await scheduler.shutdown()

    loaded = run(scenario())
    assert loaded and loaded[0]["keep_alive"] == 1.0 and loaded[0]["expires_at"] <= time.time() + 1.0


def test_a_requests_keep_alive_only_lengthens_its_own_lease(local_store):
    """Ollama's per-request keep_alive: one client's `0` must not unload a model another client's request keeps;
    a longer one keeps it longer; a negative one keeps it until it is unloaded."""

    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            async with scheduler.use("ai/tiny"):
                pass  # another client: the default, 60 s
            async with scheduler.use("ai/tiny", keep_alive=0) as runner:
                pass
            # What decides the unload is the idle timer the lease set: still a minute away, not now.
            timer_in = runner.idle_timer.when() - asyncio.get_running_loop().time()
            after_zero = scheduler.ps()
            async with scheduler.use("ai/tiny", keep_alive=3600):
                pass
            longer = scheduler.ps()[0]["expires_at"]
            async with scheduler.use("ai/tiny", keep_alive=-1):
                pass
            pinned = scheduler.ps()[0]
            return after_zero, timer_in, longer, pinned
        finally:
            await scheduler.shutdown()

    started = time.time()
    after_zero, timer_in, longer, pinned = run(scenario())
    assert len(after_zero) == 1 and after_zero[0]["expires_at"] >= started + 59 and timer_in > 58
    assert longer >= started + 3599
    assert pinned["expires_at"] is None and pinned["state"] == "ready"


def test_an_idle_runner_is_stopped_to_make_room_for_another(local_store):
    """End to end, with real engines: the budget holds one of the two models, so the second load stops the first.
    (Which runner goes first — LRU, not FIFO — is the policy's, tested without engines in test_budget.py.)"""
    engine = LlamaServer()
    one = engine.estimate_memory(local_store.resolve("ai/tiny"), _config(local_store, "ai/tiny"))
    two = engine.estimate_memory(local_store.resolve("ai/tiny-other"), _config(local_store, "ai/tiny-other"))

    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60, memory_budget=max(one, two) + min(one, two) // 2)
        try:
            await chat(scheduler, "ai/tiny")
            first = [(r["model_name"], r["pid"]) for r in scheduler.ps()]
            await chat(scheduler, "ai/tiny-other")
            return first, [r["model_name"] for r in scheduler.ps()], scheduler.stats["evictions"]
        finally:
            await scheduler.shutdown()

    first, second, evictions = run(scenario())
    assert [name for name, _pid in first] == ["ai/tiny:latest"]
    assert second == ["ai/tiny-other:latest"] and evictions == 1
    assert not alive(first[0][1])  # its process is gone, not only forgotten


def _config(store, name):
    return SettingsFile(store.root).get(store.resolve(name).id)


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
        from jupyter_modelrunner.scheduling import Scheduler
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


# -- GPU admission and sleep, on a simulated GPU ------------------------------------------------------------------
# This machine has no NVIDIA GPU. These tests give the scheduler a hardware probe that reports one (a named fake,
# SIMULATED_GPU): the planning, the VRAM budget, eviction and the sleep/wake states are the real code, and the
# engines are the real llama-server (a CPU build, which ignores its --n-gpu-layers).

SIMULATED_GPU = "SIMULATED GPU (test fake: no device is touched)"


def simulated_cuda(memory: int) -> Hardware:
    """The real CPU and RAM of this machine, with one fake NVIDIA GPU of `memory` bytes."""
    real = probe()
    return dataclasses.replace(real, gpus=(Gpu(SIMULATED_GPU, memory, memory),))


def _vram_of(store: Store, name: str) -> int:
    hardware = simulated_cuda(80 * 1024**3)
    plan = LlamaServer().plan(store.resolve(name), _config(store, name), budget=probe().memory_total,
                                 hardware=hardware, vram_budget=80 * 1024**3)
    return plan.vram


def test_gpu_admission_shares_the_device_evicts_lru_and_refuses_with_numbers(local_store, tiny_gguf):
    package_gguf(local_store, tiny_gguf, parse_reference("127.0.0.1:1/ai/tiny-third"), context_size=512)
    tiny, other = _vram_of(local_store, "ai/tiny"), _vram_of(local_store, "ai/tiny-other")
    third = _vram_of(local_store, "ai/tiny-third")
    assert tiny >= third >= other > 0
    budget = tiny + other + (other // 2)  # two fit together; a third of either size does not

    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60, hardware=simulated_cuda(budget * 2), vram_budget=budget)
        try:
            await chat(scheduler, "ai/tiny")
            await chat(scheduler, "ai/tiny-other")
            shared = {r["model_name"]: r["vram"] for r in scheduler.ps()}
            await chat(scheduler, "ai/tiny-third")
            after = [r["model_name"] for r in scheduler.ps()]
            return shared, after, scheduler.stats["evictions"], scheduler.status()
        finally:
            await scheduler.shutdown()

    shared, after, evictions, status = run(scenario())
    assert shared == {"ai/tiny:latest": tiny, "ai/tiny-other:latest": other}  # both on the one GPU at once
    assert after == ["ai/tiny-other:latest", "ai/tiny-third:latest"] and evictions == 1  # ai/tiny was LRU
    assert status["vram_budget"] == budget

    async def never_fits():
        scheduler = Scheduler(local_store, hardware=simulated_cuda(tiny), vram_budget=tiny // 2)
        try:
            await chat(scheduler, "ai/tiny")
        finally:
            await scheduler.shutdown()

    with pytest.raises(NotEnoughMemory) as refused:
        run(never_fits())
    message = str(refused.value)
    # the planner shrank its slots first (memory permitting); what it still needs is named, with the budget
    assert re.search(rf"needs about [\d.]+ MiB of GPU memory .* more than the GPU budget of "
                     rf"{re.escape(format_bytes(tiny // 2))} \({re.escape(SIMULATED_GPU)}", message)


class SleepyLlamaCpp(LlamaServer):
    """A test fake of an engine that can sleep (vLLM's sleep mode needs CUDA): llama-server that pretends to
    offload its weights. Waking waits for the test to open `wake_gate`, so the test sees the `waking` state."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.wake_gate = asyncio.Event()

    def can_sleep(self, hardware: Hardware) -> bool:
        return hardware.cuda

    async def sleep(self, client) -> None:
        self.calls.append("sleep")

    async def wake(self, client) -> None:
        self.calls.append("wake")
        await self.wake_gate.wait()


async def _poll(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the state")
        await asyncio.sleep(0.05)
    return value


def test_idle_gpu_engine_sleeps_and_wakes_for_the_requests_that_wait(local_store):
    engine = SleepyLlamaCpp()
    events: list[str] = []

    async def scenario():
        scheduler = Scheduler(local_store, engines=[engine], keep_alive=0.5, hardware=simulated_cuda(80 * 1024**3),
                              on_event=lambda kind, data: events.append(kind))
        try:
            await chat(scheduler)
            (loaded,) = scheduler.ps()
            asleep = await _poll(lambda: [r for r in scheduler.ps() if r["state"] == "sleeping"])
            # Two requests arrive while it is asleep: both wait for the one wake, neither fails.
            requests = [asyncio.create_task(chat(scheduler)) for _ in range(2)]
            waking = await _poll(lambda: [r for r in scheduler.ps() if r["state"] == "waking"])
            # both are inside `use`, waiting for the wake the gate holds
            model_id = local_store.resolve("ai/tiny").id
            await _poll(lambda: scheduler._inside.get((model_id, "completion")) == 2)
            pending = [not task.done() for task in requests]
            engine.wake_gate.set()
            answers = await asyncio.gather(*requests)
            (awake,) = scheduler.ps()
            return loaded, asleep[0], waking[0], pending, answers, awake
        finally:
            await scheduler.shutdown()

    loaded, asleep, waking, pending, answers, awake = run(scenario())
    assert loaded["state"] == "ready" and loaded["vram"] > 0
    assert asleep["pid"] == loaded["pid"] and asleep["vram"] == 0  # the process stays, the GPU is given back
    assert waking["pid"] == loaded["pid"] and pending == [True, True]
    assert all(a["choices"][0]["message"]["content"] for a in answers)
    assert awake["state"] == "ready" and awake["pid"] == loaded["pid"] and awake["vram"] == loaded["vram"]
    assert awake["load"]["woke_seconds"] >= 0 and engine.calls[:2] == ["sleep", "wake"]
    assert engine.calls.count("wake") == 1  # one wake for both
    assert events[events.index("sleeping"):events.index("sleeping") + 3] == ["sleeping", "waking", "ready"]


def test_an_engine_that_cannot_sleep_is_stopped_when_idle(local_store):
    """On the CPU (or with an engine without a sleep mode), keep_alive stops the process as before."""

    async def scenario():
        scheduler = Scheduler(local_store, engines=[SleepyLlamaCpp()], keep_alive=0.3)
        try:
            await chat(scheduler)
            return await _poll(lambda: scheduler.ps() == [] or None)
        finally:
            await scheduler.shutdown()

    assert run(scenario())


def test_engine_sockets_live_in_a_short_user_only_folder(local_store, monkeypatch, tmp_path):
    """A Unix socket's path has at most 107 bytes and vLLM makes its own below the engine's folder: a long
    XDG_RUNTIME_DIR is passed over for the temporary folder."""
    long_runtime = tmp_path / ("x" * 60)
    long_runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(long_runtime))
    folder = Scheduler(local_store).runtime_dir
    assert len(str(folder)) <= 30 + len("/modelrunner-12345678") and not str(folder).startswith(str(long_runtime))
    assert folder.stat().st_mode & 0o777 == 0o700
    short_runtime = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_runtime))
    assert Scheduler(local_store).runtime_dir.parent == short_runtime


# -- an engine that refuses to start -----------------------------------------------------------------------------
# `--cache-type-k` passes the allowlist (it takes a value) and llama-server refuses an unknown cache type at once:
# `error while handling argument "--cache-type-k": Unsupported cache type: bogus`, then its usage, exit code 1.

REFUSED_FLAGS = ["--cache-type-k", "bogus"]


def _starts(store: Store) -> int:
    """Engine starts for ai/tiny, counted in its log files (each run begins with a `--- <time> <argv>` line)."""
    return sum(path.read_text().count("\n--- ") + path.read_text().startswith("--- ")
               for path in (store.root / "logs").glob(f"*-{store.resolve('ai/tiny').short_id}.log*"))


def test_an_engine_that_refuses_its_settings_fails_at_once_until_they_change(local_store):
    async def scenario():
        scheduler = Scheduler(local_store, keep_alive=60)
        try:
            scheduler.configure("ai/tiny", runtime_flags=REFUSED_FLAGS)
            with pytest.raises(EngineFailed) as first:
                await chat(scheduler)
            after_first = dict(scheduler.stats)
            with pytest.raises(EngineFailed) as second:
                await chat(scheduler)
            after_second = dict(scheduler.stats)
            await _poll(lambda: _starts(local_store) == 1)  # the log thread has written the one start
            restarted_by_its_own_flags = None
            with pytest.raises(EngineFailed):  # saving the same settings again is a configure too: one more try
                scheduler.configure("ai/tiny", runtime_flags=REFUSED_FLAGS)
                restarted_by_its_own_flags = await chat(scheduler)
            scheduler.configure("ai/tiny", runtime_flags=[])
            answer = await chat(scheduler)
            return first.value, second.value, after_first, after_second, restarted_by_its_own_flags, answer, \
                dict(scheduler.stats)
        finally:
            await scheduler.shutdown()

    first, second, after_first, after_second, again, answer, stats = run(scenario())
    message = str(first)
    assert message.startswith('error while handling argument "--cache-type-k": Unsupported cache type: bogus\n')
    assert "llama.cpp could not start for ai/tiny:latest (exit code 1)" in message
    assert "change them (`configure`) to try again" in message and "Last lines of its log:" in message
    assert str(second) == message and second.http_status == 502
    assert after_first["load_failures"] == after_second["load_failures"] == 1  # the second started nothing
    assert again is None and stats["load_failures"] == 2
    assert answer["choices"][0]["message"]["content"] and stats["loads"] == 1
