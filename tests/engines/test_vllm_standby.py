"""The vLLM standby: an interpreter with vLLM's imports done, adopted by the next safetensors load (real vLLM)."""

from __future__ import annotations

import asyncio

import pytest

from jupyter_modelrunner.distribution import package_safetensors
from jupyter_modelrunner.engines.vllm import Vllm, default_vllm_python
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.scheduling import Scheduler
from jupyter_modelrunner.store import Store

pytestmark = pytest.mark.timeout(900)
HI = {"model": "model", "temperature": 0, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = default_vllm_python()
    if python is None:
        pytest.skip("no vLLM environment (jupyter modelrunner install-runner vllm)")
    return python


@pytest.fixture
def store(tmp_path, tiny_safetensors) -> Store:
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    package_safetensors(store, tiny_safetensors, parse_reference("127.0.0.1:1/ai/tiny-st"))
    return store


async def first_answer(scheduler: Scheduler) -> dict:
    """Load ai/tiny-st, answer once, and say how the runner started (its own record) and what ps shows after."""
    async with scheduler.use("ai/tiny-st") as runner:
        answer = (await runner.request("POST", "/v1/chat/completions", json=HI)).json()
        return {"text": answer["choices"][0]["message"]["content"], "load": dict(runner.phases),
                "pid": runner.process.pid}


def test_the_standby_skips_the_imports_and_a_new_one_replaces_it(store, vllm_python):
    async def scenario():
        cold = Scheduler(store, engines=[Vllm(vllm_python)], keep_alive=-1)
        try:
            without = await first_answer(cold)
        finally:
            await cold.shutdown()
        warm = Scheduler(store, engines=[Vllm(vllm_python)], keep_alive=-1, standby=True)
        try:
            standby = await warm.prepare_standby()
            await standby.ready.wait()
            (listed,) = warm.ps()  # the standby shows, with the memory it really holds
            adopted = standby.process.pid
            used = await first_answer(warm)
            replacement = await wait_for_new_standby(warm, adopted)
            return without, listed, adopted, used, replacement, warm.ps()
        finally:
            await warm.shutdown()

    without, listed, adopted, used, replacement, ps = asyncio.run(scenario())
    assert listed["mode"] == listed["state"] == "standby" and listed["memory"] > 100 * 1024**2
    assert without["load"]["started_from"] == "new process" and without["load"]["imports_done_ahead_seconds"] is None
    assert used["load"]["started_from"] == "standby" and used["pid"] == adopted  # the standby became the engine
    assert used["load"]["imports_done_ahead_seconds"] > 0  # its imports happened before the request
    assert used["load"]["ready_seconds"] < without["load"]["ready_seconds"]  # so the model answered sooner
    assert used["text"] == without["text"]  # the same answer, started either way
    assert replacement not in (None, adopted)  # and the next load gets a fresh one
    assert [e["mode"] for e in ps] == ["completion", "standby"]


async def wait_for_new_standby(scheduler: Scheduler, old_pid: int, timeout: float = 120) -> int | None:
    for _ in range(int(timeout / 0.2)):
        standby = scheduler._standby
        if standby is not None and standby.process.pid != old_pid:
            await standby.ready.wait()
            return standby.process.pid
        await asyncio.sleep(0.2)
    return None


def test_no_standby_when_the_memory_budget_has_no_room_for_it(store, vllm_python):
    async def scenario():
        scheduler = Scheduler(store, engines=[Vllm(vllm_python)], standby=True, memory_budget=512 * 1024**2)
        try:
            return await scheduler.prepare_standby(), scheduler.ps()
        finally:
            await scheduler.shutdown()

    standby, ps = asyncio.run(scenario())
    assert standby is None and ps == []


def test_the_standby_is_stopped_with_its_scheduler(store, vllm_python):
    async def scenario():
        scheduler = Scheduler(store, engines=[Vllm(vllm_python)], standby=True)
        standby = await scheduler.prepare_standby()
        await scheduler.shutdown()
        return standby.process.returncode

    assert asyncio.run(scenario()) is not None  # gone (the session's leak check also looks for survivors)
