"""vLLM (the CPU build in CI) serving a tiny safetensors model pulled from the test registry."""

from __future__ import annotations

import asyncio

import pytest

from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.engines.hardware import probe
from jupyter_modelrunner.engines.select import select_engine
from jupyter_modelrunner.engines.vllm import VllmEngine, default_vllm_python
from jupyter_modelrunner.scheduler import Scheduler, sse_events

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = default_vllm_python()
    if python is None:
        pytest.skip("no vLLM environment (bash scripts/install-engines.sh vllm, or set MODEL_RUNNER_VLLM_PYTHON)")
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
